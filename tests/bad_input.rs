//! Bad input gets one clear line on stderr and a non-zero exit, never a
//! panic: one test per error class.

mod common;

use std::path::Path;

use common::{assert_error, lensmap, model_file, run_hi};

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

#[test]
fn missing_model_file() {
    let out = run_hi(Path::new("/nonexistent/model.gguf"), &[]);
    assert_error(&out, "not found");
    // A typo'd path is told to check it, not to fetch the default models.
    assert!(String::from_utf8_lossy(&out.stderr).contains("hint: check the path"));
}

#[test]
fn truncated_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(model_file(SMOLLM2)).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &full[..full.len() / 2]).unwrap();
    assert_error(&run_hi(&cut, &[]), "truncated");
    // Cut inside the header: still one line.
    let tiny = dir.path().join("tiny.gguf");
    std::fs::write(&tiny, &full[..4096]).unwrap();
    assert_error(&run_hi(&tiny, &[]), "not a valid GGUF file");
}

#[test]
fn not_a_gguf_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.gguf");
    std::fs::write(&p, "just some text, not a model\n").unwrap();
    assert_error(&run_hi(&p, &[]), "no `GGUF` magic");
}

/// Write a tiny GGUF whose header says what we want.
fn write_gguf(path: &Path, arch: &str) {
    use candle_core::quantized::gguf_file::{write, Value};
    use candle_core::quantized::QTensor;
    let t = candle_core::Tensor::zeros((4, 32), candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap();
    let q = QTensor::quantize(&t, candle_core::quantized::GgmlDType::F32).unwrap();
    let arch_v = Value::String(arch.to_string());
    let mut f = std::fs::File::create(path).unwrap();
    write(
        &mut f,
        &[("general.architecture", &arch_v)],
        &[("token_embd.weight", &q)],
    )
    .unwrap();
}

#[test]
fn unsupported_architecture_names_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mamba.gguf");
    write_gguf(&p, "mamba");
    let line = assert_error(&run_hi(&p, &[]), "unsupported architecture `mamba`");
    assert!(line.contains("llama") && line.contains("gemma3"), "{line}");
}

#[test]
fn unsupported_quant_type_names_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("iq.gguf");
    write_gguf(&p, "llama");
    // Patch the tensor's type field (F32 = 0) to 16, IQ2_XXS, which candle cannot read.
    let mut bytes = std::fs::read(&p).unwrap();
    let name = b"token_embd.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    // After the name: n_dims (u32), dims (2 × u64), then the type (u32).
    let ty = at + 4 + 16;
    assert_eq!(&bytes[ty..ty + 4], &0u32.to_le_bytes());
    bytes[ty..ty + 4].copy_from_slice(&16u32.to_le_bytes());
    std::fs::write(&p, &bytes).unwrap();
    let line = assert_error(&run_hi(&p, &[]), "unsupported");
    assert!(line.contains("Q4_K") && line.contains("Q8_0"), "{line}");
}

#[test]
fn prompt_longer_than_context() {
    let long = "word ".repeat(9000); // SmolLM2's context is 8192
    let model = model_file(SMOLLM2);
    let out = lensmap(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        &long,
        "-q",
    ]);
    let line = assert_error(&out, "but the model's context is 8192");
    assert!(line.contains("prompt is 9"), "{line}");
}

#[test]
fn broken_template_reports_its_own_message() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jinja");
    std::fs::write(&bad, "{% for m in messages %}{{ m.content }").unwrap();
    let out = run_hi(
        &model_file(SMOLLM2),
        &["--chat-template", bad.to_str().unwrap()],
    );
    assert_error(&out, "chat template");
    let raising = dir.path().join("raise.jinja");
    std::fs::write(
        &raising,
        "{{ raise_exception('System role not supported') }}",
    )
    .unwrap();
    let out = run_hi(
        &model_file(SMOLLM2),
        &["--chat-template", raising.to_str().unwrap()],
    );
    assert_error(&out, "System role not supported");
}

#[test]
fn options_out_of_range() {
    let model = model_file(SMOLLM2);
    assert_error(&run_hi(&model, &["--top-k", "0"]), "--top-k");
    assert_error(
        &run_hi(&model, &["--dummy", "2", "--dummy-text", "Hello world"]),
        "Hello world",
    );
    assert_error(&run_hi(&model, &["--precision", "f13"]), "f13");
}
