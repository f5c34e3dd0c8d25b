//! The engine alone (forward pass + lens + stats) against HF transformers,
//! fed the reference's own input ids so tokenizer errors cannot hide here.

mod common;

use common::*;
use lensmap::lens::{lens_of_ids, LensPrecision, LensQuery};
use lensmap::model::{Checkpoint, Precision};

struct Compared {
    max_entropy: f64,
    max_kl: f64,
    top1_agree: f64,
    top1_disagree_clear: usize,
    /// Max |Δ ln p| of the tracked answer " Canberra" over all cells.
    max_answer_logp: f64,
}

fn compare(model_name: &str, reference_name: &str, precision: Precision) -> Compared {
    compare_lens(model_name, reference_name, precision, LensPrecision::F32)
}

fn compare_lens(
    model_name: &str,
    reference_name: &str,
    precision: Precision,
    lens: LensPrecision,
) -> Compared {
    let reference = reference(reference_name);
    let ids = ids(&reference["input_ids"]);
    let model = Checkpoint::open(model_file(model_name))
        .and_then(|c| c.load(precision))
        .unwrap();
    let answer = &reference["tracked"][" Canberra"];
    let query = LensQuery {
        tracked: vec![answer["id"].as_u64().unwrap() as u32],
        precision: lens,
        ..LensQuery::top(5)
    };
    let grid = lens_of_ids(&model, &ids, &query).unwrap();
    // Floored at 1e-30: Gemma's reference has probabilities that underflow to 0.
    let ln = |p: f64| p.max(1e-30).ln();
    let ref_logp: Vec<Vec<f64>> = grid_f64(&answer["prob"])
        .iter()
        .map(|row| row.iter().map(|&p| ln(p)).collect())
        .collect();
    let got_logp = cell_map(&grid, |c| ln(c.tracked[0].prob));
    let (max_answer_logp, r, p) = max_abs_diff(&got_logp, &ref_logp);
    eprintln!("max |Δ ln p(answer)| = {max_answer_logp:.2e} at row {r} pos {p}");

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
    let top1_agree = agree as f64 / total as f64;
    eprintln!(
        "top-1 agrees in {:.2}% of {total} cells",
        100.0 * top1_agree
    );
    Compared {
        max_entropy,
        max_kl,
        top1_agree,
        top1_disagree_clear: clear_disagree,
        max_answer_logp,
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

// The bf16 lens (`--lens-precision bf16`) against the same references, on
// whichever bf16 kernel this CPU has. Bounds: the values measured on
// AVX512-BF16 (README, "Precision") with some margin.

#[test]
fn smollm2_filler_bf16_lens_within_bounds() {
    let c = compare_lens(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "smollm2_filler.json",
        Precision::F32,
        LensPrecision::Bf16,
    );
    assert!(
        c.max_entropy <= BF16_SMOLLM2.0,
        "max |Δentropy| {}",
        c.max_entropy
    );
    assert!(
        c.top1_agree >= BF16_SMOLLM2.1,
        "top-1 agreement {}",
        c.top1_agree
    );
    assert!(
        c.max_answer_logp <= BF16_SMOLLM2.2,
        "max |Δ ln p| {}",
        c.max_answer_logp
    );
}

#[test]
fn gemma3_filler_bf16_lens_within_bounds() {
    let c = compare_lens(
        "gemma-3-270m-q4_k_m.gguf",
        "gemma3_filler.json",
        Precision::F32,
        LensPrecision::Bf16,
    );
    assert!(
        c.max_entropy <= BF16_GEMMA3.0,
        "max |Δentropy| {}",
        c.max_entropy
    );
    assert!(
        c.top1_agree >= BF16_GEMMA3.1,
        "top-1 agreement {}",
        c.top1_agree
    );
    assert!(
        c.max_answer_logp <= BF16_GEMMA3.2,
        "max |Δ ln p| {}",
        c.max_answer_logp
    );
}

/// (max |Δentropy|, min share of equal top-1, max |Δ ln p(" Canberra")|).
/// Measured: 0.049 nats, 99.71% (1391 of 1395 cells), 0.165.
const BF16_SMOLLM2: (f64, f64, f64) = (0.06, 0.995, 0.2);
/// Measured: 0.087 nats, 99.78% (455 of 456 cells), 0.204.
const BF16_GEMMA3: (f64, f64, f64) = (0.11, 0.995, 0.25);

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
