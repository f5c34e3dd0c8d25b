//! `LensGrid`: the result of one lens run, reduced to statistics per cell.
//!
//! This is the contract between the engine and every output (JSON, SVG, PNG,
//! HTML, the web UI, batch tables). It is exactly what `lensmap run --json`
//! writes; `docs/json-format.md` documents each field.
//!
//! Indexing is always `[row][pos]`. Row 0 is the embedding output, row `i` the
//! residual after block `i`, and row `n_layers` the model's own final logits,
//! so there are `n_layers + 1` rows (see `../shared/reference/README.md`).

use serde::{Deserialize, Serialize};

pub use crate::prompt::TokenKind;
use crate::prompt::{self, Prompt};
use crate::stats::CellStats;
pub use crate::stats::ProbRank;

/// Version of the JSON layout; bump when a field changes meaning.
pub const FORMAT_VERSION: u32 = 1;

/// The whole result of `lensmap run`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LensGrid {
    /// Layout version, [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Version of lensmap that wrote the file.
    pub lensmap_version: String,
    /// What model produced the numbers.
    pub model: ModelInfo,
    /// Where the chat template came from (`gguf:tokenizer.chat_template`,
    /// `builtin:gemma3`, `file:...`, `tokenizer_config.json`, or `none` for `--raw`).
    pub template_source: String,
    /// The prompt text exactly as tokenised (after the chat template, before dummies).
    pub prompt_text: String,
    /// One entry per position.
    pub tokens: Vec<TokenInfo>,
    /// How many lens rows: `model.n_layers + 1`.
    pub n_rows: usize,
    /// Entropy of the lens distribution in nats, `[row][pos]`. Here and in
    /// every `[row][pos]` field, a cell outside `--positions` is NaN (`null`
    /// in the JSON; no top-k, no next token, tracked `{prob: null, rank: 0}`).
    #[serde(deserialize_with = "nan_grid")]
    pub entropy: Vec<Vec<f64>>,
    /// Top-k tokens, most probable first, `[row][pos][k]`.
    pub topk: Vec<Vec<Vec<TopToken>>>,
    /// KL(final ‖ row) in nats, `[row][pos]`; the last row is exactly 0.
    #[serde(deserialize_with = "nan_grid")]
    pub kl_to_final: Vec<Vec<f64>>,
    /// Probability and rank of the actual next input token, `[row][pos]`;
    /// `None` at the last position, which has no next token.
    pub next_token: Vec<Vec<Option<ProbRank>>>,
    /// Cells whose logits held NaN or infinity, `[row][pos]` (`true` =
    /// invalid), reachable only with `--allow-nonfinite`. Empty (and absent
    /// from the JSON) when every cell is valid. An invalid cell's values are
    /// `null` like a skipped cell's; figures hatch it, tables leave it out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid: Vec<Vec<bool>>,
    /// Tokens tracked in every cell: `--target`, and the answer and distractors.
    #[serde(default)]
    pub tracked: Vec<TrackedToken>,
    /// The greedy continuation, when `--generate N` was given.
    #[serde(default)]
    pub answer: Option<Answer>,
    /// Where the answer token enters the top-k at each position after the
    /// user's text, when an answer is tracked (`--answer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rehearsal: Option<RehearsalSummary>,
    /// Which lens made the numbers; files without it are logit-lens files.
    #[serde(default)]
    pub lens: LensInfo,
    /// The same prompt read through further lenses (`--lens logit,tuned:DIR`),
    /// each a complete grid with its own `lens`; empty for one lens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_lenses: Vec<LensGrid>,
}

/// The lens behind a grid.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LensInfo {
    /// `logit` or `tuned`.
    pub kind: String,
    /// The tuned lens's directory, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The tuned lens's `config.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<crate::tuned::TunedConfig>,
    /// sha256 of the tuned lens's files, by file name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files_sha256: Vec<(String, String)>,
}

impl Default for LensInfo {
    fn default() -> Self {
        LensInfo {
            kind: "logit".into(),
            path: None,
            config: None,
            files_sha256: Vec::new(),
        }
    }
}

impl LensInfo {
    /// Describe a lens.
    pub fn of(lens: &crate::lens::Lens) -> Self {
        match lens {
            crate::lens::Lens::Logit => LensInfo::default(),
            crate::lens::Lens::Tuned(t) => LensInfo {
                kind: "tuned".into(),
                path: Some(t.dir.display().to_string()),
                config: Some(t.config.clone()),
                files_sha256: t.files_sha256.clone(),
            },
        }
    }

    /// A short label for figures: `logit lens` or `tuned lens`.
    pub fn title(&self) -> String {
        format!("{} lens", self.kind)
    }
}

/// The model behind a grid.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelInfo {
    /// File name (no directory) or HF id.
    pub file: String,
    /// Architecture family, as GGUF `general.architecture` / HF `model_type`.
    pub arch: String,
    pub n_layers: usize,
    pub d_model: usize,
    pub vocab_size: usize,
    /// `f32` or `quant`: how the weights were multiplied.
    #[serde(default)]
    pub precision: String,
    /// `f32` (exact) or `bf16`: how the lens multiplied by the unembedding
    /// (`--lens-precision`). Files from before this field read as `f32`.
    #[serde(default = "f32_label")]
    pub lens_precision: String,
    /// The bf16 kernel that ran (`avx512-bf16`, `f32 on bf16 values`); absent for f32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lens_kernel: Option<String>,
}

/// `[row][pos]` numbers with `null` for skipped cells, as NaN.
pub(crate) fn nan_grid<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Vec<f64>>, D::Error> {
    let g = Vec::<Vec<Option<f64>>>::deserialize(d)?;
    Ok(g.into_iter()
        .map(|row| row.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect())
        .collect())
}

fn f32_label() -> String {
    "f32".to_string()
}

impl ModelInfo {
    /// `bf16 lens (avx512-bf16)` when the lens ran in bf16, else `None`:
    /// what the terminal summary and the figure caption add.
    pub(crate) fn bf16_note(&self) -> Option<String> {
        (self.lens_precision != "f32").then(|| match &self.lens_kernel {
            Some(k) => format!("{} lens ({k})", self.lens_precision),
            None => format!("{} lens", self.lens_precision),
        })
    }
}

/// One input position.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenInfo {
    pub id: u32,
    /// The token decoded on its own (`" capital"`, `"<|im_end|>"`, `"\n"`).
    pub text: String,
    pub kind: TokenKind,
}

/// One entry of a cell's top-k list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TopToken {
    pub id: u32,
    /// The token decoded on its own; empty for ids beyond the tokenizer's vocab
    /// (padded embeddings, as in Qwen).
    pub text: String,
    pub prob: f64,
}

/// Why a token is tracked.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TrackedRole {
    /// `--target TEXT`.
    Target,
    /// The expected answer (`--answer`).
    Answer,
    /// A distractor (`--answer-alt`).
    Alt,
}

/// A fixed token followed through every cell.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrackedToken {
    /// The text the user gave (`" Canberra"`).
    pub text: String,
    /// The id of that text's first token.
    pub id: u32,
    /// The first token decoded on its own.
    pub token_text: String,
    pub role: TrackedRole,
    /// `[row][pos]`.
    pub cells: Vec<Vec<ProbRank>>,
}

/// The greedy continuation of the whole input (dummies included).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Answer {
    pub ids: Vec<u32>,
    pub text: String,
}

impl LensGrid {
    /// Number of positions.
    pub fn n_positions(&self) -> usize {
        self.tokens.len()
    }

    /// Whether a cell's logits held NaN or infinity (`--allow-nonfinite`);
    /// false for any cell the `invalid` grid does not cover.
    pub(crate) fn is_invalid(&self, row: usize, pos: usize) -> bool {
        self.invalid
            .get(row)
            .and_then(|r| r.get(pos))
            .copied()
            .unwrap_or(false)
    }

    /// How many cells are invalid ([`LensGrid::is_invalid`]).
    pub(crate) fn n_invalid(&self) -> usize {
        self.invalid.iter().flatten().filter(|&&b| b).count()
    }

    /// The top-1 token of a cell; `None` for a cell outside `--positions`.
    pub fn top1(&self, row: usize, pos: usize) -> Option<&TopToken> {
        self.topk[row][pos].first()
    }

    /// Label of a row: its index, or `output` for the final row.
    pub fn row_label(&self, row: usize) -> String {
        row_label(row, self.n_rows)
    }

    /// The first position after the user's text: see [`prompt::tail_start`].
    pub(crate) fn tail_start(&self) -> usize {
        prompt::tail_start(self.tokens.iter().map(|t| t.kind))
    }

    /// The user's words: the `text` tokens joined, trimmed (empty when the
    /// prompt has none, e.g. `--raw` with only template tokens).
    pub fn text_prompt(&self) -> String {
        let text: String = self
            .tokens
            .iter()
            .filter(|t| t.kind == TokenKind::Text)
            .map(|t| t.text.as_str())
            .collect();
        text.trim().to_string()
    }

    /// Read a grid back from `lensmap run --json` output.
    pub fn from_json(text: &str) -> serde_json::Result<Self> {
        serde_json::from_str(text)
    }
}

/// Label of lens row `row` out of `n_rows`: its index, or `output` for the
/// last row (the model's own logits). Every table, figure axis and summary
/// labels rows through this.
pub fn row_label(row: usize, n_rows: usize) -> String {
    if row + 1 == n_rows {
        "output".to_string()
    } else {
        row.to_string()
    }
}

// ------------------------------------------------------------------------
// The rehearsal summary (computed by `crate::rehearsal::summarize`)
// ------------------------------------------------------------------------

/// Where the answer token came from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AnswerSource {
    /// Named by the user (`--answer TEXT`, or `answer` in a batch file): its first token.
    Given,
    /// The model's own greedy answer (`--answer auto`), token `skip` of it.
    Auto,
}

/// The rehearsal of one answer token over the positions after the user's text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RehearsalSummary {
    /// The answer token's id.
    pub answer_id: u32,
    /// The answer token decoded on its own (`" Canberra"`).
    pub answer_token: String,
    pub source: AnswerSource,
    /// Tokens of the greedy answer skipped before the tracked one (`auto` only; else 0).
    pub skip: usize,
    /// "In the top-k" means rank ≤ `top_k`.
    pub top_k: usize,
    /// Lens rows; row `n_rows - 1` is the model's output.
    pub n_rows: usize,
    /// One entry per position after the last `text` token, in order.
    pub positions: Vec<PositionRehearsal>,
}

/// The answer token's path through the rows at one position.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PositionRehearsal {
    pub pos: usize,
    pub kind: TokenKind,
    /// The input token at this position.
    pub token: String,
    /// The earliest row where the answer's rank is ≤ `top_k`; `None` if never.
    pub first_topk_row: Option<usize>,
    /// The earliest row from which the answer stays in the top-k up to and
    /// including the output row; `None` if it is not in the top-k at the output.
    pub stable_topk_row: Option<usize>,
    /// The row of the answer's best (lowest) rank; the earliest such row on ties.
    pub best_row: usize,
    pub best_rank: u32,
    /// The answer's probability at `best_row`.
    pub best_prob: f64,
    /// Rank and probability at the output row.
    pub output_rank: u32,
    pub output_prob: f64,
    /// Whether the answer is in the top-k at the output row.
    pub in_topk_at_output: bool,
}

impl RehearsalSummary {
    /// Label of a row: its index, or `output` for the last.
    pub fn row_label(&self, row: usize) -> String {
        row_label(row, self.n_rows)
    }

    /// The dummy positions' entries.
    pub fn dummies(&self) -> impl Iterator<Item = &PositionRehearsal> {
        self.positions.iter().filter(|p| p.kind == TokenKind::Dummy)
    }
}

// ------------------------------------------------------------------------
// Building a grid from the lens's cells
// ------------------------------------------------------------------------

/// A tracked token as the grid reports it: the text the user gave, why it is
/// tracked, and the id of its first token (the cells hold one entry per
/// tracked id, in this order).
#[derive(Debug, Clone)]
pub(crate) struct TrackedHead {
    pub text: String,
    pub role: TrackedRole,
    pub id: u32,
}

impl LensGrid {
    /// Turn per-cell statistics (`[row][pos]`, as the lens returns them) into
    /// the serialisable grid. `token_text` decodes one id on its own. The grid
    /// is a logit-lens grid without a rehearsal summary; callers set
    /// [`LensGrid::lens`] and [`LensGrid::rehearsal`] after.
    pub(crate) fn from_cells(
        model: ModelInfo,
        template_source: String,
        prompt: Prompt,
        cells: &[Vec<CellStats>],
        tracked: &[TrackedHead],
        answer: Option<Answer>,
        token_text: &dyn Fn(u32) -> String,
    ) -> LensGrid {
        let tokens = prompt
            .ids
            .iter()
            .zip(&prompt.kinds)
            .map(|(&id, &kind)| TokenInfo {
                id,
                text: token_text(id),
                kind,
            })
            .collect();
        let map = |f: &dyn Fn(&CellStats) -> f64| -> Vec<Vec<f64>> {
            cells
                .iter()
                .map(|row| row.iter().map(f).collect())
                .collect()
        };
        let tracked = tracked
            .iter()
            .enumerate()
            .map(|(i, head)| TrackedToken {
                text: head.text.clone(),
                id: head.id,
                token_text: token_text(head.id),
                role: head.role,
                cells: cells
                    .iter()
                    .map(|row| row.iter().map(|c| c.tracked[i]).collect())
                    .collect(),
            })
            .collect();
        LensGrid {
            format_version: FORMAT_VERSION,
            lensmap_version: env!("CARGO_PKG_VERSION").to_string(),
            model,
            template_source,
            prompt_text: prompt.text,
            tokens,
            n_rows: cells.len(),
            entropy: map(&|c| c.entropy),
            kl_to_final: map(&|c| c.kl_to_final),
            topk: cells
                .iter()
                .map(|row| {
                    row.iter()
                        .map(|c| {
                            c.topk
                                .iter()
                                .map(|&(id, prob)| TopToken {
                                    id,
                                    text: token_text(id),
                                    prob,
                                })
                                .collect()
                        })
                        .collect()
                })
                .collect(),
            next_token: cells
                .iter()
                .map(|row| row.iter().map(|c| c.next).collect())
                .collect(),
            invalid: if cells.iter().flatten().any(|c| c.invalid) {
                cells
                    .iter()
                    .map(|row| row.iter().map(|c| c.invalid).collect())
                    .collect()
            } else {
                Vec::new()
            },
            tracked,
            answer,
            rehearsal: None,
            lens: LensInfo::default(),
            more_lenses: Vec::new(),
        }
    }
}
