//! The f32 product of the at-rest matmul for few rows: `y = x · Wᵀ` on one
//! freshly decoded panel of `W`, with `x` `[t, k]` and the panel `[p, k]`
//! both row-major, so neither side is packed: a micro-tile of `MR` rows of
//! `x` by `NR` rows of `W` runs dot products along `k`, one vector of lanes
//! at a time, and sums the lanes at the end of each `KC` chunk of `k`.
//!
//! Why not the `gemm` crate here: with `m = t` small (a prompt, ≤ a few
//! hundred tokens) it packs both operands for every panel and reached a
//! quarter to a third of this CPU's f32 rate at 45 rows (`examples/matmul_t_bench.rs`); this loop
//! reads the decoded rows where the decoder wrote them. Exact f32: every
//! output is a sum of f32 products (fused multiply-add), only the summation
//! order differs from a gemm. The order depends on `k` and the kernel alone,
//! not on `t`, the panel or the thread count, so a row's result does not
//! depend on the rows beside it.
//!
//! Attention's products run on `f32outer` instead: with a reduction of
//! only the head width, this kernel's lane sums cost more than its products.
//!
//! AVX-512 (16 lanes, 4 × 4 tiles) or AVX2 + FMA (8 lanes, 4 × 3 tiles),
//! picked at run time; without either, [`Isa::detect`] says `None` and the
//! caller keeps the `gemm` crate.

/// Chunk of `k` a micro-tile sums before adding its result to `y`: the
/// tile's panel rows of it (at most 16 KiB) stay in L1 while the `x` rows
/// pass by.
/// A multiple of every quant block size (32 and 256).
pub const KC: usize = 1024;
/// Rows of `x` per pass over a panel's chunk (`MC × KC` floats stay in L2).
const MC: usize = 64;

/// The vector unit the kernel runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
}

impl Isa {
    /// The widest one this CPU has, `None` without AVX2 + FMA.
    pub fn detect() -> Option<Isa> {
        #[cfg(target_arch = "x86_64")]
        {
            static ISA: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
            *ISA.get_or_init(|| {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    Some(Isa::Avx512)
                } else if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    Some(Isa::Avx2)
                } else {
                    None
                }
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    }

    /// Every one this CPU has (for tests).
    pub fn available() -> Vec<Isa> {
        match Isa::detect() {
            Some(Isa::Avx512) => vec![Isa::Avx512, Isa::Avx2],
            Some(Isa::Avx2) => vec![Isa::Avx2],
            None => vec![],
        }
    }
}

/// One `KC`-wide chunk of `k`: `y[i·ldy + j] (+)= Σ_{c < kc} x[i·ldx + c] ·
/// w[j·ldw + c]` for `i < t`, `j < p`; stores on the `first` chunk, adds
/// after. Callers split `k` at multiples of [`KC`], so the summation order
/// is the same whichever way the panel was produced.
///
/// # Safety
/// `isa` is in [`Isa::available`]; `kc ≤ KC`; `x` holds rows `i·ldx ..
/// i·ldx + kc` for `i < t`, `w` the same for `j < p` with `ldw`, and `y` is
/// valid for reads and writes at every `i·ldy + j` above, untouched by other
/// threads.
pub unsafe fn chunk_matmul_t(isa: Isa, c: Chunk) {
    debug_assert!(c.kc <= KC);
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Avx512 => avx512::chunk(c),
        Isa::Avx2 => avx2::chunk(c),
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no f32dot kernel off x86-64: {isa:?} {c:?}");
}

/// The operands of one chunk (see [`chunk_matmul_t`]): `t` rows of `x` and
/// `p` rows of `w`, `kc` floats each, and the `[t, p]` block of `y` they
/// write, each with its row stride.
#[derive(Debug, Clone, Copy)]
pub struct Chunk {
    pub x: *const f32,
    pub ldx: usize,
    pub t: usize,
    pub w: *const f32,
    pub ldw: usize,
    pub p: usize,
    pub kc: usize,
    pub y: *mut f32,
    pub ldy: usize,
    /// Store (the first chunk of `k`) instead of adding.
    pub first: bool,
}

/// The loop over micro-tiles and the micro-tile, for one vector unit.
#[cfg(target_arch = "x86_64")]
macro_rules! isa_kernel {
    (
        $feature:literal, $vec:ty, $lanes:literal, $mr:literal, $nr:literal,
        zero: $zero:expr, load: $load:expr, load_tail: $tail:expr,
        fma: $fma:expr, sum: $sum:expr $(,)?
    ) => {
        use std::arch::x86_64::*;

        use super::MC;

        #[target_feature(enable = $feature)]
        pub(super) unsafe fn chunk(c: super::Chunk) {
            let mut i0 = 0;
            while i0 < c.t {
                let i1 = (i0 + MC).min(c.t);
                let mut j = 0;
                while j < c.p {
                    let nr = ($nr as usize).min(c.p - j);
                    let mut i = i0;
                    while i < i1 {
                        let mr = ($mr as usize).min(i1 - i);
                        // The tile's corner; `t` and `p` are the tile's size.
                        let tc = super::Chunk {
                            x: c.x.add(i * c.ldx),
                            w: c.w.add(j * c.ldw),
                            y: c.y.add(i * c.ldy + j),
                            t: mr,
                            p: nr,
                            ..c
                        };
                        match mr {
                            4 => tile_m::<4>(tc),
                            3 => tile_m::<3>(tc),
                            2 => tile_m::<2>(tc),
                            _ => tile_m::<1>(tc),
                        }
                        i += mr;
                    }
                    j += nr;
                }
                i0 = i1;
            }
        }

        /// [`tile`] with `N = c.p` (at most 4).
        #[inline]
        #[target_feature(enable = $feature)]
        unsafe fn tile_m<const M: usize>(c: super::Chunk) {
            match c.p {
                4 => tile::<M, 4>(c),
                3 => tile::<M, 3>(c),
                2 => tile::<M, 2>(c),
                _ => tile::<M, 1>(c),
            }
        }

        /// `M × N` dot products of length `kc` at the tile's corner `c`,
        /// lanes summed and stored (`first`) or added into `y`.
        #[inline]
        #[target_feature(enable = $feature)]
        unsafe fn tile<const M: usize, const N: usize>(c: super::Chunk) {
            let super::Chunk {
                x,
                ldx,
                w,
                ldw,
                kc,
                y,
                ldy,
                first,
                ..
            } = c;
            let zero: unsafe fn() -> $vec = $zero;
            let load: unsafe fn(*const f32) -> $vec = $load;
            let fma: unsafe fn($vec, $vec, $vec) -> $vec = $fma;
            let mut acc = [[zero(); N]; M];
            let full = kc / $lanes * $lanes;
            let mut at = 0;
            while at < full {
                let mut wv = [zero(); N];
                for (j, v) in wv.iter_mut().enumerate() {
                    *v = load(w.add(j * ldw + at));
                }
                for (i, row) in acc.iter_mut().enumerate() {
                    let xv = load(x.add(i * ldx + at));
                    for (a, &v) in row.iter_mut().zip(&wv) {
                        *a = fma(xv, v, *a);
                    }
                }
                at += $lanes;
            }
            if at < kc {
                let tail: unsafe fn(*const f32, usize) -> $vec = $tail;
                let mut wv = [zero(); N];
                for (j, v) in wv.iter_mut().enumerate() {
                    *v = tail(w.add(j * ldw + at), kc - at);
                }
                for (i, row) in acc.iter_mut().enumerate() {
                    let xv = tail(x.add(i * ldx + at), kc - at);
                    for (a, &v) in row.iter_mut().zip(&wv) {
                        *a = fma(xv, v, *a);
                    }
                }
            }
            let sum: unsafe fn($vec) -> f32 = $sum;
            for (i, row) in acc.iter().enumerate() {
                for (j, &a) in row.iter().enumerate() {
                    let s = sum(a);
                    let o = y.add(i * ldy + j);
                    *o = if first { s } else { *o + s };
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    isa_kernel!(
        "avx512f", __m512, 16, 4, 4,
        zero: || _mm512_setzero_ps(),
        load: |p| _mm512_loadu_ps(p),
        load_tail: |p, n| _mm512_maskz_loadu_ps(((1u32 << n) - 1) as __mmask16, p),
        fma: |a, b, c| _mm512_fmadd_ps(a, b, c),
        sum: |v| _mm512_reduce_add_ps(v),
    );
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    isa_kernel!(
        "avx2,fma", __m256, 8, 4, 3,
        zero: || _mm256_setzero_ps(),
        load: |p| _mm256_loadu_ps(p),
        load_tail: |p, n| {
            let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lane))
        },
        fma: |a, b, c| _mm256_fmadd_ps(a, b, c),
        sum: |v| {
            let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)))
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tile shape and a `k` with a chunk tail and a lane tail, against
    /// an f64 reference, on every kernel this CPU runs.
    #[test]
    fn matches_f64_dot_products() {
        for isa in Isa::available() {
            check(isa);
        }
    }

    fn check(isa: Isa) {
        let noise = |i: usize| ((i.wrapping_mul(2_654_435_761) % 1000) as f32 - 500.0) * 1e-3;
        for (t, p, k) in [(1, 1, 16), (7, 5, 1061), (45, 18, 2048), (9, 4, 3)] {
            let x: Vec<f32> = (0..t * k).map(noise).collect();
            let w: Vec<f32> = (0..p * k).map(|i| noise(i + 7)).collect();
            let ldy = p + 3;
            let mut y = vec![f32::NAN; t * ldy];
            for k0 in (0..k).step_by(KC) {
                let kc = KC.min(k - k0);
                let (xs, ws) = (x[k0..].as_ptr(), w[k0..].as_ptr());
                let c = Chunk {
                    x: xs,
                    ldx: k,
                    t,
                    w: ws,
                    ldw: k,
                    p,
                    kc,
                    y: y.as_mut_ptr(),
                    ldy,
                    first: k0 == 0,
                };
                unsafe { chunk_matmul_t(isa, c) };
            }
            for i in 0..t {
                for j in 0..p {
                    let want: f64 = (0..k)
                        .map(|c| x[i * k + c] as f64 * w[j * k + c] as f64)
                        .sum();
                    let got = y[i * ldy + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()) * (k as f64).sqrt(),
                        "{isa:?} t={t} p={p} k={k} ({i}, {j}): {got} vs {want}"
                    );
                }
                assert!(y[i * ldy + p].is_nan(), "wrote past the panel");
            }
        }
    }
}
