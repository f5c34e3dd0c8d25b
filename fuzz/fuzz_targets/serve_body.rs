//! The body of `POST /api/lens`, parsed and checked as before queueing.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lensmap::serve::check_lens_body(data);
});
