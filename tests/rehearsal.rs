//! `lensmap run --answer ... --answer-alt ...` ("Rehearsal, measured: answer
//! tracking at dummy tokens, ..."): the answer and
//! distractor tracked in every cell against HF transformers' `tracked`
//! arrays in `../shared/reference/smollm2_filler.json`, and the rehearsal
//! summary against what those arrays give.

use crate::common::*;
use serde_json::Value;

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const CANBERRA: u64 = 40136;

/// Run `lensmap run` on the seed prompt; the JSON and the terminal summary.
fn run(extra: &[&str]) -> (Value, String) {
    run_seed(SMOLLM2, extra)
}

/// The tracked token with this role.
fn tracked<'a>(got: &'a Value, role: &str) -> &'a Value {
    got["tracked"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["role"] == role)
        .unwrap_or_else(|| panic!("no tracked token with role {role}"))
}

/// Probabilities within `tol` relative everywhere; ranks equal where the
/// reference rank is ≤ 1000 and within 1% beyond. Returns the worst
/// relative probability error and the worst relative rank error beyond 1000.
fn check_cells(what: &str, got: &Value, want: &Value, tol: f64) -> (f64, f64) {
    let (mut worst_p, mut worst_r) = (0.0f64, 0.0f64);
    let rows = got["cells"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        want["prob"].as_array().unwrap().len(),
        "{what}: rows"
    );
    let mut cells = 0;
    for (r, row) in rows.iter().enumerate() {
        let row = row.as_array().unwrap();
        assert_eq!(
            row.len(),
            want["prob"][r].as_array().unwrap().len(),
            "{what}: positions"
        );
        for (p, c) in row.iter().enumerate() {
            let (prob, rank) = (c["prob"].as_f64().unwrap(), c["rank"].as_u64().unwrap());
            let (want_p, want_r) = (
                want["prob"][r][p].as_f64().unwrap(),
                want["rank"][r][p].as_u64().unwrap(),
            );
            let rel = (prob - want_p).abs() / want_p.max(1e-300);
            worst_p = worst_p.max(rel);
            assert!(
                rel <= tol,
                "{what} prob at row {r} pos {p}: {prob:e} vs {want_p:e} (rel {rel:.1e})"
            );
            if want_r <= 1000 {
                assert_eq!(rank, want_r, "{what} rank at row {r} pos {p}");
            } else {
                let rel_r = rank.abs_diff(want_r) as f64 / want_r as f64;
                worst_r = worst_r.max(rel_r);
                assert!(
                    rel_r <= 0.01,
                    "{what} rank at row {r} pos {p}: {rank} vs {want_r}"
                );
            }
            cells += 1;
        }
    }
    eprintln!("{what}: {cells} cells, worst relative prob error {worst_p:.2e}, worst relative rank error (ranks > 1000) {worst_r:.2e}");
    (worst_p, worst_r)
}

/// The answer's best rank over rows at `pos` (earliest row on ties), from
/// the reference arrays: the rule `rehearsal::summarize` uses.
fn reference_best(want: &Value, pos: usize) -> (usize, u64) {
    let ranks: Vec<u64> = want["rank"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row[pos].as_u64().unwrap())
        .collect();
    let best = *ranks.iter().min().unwrap();
    (ranks.iter().position(|&r| r == best).unwrap(), best)
}

fn check_answer_tracking(precision: &str, tol: f64) {
    let reference = reference("smollm2_filler.json");
    let (got, stdout) = run(&[
        "--answer",
        " Canberra",
        "--answer-alt",
        " Sydney",
        "--dummy",
        "8",
        "--precision",
        precision,
    ]);
    let n = got["tokens"].as_array().unwrap().len();
    assert_eq!(n, reference["input_ids"].as_array().unwrap().len());

    let answer = tracked(&got, "answer");
    let alt = tracked(&got, "alt");
    assert_eq!(answer["id"], reference["tracked"][" Canberra"]["id"]);
    assert_eq!(alt["id"], reference["tracked"][" Sydney"]["id"]);
    check_cells(
        &format!("{precision} answer \" Canberra\""),
        answer,
        &reference["tracked"][" Canberra"],
        tol,
    );
    check_cells(
        &format!("{precision} alt \" Sydney\""),
        alt,
        &reference["tracked"][" Sydney"],
        tol,
    );

    // The rehearsal summary: every position after the text, dummies included.
    let want = &reference["tracked"][" Canberra"];
    let rehearsal = &got["rehearsal"];
    assert_eq!(rehearsal["answer_id"], CANBERRA);
    assert_eq!(rehearsal["source"], "given");
    assert_eq!(rehearsal["top_k"], 5);
    let positions = rehearsal["positions"].as_array().unwrap();
    let kinds: Vec<&str> = positions
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["template"; 6]
            .iter()
            .chain(["dummy"; 8].iter())
            .copied()
            .collect::<Vec<_>>()
    );
    let n_rows = got["n_rows"].as_u64().unwrap() as usize;
    for p in positions.iter().filter(|p| p["kind"] == "dummy") {
        let pos = p["pos"].as_u64().unwrap() as usize;
        let (row, rank) = reference_best(want, pos);
        assert_eq!(
            p["best_row"].as_u64().unwrap() as usize,
            row,
            "best row at dummy pos {pos}"
        );
        assert_eq!(
            p["best_rank"].as_u64().unwrap(),
            rank,
            "best rank at dummy pos {pos}"
        );
        // SmolLM2-135M never brings Canberra into the top 5 here.
        let in_topk_ref = (0..n_rows).any(|r| want["rank"][r][pos].as_u64().unwrap() <= 5);
        assert_eq!(p["first_topk_row"].is_null(), !in_topk_ref, "pos {pos}");
        assert_eq!(p["in_topk_at_output"], false, "pos {pos}");
    }
    // Honest about the last dummy: rank 14 at the output row, not in the top 5.
    let last = positions.last().unwrap();
    assert_eq!(last["pos"].as_u64().unwrap() as usize, n - 1);
    assert_eq!(
        (last["best_rank"].as_u64(), last["best_row"].as_u64()),
        (Some(14), Some(30))
    );
    assert_eq!(last["output_rank"].as_u64(), Some(14));
    assert!(last["first_topk_row"].is_null());
    // And the terminal table says so.
    assert!(
        stdout.contains("rehearsal of \" Canberra\" (id 40136, given)"),
        "{stdout}"
    );
    let table = &stdout[stdout.find("rehearsal of").unwrap()..];
    let line = table
        .lines()
        .find(|l| l.trim_start().starts_with("44 "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        line.contains("never") && line.contains("no (rank 14)"),
        "{line}"
    );
}

/// The f64 forward holds every tracked probability to 1e-4 relative.
#[test]
fn answer_and_alt_match_reference_f64() {
    check_answer_tracking("f64", 1e-4);
}

/// In f32 two implementations drift apart by up to ~1.2e-4 in log p from
/// summation order (see `tests/cli_reference.rs`): 2e-4 here.
#[test]
fn answer_and_alt_match_reference_f32() {
    check_answer_tracking("f32", 2e-4);
}

/// `--answer auto --answer-skip 5`: SmolLM2's greedy answer is
/// " The capital of Australia is Canberra.", whose 6th token is " Canberra".
#[test]
fn auto_answer_with_skip_tracks_canberra() {
    let (got, stdout) = run(&[
        "--answer",
        "auto",
        "--answer-skip",
        "5",
        "--generate",
        "8",
        "--dummy",
        "8",
    ]);
    assert_eq!(
        got["answer"]["text"],
        " The capital of Australia is Canberra.<|im_end|>"
    );
    let answer = tracked(&got, "answer");
    assert_eq!(answer["id"], CANBERRA);
    assert_eq!(answer["token_text"], " Canberra");
    assert_eq!(got["rehearsal"]["source"], "auto");
    assert_eq!(got["rehearsal"]["skip"], 5);
    assert_eq!(got["rehearsal"]["answer_id"], CANBERRA);
    assert!(
        stdout.contains("greedy answer, token 6 (skip 5)"),
        "{stdout}"
    );

    // Without `--answer`, `--generate` alone tracks the greedy answer's first token.
    let (got, _) = run(&["--generate", "3", "--dummy", "2"]);
    assert_eq!(tracked(&got, "answer")["id"], got["answer"]["ids"][0]);
    assert_eq!(got["rehearsal"]["source"], "auto");
    assert_eq!(got["rehearsal"]["skip"], 0);
}

/// Run `lensmap run` on the seed prompt, expecting it to fail; its stderr.
fn run_err(extra: &[&str]) -> String {
    stderr_of_failure(
        lensmap_cmd()
            .args(["run", "--model"])
            .arg(model_file(SMOLLM2))
            .args(["--prompt", QUESTION, "--quiet"])
            .args(extra),
    )
}

/// A skip past the end of the greedy answer is a one-line error, not a panic.
#[test]
fn skip_past_the_answer_is_an_error() {
    let stderr = run_err(&["--answer", "auto", "--answer-skip", "5", "--generate", "2"]);
    assert!(
        stderr.contains("has 2 tokens, so skipping 5 leaves none to track")
            && stderr.contains("hint: lower `--answer-skip`"),
        "{stderr}"
    );
    // `auto` without generation: the library words it, the CLI's hint names the flag.
    let stderr = run_err(&["--answer", "auto"]);
    assert!(
        stderr.contains("needs generated tokens") && stderr.contains("hint: pass `--generate N`"),
        "{stderr}"
    );
    // A skip with a named answer.
    let stderr = run_err(&["--answer", " Canberra", "--answer-skip", "2"]);
    assert!(
        stderr.contains("`--answer-skip` applies to `--answer auto` (with `--generate N`) only"),
        "{stderr}"
    );
}
