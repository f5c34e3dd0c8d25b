//! The logit lens: every recorded residual row read through the model's own
//! final norm and unembedding ([`Model::unembed`]), reduced to [`CellStats`]
//! a block of cells at a time.
//!
//! Memory stays bounded whatever the prompt length: positions go in chunks,
//! and for each chunk the final row is computed first (every other row's KL
//! needs it), then the other rows a few at a time. Only one block of logits
//! (`LOGIT_BUDGET` floats) and one chunk of final distributions exist at once.

use std::ops::Range;

use candle_core::Tensor;
use rayon::prelude::*;

use std::sync::Arc;

use crate::kernels::bf16::Bf16Kernel;
use crate::model::{KvCache, Model, ResidualTrace};
use crate::prompt::TokenKind;
use crate::stats::{cell_stats, CellQuery, CellStats, FinalDist};
use crate::tuned::TunedLens;
use crate::{Error, OptionName, Result};

/// Floats of logits alive at once (64 MiB), unless that is fewer than
/// `MIN_CELLS_PER_MATMUL` rows of logits.
const LOGIT_BUDGET: usize = 16 << 20;
/// Each matmul streams the whole `[vocab, d]` head from memory, so it needs
/// enough rows to stay compute-bound: with Gemma's 262k vocab the 64 MiB budget
/// alone gave 64 rows and ran at half speed (measured 176 vs 350 GFLOP/s).
const MIN_CELLS_PER_MATMUL: usize = 256;
/// Floats of final-row probabilities alive at once (32 MiB).
const FINAL_BUDGET: usize = 8 << 20;

/// Bytes the lens allocates at once for a vocabulary of `vocab`: one block of
/// logits (reused by every matmul; the soft-cap works in place), the
/// final-row distributions, and per-cell scratch. The memory preflight
/// counts it beside the model.
pub(crate) fn working_bytes(vocab: usize) -> u64 {
    let cells = (LOGIT_BUDGET / vocab.max(1)).max(MIN_CELLS_PER_MATMUL);
    let logits = (cells * vocab * 4) as u64;
    logits + (FINAL_BUDGET * 4) as u64 + (16 << 20)
}

/// How [`apply_lens`] cuts `t` computed positions of `n_rows` lens rows into
/// matmuls: `(chunk, blocks)`, positions per chunk and blocks of rows per
/// chunk; block `b` of a chunk holds rows `b·n_rows/blocks ..
/// (b+1)·n_rows/blocks` of the lens order ([`row_block`]), so one matmul
/// multiplies about `n_rows / blocks × chunk` residuals by the head. The
/// blocks are even (6 or 7 rows, not four of 7 and one of 3: a thin block
/// streams the whole head for little work) and stay within the rows the
/// kernels keep apart (with AVX2 or AVX-512), so no number depends on the
/// cut. The product's benchmark (`examples/lens_gemm.rs`) times the same
/// blocks.
pub fn block_shape(vocab: usize, t: usize, n_rows: usize) -> (usize, usize) {
    let cells_per_matmul = (LOGIT_BUDGET / vocab.max(1))
        .max(MIN_CELLS_PER_MATMUL)
        .min(crate::model::weights::row_independent_rows().unwrap_or(usize::MAX));
    let chunk = (FINAL_BUDGET / vocab.max(1))
        .clamp(1, t.max(1))
        .min(cells_per_matmul);
    let most = (cells_per_matmul / chunk).max(1);
    (chunk, n_rows.max(1).div_ceil(most))
}

/// Block `b` of `blocks` over `n_rows` rows: the range of the lens order
/// it holds.
pub fn row_block(n_rows: usize, blocks: usize, b: usize) -> Range<usize> {
    b * n_rows / blocks..(b + 1) * n_rows / blocks
}

/// Which lens reads the residual rows before the model's own unembedding.
#[derive(Debug, Clone, Default)]
pub enum Lens {
    /// The logit lens: every row straight through [`Model::unembed`].
    #[default]
    Logit,
    /// The tuned lens: row `i < n_layers` through translator `i` first.
    Tuned(Arc<TunedLens>),
}

impl Lens {
    /// `logit` or `tuned`, as in the JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Lens::Logit => "logit",
            Lens::Tuned(_) => "tuned",
        }
    }

    /// Parse `--lens`: `logit`, `tuned:DIR`, or several joined by commas
    /// (`logit,tuned:DIR`), loading each tuned lens.
    pub fn parse_list(spec: &str) -> Result<Vec<Lens>> {
        let lenses = spec
            .split(',')
            .map(|one| match one.trim() {
                "logit" => Ok(Lens::Logit),
                s => match s.strip_prefix("tuned:") {
                    Some(dir) if !dir.is_empty() => Ok(Lens::Tuned(Arc::new(TunedLens::open(
                        std::path::Path::new(dir),
                    )?))),
                    _ => Err(Error::option(
                        OptionName::Lens,
                        format!(
                            "a lens is `logit`, `tuned:DIR` or both joined by a comma, got `{s}`"
                        ),
                    )),
                },
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(lenses)
    }

    /// Refuse a lens that does not fit `model` before any work.
    pub fn check(&self, model: &Model) -> Result<()> {
        match self {
            Lens::Logit => Ok(()),
            Lens::Tuned(t) => t.check(&model.cfg),
        }
    }

    /// The per-row hook: the residual that [`Model::unembed`] reads at lens
    /// row `row` (`h`: `[M, d]`, rows of that lens row only).
    fn prepare(&self, row: usize, h: Tensor) -> Result<Tensor> {
        match self {
            Lens::Logit => Ok(h),
            Lens::Tuned(t) => t.translate(row, &h),
        }
    }
}

/// How the lens multiplies by the unembedding (`--lens-precision`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LensPrecision {
    /// Exactly the model's own f32 final-logit path ([`Model::unembed`]).
    #[default]
    F32,
    /// The final-normed residual and the head rounded to bf16, products
    /// summed in f32 ([`crate::kernels::bf16`]); soft-cap and statistics as in f32.
    Bf16,
}

impl LensPrecision {
    /// `f32` or `bf16`, as in the JSON's `model.lens_precision`.
    pub fn label(self) -> &'static str {
        match self {
            LensPrecision::F32 => "f32",
            LensPrecision::Bf16 => "bf16",
        }
    }

    /// The kernel that runs the product on this CPU: `None` for f32 (candle's gemm).
    pub fn kernel(self) -> Option<Bf16Kernel> {
        match self {
            LensPrecision::F32 => None,
            LensPrecision::Bf16 => Some(Bf16Kernel::detect()),
        }
    }
}

impl std::str::FromStr for LensPrecision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(LensPrecision::F32),
            "bf16" => Ok(LensPrecision::Bf16),
            _ => Err(Error::option(
                OptionName::LensPrecision,
                format!("the lens precision must be `f32` or `bf16`, got `{s}`"),
            )),
        }
    }
}

/// Where the lens is computed (`--positions`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PositionSpec {
    /// Every position.
    #[default]
    All,
    /// The positions after the user's text: the template's tail and dummies
    /// (what rehearsal looks at).
    Tail,
    /// Positions `A..B` (B exclusive).
    Range(usize, usize),
}

impl PositionSpec {
    /// The positions to compute in a prompt of these token kinds; `None` = all.
    pub(crate) fn resolve(self, kinds: &[TokenKind]) -> Result<Option<Range<usize>>> {
        let t = kinds.len();
        match self {
            PositionSpec::All => Ok(None),
            PositionSpec::Tail => {
                let start = crate::prompt::tail_start(kinds.iter().copied());
                if start >= t {
                    return Err(Error::option(
                        OptionName::Positions,
                        "the positions `tail`: no position follows the user's text",
                    ));
                }
                Ok(Some(start..t))
            }
            PositionSpec::Range(a, b) if b <= t => Ok(Some(a..b)),
            PositionSpec::Range(a, b) => Err(Error::option(
                OptionName::Positions,
                format!("the positions `{a}..{b}` go past the prompt's {t} positions"),
            )),
        }
    }
}

impl std::str::FromStr for PositionSpec {
    type Err = String;
    /// `all`, `tail` or `A..B`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "all" => Ok(PositionSpec::All),
            "tail" => Ok(PositionSpec::Tail),
            _ => crate::parse::window(s)
                .map(|(a, b)| PositionSpec::Range(a, b))
                .map_err(|e| format!("expected `all`, `tail` or A..B: {e}")),
        }
    }
}

/// What the lens reports for every cell.
#[derive(Debug, Clone)]
pub struct LensQuery {
    /// Top-k size (≥ 1).
    pub top_k: usize,
    /// Ids followed through every cell (target, answer, distractors).
    pub tracked: Vec<u32>,
    /// The lens that reads the rows.
    pub lens: Lens,
    /// f32 (exact, the default) or bf16.
    pub precision: LensPrecision,
    /// Positions whose cells are computed; `None` = all. Cells outside are
    /// [`CellStats::absent`] (NaN, written as `null` in the JSON).
    pub positions: Option<Range<usize>>,
}

impl LensQuery {
    /// The top `k` tokens of every cell through the logit lens, nothing tracked.
    pub fn top(k: usize) -> Self {
        LensQuery {
            top_k: k,
            tracked: Vec::new(),
            lens: Lens::Logit,
            precision: LensPrecision::F32,
            positions: None,
        }
    }

    /// The errors [`apply_lens`] reports before any work.
    fn check(&self, vocab: usize) -> Result<()> {
        if self.top_k == 0 {
            return Err(Error::InvalidOption("top-k must be at least 1".into()));
        }
        if let Some(&bad) = self.tracked.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::InvalidOption(format!(
                "tracked id `{bad}` is outside the vocabulary"
            )));
        }
        Ok(())
    }
}

/// Statistics for every `[row][pos]` cell.
pub type CellGrid = Vec<Vec<CellStats>>;

/// The lens of one sequence: a forward pass over `ids` (fresh cache,
/// recording every residual row), then [`apply_lens`] on it. No generation;
/// [`crate::run::Session::run`] keeps the trace alive across generation instead.
pub fn lens_of_ids(model: &Model, ids: &[u32], q: &LensQuery) -> Result<CellGrid> {
    q.check(model.cfg.sizes.vocab_size)?;
    let mut trace = ResidualTrace::default();
    model.forward(ids, &mut KvCache::default(), Some(&mut trace))?;
    apply_lens(model, &trace, ids, q)
}

/// Apply the lens to a trace of `ids`. Row `n_layers` of the result is the
/// model's own output distribution.
pub fn apply_lens(
    model: &Model,
    trace: &ResidualTrace,
    ids: &[u32],
    q: &LensQuery,
) -> Result<CellGrid> {
    let vocab = model.cfg.sizes.vocab_size;
    q.check(vocab)?;
    q.lens.check(model)?;
    let n_rows = trace.rows.len();
    let t = ids.len();
    let last = n_rows - 1;
    let span = q.positions.clone().unwrap_or(0..t);
    if span.start >= span.end || span.end > t {
        return Err(Error::option(
            OptionName::Positions,
            format!(
                "the positions `{}..{}` are outside the prompt's {t} positions",
                span.start, span.end
            ),
        ));
    }
    // Cut by the positions computed, not the prompt's: `--positions tail`
    // then fills each matmul with more rows instead of re-reading the head.
    let (chunk, blocks) = block_shape(vocab, span.len(), n_rows);
    let absent = CellStats::absent(q.tracked.len());
    let mut grid: CellGrid = (0..n_rows)
        .map(|_| {
            let mut row = Vec::with_capacity(t);
            row.resize(span.start, absent.clone());
            row
        })
        .collect();
    // One block of logits, reused by every matmul and kept by the model.
    let mut scratch = model.logit_buffer();
    let logits = &mut scratch.buf;
    for p0 in span.clone().step_by(chunk) {
        let c = chunk.min(span.end - p0);
        let next_ids: Vec<Option<u32>> = (p0..p0 + c).map(|p| ids.get(p + 1).copied()).collect();
        fn query<'a>(
            q: &'a LensQuery,
            next: Option<u32>,
            final_dist: Option<&'a FinalDist>,
        ) -> CellQuery<'a> {
            CellQuery {
                k: q.top_k,
                final_dist,
                next_id: next,
                tracked: &q.tracked,
            }
        }

        // The final row leads the first block: its distributions are the KL
        // reference of every other row. Each matmul keeps rows apart, so
        // which rows share a block changes no number.
        let order: Vec<usize> = std::iter::once(last).chain(0..last).collect();
        let mut finals: Vec<FinalDist> = Vec::with_capacity(c);
        for b in 0..blocks {
            let rows = &order[row_block(n_rows, blocks, b)];
            // A long lens, or one whose `serve` client left, stops between
            // blocks of rows as a forward pass does.
            crate::model::cancel::check()?;
            let h: Vec<Tensor> = rows
                .iter()
                // The final row has no translator: `prepare` returns it as is.
                .map(|&r| q.lens.prepare(r, trace.rows[r].narrow(0, p0, c)?))
                .collect::<Result<_>>()?;
            let h = match &h[..] {
                [one] => one.clone(),
                _ => Tensor::cat(&h, 0)?,
            };
            model.unembed_into(&h, q.precision.kernel(), logits)?;
            let leads = rows[0] == last;
            if leads {
                let (f, stats): (Vec<FinalDist>, Vec<CellStats>) = logits[..c * vocab]
                    .par_chunks(vocab)
                    .enumerate()
                    .map(|(i, z)| {
                        (
                            FinalDist::of(z),
                            cell_stats(z, &query(q, next_ids[i], None)),
                        )
                    })
                    .unzip();
                finals = f;
                grid[last].extend(stats);
            }
            let others = &rows[usize::from(leads)..];
            let stats: Vec<CellStats> = logits[(rows.len() - others.len()) * c * vocab..]
                .par_chunks(vocab)
                .enumerate()
                .map(|(i, z)| {
                    let pos = i % c;
                    cell_stats(z, &query(q, next_ids[pos], Some(&finals[pos])))
                })
                .collect();
            for (i, s) in stats.into_iter().enumerate() {
                grid[others[i / c]].push(s);
            }
        }
    }
    grid.iter_mut()
        .for_each(|row| row.resize(t, absent.clone()));
    if !model.allow_nonfinite {
        // The forward pass refuses a non-finite residual; this catches the
        // rest (a head at rest or a final norm that overflows).
        let bad = grid
            .iter()
            .enumerate()
            .find_map(|(r, row)| row.iter().position(|c| c.invalid).map(|p| (r, p)));
        if let Some((r, p)) = bad {
            return Err(Error::NonFinite {
                what: format!("the lens's logits at row {r}, position {p}"),
                value: f64::NAN,
            });
        }
    }
    Ok(grid)
}
