//! Attention's two f32 products as outer products: one operand packed into
//! groups of as many rows as a vector has lanes, laid out `[k][lanes]`, and
//! a micro-tile of `MR` rows of the other by up to three groups,
//! broadcasting one value at a time against a vector. No lane is ever summed with another, so every
//! output is one chain of fused multiply-adds over `c = 0, 1, …, k−1` from
//! zero, exactly [`reference_dot`]. That order depends on `k` alone: not on
//! how many rows there are, which rows sit beside a row, or the threads.
//!
//! In attention (`model::layers`) the scores are `q · kᵀ` with the keys in
//! the lanes (a chain over the head width), and the output is
//! probabilities · values with the head width in the lanes (a chain over
//! the keys, from the first key of the call's range). Keys before a
//! query's window have probability exactly 0 and leave the chain at +0, so
//! a query sums the same terms in the same order however the sequence was
//! cut into calls: a prompt fed whole, or a shared prefix and then the
//! rest, or one token at a time.
//!
//! Why not `f32dot` (dot products, lanes along `k`) as before: with
//! `k` = the head width (64) it spent more on summing lanes than on the
//! products. Why not the `gemm` crate: its order depends on the shapes.
//!
//! AVX-512 (16 lanes) or AVX2 + FMA (8 lanes), as [`Isa::detect`] picks.

use super::f32dot::Isa;

/// Rows of the broadcast operand per micro-tile (each broadcast feeds up
/// to three vectors).
const MR: usize = 8;
/// Groups of rows per micro-tile at most.
const MAX_GROUPS: usize = 3;

/// Rows of `x` per packed group: the vector width in f32 lanes.
pub fn lanes(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 16,
        Isa::Avx2 => 8,
    }
}

/// `x` `[t, k]` row-major packed into `t.div_ceil(L)` groups of `L =
/// lanes(isa)` rows, each `[k][L]`, the rows past `t` zero. Resizes `out`.
pub fn pack_rows(isa: Isa, x: &[f32], t: usize, k: usize, out: &mut Vec<f32>) {
    // Attention's keys: the scores' lanes run over them.
    let l = lanes(isa);
    let groups = t.div_ceil(l);
    out.clear();
    out.resize(groups * k * l, 0.0);
    for (g, packed) in out.chunks_exact_mut(k * l).enumerate() {
        for lane in 0..l.min(t - g * l) {
            let row = &x[(g * l + lane) * k..][..k];
            for (c, &v) in row.iter().enumerate() {
                packed[c * l + lane] = v;
            }
        }
    }
}

/// `m` `[rows, cols]` row-major packed by columns: `cols.div_ceil(L)` groups
/// of `L = lanes(isa)` columns, each `[rows][L]` (what [`pack_rows`] makes
/// of `mᵀ`), the columns past `cols` zero. Resizes `out`.
pub fn pack_cols(isa: Isa, m: &[f32], rows: usize, cols: usize, out: &mut Vec<f32>) {
    // Attention's values: the output's lanes run over the head width.
    let l = lanes(isa);
    let groups = cols.div_ceil(l);
    out.clear();
    out.resize(groups * rows * l, 0.0);
    for (g, packed) in out.chunks_exact_mut(rows * l).enumerate() {
        let (c0, w) = (g * l, l.min(cols - g * l));
        for (r, dst) in packed.chunks_exact_mut(l).enumerate() {
            dst[..w].copy_from_slice(&m[r * cols + c0..][..w]);
        }
    }
}

/// The operands of one chunk of `k` (see [`chunk_matmul_t`]).
#[derive(Debug, Clone, Copy)]
pub struct OuterChunk {
    /// Packed `x` ([`pack_rows`]) at the chunk's first column: group `g`'s
    /// column `c` starts at `xp + g·xstride + c·lanes`.
    pub xp: *const f32,
    pub xstride: usize,
    pub groups: usize,
    /// `p` rows of the broadcast operand, `kc` floats each, `ldw` apart.
    pub w: *const f32,
    pub ldw: usize,
    pub p: usize,
    pub kc: usize,
    /// The result, `yt[j·ldt + i]` for row `j` of `w` and packed row `i <
    /// groups·lanes`.
    pub yt: *mut f32,
    pub ldt: usize,
    /// Start the chains from zero (the first chunk) instead of from `yt`.
    pub first: bool,
}

/// One chunk: `yt[j·ldt + i] = yt[j·ldt + i] (or 0 if first) + Σ_{c < kc}
/// x[i][c] · w[j·ldw + c]`, each term fused in turn, `c` ascending.
///
/// # Safety
/// `isa` is in [`Isa::available`]; the pointers hold what [`OuterChunk`]
/// says for every `g < groups`, `c < kc`, `j < p`, `i < groups·lanes`, and
/// `yt` is untouched by other threads.
pub unsafe fn chunk_matmul_t(isa: Isa, c: OuterChunk) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Avx512 => avx512::chunk(c),
        Isa::Avx2 => avx2::chunk(c),
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no f32outer kernel off x86-64: {isa:?} {c:?}");
}

/// What every output of the kernel equals, bit for bit: the fused
/// multiply-add chain over `k` from zero.
pub fn reference_dot(x: &[f32], w: &[f32]) -> f32 {
    x.iter().zip(w).fold(0.0, |acc, (&a, &b)| a.mul_add(b, acc))
}

/// The loop over micro-tiles and the micro-tile, for one vector unit.
#[cfg(target_arch = "x86_64")]
macro_rules! isa_kernel {
    (
        $feature:literal, $vec:ty, $lanes:literal,
        zero: $zero:expr, load: $load:expr, store: $store:expr,
        splat: $splat:expr, fma: $fma:expr $(,)?
    ) => {
        use std::arch::x86_64::*;

        use super::{OuterChunk, MAX_GROUPS, MR};

        #[target_feature(enable = $feature)]
        pub(super) unsafe fn chunk(c: OuterChunk) {
            let mut g = 0;
            while g < c.groups {
                let gb = (c.groups - g).min(MAX_GROUPS);
                let mut j = 0;
                while j < c.p {
                    let mr = MR.min(c.p - j);
                    let tc = OuterChunk {
                        xp: c.xp.add(g * c.xstride),
                        w: c.w.add(j * c.ldw),
                        yt: c.yt.add(j * c.ldt + g * $lanes),
                        p: mr,
                        groups: gb,
                        ..c
                    };
                    match gb {
                        3 => tile_g::<3>(tc),
                        2 => tile_g::<2>(tc),
                        _ => tile_g::<1>(tc),
                    }
                    j += mr;
                }
                g += gb;
            }
        }

        /// [`tile`] with `R = c.p` (at most `MR`).
        #[inline]
        #[target_feature(enable = $feature)]
        unsafe fn tile_g<const G: usize>(c: OuterChunk) {
            match c.p {
                8 => tile::<8, G>(c),
                7 => tile::<7, G>(c),
                6 => tile::<6, G>(c),
                5 => tile::<5, G>(c),
                4 => tile::<4, G>(c),
                3 => tile::<3, G>(c),
                2 => tile::<2, G>(c),
                _ => tile::<1, G>(c),
            }
        }

        /// `R` rows of `w` by `G` packed groups, one chunk of `k`.
        #[inline]
        #[target_feature(enable = $feature)]
        unsafe fn tile<const R: usize, const G: usize>(c: OuterChunk) {
            let zero: unsafe fn() -> $vec = $zero;
            let load: unsafe fn(*const f32) -> $vec = $load;
            let store: unsafe fn(*mut f32, $vec) = $store;
            let splat: unsafe fn(f32) -> $vec = $splat;
            let fma: unsafe fn($vec, $vec, $vec) -> $vec = $fma;
            let mut acc = [[zero(); G]; R];
            if !c.first {
                for (r, row) in acc.iter_mut().enumerate() {
                    for (g, a) in row.iter_mut().enumerate() {
                        *a = load(c.yt.add(r * c.ldt + g * $lanes));
                    }
                }
            }
            for at in 0..c.kc {
                let mut xv = [zero(); G];
                for (g, v) in xv.iter_mut().enumerate() {
                    *v = load(c.xp.add(g * c.xstride + at * $lanes));
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    let b = splat(*c.w.add(r * c.ldw + at));
                    for (a, &v) in row.iter_mut().zip(&xv) {
                        *a = fma(v, b, *a);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                for (g, &a) in row.iter().enumerate() {
                    store(c.yt.add(r * c.ldt + g * $lanes), a);
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    isa_kernel!(
        "avx512f", __m512, 16,
        zero: || _mm512_setzero_ps(),
        load: |p| _mm512_loadu_ps(p),
        store: |p, v| _mm512_storeu_ps(p, v),
        splat: |v| _mm512_set1_ps(v),
        fma: |a, b, c| _mm512_fmadd_ps(a, b, c),
    );
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    isa_kernel!(
        "avx2,fma", __m256, 8,
        zero: || _mm256_setzero_ps(),
        load: |p| _mm256_loadu_ps(p),
        store: |p, v| _mm256_storeu_ps(p, v),
        splat: |v| _mm256_set1_ps(v),
        fma: |a, b, c| _mm256_fmadd_ps(a, b, c),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tile shape (row and group tails), chunked `k`, on every
    /// kernel this CPU runs: each output is the fused chain, bit for bit,
    /// and nothing past the rows is written.
    #[test]
    fn equals_the_fused_chain_bit_for_bit() {
        for isa in Isa::available() {
            check(isa);
        }
    }

    /// Packing by columns is packing the transpose by rows.
    #[test]
    fn pack_cols_is_pack_rows_of_the_transpose() {
        for isa in Isa::available() {
            let (rows, cols) = (5, 21);
            let m: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let mt: Vec<f32> = (0..cols * rows)
                .map(|i| m[(i % rows) * cols + i / rows])
                .collect();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            pack_cols(isa, &m, rows, cols, &mut a);
            pack_rows(isa, &mt, cols, rows, &mut b);
            assert_eq!(a, b, "{isa:?}");
        }
    }

    fn check(isa: Isa) {
        let noise = |i: usize| ((i.wrapping_mul(2_654_435_761) % 1000) as f32 - 500.0) * 1e-3;
        let l = lanes(isa);
        for (t, p, k, kc) in [
            (1, 1, 16, 16),
            (7, 13, 1061, 256),
            (45, 18, 2048, 1024),
            (57, 9, 3, 2),
            (3, 70, 40, 16),
            (2, 48, 100, 64),
        ] {
            let x: Vec<f32> = (0..t * k).map(noise).collect();
            let w: Vec<f32> = (0..p * k).map(|i| noise(i + 7)).collect();
            let mut xp = Vec::new();
            pack_rows(isa, &x, t, k, &mut xp);
            let groups = t.div_ceil(l);
            let ldt = groups * l + 5;
            let mut yt = vec![f32::NAN; p * ldt];
            for k0 in (0..k).step_by(kc) {
                let c = OuterChunk {
                    xp: xp[k0 * l..].as_ptr(),
                    xstride: k * l,
                    groups,
                    w: w[k0..].as_ptr(),
                    ldw: k,
                    p,
                    kc: kc.min(k - k0),
                    yt: yt.as_mut_ptr(),
                    ldt,
                    first: k0 == 0,
                };
                // SAFETY: isa is available; the buffers are the sizes above.
                unsafe { chunk_matmul_t(isa, c) };
            }
            for j in 0..p {
                for i in 0..t {
                    let want = reference_dot(&x[i * k..][..k], &w[j * k..][..k]);
                    let got = yt[j * ldt + i];
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{isa:?} t={t} p={p} k={k} ({i}, {j})"
                    );
                }
                assert!(yt[j * ldt + groups * l].is_nan(), "wrote past the groups");
            }
        }
    }
}
