//! The eight tiny random HF models in `../shared/reference/tiny/` (llama,
//! llama3_rope, qwen2, qwen3, mistral, gemma3, gpt2, phi3), each loaded from
//! its directory with `Model::from_hf_dir`, fed the reference's own input ids,
//! and read through the lens. Every cell must match transformers: entropy and
//! KL within 1e-5 and 6e-5 nats, the same top-1, and the same top-5 except where the
//! reference's neighbouring log-probs are closer than 1e-4.
//! See: `../shared/reference/tiny/README.md` for what each fixture traps.

use crate::common::*;
use lensmap::lens::{lens_of_ids, CellGrid, LensQuery};
use lensmap::model::{Checkpoint, Model, Precision};
use serde_json::Value;

/// Entropy and KL tolerance, nats: about twice the worst measured over the
/// eight fixtures, 4.9e-6 and 2.9e-5 (qwen2).
const TOL_ENTROPY: f64 = 1e-5;
const TOL_KL: f64 = 6e-5;
/// Log-prob gap under which two neighbours in the top-5 may swap.
const TIE: f64 = 1e-4;

fn fixture_dir(name: &str) -> std::path::PathBuf {
    reference_dir().join("tiny").join(name)
}

/// The config facts the reference records must be what we resolved.
fn check_config(model: &Model, summary: &Value) {
    let cfg = &model.cfg;
    let n = |k: &str| {
        summary[k]
            .as_u64()
            .unwrap_or_else(|| panic!("config_summary.{k}")) as usize
    };
    assert_eq!(cfg.sizes.n_layers, n("n_layers"), "n_layers");
    assert_eq!(cfg.sizes.d_model, n("hidden_size"), "d_model");
    assert_eq!(cfg.sizes.n_heads, n("num_attention_heads"), "heads");
    assert_eq!(cfg.sizes.n_kv_heads, n("num_key_value_heads"), "kv heads");
    assert_eq!(cfg.sizes.head_dim, n("head_dim"), "head_dim");
    assert_eq!(cfg.sizes.d_ff, n("intermediate_size"), "d_ff");
    assert_eq!(cfg.sizes.vocab_size, n("vocab_size_model"), "vocab");
    assert_eq!(
        cfg.tied_embeddings,
        summary["tied_embeddings"].as_bool().unwrap(),
        "tied"
    );
    assert_eq!(
        cfg.final_softcap,
        summary["final_logit_softcapping"].as_f64(),
        "soft-cap"
    );
    assert_eq!(
        cfg.embed_scale.unwrap_or(1.0),
        summary["embed_scale"].as_f64().unwrap(),
        "embed scale"
    );
    // The window transformers applies (null for qwen2, whose file says 8).
    let window = summary["sliding_window"].as_u64().map(|w| w as usize);
    let effective = (0..cfg.sizes.n_layers)
        .any(|i| cfg.is_sliding(i))
        .then_some(cfg.sliding_window)
        .flatten();
    assert_eq!(effective, window, "effective sliding window");
    if let Some(types) = summary["layer_types"].as_array() {
        let sliding: Vec<bool> = types.iter().map(|t| t == "sliding_attention").collect();
        let ours: Vec<bool> = (0..cfg.sizes.n_layers).map(|i| cfg.is_sliding(i)).collect();
        assert_eq!(ours, sliding, "layer types");
    }
}

/// Whether a top-5 differs from the reference only by near-ties.
fn top5_mismatch(got: &[(u32, f64)], ref_ids: &[u32], ref_p: &[f64]) -> Option<String> {
    let near = |a: f64, b: f64| (a.ln() - b.ln()).abs() < TIE;
    for i in 0..ref_ids.len() {
        if got[i].0 == ref_ids[i] {
            continue;
        }
        let tie_prev = i > 0 && near(ref_p[i - 1], ref_p[i]);
        let tie_next = i + 1 < ref_ids.len() && near(ref_p[i], ref_p[i + 1]);
        // Rank 5 against the unlisted rank 6: both sides see the same probability.
        let tie_sixth = i + 1 == ref_ids.len() && near(got[i].1, ref_p[i]);
        if !(tie_prev || tie_next || tie_sixth) {
            return Some(format!(
                "rank {} is {} (p {:.3e}), reference {} (p {:.3e})",
                i + 1,
                got[i].0,
                got[i].1,
                ref_ids[i],
                ref_p[i]
            ));
        }
    }
    None
}

/// Check one fixture at `precision` against the reference; returns the
/// grid and the reference.
fn check_fixture(name: &str, precision: Precision) -> (CellGrid, Value) {
    let dir = fixture_dir(name);
    let reference: Value = {
        let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let ids = ids(&reference["input_ids"]);
    let model = Checkpoint::open(&dir)
        .and_then(|c| c.load(precision))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    check_config(&model, &reference["config_summary"]);

    let grid = lens_of_ids(&model, &ids, &LensQuery::top(5)).unwrap();

    eprintln!(
        "== {name} ({}): {} rows x {} positions",
        model.precision.label(),
        grid.len(),
        ids.len()
    );
    // Top-1 is checked strictly below, with the top-5.
    let a = compare_cells(&LensCells::of_grid(&grid), &reference, f64::INFINITY);

    let mut failures = Vec::new();
    for (r, row) in grid.iter().enumerate() {
        for (p, cell) in row.iter().enumerate() {
            let ref_ids = crate::common::ids(&reference["top5_ids"][r][p]);
            let ref_p: Vec<f64> = reference["top5_probs"][r][p]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            if cell.topk[0].0 != ref_ids[0] {
                failures.push(format!(
                    "row {r} pos {p}: top-1 {} vs reference {}",
                    cell.topk[0].0, ref_ids[0]
                ));
            } else if let Some(m) = top5_mismatch(&cell.topk, &ref_ids, &ref_p) {
                failures.push(format!("row {r} pos {p}: {m}"));
            }
        }
    }
    for f in failures.iter().take(10) {
        eprintln!("{name}: {f}");
    }
    a.assert_within(name, TOL_ENTROPY, TOL_KL);
    assert!(
        failures.is_empty(),
        "{name}: {} top-k cells differ, first: {}",
        failures.len(),
        failures[0]
    );
    (grid, reference)
}

macro_rules! fixture_tests {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() {
            let name = stringify!($name);
            let (f32, reference) = check_fixture(name, Precision::F32);
            let (rest, _) = check_fixture(name, Precision::Rest);
            assert_same_lens(name, &f32, &rest, &reference);
        }
    )*};
}

fixture_tests!(
    llama,
    llama3_rope,
    qwen2,
    qwen3,
    mistral,
    gemma3,
    gpt2,
    phi3
);
