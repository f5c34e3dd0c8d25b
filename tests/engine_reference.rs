//! The engine alone (forward pass + lens + stats) against HF transformers,
//! fed the reference's own input ids so tokenizer errors cannot hide here.

mod common;

use common::*;
use lensmap::lens::{lens_of_ids, LensQuery};
use lensmap::model::{Checkpoint, Precision};

struct Compared {
    max_entropy: f64,
    max_kl: f64,
    top1_agree: f64,
    top1_disagree_clear: usize,
}

fn compare(model_name: &str, reference_name: &str, precision: Precision) -> Compared {
    let reference = reference(reference_name);
    let ids = ids(&reference["input_ids"]);
    let model = Checkpoint::open(model_file(model_name))
        .and_then(|c| c.load(precision))
        .unwrap();
    let grid = lens_of_ids(&model, &ids, &LensQuery::top(5)).unwrap();

    let ref_h = grid_f64(&reference["entropy"]);
    let ref_kl = grid_f64(&reference["kl_to_final"]);
    let got_h = cell_map(&grid, |c| c.entropy);
    let got_kl = cell_map(&grid, |c| c.kl_to_final);
    assert_eq!(got_h.len(), ref_h.len(), "rows");
    report_rows("entropy", &got_h, &ref_h);
    let (max_entropy, r, p) = max_abs_diff(&got_h, &ref_h);
    eprintln!("max |Δentropy| = {max_entropy:.2e} at row {r} pos {p}");
    let (max_kl, r, p) = max_abs_diff(&got_kl, &ref_kl);
    eprintln!("max |ΔKL| = {max_kl:.2e} at row {r} pos {p}");

    let (mut agree, mut total, mut clear_disagree) = (0usize, 0usize, 0usize);
    for (r, row) in grid.iter().enumerate() {
        for (p, cell) in row.iter().enumerate() {
            let ref_id = reference["top5_ids"][r][p][0].as_u64().unwrap() as u32;
            let gap = reference["top5_probs"][r][p][0].as_f64().unwrap()
                - reference["top5_probs"][r][p][1].as_f64().unwrap();
            total += 1;
            if cell.topk[0].0 == ref_id {
                agree += 1;
            } else if gap > 1e-3 {
                clear_disagree += 1;
                eprintln!(
                    "top-1 differs at row {r} pos {p}: {} vs {ref_id} (gap {gap:.2e})",
                    cell.topk[0].0
                );
            }
        }
    }
    Compared {
        max_entropy,
        max_kl,
        top1_agree: agree as f64 / total as f64,
        top1_disagree_clear: clear_disagree,
    }
}

#[test]
fn smollm2_filler_f32_matches_transformers() {
    let c = compare(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "smollm2_filler.json",
        Precision::F32,
    );
    assert!(c.max_entropy <= 0.005, "max |Δentropy| {}", c.max_entropy);
    assert!(c.max_kl <= 0.01, "max |ΔKL| {}", c.max_kl);
    assert_eq!(c.top1_disagree_clear, 0);
    assert!(c.top1_agree > 0.99);
}

#[test]
fn gemma3_filler_f32_matches_transformers() {
    let c = compare(
        "gemma-3-270m-q4_k_m.gguf",
        "gemma3_filler.json",
        Precision::F32,
    );
    assert!(c.max_entropy <= 0.005, "max |Δentropy| {}", c.max_entropy);
    assert_eq!(c.top1_disagree_clear, 0);
}

/// Weights at rest give the f32 path's lens (up to summation order) and stay
/// within the same bounds against transformers.
fn check_at_rest(model_name: &str, reference_name: &str) -> Compared {
    let reference = reference(reference_name);
    let ids = ids(&reference["input_ids"]);
    let ckpt = Checkpoint::open(model_file(model_name)).unwrap();
    let lens = |p| lens_of_ids(&ckpt.load(p).unwrap(), &ids, &LensQuery::top(5)).unwrap();
    assert_same_lens(
        model_name,
        &lens(Precision::F32),
        &lens(Precision::Rest),
        &reference,
    );
    compare(model_name, reference_name, Precision::Rest)
}

#[test]
fn smollm2_filler_at_rest_matches_f32_and_transformers() {
    let c = check_at_rest("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2_filler.json");
    assert!(c.max_entropy <= 0.005, "max |Δentropy| {}", c.max_entropy);
    assert!(c.max_kl <= 0.01, "max |ΔKL| {}", c.max_kl);
    assert_eq!(c.top1_disagree_clear, 0);
    assert!(c.top1_agree > 0.99);
}

#[test]
fn gemma3_filler_at_rest_matches_f32_and_transformers() {
    let c = check_at_rest("gemma-3-270m-q4_k_m.gguf", "gemma3_filler.json");
    assert!(c.max_entropy <= 0.005, "max |Δentropy| {}", c.max_entropy);
    assert_eq!(c.top1_disagree_clear, 0);
}
