//! Dequantisation of stored weight rows into f32: one routine for every
//! type candle reads (GGUF quant blocks, and raw f16/bf16/f32 rows as
//! safetensors stores them).
//!
//! A matmul whose weight stays at rest decodes one panel of rows at a time
//! and runs the f32 gemm on it. At 45 prompt rows the gemm spends about
//! 90 FLOP per weight, so decoding must run at several G weights/s per core
//! to stay out of its way. candle's `GgmlType::to_float` is scalar (about
//! 1 G weights/s), so the hot types (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K, F16, BF16)
//! have hand-written AVX2 and AVX-512 kernels here, picked at run time.
//! Every other type goes through candle's own `to_float`.
//!
//! Every kernel gives the same bits as candle's `QTensor::dequantize`: the
//! integer-to-float conversions are exact, and the float operations are
//! the same ones in the same order (no fused multiply-add, which would round
//! once where candle rounds twice). The tests compare bits on random blocks.
//!
//! Mapped GGUF tensors start 32-byte aligned but a row of 18-byte Q4_0 blocks
//! can start at any even offset, so the kernels read through unaligned loads
//! only, and the candle fallback copies blocks to an aligned buffer when the
//! slice is not aligned for the block type.

use std::ops::Range;

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8K, BlockQ8_0, BlockQ8_1,
};
use candle_core::quantized::{GgmlDType, GgmlType};
use half::{bf16, f16};

use crate::{Error, Result};

/// Every type candle reads (and this module decodes).
pub const TYPES: [GgmlDType; 15] = [
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q8_1,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
    GgmlDType::Q8K,
];

/// Which implementation decodes the hot types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// candle's scalar `to_float` for every type.
    Portable,
    /// 8-lane kernels (x86-64 with AVX2 and F16C).
    Avx2,
    /// 16-lane kernels (x86-64 with AVX-512 F and BW).
    Avx512,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub(crate) fn detected() -> Kernel {
        *Kernel::available()
            .last()
            .expect("the portable kernel is always available")
    }

    /// Every kernel this CPU runs, slowest first ([`Kernel::Portable`]
    /// always). Detected once: the at-rest matmul checks it for every 1024
    /// decoded weights.
    pub fn available() -> &'static [Kernel] {
        static AVAILABLE: std::sync::OnceLock<Vec<Kernel>> = std::sync::OnceLock::new();
        AVAILABLE.get_or_init(|| {
            #[allow(unused_mut)]
            let mut kernels = vec![Kernel::Portable];
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c") {
                    kernels.push(Kernel::Avx2);
                    if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
                        kernels.push(Kernel::Avx512);
                    }
                }
            }
            kernels
        })
    }

    /// Short name for benchmark tables.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512 => "avx512",
        }
    }
}

/// Bytes one row of `row_len` weights takes in `dtype`; an error if
/// `row_len` is not a whole number of blocks.
pub fn row_bytes(dtype: GgmlDType, row_len: usize) -> Result<usize> {
    let block = dtype.block_size();
    if !row_len.is_multiple_of(block) {
        return Err(bad(format!(
            "a row of {row_len} weights is not a whole number of {dtype:?} blocks of {block}"
        )));
    }
    Ok(row_len / block * dtype.type_size())
}

/// Decodes `rows` of a row-major weight stored as `dtype` into `out`
/// (`[rows.len(), row_len]`, f32), with the fastest kernel this CPU runs.
///
/// `src` holds the whole tensor (or at least its first `rows.end` rows) as it
/// lies in the file: GGUF quant blocks, or raw little-endian f16/bf16/f32.
/// The values are bit-identical to candle's `QTensor::dequantize`.
pub fn dequantize_rows(
    dtype: GgmlDType,
    src: &[u8],
    row_len: usize,
    rows: Range<usize>,
    out: &mut [f32],
) -> Result<()> {
    let stride = row_bytes(dtype, row_len)?;
    let (start, end) = (
        rows.start.saturating_mul(stride),
        rows.end.saturating_mul(stride),
    );
    if rows.start > rows.end || end > src.len() {
        return Err(bad(format!(
            "rows {rows:?} of {stride} bytes each lie outside a {} byte tensor",
            src.len()
        )));
    }
    dequantize_blocks(dtype, &src[start..end], out)
}

/// Decodes a contiguous run of whole `dtype` blocks into `out`, with the
/// fastest kernel this CPU runs. `out.len()` must be the number of weights
/// `src` holds.
pub fn dequantize_blocks(dtype: GgmlDType, src: &[u8], out: &mut [f32]) -> Result<()> {
    dequantize_blocks_with(Kernel::detected(), dtype, src, out)
}

/// [`dequantize_blocks`] with a chosen kernel (for tests and benchmarks).
/// A kernel this CPU lacks is an error, not undefined behaviour.
pub fn dequantize_blocks_with(
    kernel: Kernel,
    dtype: GgmlDType,
    src: &[u8],
    out: &mut [f32],
) -> Result<()> {
    let (block, size) = (dtype.block_size(), dtype.type_size());
    if !src.len().is_multiple_of(size) || src.len() / size * block != out.len() {
        return Err(bad(format!(
            "{} bytes of {dtype:?} do not decode to {} weights",
            src.len(),
            out.len()
        )));
    }
    if !Kernel::available().contains(&kernel) {
        return Err(bad(format!(
            "this CPU cannot run the {} kernel",
            kernel.name()
        )));
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the CPU runs `kernel` (checked above), and `src`/`out`
        // hold whole blocks of matching counts (checked above).
        let done = unsafe {
            match kernel {
                Kernel::Portable => false,
                Kernel::Avx2 => x86::decode_avx2(dtype, src, out),
                Kernel::Avx512 => x86::decode_avx512(dtype, src, out),
            }
        };
        if done {
            return Ok(());
        }
    }
    decode_portable(dtype, src, out);
    Ok(())
}

fn bad(reason: String) -> Error {
    Error::Candle(candle_core::Error::Msg(format!("dequantize: {reason}")))
}

/// candle's `to_float` on every type; sizes were checked by the caller.
fn decode_portable(dtype: GgmlDType, src: &[u8], out: &mut [f32]) {
    match dtype {
        GgmlDType::F32 => via_candle::<f32>(src, out),
        GgmlDType::F16 => via_candle::<f16>(src, out),
        GgmlDType::BF16 => via_candle::<bf16>(src, out),
        GgmlDType::Q4_0 => via_candle::<BlockQ4_0>(src, out),
        GgmlDType::Q4_1 => via_candle::<BlockQ4_1>(src, out),
        GgmlDType::Q5_0 => via_candle::<BlockQ5_0>(src, out),
        GgmlDType::Q5_1 => via_candle::<BlockQ5_1>(src, out),
        GgmlDType::Q8_0 => via_candle::<BlockQ8_0>(src, out),
        GgmlDType::Q8_1 => via_candle::<BlockQ8_1>(src, out),
        GgmlDType::Q2K => via_candle::<BlockQ2K>(src, out),
        GgmlDType::Q3K => via_candle::<BlockQ3K>(src, out),
        GgmlDType::Q4K => via_candle::<BlockQ4K>(src, out),
        GgmlDType::Q5K => via_candle::<BlockQ5K>(src, out),
        GgmlDType::Q6K => via_candle::<BlockQ6K>(src, out),
        GgmlDType::Q8K => via_candle::<BlockQ8K>(src, out),
    }
}

/// Runs `T::to_float` on `src` viewed as blocks of `T`. Every `T` here is a
/// `repr(C)` struct of integers and floats (or a bare float), for which every
/// bit pattern is a valid value, so the view is sound once aligned; an
/// unaligned slice is copied to aligned blocks a chunk at a time.
fn via_candle<T: GgmlType>(src: &[u8], out: &mut [f32]) {
    let size = std::mem::size_of::<T>();
    let block = T::BLCK_SIZE;
    let n = src.len() / size;
    if (src.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
        // SAFETY: aligned, in bounds (n * size <= src.len()), valid for any bits.
        let blocks = unsafe { std::slice::from_raw_parts(src.as_ptr().cast::<T>(), n) };
        T::to_float(blocks, out);
        return;
    }
    const CHUNK: usize = 64;
    let mut buf: Vec<T> = (0..CHUNK.min(n)).map(|_| T::zeros()).collect();
    for (bytes, ys) in src.chunks(CHUNK * size).zip(out.chunks_mut(CHUNK * block)) {
        let m = bytes.len() / size;
        // SAFETY: `buf` holds at least `m` blocks of `size` bytes; the
        // regions cannot overlap (one is a fresh allocation).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.as_mut_ptr().cast::<u8>(), m * size)
        };
        T::to_float(&buf[..m], ys);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The SIMD kernels. Each reads its block fields through unaligned
    //! loads from a raw pointer that stays inside `src`, and writes whole
    //! blocks of `out`. Output order and arithmetic follow candle's
    //! `to_float` for the same type (comments name the candle formula).

    use std::arch::x86_64::*;

    use candle_core::quantized::GgmlDType;

    /// Decodes with AVX2 if this type has a kernel; false if it has none.
    ///
    /// # Safety
    /// The CPU supports AVX2 and F16C; `src` holds whole `dtype` blocks and
    /// `out` exactly their weights.
    pub(super) unsafe fn decode_avx2(dtype: GgmlDType, src: &[u8], out: &mut [f32]) -> bool {
        let n = out.len();
        let (s, o) = (src.as_ptr(), out.as_mut_ptr());
        match dtype {
            GgmlDType::F16 => f16_avx2(s, o, n),
            GgmlDType::BF16 => bf16_avx2(s, o, n),
            GgmlDType::Q4_0 => q4_0_avx2(s, o, n / 32),
            GgmlDType::Q4_1 => q4_1_avx2(s, o, n / 32),
            GgmlDType::Q8_0 => q8_0_avx2(s, o, n / 32),
            GgmlDType::Q4K => q4k_avx2(s, o, n / 256),
            GgmlDType::Q6K => q6k_avx2(s, o, n / 256),
            _ => return false,
        }
        true
    }

    /// Decodes with AVX-512 if this type has a kernel; false if it has none.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F and BW, AVX2 and F16C; `src` holds whole
    /// `dtype` blocks and `out` exactly their weights.
    pub(super) unsafe fn decode_avx512(dtype: GgmlDType, src: &[u8], out: &mut [f32]) -> bool {
        let n = out.len();
        let (s, o) = (src.as_ptr(), out.as_mut_ptr());
        match dtype {
            GgmlDType::F16 => f16_avx512(s, o, n),
            GgmlDType::BF16 => bf16_avx512(s, o, n),
            GgmlDType::Q4_0 => q4_0_avx512(s, o, n / 32),
            GgmlDType::Q4_1 => q4_1_avx512(s, o, n / 32),
            GgmlDType::Q8_0 => q8_0_avx512(s, o, n / 32),
            _ => return decode_avx2(dtype, src, out),
        }
        true
    }

    /// One f16 (little-endian, at any byte offset) as f32, exactly.
    #[inline(always)]
    unsafe fn scale(p: *const u8) -> f32 {
        let bits = std::ptr::read_unaligned(p.cast::<u16>());
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// Eight bytes (sign- or zero-extended by `widen`) as eight floats.
    #[inline(always)]
    unsafe fn bytes8_ps(v: __m128i, signed: bool) -> __m256 {
        if signed {
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v))
        } else {
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
        }
    }

    /// Stores 16 bytes as 16 floats `q * d` (i8 values).
    #[inline(always)]
    unsafe fn store16_mul(o: *mut f32, q: __m128i, d: __m256) {
        _mm256_storeu_ps(o, _mm256_mul_ps(bytes8_ps(q, true), d));
        _mm256_storeu_ps(
            o.add(8),
            _mm256_mul_ps(bytes8_ps(_mm_srli_si128(q, 8), true), d),
        );
    }

    // --- raw floats ---------------------------------------------------------

    #[target_feature(enable = "avx2,f16c")]
    unsafe fn f16_avx2(s: *const u8, o: *mut f32, n: usize) {
        let mut i = 0;
        while i + 8 <= n {
            let h = _mm_loadu_si128(s.add(2 * i).cast());
            _mm256_storeu_ps(o.add(i), _mm256_cvtph_ps(h));
            i += 8;
        }
        while i < n {
            *o.add(i) = scale(s.add(2 * i));
            i += 1;
        }
    }

    /// bf16 → f32 is a 16-bit shift; half also sets the quiet bit of a NaN.
    #[inline(always)]
    unsafe fn bf16_one(bits: u16) -> f32 {
        half::bf16::from_bits(bits).to_f32()
    }

    #[target_feature(enable = "avx2")]
    unsafe fn bf16_avx2(s: *const u8, o: *mut f32, n: usize) {
        let abs_mask = _mm256_set1_epi32(0x7FFF_0000);
        let inf = _mm256_set1_epi32(0x7F80_0000);
        let quiet = _mm256_set1_epi32(0x0040_0000);
        let mut i = 0;
        while i + 8 <= n {
            let h = _mm_loadu_si128(s.add(2 * i).cast());
            let x = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
            let nan = _mm256_cmpgt_epi32(_mm256_and_si256(x, abs_mask), inf);
            let x = _mm256_or_si256(x, _mm256_and_si256(nan, quiet));
            _mm256_storeu_ps(o.add(i), _mm256_castsi256_ps(x));
            i += 8;
        }
        while i < n {
            *o.add(i) = bf16_one(std::ptr::read_unaligned(s.add(2 * i).cast::<u16>()));
            i += 1;
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
    unsafe fn f16_avx512(s: *const u8, o: *mut f32, n: usize) {
        let mut i = 0;
        while i + 16 <= n {
            let h = _mm256_loadu_si256(s.add(2 * i).cast());
            _mm512_storeu_ps(o.add(i), _mm512_cvtph_ps(h));
            i += 16;
        }
        f16_avx2(s.add(2 * i), o.add(i), n - i);
    }

    #[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
    unsafe fn bf16_avx512(s: *const u8, o: *mut f32, n: usize) {
        let abs_mask = _mm512_set1_epi32(0x7FFF_0000);
        let inf = _mm512_set1_epi32(0x7F80_0000);
        let quiet = _mm512_set1_epi32(0x0040_0000);
        let mut i = 0;
        while i + 16 <= n {
            let h = _mm256_loadu_si256(s.add(2 * i).cast());
            let x = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
            let nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(x, abs_mask), inf);
            let x = _mm512_mask_or_epi32(x, nan, x, quiet);
            _mm512_storeu_ps(o.add(i), _mm512_castsi512_ps(x));
            i += 16;
        }
        bf16_avx2(s.add(2 * i), o.add(i), n - i);
    }

    // --- 32-weight blocks -----------------------------------------------------

    /// Q4_0 (18 bytes: f16 d, 16 bytes of nibbles): y[j] = (lo_j - 8) * d,
    /// y[j + 16] = (hi_j - 8) * d.
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn q4_0_avx2(s: *const u8, o: *mut f32, nb: usize) {
        let m4 = _mm_set1_epi8(0x0F);
        let eight = _mm_set1_epi8(8);
        for b in 0..nb {
            let (p, y) = (s.add(18 * b), o.add(32 * b));
            let d = _mm256_set1_ps(scale(p));
            let q = _mm_loadu_si128(p.add(2).cast());
            let lo = _mm_sub_epi8(_mm_and_si128(q, m4), eight);
            let hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), m4), eight);
            store16_mul(y, lo, d);
            store16_mul(y.add(16), hi, d);
        }
    }

    /// Q4_1 (20 bytes: f16 d, f16 m, 16 bytes of nibbles): y = q * d + m,
    /// a multiply then an add (candle does not fuse them).
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn q4_1_avx2(s: *const u8, o: *mut f32, nb: usize) {
        let m4 = _mm_set1_epi8(0x0F);
        for b in 0..nb {
            let (p, y) = (s.add(20 * b), o.add(32 * b));
            let d = _mm256_set1_ps(scale(p));
            let m = _mm256_set1_ps(scale(p.add(2)));
            let q = _mm_loadu_si128(p.add(4).cast());
            let lo = _mm_and_si128(q, m4);
            let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m4);
            for (k, v) in [lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)]
                .into_iter()
                .enumerate()
            {
                let x = _mm256_add_ps(_mm256_mul_ps(bytes8_ps(v, false), d), m);
                _mm256_storeu_ps(y.add(8 * k), x);
            }
        }
    }

    /// Q8_0 (34 bytes: f16 d, 32 i8): y = q * d.
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn q8_0_avx2(s: *const u8, o: *mut f32, nb: usize) {
        for b in 0..nb {
            let (p, y) = (s.add(34 * b), o.add(32 * b));
            let d = _mm256_set1_ps(scale(p));
            store16_mul(y, _mm_loadu_si128(p.add(2).cast()), d);
            store16_mul(y.add(16), _mm_loadu_si128(p.add(18).cast()), d);
        }
    }

    /// 16 bytes (i8, or u8 if `!signed`) as 16 floats, AVX-512.
    #[inline(always)]
    unsafe fn bytes16_ps512(v: __m128i, signed: bool) -> __m512 {
        if signed {
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v))
        } else {
            _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v))
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
    unsafe fn q4_0_avx512(s: *const u8, o: *mut f32, nb: usize) {
        let m4 = _mm_set1_epi8(0x0F);
        let eight = _mm_set1_epi8(8);
        for b in 0..nb {
            let (p, y) = (s.add(18 * b), o.add(32 * b));
            let d = _mm512_set1_ps(scale(p));
            let q = _mm_loadu_si128(p.add(2).cast());
            let lo = _mm_sub_epi8(_mm_and_si128(q, m4), eight);
            let hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), m4), eight);
            _mm512_storeu_ps(y, _mm512_mul_ps(bytes16_ps512(lo, true), d));
            _mm512_storeu_ps(y.add(16), _mm512_mul_ps(bytes16_ps512(hi, true), d));
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
    unsafe fn q4_1_avx512(s: *const u8, o: *mut f32, nb: usize) {
        let m4 = _mm_set1_epi8(0x0F);
        for b in 0..nb {
            let (p, y) = (s.add(20 * b), o.add(32 * b));
            let d = _mm512_set1_ps(scale(p));
            let m = _mm512_set1_ps(scale(p.add(2)));
            let q = _mm_loadu_si128(p.add(4).cast());
            let lo = _mm_and_si128(q, m4);
            let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m4);
            let lo = _mm512_add_ps(_mm512_mul_ps(bytes16_ps512(lo, false), d), m);
            let hi = _mm512_add_ps(_mm512_mul_ps(bytes16_ps512(hi, false), d), m);
            _mm512_storeu_ps(y, lo);
            _mm512_storeu_ps(y.add(16), hi);
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
    unsafe fn q8_0_avx512(s: *const u8, o: *mut f32, nb: usize) {
        for b in 0..nb {
            let (p, y) = (s.add(34 * b), o.add(32 * b));
            let d = _mm512_set1_ps(scale(p));
            let q0 = _mm_loadu_si128(p.add(2).cast());
            let q1 = _mm_loadu_si128(p.add(18).cast());
            _mm512_storeu_ps(y, _mm512_mul_ps(bytes16_ps512(q0, true), d));
            _mm512_storeu_ps(y.add(16), _mm512_mul_ps(bytes16_ps512(q1, true), d));
        }
    }

    // --- 256-weight k-quant blocks --------------------------------------------

    /// candle's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j`.
    #[inline(always)]
    fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
        if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            (
                (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
                (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
            )
        }
    }

    /// Q4_K (144 bytes: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128
    /// bytes of nibbles). For each 64 weights, with (sc, m) of sub-blocks
    /// 2j and 2j+1: y = (d * sc) * q - (dmin * m), low nibbles first.
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn q4k_avx2(s: *const u8, o: *mut f32, nb: usize) {
        let m4 = _mm256_set1_epi8(0x0F);
        for b in 0..nb {
            let (p, y) = (s.add(144 * b), o.add(256 * b));
            let d = scale(p);
            let dmin = scale(p.add(2));
            let scales = std::ptr::read_unaligned(p.add(4).cast::<[u8; 12]>());
            for j in 0..4 {
                let q = _mm256_loadu_si256(p.add(16 + 32 * j).cast());
                let lo = _mm256_and_si256(q, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                for (h, v) in [lo, hi].into_iter().enumerate() {
                    let (sc, m) = scale_min_k4(2 * j + h, &scales);
                    let ds = _mm256_set1_ps(d * sc as f32);
                    let dm = _mm256_set1_ps(dmin * m as f32);
                    let y = y.add(64 * j + 32 * h);
                    let v0 = _mm256_castsi256_si128(v);
                    let v1 = _mm256_extracti128_si256(v, 1);
                    for (k, w) in [v0, _mm_srli_si128(v0, 8), v1, _mm_srli_si128(v1, 8)]
                        .into_iter()
                        .enumerate()
                    {
                        let x = _mm256_sub_ps(_mm256_mul_ps(ds, bytes8_ps(w, false)), dm);
                        _mm256_storeu_ps(y.add(8 * k), x);
                    }
                }
            }
        }
    }

    /// Q6_K (210 bytes: 128 bytes low nibbles `ql`, 64 bytes of 2-bit highs
    /// `qh`, 16 i8 scales, f16 d). Per 128 weights and l in 0..32:
    /// q1 = (ql[l] & 15 | (qh[l] & 3) << 4) - 32, q2 from ql[l+32] and qh
    /// bits 2..4, q3 from ql[l] >> 4 and bits 4..6, q4 from ql[l+32] >> 4 and
    /// bits 6..8; y[l + 32k] = (d * sc[l/16 + 2k]) * q(k+1).
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn q6k_avx2(s: *const u8, o: *mut f32, nb: usize) {
        let m4 = _mm256_set1_epi8(0x0F);
        let m2 = _mm256_set1_epi8(0x30);
        let off = _mm256_set1_epi8(32);
        for b in 0..nb {
            let p = s.add(210 * b);
            let d = scale(p.add(208));
            let sc = std::ptr::read_unaligned(p.add(192).cast::<[i8; 16]>());
            for half in 0..2 {
                let ql = p.add(64 * half);
                let qh = _mm256_loadu_si256(p.add(128 + 32 * half).cast());
                let l0 = _mm256_loadu_si256(ql.cast());
                let l1 = _mm256_loadu_si256(ql.add(32).cast());
                let q = [
                    _mm256_or_si256(
                        _mm256_and_si256(l0, m4),
                        _mm256_and_si256(_mm256_slli_epi16(qh, 4), m2),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(l1, m4),
                        _mm256_and_si256(_mm256_slli_epi16(qh, 2), m2),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                        _mm256_and_si256(qh, m2),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                        _mm256_and_si256(_mm256_srli_epi16(qh, 2), m2),
                    ),
                ];
                let y = o.add(256 * b + 128 * half);
                let sc = &sc[8 * half..];
                for (k, v) in q.into_iter().enumerate() {
                    let v = _mm256_sub_epi8(v, off);
                    let v0 = _mm256_castsi256_si128(v);
                    let v1 = _mm256_extracti128_si256(v, 1);
                    // Weights l in 0..16 use sc[2k], l in 16..32 use sc[2k + 1].
                    let s0 = _mm256_set1_ps(d * sc[2 * k] as f32);
                    let s1 = _mm256_set1_ps(d * sc[2 * k + 1] as f32);
                    let y = y.add(32 * k);
                    store16_mul(y, v0, s0);
                    store16_mul(y.add(16), v1, s1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    /// Random valid blocks (finite scales, random quants).
    fn random_valid_blocks(dtype: GgmlDType, n_blocks: usize, seed: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; n_blocks * dtype.type_size()];
        crate::synth::fill_random_blocks(
            dtype,
            &mut bytes,
            0.02,
            &mut crate::synth::Rng::new(seed),
        );
        bytes
    }

    /// What candle's `QTensor::dequantize` gives for these blocks.
    fn candle_reference(dtype: GgmlDType, bytes: &[u8], n: usize) -> Vec<u32> {
        // candle views the bytes as blocks in place: give it 8-byte alignment.
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        // SAFETY: `words` has at least `bytes.len()` bytes; u8 has no alignment.
        let aligned =
            unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), bytes.len()) };
        aligned.copy_from_slice(bytes);
        let bytes = &*aligned;
        let q = QTensor::new(
            candle_core::quantized::QStorage::from_data(
                std::borrow::Cow::Borrowed(bytes),
                &Device::Cpu,
                dtype,
            )
            .unwrap(),
            (n,),
        )
        .unwrap();
        let t: Tensor = q.dequantize(&Device::Cpu).unwrap();
        t.to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn every_type_and_kernel_matches_candle_bits() {
        for dtype in TYPES {
            let n_blocks = 37;
            let n = n_blocks * dtype.block_size();
            let bytes = random_valid_blocks(dtype, n_blocks, dtype.type_size() as u64);
            let want = candle_reference(dtype, &bytes, n);
            // Also at an odd-even offset: a buffer shifted by 2 bytes.
            let mut shifted = vec![0u8; 2];
            shifted.extend_from_slice(&bytes);
            for &kernel in Kernel::available() {
                for src in [&bytes[..], &shifted[2..]] {
                    let mut out = vec![f32::NAN; n];
                    dequantize_blocks_with(kernel, dtype, src, &mut out).unwrap();
                    let got = bits(&out);
                    let first = got.iter().zip(&want).position(|(a, b)| a != b);
                    assert_eq!(first, None, "{dtype:?} with {kernel:?}: first bad weight");
                }
            }
        }
    }

    #[test]
    fn f16_and_bf16_every_bit_pattern_match_candle() {
        let bytes: Vec<u8> = (0..=u16::MAX).flat_map(|v| v.to_le_bytes()).collect();
        for dtype in [GgmlDType::F16, GgmlDType::BF16] {
            let want = candle_reference(dtype, &bytes, 1 << 16);
            for &kernel in Kernel::available() {
                let mut out = vec![0.0; 1 << 16];
                // 65536 - 3 values exercise the scalar tail too.
                let n = (1 << 16) - 3;
                dequantize_blocks_with(kernel, dtype, &bytes[..2 * n], &mut out[..n]).unwrap();
                assert_eq!(bits(&out[..n]), want[..n], "{dtype:?} with {kernel:?}");
            }
        }
    }

    #[test]
    fn rows_decode_the_right_slice() {
        let dtype = GgmlDType::Q4K;
        let (row_len, n_rows) = (512, 6);
        let bytes = random_valid_blocks(dtype, n_rows * 2, 7);
        let all = candle_reference(dtype, &bytes, n_rows * row_len);
        let mut out = vec![0.0; 3 * row_len];
        dequantize_rows(dtype, &bytes, row_len, 2..5, &mut out).unwrap();
        assert_eq!(bits(&out), all[2 * row_len..5 * row_len]);
    }

    #[test]
    fn bad_sizes_are_errors_not_panics() {
        let bytes = vec![0u8; 18 * 4];
        let mut out = vec![0.0; 64];
        // 48 is not a whole number of 32-weight blocks.
        assert!(dequantize_rows(GgmlDType::Q4_0, &bytes, 48, 0..1, &mut out).is_err());
        // Rows past the end of the tensor.
        assert!(dequantize_rows(GgmlDType::Q4_0, &bytes, 64, 1..3, &mut out).is_err());
        // Output of the wrong length.
        assert!(dequantize_rows(GgmlDType::Q4_0, &bytes, 64, 0..1, &mut out[..63]).is_err());
        assert!(dequantize_rows(GgmlDType::Q4_0, &bytes, 64, 1..2, &mut out).is_ok());
    }
}
