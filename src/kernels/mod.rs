//! Small numeric kernels on f32 slices, written so the compiler vectorises
//! them, and compiled for AVX-512 / AVX2 where the CPU has them (the binary
//! itself targets baseline x86-64). libm's `expf` is a call per element and
//! cannot vectorise; it was a third of the lens time and 7% of a long forward
//! pass, which is why these are hand-written rather than taken from candle.
//!
//! [`bf16`] holds the bf16 lens's matrix product (`--lens-precision bf16`);
//! [`f32dot`] the projections' exact product and [`f32outer`] attention's;
//! [`i8dot`] the 8-bit integer product of `--precision quant`.

pub mod bf16;
pub mod f32dot;
pub mod f32outer;
pub mod i8dot;

/// Run `$call` (an `#[inline(always)]` function call) compiled for the widest
/// vector unit this CPU has.
macro_rules! dispatch {
    ($call:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512<T>(f: impl FnOnce() -> T) -> T {
                f()
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<T>(f: impl FnOnce() -> T) -> T {
                f()
            }
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: the feature was just detected on this CPU.
                unsafe { avx512(|| $call) }
            } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                // SAFETY: as above.
                unsafe { avx2(|| $call) }
            } else {
                $call
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $call
        }
    }};
}
pub(crate) use dispatch;

/// `e^x` for `x ≤ 0` in f32 (relative error ≈ 1e-7), written so the compiler
/// vectorises it: libm's `expf` is a call per element and was a third of the
/// lens time. Cephes' `expf` polynomial; rounding by the 1.5·2²³ trick because
/// baseline x86-64 has no vector floor. Below −87 the result is ≤ 2⁻¹²⁶, which
/// is 0 for every sum here.
#[inline(always)]
pub fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23
    let x = x.max(-87.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5; // Cephes' 5.0000001201e-1 rounds to 0.5 in f32
    let y = p * r2 + r + 1.0;
    // 2^n from t's own bits (t = 1.5·2²³ + n exactly): `n as i32` would be a
    // saturating conversion, which kept the compiler from vectorising.
    let biased = (t.to_bits() as i32).wrapping_sub(0x4B40_0000 - 127);
    y * f32::from_bits((biased as u32) << 23)
}

/// Softmax of every row of `x` (`rows × n`, row-major) in place, where only
/// the columns `visible(row)` = `[lo, hi)` take part and the rest become
/// exactly 0: causal and sliding-window attention without a mask tensor.
/// Sums are in the element type, as in transformers.
pub fn masked_softmax<T: SoftmaxElem>(
    x: &mut [T],
    n: usize,
    visible: impl Fn(usize) -> (usize, usize) + Sync,
) {
    use rayon::prelude::*;
    x.par_chunks_mut(n)
        .enumerate()
        .for_each(|(r, row)| masked_softmax_row(row, visible(r)));
}

/// One row of [`masked_softmax`]: softmax over `row[lo..hi]`, the rest 0.
pub fn masked_softmax_row<T: SoftmaxElem>(row: &mut [T], (lo, hi): (usize, usize)) {
    row[..lo].fill(T::zero());
    row[hi..].fill(T::zero());
    T::softmax(&mut row[lo..hi]);
}

/// Element types `masked_softmax` works on: f32 through the vectorised exp,
/// f64 (the `--precision f64` forward pass) through std's.
pub trait SoftmaxElem: num_traits::Float + Send + Sync {
    /// Softmax of one row in place.
    fn softmax(row: &mut [Self]);
}

impl SoftmaxElem for f32 {
    fn softmax(row: &mut [f32]) {
        dispatch!(softmax_f32(row))
    }
}

impl SoftmaxElem for f64 {
    fn softmax(row: &mut [f64]) {
        softmax_generic(row)
    }
}

/// The max and the sum run in [`LANES`] independent lanes: a running f32
/// sum is one add after another, each waiting for the last, and was a fifth
/// of a 2,048-token forward pass.
#[inline(always)]
fn softmax_f32(row: &mut [f32]) {
    let max = lane_fold(row, f32::NEG_INFINITY, f32::max);
    row.iter_mut().for_each(|v| *v = exp_neg(*v - max));
    let inv = 1.0 / lane_fold(row, 0.0, |a, b| a + b);
    row.iter_mut().for_each(|v| *v *= inv);
}

/// Lanes of [`lane_fold`]: one AVX-512 vector, two AVX2 ones.
const LANES: usize = 16;

/// `x` folded by `f` in a fixed order that vectorises: lane `i` folds
/// elements `i, i + LANES, …` (the tail into the first lanes), then the
/// lanes fold pairwise, halving. The order depends on `x.len()` alone, so
/// a softmax row gives the same bits wherever it lies and whatever the CPU.
#[inline(always)]
fn lane_fold(x: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = f(*a, v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(tail) {
        *a = f(*a, v);
    }
    let mut n = LANES;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            acc[i] = f(acc[i], acc[i + n]);
        }
    }
    acc[0]
}

fn softmax_generic<T: num_traits::Float>(row: &mut [T]) {
    let max = row.iter().copied().fold(T::neg_infinity(), T::max);
    let mut sum = T::zero();
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum = sum + *v;
    }
    row.iter_mut().for_each(|v| *v = *v / sum);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bit trick for 2^n gives exactly what `n as i32` gave, on a dense
    /// sample of every f32 in [−87, 0] (and below, where both clamp).
    #[test]
    fn exp_bits_equal_the_saturating_conversion() {
        fn by_conversion(x: f32) -> f32 {
            let x = x.max(-87.0);
            let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
            let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
            let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r
                + 4.166_579_6e-2)
                * r
                + 1.666_666_5e-1)
                * r
                + 0.5;
            (p * (r * r) + r + 1.0) * f32::from_bits(((n as i32 + 127) as u32) << 23)
        }
        for bits in (0x8000_0000u32..0xC300_0000).step_by(97) {
            let x = f32::from_bits(bits);
            assert_eq!(exp_neg(x).to_bits(), by_conversion(x).to_bits(), "{x}");
        }
    }

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f64;
        for i in 0..200_000 {
            let x = -(i as f32) * 4.4e-4; // 0 … −88
            let exact = (x as f64).exp();
            let rel = ((exp_neg(x) as f64) - exact).abs() / exact.max(1e-300);
            if exact > 1e-37 {
                worst = worst.max(rel);
            }
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
        assert_eq!(exp_neg(0.0), 1.0);
        assert!(exp_neg(-1000.0) < 1e-37);
    }

    /// Row r sees columns [r, r + 20): the rest must be exactly 0 and the
    /// visible part must match an f64 softmax, in f32 and in f64.
    #[test]
    fn masked_softmax_matches_f64_and_zeroes_hidden() {
        let n = 37;
        let vis = |r: usize| (r, r + 20);
        let data: Vec<f64> = (0..3 * n)
            .map(|i| ((i * 7 % 13) as f64 - 6.0) * 1.3)
            .collect();
        let mut x32: Vec<f32> = data.iter().map(|&v| v as f32).collect();
        let mut x64 = data.clone();
        masked_softmax(&mut x32[..], n, vis);
        masked_softmax(&mut x64[..], n, vis);
        for r in 0..3 {
            let (lo, hi) = vis(r);
            let row = &data[r * n..(r + 1) * n];
            let m = row[lo..hi]
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = row[lo..hi].iter().map(|v| (v - m).exp()).sum();
            for j in 0..n {
                let want = if (lo..hi).contains(&j) {
                    (row[j] - m).exp() / s
                } else {
                    0.0
                };
                assert!(
                    (x32[r * n + j] as f64 - want).abs() < 1e-6,
                    "f32 row {r} col {j}"
                );
                assert!((x64[r * n + j] - want).abs() < 1e-14, "f64 row {r} col {j}");
            }
        }
    }
}
