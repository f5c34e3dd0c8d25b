//! The bf16 lens's matrix product, `logits = A · Bᵀ` with both sides rounded
//! to bf16 (round-to-nearest-even) and products summed in f32.
//!
//! `B` is the unembedding `[vocab, d]`: it is rounded and packed once
//! ([`Bf16Head::pack`]), and every product streams the packed copy, which is
//! half the bytes of the f32 head. The kernel is picked at run time
//! ([`Bf16Kernel::detect`]): AVX512-BF16's `vdpbf16ps` where the CPU has it,
//! else a portable loop computing the same sums in the same order in f32.
//!
//! Hand-written because no maintained crate offers a bf16×bf16→f32 gemm on
//! CPU (`gemm`'s f16 path converts to f32 and runs at f32 speed). AMX tiles
//! are not used yet: on a CPU with AMX this falls back to `vdpbf16ps`, which
//! every AMX CPU also has.
//!
//! Layout: pairs of consecutive k values share one u32 (low half = even k),
//! which is the operand layout of `vdpbf16ps`. The head is stored as groups
//! of `NR` columns, `[group][k pair][NR]`, so one micro-tile reads it
//! sequentially.

use rayon::prelude::*;

/// Rows of `A` per micro-tile.
const MR: usize = 8;
/// Columns of the head per micro-tile (three 16-lane vectors).
const NR: usize = 48;

/// Which bf16 kernel runs on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// AVX512-BF16 `vdpbf16ps` (AMD Zen 4/5, Intel Cooper Lake, Sapphire Rapids and later).
    Avx512Bf16,
    /// f32 arithmetic on the bf16-rounded values, same summation order.
    Portable,
}

impl Bf16Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
        {
            return Bf16Kernel::Avx512Bf16;
        }
        Bf16Kernel::Portable
    }

    /// Every kernel this CPU can run (the tests check each).
    pub fn available() -> Vec<Self> {
        let mut v = vec![Bf16Kernel::Portable];
        if Self::detect() == Bf16Kernel::Avx512Bf16 {
            v.push(Bf16Kernel::Avx512Bf16);
        }
        v
    }

    /// Its name in the JSON and the terminal summary.
    pub fn label(self) -> &'static str {
        match self {
            Bf16Kernel::Avx512Bf16 => "avx512-bf16",
            Bf16Kernel::Portable => "f32 on bf16 values",
        }
    }
}

/// `x` rounded to bf16 (round-to-nearest-even), as its 16 bits; NaN stays
/// a (quiet) NaN. The same rounding as `half::bf16::from_f32`, written
/// branch-free so packing a 28M-element head vectorises.
#[inline(always)]
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    if x.is_nan() {
        ((b >> 16) as u16) | 0x0040
    } else {
        rounded
    }
}

/// `x` rounded to bf16 and widened back to f32.
#[inline]
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits((bf16_bits(x) as u32) << 16)
}

/// Two consecutive k values as one `vdpbf16ps` operand lane.
#[inline]
fn pair(even: f32, odd: f32) -> u32 {
    bf16_bits(even) as u32 | (bf16_bits(odd) as u32) << 16
}

/// An unembedding `[n, k]` rounded to bf16 and packed for the kernels.
pub struct Bf16Head {
    n: usize,
    k: usize,
    /// `[n.div_ceil(NR)][k.div_ceil(2)][NR]`, zero-padded.
    data: Vec<u32>,
}

impl std::fmt::Debug for Bf16Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bf16Head [{} × {}]", self.n, self.k)
    }
}

impl Bf16Head {
    /// Round and pack a row-major `[n, k]` f32 matrix.
    pub fn pack(head: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(head.len(), n * k, "head is not [{n}, {k}]");
        Self::pack_rows(n, k, |r0, r1, out| {
            out.copy_from_slice(&head[r0 * k..r1 * k]);
            Ok::<(), std::convert::Infallible>(())
        })
        .unwrap_or_else(|e| match e {})
    }

    /// Round and pack an `[n, k]` matrix read `NR` rows at a time by
    /// `rows(r0, r1, out)` (f32, row-major), so a head kept quantised is
    /// never decoded whole.
    pub(crate) fn pack_rows<E: Send>(
        n: usize,
        k: usize,
        rows: impl Fn(usize, usize, &mut [f32]) -> Result<(), E> + Sync,
    ) -> Result<Self, E> {
        let k2 = k.div_ceil(2);
        let groups = n.div_ceil(NR);
        let mut data = vec![0u32; groups * k2 * NR];
        data.par_chunks_mut(k2 * NR).enumerate().try_for_each_init(
            || vec![0f32; NR * k],
            |buf, (g, block)| {
                let (r0, r1) = (g * NR, ((g + 1) * NR).min(n));
                rows(r0, r1, &mut buf[..(r1 - r0) * k])?;
                // Row by row (sequential reads); rows past n stay zero.
                for c in 0..r1 - r0 {
                    let row = &buf[c * k..(c + 1) * k];
                    let pairs = row.chunks_exact(2);
                    let odd = pairs.remainder().first().map(|&x| pair(x, 0.0));
                    for (j, p) in pairs.map(|p| pair(p[0], p[1])).chain(odd).enumerate() {
                        block[j * NR + c] = p;
                    }
                }
                Ok(())
            },
        )?;
        Ok(Bf16Head { n, k, data })
    }

    /// Rows of the head (the vocabulary).
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Columns of the head (the width each product sums over).
    pub fn cols(&self) -> usize {
        self.k
    }

    /// `out = round(a) · round(head)ᵀ`: `a` is row-major `[m, k]`, `out`
    /// `[m, n]`. Spread over rayon's threads by column groups.
    pub fn matmul(&self, a: &[f32], m: usize, out: &mut [f32], kernel: Bf16Kernel) {
        let (n, k) = (self.n, self.k);
        assert_eq!(a.len(), m * k, "input is not [{m}, {k}]");
        assert_eq!(out.len(), m * n, "output is not [{m}, {n}]");
        let k2 = k.div_ceil(2);
        let m_pad = m.div_ceil(MR) * MR;
        // A packed row-major `[m_pad][k2]`, zero rows past m.
        let mut ap = vec![0u32; m_pad * k2];
        ap.par_chunks_mut(k2)
            .take(m)
            .enumerate()
            .for_each(|(i, row)| {
                let src = &a[i * k..(i + 1) * k];
                for (j, lane) in row.iter_mut().enumerate() {
                    *lane = pair(src[2 * j], src.get(2 * j + 1).copied().unwrap_or(0.0));
                }
            });
        let out_ptr = SendPtr(out.as_mut_ptr());
        self.data
            .par_chunks(k2 * NR)
            .enumerate()
            .for_each(|(g, b)| {
                let out_ptr = &out_ptr;
                let mut tile = [0f32; MR * NR];
                let c0 = g * NR;
                let cols = NR.min(n - c0);
                for i0 in (0..m).step_by(MR) {
                    let a_tile = &ap[i0 * k2..(i0 + MR) * k2];
                    run_tile(kernel, a_tile, b, k2, &mut tile);
                    for r in 0..MR.min(m - i0) {
                        // SAFETY: each group writes only its own columns
                        // [c0, c0 + cols) of rows < m, inside `out`.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                tile.as_ptr().add(r * NR),
                                out_ptr.0.add((i0 + r) * n + c0),
                                cols,
                            );
                        }
                    }
                }
            });
    }
}

/// The output pointer, shared by tasks that write disjoint columns.
struct SendPtr(*mut f32);
// SAFETY: see the use in `matmul`: writes never overlap.
unsafe impl Sync for SendPtr {}

/// One `MR × NR` tile: `tile = A_tile · B_groupᵀ` over all `k2` pairs.
#[inline]
fn run_tile(kernel: Bf16Kernel, a: &[u32], b: &[u32], k2: usize, tile: &mut [f32; MR * NR]) {
    debug_assert!(a.len() == MR * k2 && b.len() == NR * k2);
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx512Bf16` is only chosen when the CPU has the features
        // (`detect`, `available`); slice lengths are checked above.
        Bf16Kernel::Avx512Bf16 => unsafe { tile_avx512bf16(a, b, k2, tile) },
        _ => super::dispatch!(tile_portable(a, b, k2, tile)),
    }
}

/// The portable kernel: `vdpbf16ps`'s arithmetic in f32, odd k first then
/// even, as Intel specifies it. bf16 × bf16 products are exact in f32, so
/// only the two additions round.
#[inline(always)]
fn tile_portable(a: &[u32], b: &[u32], k2: usize, tile: &mut [f32; MR * NR]) {
    tile.fill(0.0);
    let lo = |p: u32| f32::from_bits(p << 16);
    let hi = |p: u32| f32::from_bits(p & 0xffff_0000);
    for j in 0..k2 {
        let bj = &b[j * NR..(j + 1) * NR];
        for r in 0..MR {
            let p = a[r * k2 + j];
            let (a_lo, a_hi) = (lo(p), hi(p));
            let acc = &mut tile[r * NR..(r + 1) * NR];
            for (o, &q) in acc.iter_mut().zip(bj) {
                *o = (*o + a_hi * hi(q)) + a_lo * lo(q);
            }
        }
    }
}

/// The AVX512-BF16 kernel: 24 accumulators (8 rows × 3 vectors of 16).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile_avx512bf16(a: &[u32], b: &[u32], k2: usize, tile: &mut [f32; MR * NR]) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 3]; MR];
    let bp = b.as_ptr();
    let ap = a.as_ptr();
    for j in 0..k2 {
        let bv: [__m512bh; 3] = [0, 1, 2].map(|v| {
            // SAFETY: j < k2 and v < 3, inside the NR·k2 block.
            unsafe { std::mem::transmute(_mm512_loadu_si512(bp.add(j * NR + 16 * v).cast())) }
        });
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: r < MR and j < k2, inside the MR·k2 tile.
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(r * k2 + j) as i32));
            for (v, slot) in row.iter_mut().enumerate() {
                *slot = _mm512_dpbf16_ps(*slot, av, bv[v]);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (v, slot) in row.iter().enumerate() {
            _mm512_storeu_ps(tile.as_mut_ptr().add(r * NR + 16 * v), *slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reproducible pseudo-random f32 in [-2, 2).
    fn noise(i: usize) -> f32 {
        let x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
    }

    /// Each kernel this CPU has against the f64 product of the rounded
    /// values, and the rounded product against the f32 one. Odd shapes
    /// exercise every padded edge (m, n and k not multiples of the tile).
    #[test]
    fn kernels_match_the_f32_product() {
        let (m, n, k) = (19, 101, 77);
        let a: Vec<f32> = (0..m * k).map(noise).collect();
        let b: Vec<f32> = (0..n * k).map(|i| noise(i + 7_000_000)).collect();
        let head = Bf16Head::pack(&b, n, k);
        for kernel in Bf16Kernel::available() {
            let mut out = vec![f32::NAN; m * n];
            head.matmul(&a, m, &mut out, kernel);
            let (mut worst_rounded, mut worst_exact) = (0f64, 0f64);
            for i in 0..m {
                for j in 0..n {
                    let (mut rounded, mut exact, mut scale) = (0f64, 0f64, 0f64);
                    for t in 0..k {
                        let (x, y) = (a[i * k + t], b[j * k + t]);
                        rounded += round_bf16(x) as f64 * round_bf16(y) as f64;
                        exact += x as f64 * y as f64;
                        scale += (x as f64 * y as f64).abs();
                    }
                    let got = out[i * n + j] as f64;
                    worst_rounded = worst_rounded.max((got - rounded).abs() / scale);
                    worst_exact = worst_exact.max((got - exact).abs() / scale);
                }
            }
            // f32 sums of 77 terms: a few ulps of the absolute sum.
            assert!(worst_rounded < 2e-6, "{kernel:?}: {worst_rounded:e}");
            // bf16 inputs: two roundings of 2⁻⁹ relative each at worst.
            assert!(worst_exact < 8e-3, "{kernel:?}: {worst_exact:e}");
            assert!(worst_exact > 1e-5, "{kernel:?} did not round to bf16");
        }
    }

    /// The kernels compute the same sums in the same order.
    #[test]
    fn kernels_agree_bit_for_bit() {
        let (m, n, k) = (9, 50, 64);
        let a: Vec<f32> = (0..m * k).map(|i| noise(i + 3)).collect();
        let b: Vec<f32> = (0..n * k).map(|i| noise(i + 99_000)).collect();
        let head = Bf16Head::pack(&b, n, k);
        let outs: Vec<Vec<f32>> = Bf16Kernel::available()
            .into_iter()
            .map(|kernel| {
                let mut out = vec![0f32; m * n];
                head.matmul(&a, m, &mut out, kernel);
                out
            })
            .collect();
        for o in &outs[1..] {
            assert_eq!(o, &outs[0]);
        }
    }

    #[test]
    fn rounding_matches_half() {
        for i in 0..1_000_000u32 {
            let x = f32::from_bits(i.wrapping_mul(0x9E37_79B9));
            let want = half::bf16::from_f32(x);
            if x.is_nan() {
                assert!(half::bf16::from_bits(bf16_bits(x)).is_nan());
            } else {
                assert_eq!(bf16_bits(x), want.to_bits(), "{x:e}");
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        // 1 + 2⁻⁸ is halfway between bf16 1 and 1 + 2⁻⁷: ties go to even (1).
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert_eq!(round_bf16(-2.5), -2.5);
    }
}
