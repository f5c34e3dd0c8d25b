//! `config.json` resolution into a ModelConfig.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(raw) = lensmap::model::hf::HfConfig::parse(text) {
        let _ = lensmap::model::arch::config_from_hf(&raw, false);
        let _ = lensmap::model::arch::config_from_hf(&raw, true);
    }
});
