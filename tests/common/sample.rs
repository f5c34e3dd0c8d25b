//! Sample grids for render tests, benchmarks and demos, independent of the
//! engine: one converted from a reference file of `shared/reference/`
//! (computed by HF transformers), and a synthetic one of any length.

use serde_json::Value;

use lensmap::grid::{
    Answer, LensGrid, ModelInfo, ProbRank, TokenInfo, TokenKind, TopToken, TrackedRole,
    TrackedToken, FORMAT_VERSION,
};
use lensmap::{Error, Result};

fn bad(what: &str) -> Error {
    Error::Render(format!("reference JSON: missing or malformed `{what}`"))
}

fn f64_matrix(v: &Value, what: &str) -> Result<Vec<Vec<f64>>> {
    v.get(what)
        .and_then(|m| m.as_array())
        .ok_or_else(|| bad(what))?
        .iter()
        .map(|row| {
            row.as_array()
                .ok_or_else(|| bad(what))?
                .iter()
                .map(|x| x.as_f64().ok_or_else(|| bad(what)))
                .collect()
        })
        .collect()
}

fn u32_of(x: &Value, what: &str) -> Result<u32> {
    x.as_u64().map(|v| v as u32).ok_or_else(|| bad(what))
}

/// Convert a reference file (`smollm2_filler.json` and the like) into a grid.
///
/// Kinds are approximate: the question's tokens are `text`, the last
/// `n_filler` tokens `dummy`, everything else `template`. `" Canberra"` is
/// tracked as the target, `" Sydney"` as a distractor.
pub fn grid_from_reference_json(text: &str) -> Result<LensGrid> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| Error::Render(format!("reference JSON: {e}")))?;
    let texts: Vec<String> = v["token_texts"]
        .as_array()
        .ok_or_else(|| bad("token_texts"))?
        .iter()
        .map(|t| t.as_str().unwrap_or("").to_string())
        .collect();
    let ids: Vec<u32> = v["input_ids"]
        .as_array()
        .ok_or_else(|| bad("input_ids"))?
        .iter()
        .map(|x| u32_of(x, "input_ids"))
        .collect::<Result<_>>()?;
    let n = texts.len();
    let n_filler = v["n_filler"].as_u64().unwrap_or(0) as usize;

    // Locate the question's characters in the concatenated token texts.
    let question = v["question"].as_str().unwrap_or("");
    let mut starts = Vec::with_capacity(n);
    let mut all = String::new();
    for t in &texts {
        starts.push(all.len());
        all.push_str(t);
    }
    let q_span = (!question.is_empty())
        .then(|| all.rfind(question).map(|s| (s, s + question.len())))
        .flatten();
    let tokens: Vec<TokenInfo> = (0..n)
        .map(|i| {
            let (s, e) = (starts[i], starts[i] + texts[i].len());
            let kind = if i >= n - n_filler.min(n) {
                TokenKind::Dummy
            } else if q_span.is_some_and(|(qs, qe)| s < qe && e > qs) {
                TokenKind::Text
            } else {
                TokenKind::Template
            };
            TokenInfo {
                id: ids[i],
                text: texts[i].clone(),
                kind,
            }
        })
        .collect();

    let entropy = f64_matrix(&v, "entropy")?;
    let kl = f64_matrix(&v, "kl_to_final")?;
    let rows = entropy.len();
    let top_ids = v["top5_ids"].as_array().ok_or_else(|| bad("top5_ids"))?;
    let top_probs = v["top5_probs"]
        .as_array()
        .ok_or_else(|| bad("top5_probs"))?;
    let top_tok = v["top5_tokens"]
        .as_array()
        .ok_or_else(|| bad("top5_tokens"))?;
    let mut topk = Vec::with_capacity(rows);
    for r in 0..rows {
        let mut row = Vec::with_capacity(n);
        for p in 0..n {
            let ids = top_ids[r][p].as_array().ok_or_else(|| bad("top5_ids"))?;
            let mut cell = Vec::with_capacity(ids.len());
            for k in 0..ids.len() {
                cell.push(TopToken {
                    id: u32_of(&ids[k], "top5_ids")?,
                    text: top_tok[r][p][k].as_str().unwrap_or("").to_string(),
                    prob: top_probs[r][p][k]
                        .as_f64()
                        .ok_or_else(|| bad("top5_probs"))?,
                });
            }
            row.push(cell);
        }
        topk.push(row);
    }
    let ntp = f64_matrix(&v, "next_token_prob")?;
    let ntr = f64_matrix(&v, "next_token_rank")?;
    let next_token = (0..rows)
        .map(|r| {
            (0..n)
                .map(|p| {
                    (p + 1 < n).then(|| ProbRank {
                        prob: ntp[r][p],
                        rank: ntr[r][p] as u32,
                    })
                })
                .collect()
        })
        .collect();
    let mut tracked = Vec::new();
    if let Some(obj) = v["tracked"].as_object() {
        for (text, t) in obj {
            let prob = f64_matrix(t, "prob")?;
            let rank = f64_matrix(t, "rank")?;
            let role = match text.as_str() {
                " Canberra" => TrackedRole::Target,
                _ => TrackedRole::Alt,
            };
            tracked.push(TrackedToken {
                text: text.clone(),
                id: u32_of(&t["id"], "tracked.id")?,
                token_text: text.clone(),
                role,
                cells: (0..rows)
                    .map(|r| {
                        (0..n)
                            .map(|p| ProbRank {
                                prob: prob[r][p],
                                rank: rank[r][p] as u32,
                            })
                            .collect()
                    })
                    .collect(),
            });
        }
        // Target first, as `lensmap run` orders them.
        tracked.sort_by_key(|t| t.role != TrackedRole::Target);
    }
    let answer = v["greedy"]["manual_greedy_ids"]
        .as_array()
        .map(|ids| Answer {
            ids: ids
                .iter()
                .filter_map(|x| x.as_u64().map(|v| v as u32))
                .collect(),
            text: v["greedy"]["manual_greedy_text"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        });
    Ok(LensGrid {
        format_version: FORMAT_VERSION,
        lensmap_version: env!("CARGO_PKG_VERSION").to_string(),
        model: ModelInfo {
            file: v["model_file"].as_str().unwrap_or("model").to_string(),
            arch: v["model_type"].as_str().unwrap_or("").to_string(),
            n_layers: v["n_layers"].as_u64().unwrap_or(rows as u64 - 1) as usize,
            d_model: v["d_model"].as_u64().unwrap_or(0) as usize,
            vocab_size: v["vocab_size"].as_u64().unwrap_or(0) as usize,
            precision: "f32".into(),
            lens_precision: "f32".into(),
            lens_kernel: None,
        },
        template_source: v["chat_template_source"]
            .as_str()
            .unwrap_or("none")
            .to_string(),
        prompt_text: v["prompt_text"].as_str().unwrap_or("").to_string(),
        tokens,
        n_rows: rows,
        entropy,
        topk,
        kl_to_final: kl,
        next_token,
        invalid: Vec::new(),
        tracked,
        answer,
        rehearsal: None,
        lens: Default::default(),
        more_lenses: Vec::new(),
    })
}

/// A deterministic synthetic grid: `n_positions` positions (20 template, then
/// text, then 6 template and 24 dummy at the end), `n_rows` rows, top-5 from a
/// small word list, entropy falling with depth, a target token tracked.
pub fn synthetic_grid(n_positions: usize, n_rows: usize) -> LensGrid {
    const WORDS: [&str; 24] = [
        " the",
        " of",
        " and",
        " capital",
        " Canberra",
        " Sydney",
        " New",
        "\n",
        ".",
        ",",
        " is",
        " Australia",
        "<|im_end|>",
        " city",
        " a",
        " in",
        " The",
        " to",
        "ing",
        " South",
        " &",
        " <b>",
        " Wales",
        " 東京",
    ];
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let vocab = 49152usize;
    let tokens: Vec<TokenInfo> = (0..n_positions)
        .map(|p| {
            let kind = if p < 20.min(n_positions) {
                TokenKind::Template
            } else if p + 24 >= n_positions {
                TokenKind::Dummy
            } else if p + 30 >= n_positions {
                TokenKind::Template
            } else {
                TokenKind::Text
            };
            let w = if kind == TokenKind::Dummy {
                8
            } else {
                (p * 7 + 3) % WORDS.len()
            };
            TokenInfo {
                id: w as u32 + 100,
                text: WORDS[w].to_string(),
                kind,
            }
        })
        .collect();
    let mut entropy = vec![vec![0.0; n_positions]; n_rows];
    let mut kl = vec![vec![0.0; n_positions]; n_rows];
    let mut topk = vec![vec![Vec::new(); n_positions]; n_rows];
    let mut next_token = vec![vec![None; n_positions]; n_rows];
    let mut target = vec![vec![ProbRank { prob: 0.0, rank: 1 }; n_positions]; n_rows];
    for r in 0..n_rows {
        let depth = r as f64 / (n_rows.max(2) - 1) as f64;
        for p in 0..n_positions {
            let h = (11.0 * (1.0 - depth) + 3.0 * rnd() + 1.5 * ((p as f64) / 9.0).sin()).max(0.01);
            entropy[r][p] = h;
            kl[r][p] = if r + 1 == n_rows {
                0.0
            } else {
                (12.0 * (1.0 - depth) * rnd() + 0.1).max(0.0)
            };
            let p1 = (1.0 / (1.0 + h)).min(0.99);
            let mut cell = Vec::with_capacity(5);
            let mut rest = 1.0 - p1;
            for k in 0..5 {
                let w = ((p * 31 + r / 4 * 17 + k * 5) % WORDS.len()) as u32;
                let prob = if k == 0 { p1 } else { rest * 0.4 };
                if k > 0 {
                    rest -= prob;
                }
                cell.push(TopToken {
                    id: w + 100,
                    text: WORDS[w as usize].to_string(),
                    prob,
                });
            }
            topk[r][p] = cell;
            if p + 1 < n_positions {
                next_token[r][p] = Some(ProbRank {
                    prob: p1 * rnd(),
                    rank: 1 + (rnd() * 1000.0) as u32,
                });
            }
            let tp = depth.powi(3) * rnd();
            target[r][p] = ProbRank {
                prob: tp,
                rank: 1 + ((1.0 - tp) * (1.0 - depth) * vocab as f64) as u32,
            };
        }
    }
    LensGrid {
        format_version: FORMAT_VERSION,
        lensmap_version: env!("CARGO_PKG_VERSION").to_string(),
        model: ModelInfo {
            file: "synthetic.gguf".into(),
            arch: "llama".into(),
            n_layers: n_rows - 1,
            d_model: 576,
            vocab_size: vocab,
            precision: "f32".into(),
            lens_precision: "f32".into(),
            lens_kernel: None,
        },
        template_source: "none".into(),
        prompt_text: tokens.iter().map(|t| t.text.as_str()).collect(),
        tokens,
        n_rows,
        entropy,
        topk,
        kl_to_final: kl,
        next_token,
        invalid: Vec::new(),
        tracked: vec![TrackedToken {
            text: " Canberra".into(),
            id: 104,
            token_text: " Canberra".into(),
            role: TrackedRole::Target,
            cells: target,
        }],
        answer: Some(Answer {
            ids: vec![104],
            text: " Canberra".into(),
        }),
        rehearsal: None,
        lens: Default::default(),
        more_lenses: Vec::new(),
    }
}
