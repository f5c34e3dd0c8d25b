//! Is the answer rehearsed? For every position after the user's text (the
//! chat template's tail and the dummies), where in depth the answer token
//! first enters the top-k, where it ranks best, and whether it is still in
//! the top-k at the output row.
//!
//! [`summarize`] is a pure function of a [`LensGrid`] that carries a tracked
//! token with role [`TrackedRole::Answer`]; `Session::run` stores its result
//! in [`LensGrid::rehearsal`], the CLI prints it with [`format_table`], and
//! `lensmap batch` aggregates it over prompts.

use std::fmt::Write;

pub use crate::grid::{AnswerSource, PositionRehearsal, RehearsalSummary};
use crate::grid::{LensGrid, TrackedRole};

/// The rehearsal of the grid's first tracked token with role `Answer`, over
/// every position after the last `text` token (all positions if there is no
/// text token). `None` when the grid tracks no answer.
pub fn summarize(
    grid: &LensGrid,
    top_k: usize,
    source: AnswerSource,
    skip: usize,
) -> Option<RehearsalSummary> {
    let answer = grid
        .tracked
        .iter()
        .find(|t| t.role == TrackedRole::Answer)?;
    let n_rows = answer.cells.len();
    if n_rows == 0 {
        return None;
    }
    let start = grid.tail_start();
    let k = top_k as u32;
    let positions = (start..grid.tokens.len())
        // Cells outside `--positions`, and positions whose output cell is
        // invalid (`--allow-nonfinite`), have no rank to summarise.
        .filter(|&pos| !answer.cells[n_rows - 1][pos].prob.is_nan())
        .map(|pos| {
            let cell = |row: usize| answer.cells[row][pos];
            // Rank 0 is no rank: an invalid cell (`--allow-nonfinite`)
            // counts neither as in the top-k nor as the best row.
            let valid = |row: usize| cell(row).rank > 0;
            let in_topk = |row: usize| valid(row) && cell(row).rank <= k;
            let first_topk_row = (0..n_rows).find(|&r| in_topk(r));
            let last = n_rows - 1;
            let stable_topk_row = if in_topk(last) {
                let mut r = last;
                while r > 0 && in_topk(r - 1) {
                    r -= 1;
                }
                Some(r)
            } else {
                None
            };
            // `min_by_key` keeps the first minimum: the earliest row on ties.
            let best_row = (0..n_rows)
                .filter(|&r| valid(r))
                .min_by_key(|&r| cell(r).rank)
                .unwrap_or(last);
            PositionRehearsal {
                pos,
                kind: grid.tokens[pos].kind,
                token: grid.tokens[pos].text.clone(),
                first_topk_row,
                stable_topk_row,
                best_row,
                best_rank: cell(best_row).rank,
                best_prob: cell(best_row).prob,
                output_rank: cell(last).rank,
                output_prob: cell(last).prob,
                in_topk_at_output: in_topk(last),
            }
        })
        .collect();
    Some(RehearsalSummary {
        answer_id: answer.id,
        answer_token: answer.token_text.clone(),
        source,
        skip,
        top_k,
        n_rows,
        positions,
    })
}

/// A token for a terminal column: visible newlines, cut to `width` characters.
fn show(text: &str, width: usize) -> String {
    let s = text.replace('\n', "\\n");
    if s.chars().count() > width {
        let cut: String = s.chars().take(width.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        s
    }
}

/// The terminal table: one line per template and dummy position.
pub fn format_table(s: &RehearsalSummary) -> String {
    let mut out = String::new();
    let source = match s.source {
        AnswerSource::Given => "given".to_string(),
        AnswerSource::Auto if s.skip == 0 => "greedy answer".to_string(),
        AnswerSource::Auto => format!("greedy answer, token {} (skip {})", s.skip + 1, s.skip),
    };
    let _ = writeln!(
        out,
        "rehearsal of {:?} (id {}, {source}): rank by lens row, top-{} = rank ≤ {}",
        s.answer_token, s.answer_id, s.top_k, s.top_k
    );
    let enters = format!("enters top-{}", s.top_k);
    let at_out = format!("top-{} at output", s.top_k);
    let _ = writeln!(
        out,
        "{:>4} {:<12} {:<8} {:>14} {:>8} {:>9} {:>9} {:>16}",
        "pos", "token", "kind", enters, "best row", "best rank", "best prob", at_out
    );
    for p in &s.positions {
        let kind = p.kind.as_str();
        let first = p
            .first_topk_row
            .map_or("never".to_string(), |r| s.row_label(r));
        let at_output = if p.in_topk_at_output {
            "yes".to_string()
        } else {
            format!("no (rank {})", p.output_rank)
        };
        let _ = writeln!(
            out,
            "{:>4} {:<12} {:<8} {:>14} {:>8} {:>9} {:>9.2e} {:>16}",
            p.pos,
            show(&p.token, 12),
            kind,
            first,
            s.row_label(p.best_row),
            p.best_rank,
            p.best_prob,
            at_output
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::{ModelInfo, ProbRank, TokenInfo, TokenKind, TrackedToken, FORMAT_VERSION};

    /// A grid of `ranks[row][pos]` for the answer, with kinds per position.
    fn grid(kinds: &[TokenKind], ranks: &[Vec<u32>]) -> LensGrid {
        let n = kinds.len();
        let rows = ranks.len();
        let cells: Vec<Vec<ProbRank>> = ranks
            .iter()
            .map(|r| {
                r.iter()
                    .map(|&rank| ProbRank {
                        prob: 1.0 / rank as f64,
                        rank,
                    })
                    .collect()
            })
            .collect();
        LensGrid {
            format_version: FORMAT_VERSION,
            lensmap_version: "test".into(),
            model: ModelInfo {
                file: "m".into(),
                arch: "llama".into(),
                n_layers: rows - 1,
                d_model: 4,
                vocab_size: 100,
                precision: "f32".into(),
                lens_precision: "f32".into(),
                lens_kernel: None,
            },
            template_source: "none".into(),
            prompt_text: String::new(),
            tokens: kinds
                .iter()
                .enumerate()
                .map(|(i, &kind)| TokenInfo {
                    id: i as u32,
                    text: format!("t{i}"),
                    kind,
                })
                .collect(),
            n_rows: rows,
            entropy: vec![vec![0.0; n]; rows],
            topk: vec![vec![Vec::new(); n]; rows],
            kl_to_final: vec![vec![0.0; n]; rows],
            next_token: vec![vec![None; n]; rows],
            invalid: Vec::new(),
            tracked: vec![TrackedToken {
                text: " A".into(),
                id: 7,
                token_text: " A".into(),
                role: TrackedRole::Answer,
                cells,
            }],
            answer: None,
            rehearsal: None,
            lens: Default::default(),
            more_lenses: Vec::new(),
        }
    }

    #[test]
    fn positions_after_the_last_text_token() {
        use TokenKind::*;
        let kinds = [Template, Text, Text, Template, Dummy, Dummy];
        let ranks = vec![
            vec![50, 50, 50, 50, 50, 50],
            vec![50, 50, 50, 3, 9, 50],
            vec![50, 50, 50, 8, 2, 40],
            vec![50, 50, 50, 1, 4, 12],
        ];
        let s = summarize(&grid(&kinds, &ranks), 5, AnswerSource::Given, 0).unwrap();
        assert_eq!(
            s.positions.iter().map(|p| p.pos).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        let p = &s.positions[0];
        assert_eq!(
            (p.first_topk_row, p.stable_topk_row, p.best_row, p.best_rank),
            (Some(1), Some(3), 3, 1)
        );
        assert!(p.in_topk_at_output);
        let p = &s.positions[1];
        assert_eq!(
            (p.first_topk_row, p.stable_topk_row, p.best_row, p.best_rank),
            (Some(2), Some(2), 2, 2)
        );
        assert_eq!((p.output_rank, p.in_topk_at_output), (4, true));
        let p = &s.positions[2];
        assert_eq!(
            (p.first_topk_row, p.stable_topk_row, p.best_row, p.best_rank),
            (None, None, 3, 12)
        );
        assert!(!p.in_topk_at_output);
        assert_eq!(s.dummies().count(), 2);
        let table = format_table(&s);
        assert!(table.contains("never"), "{table}");
        assert!(table.contains("no (rank 12)"), "{table}");
        assert!(table.contains("output"), "{table}");
    }

    #[test]
    fn ties_pick_the_earliest_row_and_no_answer_gives_none() {
        use TokenKind::*;
        let ranks = vec![vec![9, 9], vec![1, 2], vec![1, 2]];
        let mut g = grid(&[Text, Dummy], &ranks);
        let s = summarize(&g, 1, AnswerSource::Auto, 5).unwrap();
        assert_eq!(s.positions.len(), 1);
        assert_eq!((s.positions[0].best_row, s.positions[0].best_rank), (1, 2));
        assert_eq!((s.source, s.skip), (AnswerSource::Auto, 5));
        g.tracked[0].role = TrackedRole::Target;
        assert!(summarize(&g, 1, AnswerSource::Given, 0).is_none());
        // No text at all (--raw would mark everything text; a grid of only
        // template tokens): every position counts.
        let g = grid(&[Template, Dummy], &ranks);
        assert_eq!(
            summarize(&g, 1, AnswerSource::Given, 0)
                .unwrap()
                .positions
                .len(),
            2
        );
    }
}
