//! The synthetic real-shape GGUF generator (issue #9 part 7): a tiny shape
//! written by the streaming writer reads back through lensmap's own GGUF
//! reader byte for byte, has sane weights, a padded tokenizer with Llama 3's
//! template tokens, and runs the seed case. (The real shapes are benchmark
//! only: `scripts/bench-big`.)

use std::io::{Read, Seek, SeekFrom};

use candle_core::quantized::GgmlDType;
use lensmap::model::{dequant, GgufFile};
use lensmap::synth::{generate_tensor, llama_plan, padded_tokenizer, write_gguf, Quant, Shape};
use lensmap::tokenize::TextTokenizer;

const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn tiny_file(dir: &std::path::Path) -> (lensmap::synth::GgufPlan, std::path::PathBuf) {
    let source = GgufFile::open(&crate::common::model_file(SMOL)).unwrap();
    let shape = Shape::named("tiny").unwrap();
    let plan = llama_plan(
        &shape,
        Quant::Q4K,
        padded_tokenizer(&source.content, shape.vocab).unwrap(),
    );
    let path = dir.join("tiny.gguf");
    write_gguf(&plan, &path, |_, _| {}).unwrap();
    (plan, path)
}

#[test]
fn tiny_shape_round_trips_through_the_gguf_reader() {
    let dir = tempfile::tempdir().unwrap();
    let (plan, path) = tiny_file(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    assert_eq!(len, plan.file_bytes());
    assert!(!dir.path().join("tiny.gguf.partial").exists());

    // llama.cpp refuses a file with a metadata key twice.
    let keys: std::collections::HashSet<_> = plan.metadata.iter().map(|(k, _)| k).collect();
    assert_eq!(keys.len(), plan.metadata.len(), "duplicate metadata keys");
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.content.tensor_infos.len(), plan.tensors.len());
    let mut raw = std::fs::File::open(&path).unwrap();
    for t in &plan.tensors {
        let info = &file.content.tensor_infos[&t.name];
        assert_eq!(info.shape.dims(), &t.shape[..], "{}", t.name);
        assert_eq!(info.ggml_dtype, t.dtype, "{}", t.name);
        let mut stored = vec![0u8; t.bytes() as usize];
        raw.seek(SeekFrom::Start(
            file.content.tensor_data_offset + info.offset,
        ))
        .unwrap();
        raw.read_exact(&mut stored).unwrap();
        let mut want = Vec::new();
        generate_tensor(t, plan.seed, |b| {
            want.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        assert!(
            stored == want,
            "{}: stored bytes differ from the generator's",
            t.name
        );
    }
    // Q4_K_M: Q6_K for attn_v in the last eighth of the layers (here the
    // second of two), Q4_K elsewhere.
    let dtype = |n: &str| file.content.tensor_infos[n].ggml_dtype;
    assert_eq!(dtype("blk.1.attn_v.weight"), GgmlDType::Q6K);
    assert_eq!(dtype("blk.0.attn_v.weight"), GgmlDType::Q4K);
    assert_eq!(dtype("blk.1.attn_q.weight"), GgmlDType::Q4K);
    assert!(
        !file.content.tensor_infos.contains_key("output.weight"),
        "tied"
    );
    assert_eq!(file.meta_str("general.architecture"), Some("llama"));
}

#[test]
fn synthetic_weights_have_the_planned_spread() {
    let dir = tempfile::tempdir().unwrap();
    let (plan, _) = tiny_file(dir.path());
    for name in [
        "blk.1.ffn_down.weight",
        "blk.1.attn_q.weight",
        "blk.0.attn_v.weight",
    ] {
        let t = plan.tensors.iter().find(|t| t.name == name).unwrap();
        let mut bytes = Vec::new();
        generate_tensor(t, plan.seed, |b| {
            bytes.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        let mut w = vec![0f32; t.shape.iter().product()];
        dequant::dequantize_blocks(t.dtype, &bytes, &mut w).unwrap();
        let n = w.len() as f64;
        let mean = w.iter().map(|&v| v as f64).sum::<f64>() / n;
        let std = (w.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        let want = 1.0 / (t.shape[1] as f64).sqrt();
        // Per-block scales vary by ±25% around the calibrated one.
        assert!(
            (std / want - 1.0).abs() < 0.1,
            "{name}: std {std:.5}, planned {want:.5}"
        );
        assert!(mean.abs() < 0.05 * want, "{name}: mean {mean:.2e}");
    }
}

#[test]
fn tiny_shape_has_llama3_template_tokens_and_runs_the_seed_case() {
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = tiny_file(dir.path());
    let file = GgufFile::open(&path).unwrap();
    let tok = TextTokenizer::from_gguf(&file.content.metadata).unwrap();
    let shape = Shape::named("tiny").unwrap();
    let base = (shape.vocab - 256) as u32;
    let ids = tok
        .encode("<|start_header_id|>user<|end_header_id|><|eot_id|>")
        .unwrap()
        .ids;
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert_eq!((ids[0], ids[2], ids[3]), (base + 6, base + 7, base + 9));

    let out = dir.path().join("seed.json");
    crate::common::output_ok(
        crate::common::lensmap_cmd()
            .args(["run", "--model"])
            .arg(&path)
            .args([
                "--prompt",
                crate::common::QUESTION,
                "--dummy",
                "8",
                "--quiet",
                "--json",
            ])
            .arg(&out),
    );
    let got: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let texts: Vec<&str> = got["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["text"].as_str().unwrap_or(""))
        .collect();
    assert!(texts.contains(&"<|start_header_id|>"), "{texts:?}");
    assert!(texts.contains(&"<|eot_id|>"), "{texts:?}");
    let entropy = crate::common::grid_f64(&got["entropy"]);
    assert_eq!(entropy.len(), shape.n_layers + 1);
    let max = (shape.vocab as f64).ln();
    for row in &entropy {
        assert!(
            row.iter()
                .all(|h| h.is_finite() && *h >= 0.0 && *h <= max + 1e-9),
            "{row:?}"
        );
    }
}
