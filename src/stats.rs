//! Statistics of one cell: a lens distribution over the vocabulary, reduced
//! on the spot to entropy, top-k, KL to the final distribution, and the
//! probability and rank of chosen tokens. The logits are never kept.
//!
//! Sums run in f64 (the references use float64 log-softmax); the exponentials
//! are f32, which moves entropies by well under 1e-6 nats (measured by
//! `verify_independent.py`: f32 statistics move them ≤ 8.3e-7).

use serde::{Deserialize, Serialize};

use crate::kernels::exp_neg;

/// Probability of one token in one cell, and its rank (1 = the top token).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct ProbRank {
    /// NaN for a cell outside `--positions` (`null` in the JSON).
    #[serde(deserialize_with = "nan_f64")]
    pub prob: f64,
    pub rank: u32,
}

/// A number, or `null` (a skipped cell; serde_json writes NaN as `null`) as NaN.
fn nan_f64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The reduced statistics of one (row, position) cell.
#[derive(Debug, Clone, PartialEq)]
pub struct CellStats {
    /// Entropy in nats.
    pub entropy: f64,
    /// `(id, prob)`, most probable first.
    pub topk: Vec<(u32, f64)>,
    /// KL(final ‖ this) in nats; 0 without a reference distribution.
    pub kl_to_final: f64,
    /// The next input token's probability and rank, if there is one.
    pub next: Option<ProbRank>,
    /// One per tracked id, in order.
    pub tracked: Vec<ProbRank>,
    /// The logits held NaN or infinity (only reachable with
    /// `--allow-nonfinite`): every value is NaN and the cell is drawn hatched.
    pub invalid: bool,
}

impl CellStats {
    /// A cell the lens skipped (`--positions`): NaN values, no top-k, rank 0
    /// for each of `n_tracked` tokens. NaN is written as `null` in the JSON
    /// and drawn as absent.
    pub fn absent(n_tracked: usize) -> Self {
        CellStats {
            entropy: f64::NAN,
            topk: Vec::new(),
            kl_to_final: f64::NAN,
            next: None,
            tracked: vec![
                ProbRank {
                    prob: f64::NAN,
                    rank: 0
                };
                n_tracked
            ],
            invalid: false,
        }
    }

    /// A cell whose logits are not all finite: no values, like
    /// [`CellStats::absent`], but flagged so it is never mistaken for a
    /// skipped cell nor drawn as a number.
    pub fn invalid(n_tracked: usize) -> Self {
        CellStats {
            invalid: true,
            ..Self::absent(n_tracked)
        }
    }
}

/// The final row's distribution at one position, which every other row of
/// that position is compared with.
#[derive(Debug, Clone)]
pub struct FinalDist {
    /// Probabilities `[vocab]`.
    pub p: Vec<f32>,
    /// Σ p log p (= −entropy), f64; NaN when the final logits were not all
    /// finite, so every KL against it is NaN rather than a clamped 0.
    pub neg_entropy: f64,
}

/// The log-sum-exp pieces of one logit vector.
struct Softmax {
    max: f32,
    /// Σ exp(z − max), f64.
    sum: f64,
    /// Σ exp(z − max)·(z − max), f64: gives the entropy without a second pass.
    sum_ez: f64,
}

impl Softmax {
    /// Whether every logit was finite: one NaN or infinity makes `max`, the
    /// sum or the weighted sum non-finite (an infinite `z − max` gives
    /// `0 · ∞ = NaN` in `sum_ez`), so three checks cover the whole vector.
    fn is_finite(&self) -> bool {
        self.max.is_finite() && self.sum.is_finite() && self.sum_ez.is_finite()
    }

    #[inline(always)]
    fn of(logits: &[f32]) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // Eight independent accumulators let the compiler vectorise the exps
        // and keep the f64 sums' rounding small.
        let mut sum = [0f64; 8];
        let mut sum_ez = [0f64; 8];
        let chunks = logits.chunks_exact(8);
        let tail = chunks.remainder();
        for c in chunks {
            for j in 0..8 {
                let d = c[j] - max;
                let e = exp_neg(d);
                sum[j] += e as f64;
                sum_ez[j] += (e * d) as f64;
            }
        }
        for &z in tail {
            let d = z - max;
            let e = exp_neg(d);
            sum[0] += e as f64;
            sum_ez[0] += (e * d) as f64;
        }
        Self {
            max,
            sum: sum.iter().sum(),
            sum_ez: sum_ez.iter().sum(),
        }
    }

    /// log Σ exp(z − max).
    fn log_sum(&self) -> f64 {
        self.sum.ln()
    }

    fn entropy(&self) -> f64 {
        // H = −Σ p (z − lse) = ln S − Σ e (z − max) / S, with lse = max + ln S.
        (self.log_sum() - self.sum_ez / self.sum).max(0.0)
    }

    fn log_prob(&self, z: f32) -> f64 {
        (z - self.max) as f64 - self.log_sum()
    }
}

/// Probability and rank (1 = top) of `id`; ties count in the token's favour.
pub fn prob_rank(logits: &[f32], id: u32) -> ProbRank {
    let sm = Softmax::of(logits);
    prob_rank_with(logits, &sm, id)
}

#[inline(always)]
fn prob_rank_with(logits: &[f32], sm: &Softmax, id: u32) -> ProbRank {
    let z = logits[id as usize];
    let above = logits.iter().filter(|&&x| x > z).count();
    ProbRank {
        prob: sm.log_prob(z).exp(),
        rank: above as u32 + 1,
    }
}

/// The `k` largest logits as `(id, logit)`, largest first; equal logits keep
/// the lower id first.
#[inline(always)]
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    let offer = |best: &mut Vec<(u32, f32)>, i: usize, z: f32| {
        if best.len() == k && z <= best[k - 1].1 {
            return;
        }
        let at = best.partition_point(|&(_, b)| b >= z);
        best.insert(at, (i as u32, z));
        best.truncate(k);
    };
    // A block whose largest logit cannot enter is skipped whole: the
    // vectorised max replaces a branch per logit, and the result is the same.
    const BLOCK: usize = 64;
    for (b, block) in logits.chunks(BLOCK).enumerate() {
        let full = best.len() == k;
        if full && block.iter().copied().fold(f32::NEG_INFINITY, f32::max) <= best[k - 1].1 {
            continue;
        }
        for (j, &z) in block.iter().enumerate() {
            offer(&mut best, b * BLOCK + j, z);
        }
    }
    best
}

impl FinalDist {
    /// The final row's distribution from its logits.
    pub fn of(logits: &[f32]) -> Self {
        let sm = Softmax::of(logits);
        let inv = 1.0 / sm.sum;
        let p = logits
            .iter()
            .map(|&z| ((exp_neg(z - sm.max) as f64) * inv) as f32)
            .collect();
        Self {
            p,
            neg_entropy: if sm.is_finite() {
                -sm.entropy()
            } else {
                f64::NAN
            },
        }
    }
}

/// What to compute for a cell besides entropy and top-k.
pub struct CellQuery<'a> {
    pub k: usize,
    /// The final distribution at this position; `None` for the final row itself (KL = 0).
    pub final_dist: Option<&'a FinalDist>,
    /// The next input token, if any.
    pub next_id: Option<u32>,
    pub tracked: &'a [u32],
}

/// Reduce one cell's logits `[vocab]` to its statistics.
pub fn cell_stats(logits: &[f32], q: &CellQuery) -> CellStats {
    crate::kernels::dispatch!(cell_stats_portable(logits, q))
}

#[inline(always)]
fn cell_stats_portable(logits: &[f32], q: &CellQuery) -> CellStats {
    let sm = Softmax::of(logits);
    if !sm.is_finite() {
        return CellStats::invalid(q.tracked.len());
    }
    let ls = sm.log_sum();
    let topk = top_k(logits, q.k)
        .into_iter()
        .map(|(id, z)| (id, sm.log_prob(z).exp()))
        .collect();
    let kl_to_final = match q.final_dist {
        // No KL against an invalid final row (NaN, not a clamped 0).
        Some(f) if f.neg_entropy.is_nan() => f64::NAN,
        // KL = Σ p_f (log p_f − log p) = −H_f − Σ p_f (z − max) + ln S.
        Some(f) => {
            let mut acc = [0f64; 4];
            let chunks = f.p.chunks_exact(4).zip(logits.chunks_exact(4));
            for (p, z) in chunks {
                for j in 0..4 {
                    acc[j] += p[j] as f64 * (z[j] - sm.max) as f64;
                }
            }
            let n = f.p.len() / 4 * 4;
            for (p, z) in f.p[n..].iter().zip(&logits[n..]) {
                acc[0] += *p as f64 * (z - sm.max) as f64;
            }
            let cross: f64 = acc.iter().sum();
            (f.neg_entropy - cross + ls).max(0.0)
        }
        None => 0.0,
    };
    CellStats {
        entropy: sm.entropy(),
        topk,
        kl_to_final,
        next: q.next_id.map(|id| prob_rank_with(logits, &sm, id)),
        tracked: q
            .tracked
            .iter()
            .map(|&id| prob_rank_with(logits, &sm, id))
            .collect(),
        invalid: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact statistics in f64 for comparison.
    fn exact(logits: &[f32]) -> Vec<f64> {
        let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let s: f64 = logits.iter().map(|&z| (z as f64 - m).exp()).sum();
        logits.iter().map(|&z| (z as f64 - m).exp() / s).collect()
    }

    #[test]
    fn entropy_matches_direct_sum() {
        let logits: Vec<f32> = (0..1001)
            .map(|i| ((i * 37 % 101) as f32 * 0.13).sin() * 7.0)
            .collect();
        let p = exact(&logits);
        let h: f64 = -p
            .iter()
            .filter(|&&x| x > 0.0)
            .map(|x| x * x.ln())
            .sum::<f64>();
        let got = cell_stats(
            &logits,
            &CellQuery {
                k: 3,
                final_dist: None,
                next_id: None,
                tracked: &[],
            },
        );
        assert!((got.entropy - h).abs() < 1e-6, "{} vs {}", got.entropy, h);
        // Uniform logits: entropy ln V.
        let flat = vec![0.5f32; 4096];
        let got = cell_stats(
            &flat,
            &CellQuery {
                k: 1,
                final_dist: None,
                next_id: None,
                tracked: &[],
            },
        );
        assert!((got.entropy - (4096f64).ln()).abs() < 1e-9);
    }

    #[test]
    fn kl_matches_direct_sum() {
        let a: Vec<f32> = (0..777).map(|i| (i as f32 * 0.37).cos() * 5.0).collect();
        let b: Vec<f32> = (0..777).map(|i| (i as f32 * 0.11).sin() * 4.0).collect();
        let (pa, pb) = (exact(&a), exact(&b));
        let kl: f64 = pa.iter().zip(&pb).map(|(x, y)| x * (x.ln() - y.ln())).sum();
        let f = FinalDist::of(&a);
        let got = cell_stats(
            &b,
            &CellQuery {
                k: 1,
                final_dist: Some(&f),
                next_id: None,
                tracked: &[],
            },
        );
        assert!(
            (got.kl_to_final - kl).abs() < 1e-5,
            "{} vs {}",
            got.kl_to_final,
            kl
        );
        // KL of a distribution with itself is 0.
        let same = cell_stats(
            &a,
            &CellQuery {
                k: 1,
                final_dist: Some(&f),
                next_id: None,
                tracked: &[],
            },
        );
        assert!(same.kl_to_final < 1e-6);
    }

    #[test]
    fn nonfinite_logits_make_an_invalid_cell_not_zero_entropy() {
        let q = CellQuery {
            k: 2,
            final_dist: None,
            next_id: Some(1),
            tracked: &[0],
        };
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut z = vec![0.5f32, 1.0, -2.0, 3.0];
            z[2] = bad;
            let c = cell_stats(&z, &q);
            // `invalid` is what tells this cell from a skipped one.
            assert!(c.invalid, "{bad}: {c:?}");
            assert!(c.entropy.is_nan() && c.topk.is_empty() && c.next.is_none());
            assert_eq!(c.tracked[0].rank, 0);
            // A finite row against an invalid final row: no KL, not 0.
            let f = FinalDist::of(&z);
            let row = cell_stats(
                &[0.5, 1.0, -2.0, 3.0],
                &CellQuery {
                    final_dist: Some(&f),
                    ..q
                },
            );
            assert!(!row.invalid && row.kl_to_final.is_nan() && row.entropy > 0.0);
        }
    }

    #[test]
    fn top_k_and_rank() {
        let logits = [0.1f32, 3.0, -1.0, 3.0, 2.5, 0.0];
        assert_eq!(top_k(&logits, 3), vec![(1, 3.0), (3, 3.0), (4, 2.5)]);
        assert_eq!(prob_rank(&logits, 4).rank, 3);
        assert_eq!(prob_rank(&logits, 3).rank, 1);
        assert_eq!(prob_rank(&logits, 2).rank, 6);
        let p = exact(&logits);
        assert!((prob_rank(&logits, 0).prob - p[0]).abs() < 1e-7);
    }
}
