//! `lensmap batch` ("Rehearsal, measured: answer tracking at dummy tokens,
//! dataset batch mode, tables for pandas and Parquet") on a few prompts of
//! `data/capitals.jsonl`:
//! resuming after a kill, shards, the Parquet table read back, bad lines.
//!
//! One uninterrupted run (`baseline`) is shared by every test; the others
//! must reproduce its files byte for byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Four prompts (two named answers with distractors, one greedy answer, one
/// id that needs sanitising), a bad line (line 3) and a duplicate id (line 6).
fn input_text() -> String {
    let data =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/capitals.jsonl"))
            .unwrap();
    let lines: Vec<&str> = data.lines().collect();
    let find = |id: &str| {
        *lines
            .iter()
            .find(|l| l.contains(&format!("\"id\": \"{id}\"")))
            .unwrap()
    };
    [
        find("capital-australia"),
        find("author-hamlet"),
        r#"{"id": "broken", "prompt": "What is the capital of Peru?""#,
        r#"{"id": "greedy/france ü", "prompt": "What is the capital of France?"}"#,
        find("element-gold"),
        r#"{"id": "author-hamlet", "prompt": "Who wrote Macbeth?"}"#,
    ]
    .join("\n")
        + "\n"
}

/// Output files compared between runs (the tables, not the `shards/` copies).
const TABLES: [&str; 7] = [
    "cells.parquet",
    "cells.csv",
    "prompts.jsonl",
    "summary.json",
    "rehearsal.svg",
    "rehearsal.png",
    "prompts",
];

struct Dirs {
    _tmp: tempfile::TempDir,
    input: PathBuf,
    out: PathBuf,
}

fn new_dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    std::fs::write(&input, input_text()).unwrap();
    let out = tmp.path().join("out");
    Dirs {
        _tmp: tmp,
        input,
        out,
    }
}

fn batch_cmd(d: &Dirs, extra: &[&str]) -> Command {
    let mut c = lensmap_cmd();
    c.args(["batch", "--model"])
        .arg(model_file(SMOLLM2))
        .arg("--prompts")
        .arg(&d.input)
        .arg("--out")
        .arg(&d.out)
        .args([
            "--dummy",
            "4",
            "--generate",
            "8",
            "--answer-skip",
            "5",
            "--csv",
        ])
        .args(extra)
        .env_remove("LENSMAP_BATCH_STOP_AFTER");
    c
}

fn batch(d: &Dirs, extra: &[&str]) -> Output {
    batch_cmd(d, extra).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The uninterrupted run, done once.
fn baseline() -> &'static (Dirs, Output) {
    static BASE: OnceLock<(Dirs, Output)> = OnceLock::new();
    BASE.get_or_init(|| {
        let d = new_dirs();
        let o = batch(&d, &[]);
        (d, o)
    })
}

/// Every file under `dir/name` (a file or a directory), by relative path.
fn files(dir: &Path, name: &str) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let p = dir.join(name);
    if p.is_dir() {
        for e in std::fs::read_dir(&p).unwrap().flatten() {
            out.insert(
                format!("{name}/{}", e.file_name().to_string_lossy()),
                std::fs::read(e.path()).unwrap(),
            );
        }
    } else if p.exists() {
        out.insert(name.to_string(), std::fs::read(&p).unwrap());
    }
    out
}

fn all_tables(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    TABLES.iter().flat_map(|t| files(dir, t)).collect()
}

fn assert_same_outputs(a: &Path, b: &Path) {
    let (fa, fb) = (all_tables(a), all_tables(b));
    assert_eq!(
        fa.keys().collect::<Vec<_>>(),
        fb.keys().collect::<Vec<_>>(),
        "same files"
    );
    for (name, bytes) in &fa {
        assert!(
            bytes == &fb[name],
            "`{name}` differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// A bad line is reported with its line number on stderr and in
/// `summary.json`; the other lines complete; the exit code is non-zero.
#[test]
fn bad_lines_are_reported_and_the_rest_completes() {
    let (d, o) = baseline();
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("`in.jsonl` line 3: not valid JSON"), "{err}");
    assert!(
        err.contains("`in.jsonl` line 6: duplicate id `author-hamlet` (first on line 2)"),
        "{err}"
    );
    assert!(err.contains("2 of 6 input lines failed"), "{err}");
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(d.out.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["failed"], 2);
    assert_eq!(summary["done"], 4);
    let lines: Vec<u64> = summary["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [3, 6]);
    let ids: Vec<String> = std::fs::read_to_string(d.out.join("prompts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        ids,
        [
            "capital-australia",
            "author-hamlet",
            "greedy/france ü",
            "element-gold"
        ]
    );
    // stderr is not a terminal here: no progress bar drawing.
    assert!(!err.contains('\r') && !err.contains('\u{1b}'), "{err:?}");
    // The stdout summary lists the rehearsal onsets.
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("4 prompts, 4 done, 2 failed") && out.contains("onset row"),
        "{out}"
    );
}

/// The answer columns hold what the per-prompt records hold, and the greedy
/// prompt tracks token 6 of its answer.
#[test]
fn prompt_summaries_and_answer_sources() {
    let (d, _) = baseline();
    let lines: Vec<Value> = std::fs::read_to_string(d.out.join("prompts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let au = &lines[0];
    assert_eq!(au["answer_token"]["id"], 40136);
    assert_eq!(au["answer_token"]["source"], "given");
    assert_eq!(au["line"], 1);
    assert_eq!(
        au["rehearsal"]["positions"].as_array().unwrap().len(),
        6 + 4,
        "template tail + dummies"
    );
    let fr = &lines[2];
    assert_eq!(fr["answer_token"]["source"], "auto");
    assert_eq!(fr["answer_token"]["skip"], 5);
    assert!(fr["expected"].is_null() && fr["correct"].is_null());
    // The record file of a sanitised id.
    let names: Vec<String> = std::fs::read_dir(d.out.join("prompts"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("greedy_france__-") && n.ends_with(".json")),
        "{names:?}"
    );
    assert_eq!(names.len(), 4, "{names:?}");
}

/// Kill partway (the test hook leaves a half-written temporary file, as a
/// kill mid-write would), corrupt a finished record, drop in a stray
/// temporary file; the rerun redoes what is missing and every output equals
/// the uninterrupted run's, byte for byte.
#[test]
fn resume_after_a_kill_is_byte_identical() {
    let (base, _) = baseline();
    let d = new_dirs();
    let o = batch_cmd(&d, &[])
        .env("LENSMAP_BATCH_STOP_AFTER", "2")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(137), "{}", stderr(&o));
    let prompts = d.out.join("prompts");
    let names: Vec<String> = std::fs::read_dir(&prompts)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.iter().filter(|n| n.ends_with(".json")).count(),
        2,
        "{names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| n.contains(".tmp.")).count(),
        1,
        "{names:?}"
    );
    assert!(
        !d.out.join("cells.parquet").exists(),
        "no tables after a kill"
    );
    // A record cut short (by anything but lensmap) and a stray temporary.
    let au = prompts.join("capital-australia.json");
    let text = std::fs::read(&au).unwrap();
    std::fs::write(&au, &text[..text.len() / 3]).unwrap();
    std::fs::write(
        prompts.join(".element-gold.json.tmp.4242"),
        b"{\"key\": \"garb",
    )
    .unwrap();

    let o = batch(&d, &[]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "only the two bad lines fail: {}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("ran 3 prompts"), "{}", stderr(&o));
    assert_same_outputs(&base.out, &d.out);
    assert!(
        !std::fs::read_dir(&prompts)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains(".tmp.")),
        "temporaries are cleaned up"
    );

    // A third run has nothing to do and does not load the model.
    let o = batch(&d, &[]);
    assert!(!stderr(&o).contains("ran "), "{}", stderr(&o));
    assert_same_outputs(&base.out, &d.out);
}

/// A real SIGKILL at an arbitrary moment (after the first record appears),
/// then a rerun: same outputs as the uninterrupted run.
#[test]
fn resume_after_sigkill_is_byte_identical() {
    let (base, _) = baseline();
    let d = new_dirs();
    let mut child = batch_cmd(&d, &["--quiet"]).spawn().unwrap();
    let prompts = d.out.join("prompts");
    let start = Instant::now();
    loop {
        let done = std::fs::read_dir(&prompts)
            .map(|r| {
                r.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0);
        if done >= 1
            || start.elapsed() > Duration::from_secs(300)
            || child.try_wait().unwrap().is_some()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let o = batch(&d, &["--quiet"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "--quiet prints no summary");
    assert_same_outputs(&base.out, &d.out);
}

/// `--shard 0/2` and `--shard 1/2` into one directory, then an unsharded run
/// that only assembles: the same outputs as one unsharded run; and the
/// shards' own tables, concatenated in shard order, equal the unsharded ones.
#[test]
fn shards_concatenate_to_the_unsharded_output() {
    let (base, _) = baseline();
    let d = new_dirs();
    for s in ["1/2", "2/2"] {
        let o = batch(&d, &["--shard", s, "--quiet"]);
        // Shard 1 holds line 3 (bad), shard 2 line 6 (duplicate).
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    }
    let o = batch(&d, &[]);
    assert!(
        !stderr(&o).contains("ran "),
        "the final run only assembles: {}",
        stderr(&o)
    );
    assert_same_outputs(&base.out, &d.out);

    let shard = |i: usize| d.out.join(format!("shards/{i}-of-2"));
    // prompts.jsonl: plain concatenation.
    let cat: Vec<u8> = [1, 2]
        .iter()
        .flat_map(|&i| std::fs::read(shard(i).join("prompts.jsonl")).unwrap())
        .collect();
    assert_eq!(cat, std::fs::read(base.out.join("prompts.jsonl")).unwrap());
    // cells.csv: one header, then each shard's rows.
    let mut csv = String::new();
    for i in [1, 2] {
        let text = std::fs::read_to_string(shard(i).join("cells.csv")).unwrap();
        let (header, rows) = text.split_once('\n').unwrap();
        if i == 1 {
            csv.push_str(header);
            csv.push('\n');
        }
        csv.push_str(rows);
    }
    assert_eq!(
        csv,
        std::fs::read_to_string(base.out.join("cells.csv")).unwrap()
    );
    // cells.parquet: the rows, in shard order.
    #[cfg(feature = "parquet")]
    {
        let mut rows = parquet_rows(&shard(1).join("cells.parquet"));
        rows.extend(parquet_rows(&shard(2).join("cells.parquet")));
        assert_eq!(rows, parquet_rows(&base.out.join("cells.parquet")));
    }
    // Each shard's summary counts its own lines.
    let s0: Value =
        serde_json::from_str(&std::fs::read_to_string(shard(1).join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(
        (
            s0["shard"].as_str(),
            s0["done"].as_u64(),
            s0["failed"].as_u64()
        ),
        (Some("1/2"), Some(2), Some(1))
    );
}

/// Every Parquet row as text, for comparisons.
#[cfg(feature = "parquet")]
fn parquet_rows(path: &Path) -> Vec<String> {
    use arrow_array::Array;
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        for i in 0..batch.num_rows() {
            let cells: Vec<String> = batch
                .columns()
                .iter()
                .map(|c| {
                    if c.is_null(i) {
                        "null".into()
                    } else {
                        arrow_array::cast::AsArray::as_string_opt::<i32>(c.as_ref())
                            .map(|s| s.value(i).to_string())
                            .unwrap_or_else(|| format!("{:?}", c.slice(i, 1)))
                    }
                })
                .collect();
            out.push(cells.join("\t"));
        }
    }
    out
}

/// `cells.parquet` read back with the `parquet` crate holds exactly the
/// per-prompt records' values, in input order, row-major.
#[cfg(feature = "parquet")]
#[test]
fn parquet_round_trip_matches_the_records() {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, UInt32Type};
    use arrow_array::Array;

    let (d, _) = baseline();
    let file = std::fs::File::open(d.out.join("cells.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
    let schema = batches[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "id",
            "row",
            "pos",
            "token",
            "kind",
            "entropy",
            "kl",
            "top1",
            "top1_id",
            "top1_prob",
            "answer_prob",
            "answer_rank",
            "alt_probs",
            "alt_ranks"
        ]
    );
    // Each column, flattened across the record batches.
    let col = |n: &str| {
        batches
            .iter()
            .map(|b| b.column_by_name(n).unwrap().clone())
            .collect::<Vec<_>>()
    };
    let strs = |n: &str| -> Vec<String> {
        col(n)
            .iter()
            .flat_map(|a| {
                a.as_string::<i32>()
                    .iter()
                    .map(|s| s.unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let f64s = |n: &str| -> Vec<Option<f64>> {
        col(n)
            .iter()
            .flat_map(|a| a.as_primitive::<Float64Type>().iter().collect::<Vec<_>>())
            .collect()
    };
    let u32s = |n: &str| -> Vec<Option<u32>> {
        col(n)
            .iter()
            .flat_map(|a| a.as_primitive::<UInt32Type>().iter().collect::<Vec<_>>())
            .collect()
    };
    let lists_f64 = |n: &str| -> Vec<Vec<f64>> {
        col(n)
            .iter()
            .flat_map(|a| {
                let l = a.as_list::<i32>();
                (0..l.len())
                    .map(|i| l.value(i).as_primitive::<Float64Type>().values().to_vec())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let lists_u32 = |n: &str| -> Vec<Vec<u32>> {
        col(n)
            .iter()
            .flat_map(|a| {
                let l = a.as_list::<i32>();
                (0..l.len())
                    .map(|i| l.value(i).as_primitive::<UInt32Type>().values().to_vec())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let (ids, tokens, kinds, top1) = (strs("id"), strs("token"), strs("kind"), strs("top1"));
    let (rows, poss, top1_id, answer_rank) = (
        u32s("row"),
        u32s("pos"),
        u32s("top1_id"),
        u32s("answer_rank"),
    );
    let (entropy, kl, top1_prob, answer_prob) = (
        f64s("entropy"),
        f64s("kl"),
        f64s("top1_prob"),
        f64s("answer_prob"),
    );
    let (alt_probs, alt_ranks) = (lists_f64("alt_probs"), lists_u32("alt_ranks"));

    let order = [
        "capital-australia",
        "author-hamlet",
        "greedy/france ü",
        "element-gold",
    ];
    let mut i = 0;
    for id in order {
        let stem = std::fs::read_dir(d.out.join("prompts"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                let rec: Value =
                    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
                rec["item"]["id"] == id
            })
            .unwrap();
        let rec: Value = serde_json::from_str(&std::fs::read_to_string(stem).unwrap()).unwrap();
        let tracked = rec["tracked"].as_array().unwrap();
        let answer = tracked.iter().find(|t| t["role"] == "answer").unwrap();
        let alts: Vec<&Value> = tracked.iter().filter(|t| t["role"] == "alt").collect();
        assert_eq!(
            alts.len(),
            rec["item"]["alts"].as_array().map_or(0, |a| a.len())
        );
        let n_rows = rec["n_rows"].as_u64().unwrap() as usize;
        let toks = rec["tokens"].as_array().unwrap();
        for r in 0..n_rows {
            for (p, tok) in toks.iter().enumerate() {
                assert_eq!(ids[i], id);
                assert_eq!((rows[i], poss[i]), (Some(r as u32), Some(p as u32)));
                assert_eq!(tokens[i], tok["text"].as_str().unwrap());
                assert_eq!(kinds[i], tok["kind"].as_str().unwrap());
                assert_eq!(entropy[i], rec["entropy"][r][p].as_f64());
                assert_eq!(kl[i], rec["kl_to_final"][r][p].as_f64());
                assert_eq!(top1_prob[i], rec["top1_prob"][r][p].as_f64());
                let t1 = rec["top1"][r][p].as_u64().unwrap();
                assert_eq!(top1_id[i], Some(t1 as u32));
                assert_eq!(top1[i], rec["vocab"][t1.to_string()].as_str().unwrap());
                assert_eq!(answer_prob[i], answer["cells"][r][p]["prob"].as_f64());
                assert_eq!(
                    answer_rank[i].map(u64::from),
                    answer["cells"][r][p]["rank"].as_u64()
                );
                let want_p: Vec<f64> = alts
                    .iter()
                    .map(|a| a["cells"][r][p]["prob"].as_f64().unwrap())
                    .collect();
                let want_r: Vec<u32> = alts
                    .iter()
                    .map(|a| a["cells"][r][p]["rank"].as_u64().unwrap() as u32)
                    .collect();
                assert_eq!((&alt_probs[i], &alt_ranks[i]), (&want_p, &want_r));
                i += 1;
            }
        }
    }
    assert_eq!(i, ids.len(), "no extra rows");
    eprintln!("parquet: {i} rows match the per-prompt records");
}

/// Block-major chunks (`--chunk`, issue 9) change how often the weights are
/// read, never a number: at rest, prompt by prompt (`--chunk 1`) and one
/// chunk of every prompt on a streamed model (`--max-memory 64M` streams
/// SmolLM2's file; its default chunk takes all four prompts, of different
/// lengths, with named and greedy answers) write byte-identical tables.
#[test]
fn block_major_chunks_equal_prompt_major_at_rest() {
    let (prompt_major, block_major) = (new_dirs(), new_dirs());
    let a = batch(&prompt_major, &["--precision", "rest", "--chunk", "1"]);
    let b = batch(
        &block_major,
        &["--precision", "rest", "--max-memory", "64M"],
    );
    // Both fail on the same bad lines and finish the same four prompts.
    assert_eq!(a.status.code(), b.status.code(), "{}", stderr(&b));
    assert_eq!(
        std::fs::read_dir(block_major.out.join("prompts"))
            .unwrap()
            .count(),
        4
    );
    assert_same_outputs(&prompt_major.out, &block_major.out);
    // `--precision quant`'s 8-bit products keep rows apart too: its
    // prompts stack in one chunk and give what they give alone.
    let (alone, stacked) = (new_dirs(), new_dirs());
    let a = batch(&alone, &["--precision", "quant", "--chunk", "1"]);
    let b = batch(&stacked, &["--precision", "quant"]);
    assert_eq!(a.status.code(), b.status.code(), "{}", stderr(&b));
    assert_same_outputs(&alone.out, &stacked.out);
    let c = batch(&block_major, &["--precision", "rest", "--chunk", "0"]);
    let err = stderr(&c);
    assert!(
        err.contains("the chunk size must be at least 1")
            && err.contains("hint: `--chunk` takes")
            && c.status.code() == Some(2),
        "{err}"
    );
}
