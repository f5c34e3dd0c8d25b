//! The product of `--precision quant`: `y = x · Wᵀ` with both sides in
//! 8-bit integers, as llama.cpp multiplies. Each row of `x` is rounded to
//! blocks of 32 signed bytes with one f32 scale per block ([`quantize_rows`]:
//! `d = max|x| / 127`, `q = round(x / d)`), and the weights arrive decoded
//! into an [`Int8Panel`]: unsigned bytes `u` with a scale `s`, an optional
//! offset `m` and an integer zero point `z` per block of 32 weights (16 for
//! types whose scales cover 16), so that a weight is `s · (u − z) + m`.
//! Every GGUF type with 32- or 16-wide scales has that form (`model::int8`
//! decodes them).
//!
//! The arithmetic, which fixes every bit of the result:
//! ```text
//! acc = 0
//! for each weight block b (32 or 16 wide), in order:
//!     isum = Σ_i u[i] · q[i] − z · Σ_i q[i]          (exact, in i32)
//!     acc  = fma(isum, d · s_b, acc)
//!     acc  = fma(Σ_i q[i], d · m_b, acc)              (types with an offset)
//! ```
//! where `d` is the scale of the input's 32-block holding block b.
//! The integer sums are exact, so the order inside a block cannot change a
//! bit: the AVX-512 VNNI kernel (`vpdpbusd`, 64 byte products per
//! instruction, about four f32 FMAs' worth) and the portable loop give the
//! same bits, and a row's result never depends on the rows beside it or on
//! `t`. That keeps incremental decoding equal to the whole pass, and
//! lockstep batches equal to prompts alone.
//!
//! Why hand-written: candle's `QMatMul` keeps a second copy of the weights
//! and runs Q4_0 at a fifth of the f32 gemm; no maintained crate offers an
//! integer product on a caller's block layout.

/// Weight rows per group: the 16 i32 lanes of one AVX-512 vector.
pub const GROUP: usize = 16;
/// Columns per block of the input (one scale each), and of the weights of
/// most types.
pub const BLOCK: usize = 32;
/// The weights' blocks for types whose scales cover 16 (Q6_K).
pub const HALF_BLOCK: usize = 16;

/// How a weight type's blocks decode: `s · (u − zero) + m` over blocks of
/// `width` (32 or 16), `m` only if `has_min`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Form {
    pub zero: i32,
    pub has_min: bool,
    pub width: usize,
}

/// `x` rounded to 8 bits per block of [`BLOCK`]: `[t, k]` bytes, the scale
/// `d` per row and block, and `Σq` per row and half block (16), which the
/// weights' zero points and offsets need.
#[derive(Debug, Default, Clone)]
pub struct Int8Rows {
    q: Vec<i8>,
    d: Vec<f32>,
    sum: Vec<i32>,
    t: usize,
    k: usize,
}

impl Int8Rows {
    /// `Σq` over columns `c..c + width` of row `i` (`c` a multiple of
    /// `width`, 32 or 16).
    #[inline(always)]
    fn sum(&self, i: usize, c: usize, width: usize) -> i32 {
        let h = (i * self.k + c) / HALF_BLOCK;
        if width == HALF_BLOCK {
            self.sum[h]
        } else {
            self.sum[h] + self.sum[h + 1]
        }
    }
}

/// Adding and subtracting 1.5·2²³ rounds an f32 of magnitude below 2²² to
/// an integer, ties to even.
const ROUND: f32 = 12_582_912.0;

/// Round each row of `x` (`[t, k]`, `k` a multiple of [`BLOCK`]) to 8 bits
/// per block: `d = max|x| / 127`, `q = round-to-even(x / d)` (llama.cpp's
/// `quantize_row_q8_0`, with `d` kept in f32).
pub fn quantize_rows(x: &[f32], t: usize, k: usize) -> Int8Rows {
    assert!(k.is_multiple_of(BLOCK) && x.len() == t * k);
    let nb = t * k / BLOCK;
    let mut r = Int8Rows {
        q: vec![0; t * k],
        d: vec![0.0; nb],
        sum: vec![0; 2 * nb],
        t,
        k,
    };
    for (i, (xb, qb)) in x
        .chunks_exact(BLOCK)
        .zip(r.q.chunks_exact_mut(BLOCK))
        .enumerate()
    {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let s = &mut r.sum[2 * i..2 * i + 2];
        for (c, (q, &v)) in qb.iter_mut().zip(xb).enumerate() {
            // Ties to even by the 1.5·2²³ trick (std's `round_ties_even`
            // is a libm call here, 8 % of a forward pass); |v · id| ≤ 127
            // up to rounding, and the clamp keeps it a byte.
            let v = ((v * id + ROUND) - ROUND).clamp(-127.0, 127.0) as i8;
            *q = v;
            s[c / HALF_BLOCK] += v as i32;
        }
        r.d[i] = d;
    }
    r
}

/// Weight rows decoded for the kernel: groups of [`GROUP`] rows, blocks of
/// the form's width. A decoder writes each row as it lies
/// ([`Int8Panel::row_mut`]); [`Int8Panel::pack`] then interleaves the rows
/// of each group for `vpdpbusd`. Rows past the matrix's end are zero (scale
/// 0), and their outputs are never stored.
#[derive(Debug, Default, Clone)]
pub struct Int8Panel {
    /// Row-major as decoded: `[rows][blocks · width]`, `[rows][blocks]` twice.
    rows_u: Vec<u8>,
    rows_s: Vec<f32>,
    rows_m: Vec<f32>,
    /// Packed: `[groups][blocks]` of `[width / 4 steps][16 rows][4 bytes]`
    /// (the order `vpdpbusd` reads: each lane takes 4 adjacent bytes of its
    /// row), of 16 scales, of 16 offsets.
    q: Vec<u8>,
    scale: Vec<f32>,
    min: Vec<f32>,
    groups: usize,
    blocks: usize,
    form: Option<Form>,
}

impl Int8Panel {
    /// Reshape for `rows` weight rows by `cols` columns (a multiple of
    /// [`BLOCK`]) of weights of `form`; reuses the allocations. Write every
    /// row with [`Int8Panel::row_mut`], then [`Int8Panel::pack`].
    pub fn reset(&mut self, rows: usize, cols: usize, form: Form) {
        debug_assert!(cols.is_multiple_of(BLOCK) && BLOCK.is_multiple_of(form.width));
        let blocks = cols / form.width;
        self.groups = rows.div_ceil(GROUP);
        self.blocks = blocks;
        self.form = Some(form);
        // Real rows are all overwritten; padding rows are zero bytes with
        // scale and offset 0.
        let (padded, k) = (self.groups * GROUP, cols);
        self.rows_u.resize(padded * k, 0);
        self.rows_s.resize(padded * blocks, 0.0);
        self.rows_m.resize(padded * blocks, 0.0);
        self.rows_u[rows * k..padded * k].fill(0);
        self.rows_s[rows * blocks..padded * blocks].fill(0.0);
        self.rows_m[rows * blocks..padded * blocks].fill(0.0);
        self.q.resize(padded * k, 0);
        self.scale.resize(padded * blocks, 0.0);
        self.min.resize(padded * blocks, 0.0);
    }

    /// Row `r`'s bytes (`cols`), and its scales and offsets (one per block
    /// of the form's width). The caller writes the bytes and scales, and
    /// the offsets if the form has them.
    #[inline]
    pub fn row_mut(&mut self, r: usize) -> (&mut [u8], &mut [f32], &mut [f32]) {
        let (k, nb) = (self.blocks * self.width(), self.blocks);
        (
            &mut self.rows_u[r * k..(r + 1) * k],
            &mut self.rows_s[r * nb..(r + 1) * nb],
            &mut self.rows_m[r * nb..(r + 1) * nb],
        )
    }

    /// Interleave the decoded rows into the kernel's layout.
    pub fn pack(&mut self) {
        let (nb, width) = (self.blocks, self.width());
        let (k, bytes) = (nb * width, GROUP * width);
        for g in 0..self.groups {
            for b in 0..nb {
                let at = g * nb + b;
                let out = &mut self.q[at * bytes..(at + 1) * bytes];
                let src = &self.rows_u[g * GROUP * k + b * width..];
                transpose_group(src, k, out);
                for lane in 0..GROUP {
                    let r = g * GROUP + lane;
                    self.scale[at * GROUP + lane] = self.rows_s[r * nb + b];
                    self.min[at * GROUP + lane] = self.rows_m[r * nb + b];
                }
            }
        }
    }

    /// The form given to [`Int8Panel::reset`].
    fn form(&self) -> Form {
        self.form.expect("Int8Panel::reset first")
    }

    fn width(&self) -> usize {
        self.form().width
    }
}

/// One group's block: 16 rows of `width` bytes (`out.len() / 16`), `ld`
/// apart in `src`, into `[width / 4 steps][16 rows][4 bytes]`: a transpose
/// of 4-byte words.
#[inline]
fn transpose_group(src: &[u8], ld: usize, out: &mut [u8]) {
    let width = out.len() / GROUP;
    assert!(src.len() >= (GROUP - 1) * ld + width);
    #[cfg(target_arch = "x86_64")]
    if Isa::detect() == Isa::Vnni512 {
        // SAFETY: AVX-512 was detected; the assert bounds every access.
        return unsafe {
            match width {
                BLOCK => vnni::transpose_group(src.as_ptr(), ld, out.as_mut_ptr()),
                _ => vnni::transpose_half_group(src.as_ptr(), ld, out.as_mut_ptr()),
            }
        };
    }
    for (step, words) in out.chunks_exact_mut(GROUP * 4).enumerate() {
        for (lane, w) in words.chunks_exact_mut(4).enumerate() {
            let at = lane * ld + step * 4;
            w.copy_from_slice(&src[at..at + 4]);
        }
    }
}

/// The vector unit the kernel runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 with VNNI (`vpdpbusd`): AMD Zen 4/5, Intel Ice Lake and later.
    Vnni512,
    /// Plain Rust, for other CPUs and as the tests' reference.
    Portable,
}

impl Isa {
    /// The fastest one this CPU has.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
            *ISA.get_or_init(|| {
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
                {
                    Isa::Vnni512
                } else {
                    Isa::Portable
                }
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Isa::Portable
        }
    }
}

/// Rows of `x` per tile of the VNNI kernel.
const MR: usize = 4;
/// Up to this many rows of `x`, [`panel_matmul`] reads the panel once.
pub const TILE_ROWS: usize = MR;

/// Where [`panel_matmul`] writes: `y[i·ldy + j]` for row `i` of `x` and
/// panel row `j`; stores on the `first` chunk of `k`, continues the chain
/// from what `y` holds after.
#[derive(Debug, Clone, Copy)]
pub struct Dest {
    pub y: *mut f32,
    pub ldy: usize,
    pub first: bool,
}

/// `y[i·ldy + j] (+)= x_i · w_j` for every row `i` of `x` and the panel's
/// rows `j < rows`, over the panel's blocks, which are `x`'s blocks
/// `b0..b0 + panel.blocks`.
///
/// # Safety
/// `out.y` is valid for reads and writes at every `i·ldy + j` above (`i <
/// x.t`, `j < rows`, `rows ≤` the panel's groups × [`GROUP`]) and untouched
/// by other threads meanwhile; `b0 + panel.blocks ≤ x.k / BLOCK`.
pub unsafe fn panel_matmul(
    isa: Isa,
    x: &Int8Rows,
    b0: usize,
    panel: &Int8Panel,
    rows: usize,
    out: Dest,
) {
    debug_assert!(b0 + panel.blocks <= x.k / BLOCK && rows <= panel.groups * GROUP);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Vnni512 => vnni::panel(x, b0, panel, rows, out),
        _ => portable(x, b0, panel, rows, out),
    }
}

/// The arithmetic of the module doc, one output at a time.
///
/// # Safety
/// As [`panel_matmul`].
unsafe fn portable(x: &Int8Rows, b0: usize, p: &Int8Panel, rows: usize, out: Dest) {
    let Dest { y, ldy, first } = out;
    let Form {
        zero,
        has_min,
        width,
    } = p.form();
    for i in 0..x.t {
        for j in 0..rows {
            let (g, lane) = (j / GROUP, j % GROUP);
            let out = y.add(i * ldy + j);
            let mut acc = if first { 0.0 } else { *out };
            for b in 0..p.blocks {
                let c0 = b0 * BLOCK + b * width;
                let q = &x.q[i * x.k + c0..i * x.k + c0 + width];
                let at = g * p.blocks + b;
                let w = &p.q[at * GROUP * width..(at + 1) * GROUP * width];
                let mut isum = 0i32;
                for (c, &qc) in q.iter().enumerate() {
                    let u = w[(c / 4) * GROUP * 4 + lane * 4 + c % 4];
                    isum += u as i32 * qc as i32;
                }
                let sum = x.sum(i, c0, width);
                isum -= zero * sum;
                let d = x.d[(i * x.k + c0) / BLOCK];
                acc = (isum as f32).mul_add(d * p.scale[at * GROUP + lane], acc);
                if has_min {
                    acc = (sum as f32).mul_add(d * p.min[at * GROUP + lane], acc);
                }
            }
            *out = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::*;
    use std::arch::x86_64::*;

    /// [`super::transpose_group`]: rows `r` and `r + 8` share a vector, an
    /// 8 × 8 transpose runs in each 256-bit half (unpack 32, unpack 64,
    /// then a two-source permute of 128-bit quarters), and step `s` comes
    /// out as rows 0–7 then 8–15.
    ///
    /// # Safety
    /// AVX-512F; `src` readable for 16 rows of 32 bytes `ld` apart, `out`
    /// writable for 512 bytes.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_group(src: *const u8, ld: usize, out: *mut u8) {
        let row = |r: usize| _mm256_loadu_si256(src.add(r * ld).cast());
        let a: [__m512i; 8] = std::array::from_fn(|r| {
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(row(r)), row(r + 8))
        });
        let t: [__m512i; 8] = std::array::from_fn(|i| {
            let (x, y) = (a[i / 2 * 2], a[i / 2 * 2 + 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_epi32(x, y)
            } else {
                _mm512_unpackhi_epi32(x, y)
            }
        });
        // u[j] for j < 4 from t[0..4], j ≥ 4 from t[4..8]: quarter q of
        // u[j] holds word (j % 4) + 4 · (q % 2) of four consecutive rows.
        let u: [__m512i; 8] = std::array::from_fn(|j| {
            let base = j / 4 * 4;
            let (x, y) = match j % 4 {
                0 | 1 => (t[base], t[base + 2]),
                _ => (t[base + 1], t[base + 3]),
            };
            if j % 2 == 0 {
                _mm512_unpacklo_epi64(x, y)
            } else {
                _mm512_unpackhi_epi64(x, y)
            }
        });
        let lo = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
        let hi = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
        for j in 0..4 {
            let (x, y) = (u[j], u[j + 4]);
            _mm512_storeu_si512(out.add(j * 64).cast(), _mm512_permutex2var_epi64(x, lo, y));
            _mm512_storeu_si512(
                out.add((j + 4) * 64).cast(),
                _mm512_permutex2var_epi64(x, hi, y),
            );
        }
    }

    /// [`super::transpose_group`] for 16-byte rows: rows `r`, `r + 4`,
    /// `r + 8`, `r + 12` share a vector (one per 128-bit quarter), and a
    /// 4 × 4 transpose in each quarter (unpack 32, unpack 64) leaves step
    /// `s` as rows 0–15 in order.
    ///
    /// # Safety
    /// AVX-512F; `src` readable for 16 rows of 16 bytes `ld` apart, `out`
    /// writable for 256 bytes.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_half_group(src: *const u8, ld: usize, out: *mut u8) {
        let row = |r: usize| _mm_loadu_si128(src.add(r * ld).cast());
        let a: [__m512i; 4] = std::array::from_fn(|j| {
            let v = _mm512_castsi128_si512(row(j));
            let v = _mm512_inserti32x4::<1>(v, row(j + 4));
            let v = _mm512_inserti32x4::<2>(v, row(j + 8));
            _mm512_inserti32x4::<3>(v, row(j + 12))
        });
        let (t0, t1) = (
            _mm512_unpacklo_epi32(a[0], a[1]),
            _mm512_unpackhi_epi32(a[0], a[1]),
        );
        let (t2, t3) = (
            _mm512_unpacklo_epi32(a[2], a[3]),
            _mm512_unpackhi_epi32(a[2], a[3]),
        );
        let steps = [
            _mm512_unpacklo_epi64(t0, t2),
            _mm512_unpackhi_epi64(t0, t2),
            _mm512_unpacklo_epi64(t1, t3),
            _mm512_unpackhi_epi64(t1, t3),
        ];
        for (s, v) in steps.into_iter().enumerate() {
            _mm512_storeu_si512(out.add(s * 64).cast(), v);
        }
    }

    /// Tiles of [`MR`] rows of `x` by two groups (32 weight rows), then the
    /// row and group tails.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn panel(x: &Int8Rows, b0: usize, p: &Int8Panel, rows: usize, out: Dest) {
        let Dest { y, ldy, first } = out;
        let groups = rows.div_ceil(GROUP);
        let mut g = 0;
        while g < groups {
            let ng = if g + 2 <= groups { 2 } else { 1 };
            let mut i = 0;
            while i < x.t {
                let mr = MR.min(x.t - i);
                let Form { has_min, width, .. } = p.form();
                macro_rules! go {
                    ($m:literal, $n:literal) => {
                        match (has_min, width) {
                            (true, BLOCK) => {
                                tile::<$m, $n, true, BLOCK>(x, i, b0, p, g, rows, y, ldy, first)
                            }
                            (false, BLOCK) => {
                                tile::<$m, $n, false, BLOCK>(x, i, b0, p, g, rows, y, ldy, first)
                            }
                            (true, _) => tile::<$m, $n, true, HALF_BLOCK>(
                                x, i, b0, p, g, rows, y, ldy, first,
                            ),
                            (false, _) => tile::<$m, $n, false, HALF_BLOCK>(
                                x, i, b0, p, g, rows, y, ldy, first,
                            ),
                        }
                    };
                }
                match (mr, ng) {
                    (4, 2) => go!(4, 2),
                    (3, 2) => go!(3, 2),
                    (2, 2) => go!(2, 2),
                    (1, 2) => go!(1, 2),
                    (4, _) => go!(4, 1),
                    (3, _) => go!(3, 1),
                    (2, _) => go!(2, 1),
                    _ => go!(1, 1),
                }
                i += mr;
            }
            g += ng;
        }
    }

    /// Rows `i0..i0 + M` of `x` by groups `g0..g0 + N`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const M: usize, const N: usize, const MIN: bool, const W: usize>(
        x: &Int8Rows,
        i0: usize,
        b0: usize,
        p: &Int8Panel,
        g0: usize,
        rows: usize,
        y: *mut f32,
        ldy: usize,
        first: bool,
    ) {
        let zero = p.form().zero;
        // Lanes of each group that hold real rows.
        let mut mask = [0u16; N];
        for (n, m) in mask.iter_mut().enumerate() {
            let valid = rows.saturating_sub((g0 + n) * GROUP).min(GROUP);
            *m = if valid == GROUP {
                u16::MAX
            } else {
                (1u16 << valid) - 1
            };
        }
        let mut acc = [[_mm512_setzero_ps(); N]; M];
        if !first {
            for (m, row) in acc.iter_mut().enumerate() {
                for (n, a) in row.iter_mut().enumerate() {
                    let at = y.add((i0 + m) * ldy + (g0 + n) * GROUP);
                    *a = _mm512_maskz_loadu_ps(mask[n], at);
                }
            }
        }
        for b in 0..p.blocks {
            let mut iacc = [[_mm512_setzero_si512(); N]; M];
            let c0 = b0 * BLOCK + b * W;
            let w = |n: usize| p.q.as_ptr().add(((g0 + n) * p.blocks + b) * GROUP * W);
            let xq = |m: usize| x.q.as_ptr().add((i0 + m) * x.k + c0);
            for step in 0..W / 4 {
                let mut wv = [_mm512_setzero_si512(); N];
                for (n, v) in wv.iter_mut().enumerate() {
                    *v = _mm512_loadu_si512(w(n).add(step * 64).cast());
                }
                for (m, row) in iacc.iter_mut().enumerate() {
                    let four = xq(m).add(step * 4).cast::<i32>().read_unaligned();
                    let xv = _mm512_set1_epi32(four);
                    for (n, a) in row.iter_mut().enumerate() {
                        *a = _mm512_dpbusd_epi32(*a, wv[n], xv);
                    }
                }
            }
            for m in 0..M {
                let d = _mm512_set1_ps(x.d[((i0 + m) * x.k + c0) / BLOCK]);
                let sum = x.sum(i0 + m, c0, W);
                let zs = _mm512_set1_epi32(zero * sum);
                for n in 0..N {
                    let at = ((g0 + n) * p.blocks + b) * GROUP;
                    let s = _mm512_mul_ps(_mm512_loadu_ps(p.scale.as_ptr().add(at)), d);
                    let isum = _mm512_cvtepi32_ps(_mm512_sub_epi32(iacc[m][n], zs));
                    acc[m][n] = _mm512_fmadd_ps(isum, s, acc[m][n]);
                    if MIN {
                        let o = _mm512_mul_ps(_mm512_loadu_ps(p.min.as_ptr().add(at)), d);
                        acc[m][n] = _mm512_fmadd_ps(_mm512_set1_ps(sum as f32), o, acc[m][n]);
                    }
                }
            }
        }
        for (m, row) in acc.iter().enumerate() {
            for (n, a) in row.iter().enumerate() {
                let at = y.add((i0 + m) * ldy + (g0 + n) * GROUP);
                _mm512_mask_storeu_ps(at, mask[n], *a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random decoded rows of `form`: bytes `[rows][k]`, scales and offsets
    /// `[rows][k / width]`.
    struct Rows {
        u: Vec<u8>,
        s: Vec<f32>,
        m: Vec<f32>,
        rows: usize,
        k: usize,
        form: Form,
    }

    impl Rows {
        fn random(rows: usize, k: usize, form: Form, seed: u64) -> Rows {
            let mut st = seed;
            let mut next = move || {
                st = st
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (st >> 33) as u32
            };
            let nb = rows * k / form.width;
            let u = (0..rows * k).map(|_| next() as u8).collect();
            let s = (0..nb).map(|_| (next() % 1000) as f32 * 1e-5).collect();
            let m = (0..nb)
                .map(|_| {
                    if form.has_min {
                        (next() % 1000) as f32 * -1e-4
                    } else {
                        0.0
                    }
                })
                .collect();
            Rows {
                u,
                s,
                m,
                rows,
                k,
                form,
            }
        }

        /// The panel of columns `c0..c0 + cols`.
        fn panel(&self, c0: usize, cols: usize) -> Int8Panel {
            let w = self.form.width;
            let mut p = Int8Panel::default();
            p.reset(self.rows, cols, self.form);
            for r in 0..self.rows {
                let (u, s, m) = p.row_mut(r);
                u.copy_from_slice(&self.u[r * self.k + c0..r * self.k + c0 + cols]);
                let at = (r * self.k + c0) / w;
                s.copy_from_slice(&self.s[at..at + cols / w]);
                m.copy_from_slice(&self.m[at..at + cols / w]);
            }
            p.pack();
            p
        }

        /// Weight `(r, c)` in f64.
        fn weight(&self, r: usize, c: usize) -> f64 {
            let b = (r * self.k + c) / self.form.width;
            let u = self.u[r * self.k + c] as i32;
            self.s[b] as f64 * (u - self.form.zero) as f64 + self.m[b] as f64
        }
    }

    /// The VNNI kernel gives the portable loop's bits, for every tile shape
    /// (row tails 1–3, a lone last group, a part-filled group), with and
    /// without offsets, 32- and 16-wide blocks, in one chunk and in two; and
    /// the result equals an f64 product of the quantised rows up to f32
    /// rounding (which also checks the interleaving `pack` does).
    #[test]
    fn vnni_equals_portable_and_f64() {
        let (k, n) = (6 * BLOCK, 16 * 3 + 5);
        for (zero, has_min, width) in [
            (128, false, BLOCK),
            (8, false, BLOCK),
            (0, true, BLOCK),
            (32, false, HALF_BLOCK),
            (0, true, HALF_BLOCK),
        ] {
            let form = Form {
                zero,
                has_min,
                width,
            };
            let w = Rows::random(n, k, form, 7 + zero as u64 + width as u64);
            let whole = w.panel(0, k);
            for t in [1, 2, 3, 4, 5, 11] {
                let x: Vec<f32> = (0..t * k)
                    .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3)
                    .collect();
                let xq = quantize_rows(&x, t, k);
                let ld = n + 3;
                let run = |isa: Isa| {
                    let mut y = vec![f32::NAN; t * ld];
                    unsafe {
                        let out = Dest {
                            y: y.as_mut_ptr(),
                            ldy: ld,
                            first: true,
                        };
                        panel_matmul(isa, &xq, 0, &whole, n, out)
                    };
                    y
                };
                let same = |a: &[f32], b: &[f32]| {
                    a.iter()
                        .zip(b)
                        .all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()))
                };
                let want = run(Isa::Portable);
                assert!(same(&run(Isa::detect()), &want), "t {t} {form:?}");
                // Two chunks of 3 input blocks continue the same chain.
                let mut y2 = vec![f32::NAN; t * ld];
                for (h, b0) in [0, 3].into_iter().enumerate() {
                    let half = w.panel(b0 * BLOCK, 3 * BLOCK);
                    let first = h == 0;
                    let out = Dest {
                        y: y2.as_mut_ptr(),
                        ldy: ld,
                        first,
                    };
                    unsafe { panel_matmul(Isa::detect(), &xq, b0, &half, n, out) };
                }
                assert!(same(&y2, &want), "t {t} {form:?}: in two chunks");
                for i in 0..t {
                    for j in 0..n {
                        let (mut exact, mut scale) = (0f64, 0f64);
                        for c in 0..k {
                            let xv = xq.q[i * k + c] as f64 * xq.d[(i * k + c) / BLOCK] as f64;
                            exact += xv * w.weight(j, c);
                            scale += (xv * w.weight(j, c)).abs();
                        }
                        let got = want[i * ld + j] as f64;
                        assert!(
                            (got - exact).abs() <= 2e-6 * scale + 1e-12,
                            "{form:?} t {t} ({i}, {j}): {got} vs {exact}"
                        );
                    }
                    // Outputs past the panel's rows are never written.
                    assert!(want[i * ld + n..(i + 1) * ld].iter().all(|v| v.is_nan()));
                }
            }
        }
    }

    /// Rounding follows llama.cpp: d = max|x|/127, ties to even, and a zero
    /// block stays zero.
    #[test]
    fn quantize_rows_rounds_as_llama_cpp() {
        let mut x = vec![0f32; 64];
        x[0] = 127.0; // d = 1
        x[1] = -0.5; // a tie: to even, 0
        x[2] = 1.5; // 2
        x[3] = 2.5; // 2
        let r = quantize_rows(&x, 1, 64);
        assert_eq!(r.d[0], 1.0);
        assert_eq!(&r.q[..4], &[127, 0, 2, 2]);
        assert_eq!((r.d[1], r.sum(0, 32, 32)), (0.0, 0));
        assert_eq!(
            (r.sum(0, 0, 32), r.sum(0, 0, 16), r.sum(0, 16, 16)),
            (131, 131, 0)
        );
    }
}
