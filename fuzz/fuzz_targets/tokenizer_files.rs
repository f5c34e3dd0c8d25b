//! `tokenizer.json` + `tokenizer_config.json` loading and one encode. The
//! input is both files separated by a NUL byte.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (tok, cfg) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), tok).unwrap();
    if !cfg.is_empty() {
        std::fs::write(dir.path().join("tokenizer_config.json"), cfg).unwrap();
    }
    if let Ok(t) = lensmap::tokenize::TextTokenizer::from_hf_dir(dir.path()) {
        let _ = t.encode("Hello, world! 123");
    }
});
