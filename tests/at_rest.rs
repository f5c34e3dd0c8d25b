//! Weights at rest (`--precision rest`) and the memory preflight.
//! See: issue #9. The at-rest vs f32 comparisons on the real GGUF models are
//! in `engine_reference.rs`, on the eight tiny HF fixtures in `tiny_fixtures.rs`;
//! the peak-RSS check is alone in `at_rest_rss.rs`.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use crate::common::*;
use lensmap::lens::{lens_of_ids, LensQuery};
use lensmap::model::checkpoint::CheckpointFormat;
use lensmap::model::{Checkpoint, Precision, WeightSource};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Copy the tiny fixture `name` to `out` with every tensor stored as
/// `dtype`, written from `values(tensor) -> little-endian bytes`.
fn copy_fixture(name: &str, out: &Path, dtype: Dtype, bytes: impl Fn(&[f32]) -> Vec<u8>) {
    let dir = reference_dir().join("tiny").join(name);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_none_or(|e| e != "safetensors") {
            std::fs::copy(&p, out.join(p.file_name().unwrap())).unwrap();
        }
    }
    let ckpt = Checkpoint::open(&dir).unwrap();
    let CheckpointFormat::Hf { weights, .. } = &ckpt.format else {
        panic!("{name} is an HF directory")
    };
    let data: HashMap<String, (Vec<usize>, Vec<u8>)> = weights
        .names()
        .map(|n| {
            let values = weights.f32(n).unwrap().flatten_all().unwrap();
            let shape = weights.shape(n).unwrap();
            (
                n.to_string(),
                (shape, bytes(&values.to_vec1::<f32>().unwrap())),
            )
        })
        .collect();
    let views: HashMap<String, TensorView> = data
        .iter()
        .map(|(n, (shape, b))| (n.clone(), TensorView::new(dtype, shape.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(&views, None, &out.join("model.safetensors")).unwrap();
}

/// A bf16 copy of a tiny fixture runs at rest (2 bytes per parameter, never
/// widened in memory) and gives exactly the lens of the same weights widened
/// to f32 and loaded as f32 copies, up to summation order.
#[test]
fn bf16_at_rest_equals_widened_f32() {
    let bf16 = |v: &[f32]| -> Vec<u8> {
        v.iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect()
    };
    let widened = |v: &[f32]| -> Vec<u8> {
        v.iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_f32().to_le_bytes())
            .collect()
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    copy_fixture("llama", a.path(), Dtype::BF16, bf16);
    copy_fixture("llama", b.path(), Dtype::F32, widened);

    let reference: serde_json::Value = {
        let p = reference_dir().join("tiny/llama/reference.json");
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let ids = ids(&reference["input_ids"]);
    let rest = Checkpoint::open(a.path()).unwrap();
    let model = rest.load(Precision::Rest).unwrap();
    assert_eq!(model.precision, Precision::Rest);
    // The bf16 file is half the f32 one: what at rest maps.
    let size = |d: &Path| {
        std::fs::metadata(d.join("model.safetensors"))
            .unwrap()
            .len()
    };
    assert!(size(a.path()) * 2 <= size(b.path()) + 4096);
    let at_rest = lens_of_ids(&model, &ids, &LensQuery::top(5)).unwrap();
    let f32 = Checkpoint::open(b.path())
        .and_then(|c| c.load(Precision::F32))
        .unwrap();
    let f32 = lens_of_ids(&f32, &ids, &LensQuery::top(5)).unwrap();
    assert_same_lens("llama bf16", &f32, &at_rest, &reference);
}

/// Run `lensmap run` on SmolLM2 with `extra` arguments, optionally under
/// `prlimit --as`; returns (success, stderr).
fn run_smollm2(extra: &[&str], address_space: Option<u64>) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = match address_space {
        Some(bytes) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--as={bytes}"))
                .arg(env!("CARGO_BIN_EXE_lensmap"));
            c
        }
        None => lensmap_cmd(),
    };
    let res = cmd
        .args(["run", "--model"])
        .arg(model_file(SMOLLM2))
        .args(["--prompt", QUESTION, "--format", "svg", "--out"])
        .arg(dir.path().join("out"))
        .args(extra)
        .output()
        .unwrap();
    (
        res.status.success(),
        String::from_utf8_lossy(&res.stderr).into_owned(),
    )
}

/// The refusal is one `error:` line naming the bytes needed and available,
/// then a hint, and nothing else (no panic, no allocator message).
fn assert_refusal(stderr: &str, limit: &str, hint: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains("needs "),
        "{stderr}"
    );
    assert!(
        lines[0].contains("MiB") && lines[0].contains(limit),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with("hint: ") && lines[1].contains(hint),
        "{stderr}"
    );
}

#[test]
fn max_memory_below_the_model_at_rest_is_refused() {
    let (ok, stderr) = run_smollm2(&["--max-memory", "1M"], None);
    assert!(!ok);
    assert_refusal(&stderr, "the memory limit", "--max-memory");
    // f32 copies do not fit 64M either; at rest they do (see at_rest_rss.rs).
    let (ok, stderr) = run_smollm2(&["--max-memory", "64M", "--precision", "f32"], None);
    assert!(!ok);
    assert_refusal(&stderr, "the memory limit", "--precision rest");
    let (ok, stderr) = run_smollm2(&["--max-memory", "lots"], None);
    assert!(
        !ok && stderr.contains("--max-memory")
            && stderr.contains("the memory limit must be a size such as `6G`"),
        "{stderr}"
    );
}

#[test]
fn address_space_too_small_is_refused_not_aborted() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("prlimit (util-linux) not installed; skipped");
        return;
    }
    // Room for the binary and the mapped file, not for the lens beside them.
    let (ok, stderr) = run_smollm2(&[], Some(400 << 20));
    assert!(!ok);
    assert_refusal(&stderr, "`RLIMIT_AS`", "limit");
    // f32 copies under a limit the model at rest would fit.
    let (ok, stderr) = run_smollm2(&["--precision", "f32"], Some(700 << 20));
    assert!(!ok);
    assert_refusal(&stderr, "`RLIMIT_AS`", "--precision rest");
}
