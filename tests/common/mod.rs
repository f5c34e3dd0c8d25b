//! Shared helpers for integration tests: where the fixtures are, reading
//! the reference JSON written by HF transformers (`../shared/reference`),
//! headless Chromium ([`chromium`]) and sample grids for the render tests
//! ([`sample`]).
#![allow(dead_code)]

pub mod chromium;
pub mod sample;

use std::path::{Path, PathBuf};
use std::process::Command;

use lensmap::lens::CellGrid;
use lensmap::stats::CellStats;
use serde_json::Value;

/// `../shared/reference` next to the repository.
pub fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference")
}

/// `models/`, filled by `scripts/fetch-models`.
pub fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// A real model file; fails with the fix if it has not been fetched.
pub fn model_file(name: &str) -> PathBuf {
    let p = models_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models first",
        p.display()
    );
    p
}

/// Parse a reference file.
pub fn reference(name: &str) -> Value {
    let p = reference_dir().join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// `[row][pos]` array of numbers.
pub fn grid_f64(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap_or(f64::NAN))
                .collect()
        })
        .collect()
}

/// One statistic of every lens cell, `[row][pos]`.
pub fn cell_map<T>(grid: &CellGrid, f: impl Fn(&CellStats) -> T) -> Vec<Vec<T>> {
    grid.iter().map(|r| r.iter().map(&f).collect()).collect()
}

/// An array of ids.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Largest |a − b| over a grid, with where it happens (for failure messages).
pub fn max_abs_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> (f64, usize, usize) {
    let mut worst = (0.0, 0, 0);
    for (r, (ra, rb)) in a.iter().zip(b).enumerate() {
        assert_eq!(ra.len(), rb.len(), "row {r} length");
        for (p, (x, y)) in ra.iter().zip(rb).enumerate() {
            let d = (x - y).abs();
            if d > worst.0 || d.is_nan() {
                worst = (d, r, p);
            }
        }
    }
    worst
}

/// Per-row maximum |a − b|, printed so a failure says where the numbers part.
pub fn report_rows(what: &str, a: &[Vec<f64>], b: &[Vec<f64>]) {
    let per_row: Vec<String> = a
        .iter()
        .zip(b)
        .map(|(ra, rb)| {
            let m = ra
                .iter()
                .zip(rb)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            format!("{m:.1e}")
        })
        .collect();
    eprintln!("{what} max |Δ| per row: {}", per_row.join(" "));
}

/// The seed question of the figure, "What is the capital of Australia?".
pub const QUESTION: &str = "What is the capital of Australia?";

/// Run `lensmap run --model MODEL --prompt QUESTION --json ... EXTRA` (model
/// from `models/`) and return the JSON it wrote and what it printed.
pub fn run_seed(model: &str, extra: &[&str]) -> (Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.json");
    let res = std::process::Command::new(env!("CARGO_BIN_EXE_lensmap"))
        .args(["run", "--model"])
        .arg(model_file(model))
        .args(["--prompt", QUESTION, "--json"])
        .arg(&out)
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "lensmap run failed: {stderr}");
    let json = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    (json, String::from_utf8_lossy(&res.stdout).into_owned())
}

/// Weights at rest against the f32 copies: the same numbers up to summation
/// order. max |Δentropy| ≤ 1e-5 nats, and the same top-1 wherever the
/// reference's top-1/top-2 probability gap exceeds 1e-4.
pub fn assert_same_lens(name: &str, f32: &CellGrid, rest: &CellGrid, reference: &Value) {
    let (h, r, p) = max_abs_diff(
        &cell_map(f32, |c| c.entropy),
        &cell_map(rest, |c| c.entropy),
    );
    eprintln!("{name}: at rest vs f32: max |Δentropy| {h:.2e} (row {r} pos {p})");
    assert!(
        h <= 1e-5,
        "{name}: at rest vs f32 max |Δentropy| {h:.2e} at row {r} pos {p}"
    );
    for (r, (a, b)) in f32.iter().zip(rest).enumerate() {
        for (p, (a, b)) in a.iter().zip(b).enumerate() {
            let probs = &reference["top5_probs"][r][p];
            let gap = probs[0].as_f64().unwrap() - probs[1].as_f64().unwrap();
            if gap > 1e-4 {
                assert_eq!(a.topk[0].0, b.topk[0].0, "{name}: top-1 at row {r} pos {p}");
            }
        }
    }
}

/// Top-1 agreement of a lensmap JSON grid with a reference file:
/// `(same, total, clear_misses)`, where a clear miss differs from the
/// reference at a cell whose top-1 leads its runner-up by more than `min_gap`.
pub fn top1_agreement(got: &Value, reference: &Value, min_gap: f64) -> (usize, usize, usize) {
    let (mut same, mut total, mut clear_misses) = (0, 0, 0);
    for (r, row) in got["topk"].as_array().unwrap().iter().enumerate() {
        for (p, cell) in row.as_array().unwrap().iter().enumerate() {
            let ours = cell[0]["id"].as_u64().unwrap();
            let theirs = reference["top5_ids"][r][p][0].as_u64().unwrap();
            let gap = reference["top5_probs"][r][p][0].as_f64().unwrap()
                - reference["top5_probs"][r][p][1].as_f64().unwrap();
            total += 1;
            if ours == theirs {
                same += 1;
            } else if gap > min_gap {
                clear_misses += 1;
            }
        }
    }
    (same, total, clear_misses)
}

/// Run the `lensmap` binary.
pub fn lensmap(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lensmap"))
        .args(args)
        .output()
        .unwrap()
}

/// `lensmap run --model MODEL --prompt Hi -q EXTRA…`: the smallest run, for
/// tests about how a model file or an option is refused.
pub fn run_hi(model: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "run",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "Hi",
        "-q",
    ];
    args.extend_from_slice(extra);
    lensmap(&args)
}

/// Assert a failure whose first stderr line starts with `error:` and contains
/// `needle`, with no panic anywhere.
pub fn assert_error(out: &std::process::Output, needle: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let first = stderr.lines().next().unwrap_or("");
    assert!(first.starts_with("error: "), "first line: {first}");
    assert!(first.contains(needle), "`{needle}` not in: {first}");
    first.to_string()
}
