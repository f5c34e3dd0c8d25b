//! The tuned lens ("The tuned lens: load tuned-lens checkpoints exactly, train
//! one in minutes on a CPU, and put both lenses side by side"): tuned-lens's
//! own lens A for SmolLM2, loaded from
//! `params.pt` and from safetensors, against what tuned-lens computed
//! (`../shared/reference/tuned/smollm2_filler_tuned.json`); a lens of the
//! wrong shape refused; two lenses side by side.

use std::path::{Path, PathBuf};

use crate::common::*;
use candle_core::{Device, Tensor};
use lensmap::tuned::TunedLens;
use serde_json::Value;

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn lens_a() -> PathBuf {
    reference_dir().join("tuned/smollm2_lensA")
}

fn tuned_arg(dir: &Path) -> String {
    format!("tuned:{}", dir.display())
}

/// The seed prompt plus 8 dummies through `lens`, f32.
fn seed_json(lens: &str, extra: &[&str]) -> Value {
    let args = [
        &[
            "--dummy",
            "8",
            "--precision",
            "f32",
            "--quiet",
            "--lens",
            lens,
        ],
        extra,
    ]
    .concat();
    run_seed(SMOLLM2, &args).0
}

#[test]
fn lens_a_loads_the_right_tensors() {
    let reference = reference("tuned/smollm2_filler_tuned.json");
    let lens = TunedLens::open(&lens_a()).unwrap();
    assert_eq!(lens.translators.len(), 30);
    let (w, b) = lens.norms().unwrap();
    let norms = &reference["lens_translator_norms"];
    let mut worst: f64 = 0.0;
    for (ours, key) in [(&w, "weight_fro"), (&b, "bias_l2")] {
        for (i, x) in ours.iter().enumerate() {
            let want = norms[key][i].as_f64().unwrap();
            worst = worst.max((x - want).abs() / want);
        }
    }
    eprintln!("translator norms: worst relative difference {worst:.1e}");
    // The reference norms were summed in f32 by torch (measured 1.9e-5 off
    // our f64 sums); a wrong or transposed tensor would be off by far more.
    assert!(worst < 5e-5, "translator norms differ by {worst:e}");
    let sha = &reference["lens_files_sha256"];
    for (file, hex) in &lens.files_sha256 {
        assert_eq!(sha[file.as_str()].as_str(), Some(hex.as_str()), "{file}");
    }
}

#[test]
fn lens_a_matches_tuned_lens() {
    let reference = reference("tuned/smollm2_filler_tuned.json");
    let got = seed_json(&tuned_arg(&lens_a()), &[]);
    assert_eq!(got["lens"]["kind"], "tuned");
    assert_eq!(got["lens"]["config"], reference["lens_config"]);
    let ids: Vec<u64> = got["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    let want_ids: Vec<u64> = reference["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(ids, want_ids);

    let a = compare_cells(&LensCells::of_json(&got), &reference, 1e-3);
    // Measured: max |Δentropy| 5.2e-5 nats (row 26 pos 39), max |ΔKL|/max(1, KL)
    // 3.9e-5; the bounds are about twice that.
    assert!(
        a.max_entropy <= 1e-4,
        "max |Δentropy| {:.2e}",
        a.max_entropy
    );
    assert!(
        a.max_kl_rel <= 8e-5,
        "max |ΔKL|/max(1, KL) {:.2e}",
        a.max_kl_rel
    );
    assert_eq!(
        a.top1_clear_misses, 0,
        "top-1 differs where the reference gap exceeds 1e-3"
    );
}

/// Write a lens directory: `config` as config.json, the translators as
/// params.safetensors.
fn write_lens(dir: &Path, config: &Value, tensors: Vec<(String, Tensor)>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let map: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
    candle_core::safetensors::save(&map, dir.join("params.safetensors")).unwrap();
}

#[test]
fn safetensors_copy_gives_the_same_translators() {
    let a = TunedLens::open(&lens_a()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let config: Value = serde_json::to_value(&a.config).unwrap();
    let tensors = a
        .translators
        .iter()
        .enumerate()
        .flat_map(|(i, t)| {
            [
                (format!("{i}.weight"), t.weight.clone()),
                (format!("{i}.bias"), t.bias.clone()),
            ]
        })
        .collect();
    write_lens(tmp.path(), &config, tensors);
    let b = TunedLens::open(tmp.path()).unwrap();
    let h = Tensor::randn(0f32, 1.0, (3, 576), &Device::Cpu).unwrap();
    for row in [0, 15, 29, 30] {
        let (x, y) = (a.translate(row, &h).unwrap(), b.translate(row, &h).unwrap());
        let d = max_abs(&x, &y);
        assert_eq!(d, 0.0, "row {row}");
    }
}

/// Largest |a − b| over two tensors of one shape.
fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// A zero lens of `layers` translators of width `d`.
fn zero_lens(dir: &Path, d: usize, layers: usize) {
    let config = serde_json::json!({"d_model": d, "num_hidden_layers": layers, "bias": true,
        "lens_type": "linear_tuned_lens"});
    let tensors = (0..layers)
        .flat_map(|i| {
            [
                (
                    format!("{i}.weight"),
                    Tensor::zeros((d, d), candle_core::DType::F32, &Device::Cpu).unwrap(),
                ),
                (
                    format!("{i}.bias"),
                    Tensor::zeros(d, candle_core::DType::F32, &Device::Cpu).unwrap(),
                ),
            ]
        })
        .collect();
    write_lens(dir, &config, tensors);
}

/// One `error:` line naming the mismatch, no panic.
fn assert_refused(lens_dir: &Path, needle: &str) {
    let stderr = stderr_of_failure(
        lensmap_cmd()
            .args(["run", "--model"])
            .arg(model_file(SMOLLM2))
            .args(["--prompt", "Hi", "-q", "--lens", &tuned_arg(lens_dir)]),
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "{}",
        lines[0]
    );
}

#[test]
fn wrong_width_or_depth_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    zero_lens(&tmp.path().join("narrow"), 64, 30);
    assert_refused(
        &tmp.path().join("narrow"),
        "d_model 64 and 30 layers, but the model has d_model 576 and 30 layers",
    );
    zero_lens(&tmp.path().join("shallow"), 576, 29);
    assert_refused(
        &tmp.path().join("shallow"),
        "d_model 576 and 29 layers, but the model has d_model 576 and 30 layers",
    );
    assert_refused(&tmp.path().join("missing"), "config.json");
}

#[test]
fn a_zero_lens_is_the_logit_lens() {
    let tmp = tempfile::tempdir().unwrap();
    zero_lens(tmp.path(), 576, 30);
    let logit = seed_json("logit", &[]);
    let zero = seed_json(&tuned_arg(tmp.path()), &[]);
    let (max_h, r, p) = max_abs_diff(&grid_f64(&logit["entropy"]), &grid_f64(&zero["entropy"]));
    assert!(
        max_h <= 1e-9,
        "entropy differs by {max_h:e} at row {r} pos {p}"
    );
}

#[test]
fn two_lenses_side_by_side() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("both");
    let both_lenses = format!("logit,{}", tuned_arg(&lens_a()));
    let both = seed_json(
        &both_lenses,
        &["--out", base.to_str().unwrap(), "--format", "svg,png"],
    );
    let tuned = seed_json(&tuned_arg(&lens_a()), &[]);
    assert_eq!(both["lens"]["kind"], "logit");
    let more = both["more_lenses"].as_array().unwrap();
    assert_eq!(more.len(), 1);
    assert_eq!(more[0]["lens"]["kind"], "tuned");
    assert_eq!(more[0]["entropy"], tuned["entropy"]);
    assert_eq!(more[0]["kl_to_final"], tuned["kl_to_final"]);
    let (max_h, _, _) = max_abs_diff(&grid_f64(&both["entropy"]), &grid_f64(&more[0]["entropy"]));
    assert!(max_h > 1.0, "the two grids should differ");

    let svg = std::fs::read_to_string(base.with_extension("svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let panels: Vec<_> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("lens-panel"))
        .map(|n| n.attribute("data-lens").unwrap_or(""))
        .collect();
    assert_eq!(panels, ["logit", "tuned"]);
    assert!(svg.contains("· tuned lens</text>"));
    let png = std::fs::read(base.with_extension("png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"));

    // `plot` redraws both from the JSON alone.
    let json = tmp.path().join("both.json");
    std::fs::write(&json, both.to_string()).unwrap();
    output_ok(
        lensmap_cmd()
            .args(["plot"])
            .arg(&json)
            .args(["--format", "svg"]),
    );
    let replot = std::fs::read_to_string(tmp.path().join("both.svg")).unwrap();
    assert_eq!(replot, svg);
}

#[test]
fn written_params_pt_reads_back() {
    let a = TunedLens::open(&lens_a()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let translators: Vec<(Vec<f32>, Vec<f32>)> = a
        .translators
        .iter()
        .map(|t| {
            (
                t.weight.flatten_all().unwrap().to_vec1().unwrap(),
                t.bias.to_vec1().unwrap(),
            )
        })
        .collect();
    lensmap::tuned::save_lens(tmp.path(), &a.config, &translators).unwrap();
    let pt = std::fs::read(tmp.path().join("params.pt")).unwrap();
    // torch.save's layout; the pickle is a little longer (no memo), so sizes differ slightly.
    let reference = std::fs::read(lens_a().join("params.pt")).unwrap();
    eprintln!(
        "params.pt: {} bytes written, {} in lens A",
        pt.len(),
        reference.len()
    );
    let b = TunedLens::open(tmp.path()).unwrap();
    assert_eq!(b.config, a.config);
    for (i, (x, y)) in a.translators.iter().zip(&b.translators).enumerate() {
        let dw = max_abs(&x.weight, &y.weight);
        let db = max_abs(&x.bias, &y.bias);
        assert_eq!((dw, db), (0.0, 0.0), "translator {i}");
    }
}
