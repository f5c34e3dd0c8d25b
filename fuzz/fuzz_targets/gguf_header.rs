//! A GGUF file's header: bounds pre-check, candle's parser, config resolution.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The bounded pre-check alone, then the whole open path through a file
    // (GgufFile maps its file), as `lensmap run` would.
    let _ = lensmap::model::bounds::check_gguf_header(data);
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let path = dir.path().join("f.gguf");
    std::fs::write(&path, data).unwrap();
    if let Ok(file) = lensmap::model::GgufFile::open(&path) {
        let _ = lensmap::model::arch::config_from_gguf(&file);
    }
});
