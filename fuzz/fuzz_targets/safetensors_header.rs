//! A safetensors file: header parsing and reading every tensor as f32.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lensmap::model::WeightSource;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, data).unwrap();
    let files = lensmap::model::safetensors::SafetensorsFiles::open_files(&[path], "fuzz".into());
    if let Ok(files) = files {
        for name in ["model.embed_tokens.weight", "model.norm.weight"] {
            if files.contains(name) {
                let _ = files.f32(name);
            }
        }
    }
});
