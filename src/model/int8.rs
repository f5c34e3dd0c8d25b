//! GGUF quant blocks in the 8-bit form `kernels::i8dot` multiplies
//! (`--precision quant`): per block of 32 weights (16 for Q6_K), unsigned
//! bytes `u`, a scale `s`, an offset `m` and a zero point `z`, with weight
//! `s · (u − z) + m`. Q2_K, Q3_K (not decoded here yet), Q8_1/Q8_K and
//! float types have no form; `--precision quant` multiplies them in f32 at
//! rest instead.
//!
//! The block layouts are GGML's (`ggml-quants.c`, candle's `k_quants.rs`).
//! `s` and `m` are computed as candle's dequantisation computes them (`d ·
//! sc` and `dmin · m` in f32), so `s · (u − z) + m` is candle's weight up to
//! the one rounding its own formula adds.

use candle_core::quantized::GgmlDType;

use crate::kernels::i8dot::{Form, Int8Panel, BLOCK, HALF_BLOCK};

/// A type's 8-bit form; `None` for the types without one.
pub(crate) fn form(dtype: GgmlDType) -> Option<Form> {
    let (zero, has_min, width) = match dtype {
        GgmlDType::Q8_0 => (128, false, BLOCK),
        GgmlDType::Q4_0 => (8, false, BLOCK),
        GgmlDType::Q5_0 => (16, false, BLOCK),
        GgmlDType::Q4_1 | GgmlDType::Q5_1 | GgmlDType::Q4K | GgmlDType::Q5K => (0, true, BLOCK),
        GgmlDType::Q6K => (32, false, HALF_BLOCK),
        _ => return None,
    };
    Some(Form {
        zero,
        has_min,
        width,
    })
}

/// The little-endian f16 at `b` in f32, exactly. Written out because
/// `half`'s conversion is a call with a CPU-feature check per value, 6 % of
/// generating at `--precision quant`.
#[inline(always)]
fn half(b: &[u8]) -> f32 {
    let h = u16::from_le_bytes([b[0], b[1]]) as u32;
    let (sign, exp, mant) = ((h & 0x8000) << 16, (h >> 10) & 0x1F, h & 0x3FF);
    match exp {
        // Zero and subnormals: mant · 2⁻²⁴, exact in f32.
        0 => f32::from_bits((mant as f32 * (1.0 / 16_777_216.0)).to_bits() | sign),
        0x1F => f32::from_bits(sign | 0x7F80_0000 | (mant << 13)),
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (mant << 13)),
    }
}

/// Row `r` of `panel`, blocks `0..` from `src`: the row's bytes for the
/// panel's columns (a whole number of the type's blocks). `dtype` has a
/// [`form`].
pub(crate) fn decode_row(dtype: GgmlDType, src: &[u8], panel: &mut Int8Panel, r: usize) {
    // Compiled for the CPU's vector unit: the byte loops vectorise.
    crate::kernels::dispatch!(decode_row_inline(dtype, src, panel, r))
}

#[inline(always)]
fn decode_row_inline(dtype: GgmlDType, src: &[u8], panel: &mut Int8Panel, r: usize) {
    let (us, ss, ms) = panel.row_mut(r);
    let size = dtype.type_size();
    let width = form(dtype).map_or(BLOCK, |f| f.width);
    let per = dtype.block_size() / width;
    let blocks = src
        .chunks_exact(size)
        .zip(us.chunks_exact_mut(per * width))
        .zip(ss.chunks_exact_mut(per).zip(ms.chunks_exact_mut(per)));
    for ((blk, u), (s, m)) in blocks {
        match dtype {
            GgmlDType::Q8_0 => {
                // q + 128: the sign bit flipped.
                map_words(u, &blk[2..34], |w, _| w ^ (ONES << 7));
                s[0] = half(blk);
            }
            GgmlDType::Q4_0 | GgmlDType::Q4_1 => {
                nibbles(&blk[size - 16..], u);
                s[0] = half(blk);
                if dtype == GgmlDType::Q4_1 {
                    m[0] = half(&blk[2..]);
                }
            }
            GgmlDType::Q5_0 | GgmlDType::Q5_1 => {
                let hoff = if dtype == GgmlDType::Q5_1 { 4 } else { 2 };
                let qh = u32::from_le_bytes(blk[hoff..hoff + 4].try_into().unwrap());
                nibbles(&blk[hoff + 4..hoff + 20], u);
                for (j, v) in u.iter_mut().enumerate() {
                    *v |= (((qh >> j) & 1) << 4) as u8;
                }
                s[0] = half(blk);
                if dtype == GgmlDType::Q5_1 {
                    m[0] = half(&blk[2..]);
                }
            }
            GgmlDType::Q4K | GgmlDType::Q5K => {
                let (d, dmin) = (half(blk), half(&blk[2..]));
                let scales = &blk[4..16];
                let (qh, ql) = if dtype == GgmlDType::Q5K {
                    (Some(&blk[16..48]), &blk[48..176])
                } else {
                    (None, &blk[16..144])
                };
                // Four chunks of 64: low nibbles are sub-block 2j, high 2j + 1.
                for (sub, u) in u.chunks_exact_mut(BLOCK).enumerate() {
                    let q = &ql[sub / 2 * 32..sub / 2 * 32 + 32];
                    let shift = 4 * (sub % 2) as u32;
                    map_words(u, q, |w, _| (w >> shift) & LOW_NIBBLES);
                    if let Some(qh) = qh {
                        // Bit `sub` of each high byte is the fifth bit.
                        map_words(u, qh, |w, v| v | ((w >> sub) & ONES) << 4);
                    }
                    let (sc, mn) = scale_min_k4(sub, scales);
                    s[sub] = d * sc as f32;
                    m[sub] = -(dmin * mn as f32);
                }
            }
            GgmlDType::Q6K => {
                let (ql, qh) = (&blk[..128], &blk[128..192]);
                let d = half(&blk[208..]);
                // Two halves of 128; in each, part p of 32 takes nibble
                // p / 2 of ql[32 · (p % 2)..] and bits 2p, 2p + 1 of qh.
                for (n, u) in u.chunks_exact_mut(128).enumerate() {
                    let (ql, qh) = (&ql[64 * n..64 * n + 64], &qh[32 * n..32 * n + 32]);
                    for (part, u) in u.chunks_exact_mut(32).enumerate() {
                        let shift = 4 * (part / 2) as u32;
                        let lo = &ql[32 * (part % 2)..32 * (part % 2) + 32];
                        map_words(u, lo, |w, _| (w >> shift) & LOW_NIBBLES);
                        let hs = 2 * part as u32;
                        map_words(u, qh, |w, v| v | ((w >> hs) & (3 * ONES)) << 4);
                    }
                }
                for (j, s) in s.iter_mut().enumerate() {
                    *s = d * blk[192 + j] as i8 as f32;
                }
            }
            _ => unreachable!("{dtype:?} has no 8-bit form"),
        }
    }
}

const LOW_NIBBLES: u64 = 0x0F0F_0F0F_0F0F_0F0F;
const ONES: u64 = 0x0101_0101_0101_0101;

/// `u[i..i + 8] = f(src word, u word)` for each 8-byte word: bytewise
/// work eight bytes at a time, since the byte loops stayed scalar.
#[inline(always)]
fn map_words(u: &mut [u8], src: &[u8], f: impl Fn(u64, u64) -> u64) {
    for (v, w) in u.chunks_exact_mut(8).zip(src.chunks_exact(8)) {
        let w = u64::from_le_bytes(w.try_into().unwrap());
        let old = u64::from_le_bytes((&*v).try_into().unwrap());
        v.copy_from_slice(&f(w, old).to_le_bytes());
    }
}

/// 16 bytes of nibbles: the low ones are elements 0–15, the high 16–31.
#[inline(always)]
fn nibbles(qs: &[u8], u: &mut [u8]) {
    let (lo, hi) = u.split_at_mut(16);
    map_words(lo, qs, |w, _| w & LOW_NIBBLES);
    map_words(hi, qs, |w, _| (w >> 4) & LOW_NIBBLES);
}

/// GGML's `get_scale_min_k4`: sub-block `j`'s 6-bit scale and min.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::i8dot::{panel_matmul, quantize_rows, Dest, Isa};
    use crate::model::dequant::dequantize_blocks;
    use crate::synth::{fill_random_blocks, Rng};

    /// Every f16 bit pattern converts as `half` converts it.
    #[test]
    fn half_equals_the_half_crate() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32();
            let got = half(&h.to_le_bytes());
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{h:#x}"
            );
        }
    }

    /// For every type with a form: multiplying one-hot rows of `x` through
    /// the decoded panel gives back candle's dequantised weights, up to the
    /// roundings `s · (u − z) + m` adds (about 4e-9 for weights near 0.05).
    #[test]
    fn decoded_blocks_are_candles_weights() {
        let (rows, k) = (3, 512);
        for dtype in [
            GgmlDType::Q8_0,
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ] {
            let f = form(dtype).unwrap();
            let row_bytes = k / dtype.block_size() * dtype.type_size();
            let mut bytes = vec![0u8; rows * row_bytes];
            fill_random_blocks(dtype, &mut bytes, 0.05, &mut Rng::new(11));
            let mut want = vec![0f32; rows * k];
            dequantize_blocks(dtype, &bytes, &mut want).unwrap();
            let mut panel = Int8Panel::default();
            panel.reset(rows, k, f);
            for r in 0..rows {
                decode_row(
                    dtype,
                    &bytes[r * row_bytes..(r + 1) * row_bytes],
                    &mut panel,
                    r,
                );
            }
            panel.pack();
            // x = 127 · e_c quantises to d = 1, q = 127 at c: y = 127 · w_c.
            for c in 0..k {
                let mut x = vec![0f32; k];
                x[c] = 127.0;
                let xq = quantize_rows(&x, 1, k);
                let mut y = vec![0f32; rows];
                unsafe {
                    let out = Dest {
                        y: y.as_mut_ptr(),
                        ldy: rows,
                        first: true,
                    };
                    panel_matmul(Isa::Portable, &xq, 0, &panel, rows, out)
                };
                for r in 0..rows {
                    let (got, w) = (y[r] / 127.0, want[r * k + c]);
                    assert!(
                        // A wrong byte moves it by a step, ≥ 1e-4 here.
                        (got - w).abs() <= 1e-6 * w.abs() + 1e-8,
                        "{dtype:?} row {r} col {c}: {got} vs {w}"
                    );
                }
            }
        }
    }
}
