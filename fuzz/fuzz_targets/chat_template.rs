//! Chat template rendering (fuel and output cap included).
#![no_main]
use libfuzzer_sys::fuzz_target;
use lensmap::template::{ChatTemplate, Message};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let t = ChatTemplate::new(text, "fuzz");
    let msgs = [Message::new("system", "Be brief."), Message::new("user", "Hi")];
    let _ = t.render(&msgs, "<s>", "</s>", true);
});
