//! Rehearsal curves over a batch, and `summary.json`.
//!
//! For every prompt with an answer, every position kind and every lens row:
//! the mean answer probability over that prompt's positions of the kind, the
//! answer's best (lowest) rank among them, and the fraction of them where the
//! answer is in the top-k. Across prompts, a row's curve point is the median
//! (with the quartiles) of the per-prompt means and of the best ranks, and the
//! mean of the per-prompt fractions (the top-k rate). Each prompt counts once
//! per kind, however many positions it has.
//!
//! The kinds: `text` is every position of the user's text; `template` is only
//! the chat template's tail after the last text token (the generation prompt,
//! where an answer can be rehearsed; the template's head, such as a default
//! system prompt, is left out); `dummy` is every dummy position.

use serde::{Deserialize, Serialize};

use super::input::LineError;
use super::record::PromptRecord;
use crate::grid::{ModelInfo, TokenKind};

/// The curve kinds, in drawing order.
const KINDS: [CurveKind; 3] = [CurveKind::Text, CurveKind::Template, CurveKind::Dummy];

/// Which positions a curve covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CurveKind {
    /// The user's text.
    Text,
    /// The template's tail after the last text token.
    Template,
    /// Dummy filler.
    Dummy,
}

impl CurveKind {
    pub fn name(self) -> &'static str {
        match self {
            CurveKind::Text => "text",
            CurveKind::Template => "template",
            CurveKind::Dummy => "dummy",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One point of a curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub row: usize,
    /// `0`, `1`, … or `output`.
    pub label: String,
    /// Prompts contributing.
    pub prompts: usize,
    /// Quartiles of the per-prompt mean answer probability.
    pub q1: f64,
    pub median: f64,
    pub q3: f64,
    /// Quartiles of the per-prompt best rank.
    pub rank_q1: f64,
    pub rank_median: f64,
    pub rank_q3: f64,
    /// Mean over prompts of the fraction of positions with the answer in the top-k.
    pub topk_rate: f64,
}

/// A curve: one point per row (empty when no prompt has positions of the kind).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    pub kind: CurveKind,
    pub points: Vec<CurvePoint>,
    /// The first row whose top-k rate reaches one half, if any.
    pub onset_row: Option<usize>,
    /// The row of the highest median probability.
    pub peak_median_row: Option<usize>,
}

/// Accumulates per-prompt values, then reduces them.
#[derive(Debug, Default)]
pub(crate) struct CurveBuilder {
    top_k: usize,
    n_rows: usize,
    /// `[kind][row]` → per-prompt mean probability.
    means: [Vec<Vec<f64>>; 3],
    /// `[kind][row]` → per-prompt top-k fraction.
    fractions: [Vec<Vec<f64>>; 3],
    /// `[kind][row]` → per-prompt best rank.
    ranks: [Vec<Vec<f64>>; 3],
}

impl CurveBuilder {
    pub fn new(top_k: usize) -> Self {
        CurveBuilder {
            top_k,
            ..Default::default()
        }
    }

    /// Add one prompt (nothing if it tracks no answer).
    pub fn push(&mut self, rec: &PromptRecord) {
        let Some(answer) = rec.answer() else { return };
        let n_rows = answer.cells.len();
        if n_rows > self.n_rows {
            self.n_rows = n_rows;
            for k in 0..3 {
                self.means[k].resize(n_rows, Vec::new());
                self.fractions[k].resize(n_rows, Vec::new());
                self.ranks[k].resize(n_rows, Vec::new());
            }
        }
        let tail = crate::prompt::tail_start(rec.tokens.iter().map(|t| t.kind));
        // Cells outside `--positions` (NaN) take no part.
        let computed = |p: usize| !answer.cells[n_rows - 1][p].prob.is_nan();
        for kind in KINDS {
            let positions: Vec<usize> = rec
                .tokens
                .iter()
                .enumerate()
                .filter(|&(p, t)| match kind {
                    CurveKind::Text => t.kind == TokenKind::Text,
                    CurveKind::Template => t.kind == TokenKind::Template && p >= tail,
                    CurveKind::Dummy => t.kind == TokenKind::Dummy,
                } && computed(p))
                .map(|(p, _)| p)
                .collect();
            if positions.is_empty() {
                continue;
            }
            for (row, cells) in answer.cells.iter().enumerate() {
                // Invalid cells (`--allow-nonfinite`, rank 0) take no part either.
                let positions: Vec<usize> = positions
                    .iter()
                    .copied()
                    .filter(|&p| cells[p].rank > 0)
                    .collect();
                if positions.is_empty() {
                    continue;
                }
                let n = positions.len() as f64;
                let mean = positions.iter().map(|&p| cells[p].prob).sum::<f64>() / n;
                let hits = positions
                    .iter()
                    .filter(|&&p| cells[p].rank as usize <= self.top_k)
                    .count();
                self.means[kind.index()][row].push(mean);
                self.fractions[kind.index()][row].push(hits as f64 / n);
                let best = positions.iter().map(|&p| cells[p].rank).min().unwrap_or(0);
                self.ranks[kind.index()][row].push(best as f64);
            }
        }
    }

    /// The curves, one per kind.
    pub fn finish(self) -> Vec<Curve> {
        let label = |row: usize| crate::grid::row_label(row, self.n_rows);
        KINDS
            .iter()
            .map(|&kind| {
                let k = kind.index();
                let points: Vec<CurvePoint> = (0..self.n_rows)
                    .filter(|&row| !self.means[k][row].is_empty())
                    .map(|row| {
                        let mut v = self.means[k][row].clone();
                        v.sort_by(f64::total_cmp);
                        let f = &self.fractions[k][row];
                        let mut ranks = self.ranks[k][row].clone();
                        ranks.sort_by(f64::total_cmp);
                        CurvePoint {
                            row,
                            label: label(row),
                            prompts: v.len(),
                            q1: quantile(&v, 0.25),
                            median: quantile(&v, 0.5),
                            q3: quantile(&v, 0.75),
                            rank_q1: quantile(&ranks, 0.25),
                            rank_median: quantile(&ranks, 0.5),
                            rank_q3: quantile(&ranks, 0.75),
                            topk_rate: f.iter().sum::<f64>() / f.len() as f64,
                        }
                    })
                    .collect();
                let onset_row = points.iter().find(|p| p.topk_rate >= 0.5).map(|p| p.row);
                let peak_median_row = points
                    .iter()
                    .max_by(|a, b| a.median.total_cmp(&b.median).then(b.row.cmp(&a.row)))
                    .map(|p| p.row);
                Curve {
                    kind,
                    points,
                    onset_row,
                    peak_median_row,
                }
            })
            .collect()
    }
}

/// Quantile `q` of sorted values, linear between order statistics (numpy's default).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let h = (sorted.len() - 1) as f64 * q;
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// How the answers were chosen and how often the greedy text had them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AnswerCounts {
    /// Prompts tracking a named answer (`answer` in the input).
    pub given: usize,
    /// Prompts tracking their greedy answer.
    pub auto: usize,
    /// Prompts tracking no answer (no `answer` and `--generate 0`).
    pub none: usize,
    /// Prompts with both an expected answer and a greedy text.
    pub checked: usize,
    /// Of those, how many greedy texts contain the expected answer.
    pub correct: usize,
}

/// The answer token's place in the top-k at the last input position (the one
/// whose output row is the model's next-token prediction).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LastPosition {
    /// Prompts with an answer.
    pub prompts: usize,
    /// How many have the answer in the top-k at the output row.
    pub in_topk_at_output: usize,
    /// How many have it in the top-k at some row.
    pub in_topk_at_some_row: usize,
    /// Median over prompts of the answer's output-row rank.
    pub median_output_rank: Option<f64>,
}

/// `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchSummary {
    pub lensmap_version: String,
    /// The model of the first finished prompt.
    pub model: Option<ModelInfo>,
    /// Input file name (without directories).
    pub input: String,
    /// `I/N` for a shard run.
    pub shard: Option<String>,
    /// Settings that shape the numbers.
    pub settings: serde_json::Value,
    /// Lines in the input file (blank lines included).
    pub lines: usize,
    /// Runnable prompts (in this shard).
    pub prompts: usize,
    /// Prompts with a finished result.
    pub done: usize,
    /// Bad lines and failed prompts.
    pub failed: usize,
    /// Every failure, by input line.
    pub errors: Vec<LineError>,
    pub answers: AnswerCounts,
    pub top_k: usize,
    pub n_rows: usize,
    pub last_position: LastPosition,
    pub curves: Vec<Curve>,
}

/// Per-prompt tallies for [`AnswerCounts`] and [`LastPosition`].
#[derive(Debug, Default)]
pub struct Tally {
    pub answers: AnswerCounts,
    last_ranks: Vec<f64>,
    last: LastPosition,
}

impl Tally {
    pub fn push(&mut self, rec: &PromptRecord) {
        match (&rec.rehearsal, rec.item.answer.is_some()) {
            (None, _) => self.answers.none += 1,
            (Some(_), true) => self.answers.given += 1,
            (Some(_), false) => self.answers.auto += 1,
        }
        if let Some(c) = rec.correct {
            self.answers.checked += 1;
            self.answers.correct += c as usize;
        }
        if let Some(p) = rec.rehearsal.as_ref().and_then(|r| r.positions.last()) {
            self.last.prompts += 1;
            self.last.in_topk_at_output += p.in_topk_at_output as usize;
            self.last.in_topk_at_some_row += p.first_topk_row.is_some() as usize;
            self.last_ranks.push(p.output_rank as f64);
        }
    }

    pub fn finish(mut self) -> (AnswerCounts, LastPosition) {
        self.last_ranks.sort_by(f64::total_cmp);
        if !self.last_ranks.is_empty() {
            self.last.median_output_rank = Some(quantile(&self.last_ranks, 0.5));
        }
        (self.answers, self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 2.5);
        assert_eq!(quantile(&v, 0.25), 1.75);
        assert_eq!(quantile(&v, 0.75), 3.25);
        assert_eq!(quantile(&[5.0], 0.25), 5.0);
    }
}
