//! Sanity bounds on what a model file may declare, checked before anything
//! is allocated from it, and the guard that turns a panic inside a
//! dependency into one line.
//!
//! A model file is untrusted input: a flipped bit in `block_count` must give
//! an error, not a 2^40-element allocation. Every bound below is far above
//! any released model (the reason says how far) and far below what would
//! exhaust memory or run for minutes. Every size product goes through
//! [`checked_product`]. See issue #13 (`issues show 13`) and RELIABILITY.md.

use std::panic::{catch_unwind, AssertUnwindSafe};

use candle_core::Tensor;

use crate::{Error, Result};

/// Blocks. Llama 3.1 405B has 126; 1024 is 8× that, and a layer list of
/// this length is cheap, so no file can ask for a 2^63-entry vector.
pub(crate) const MAX_LAYERS: usize = 1024;
/// Query or kv heads. The widest released models use 128.
pub(crate) const MAX_HEADS: usize = 4096;
/// Dimensions per head. Gemma uses 256 and nothing ships above 512; 8192
/// keeps `[T, T]` scores and RoPE tables small while leaving room.
pub(crate) const MAX_HEAD_DIM: usize = 8192;
/// Residual width. Llama 405B: 16384; 131072 is 8× that.
pub(crate) const MAX_D_MODEL: usize = 131_072;
/// MLP width. Llama 405B: 53248; 1 << 20 is 20× that.
pub(crate) const MAX_D_FF: usize = 1 << 20;
/// Vocabulary rows. Gemma 3: 262144; 1 << 22 is 16× that.
pub(crate) const MAX_VOCAB: usize = 1 << 22;
/// Context positions. Released models reach 10M (Llama 4 Scout); the
/// context only bounds prompts and is never allocated from, so 1 << 30.
pub(crate) const MAX_CONTEXT: usize = 1 << 30;
/// Tensors in one GGUF header. A 405B GGUF has ~1140; 1 << 20 is plenty.
const MAX_TENSORS: u64 = 1 << 20;
/// Metadata entries in one GGUF header. Real files have ~40.
const MAX_KV: u64 = 1 << 16;
/// Bytes in one GGUF string. The longest real ones are chat templates
/// (tens of KB); 16 MiB leaves room and bounds every single allocation.
const MAX_STRING: u64 = 16 << 20;
/// Elements in one GGUF array: token lists and merges (Gemma: 262144 tokens,
/// some BPE files ~500k merges). 1 << 24 is 30× that.
const MAX_ARRAY: u64 = 1 << 24;
/// Nested GGUF arrays. llama.cpp writes none; a deep nest only exists to
/// exhaust a recursive reader's stack.
const MAX_ARRAY_DEPTH: usize = 2;
/// Largest `general.alignment`. llama.cpp uses 32; a page is 4096. The value
/// must also be a power of two, as the GGUF spec requires.
const MAX_ALIGNMENT: u64 = 1 << 16;
/// Dimensions per GGUF tensor (GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;

/// `a × b × …`, or an error naming what was being sized.
pub fn checked_product(what: &str, factors: &[usize]) -> Result<usize> {
    factors
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f))
        .ok_or_else(|| Error::Config(format!("{what}: size {factors:?} overflows")))
}

/// A norm epsilon must be finite and non-negative; a negative one makes
/// `rsqrt(mean(x²) + eps)` NaN for small rows (issue #13 item 1).
pub(crate) fn check_eps(eps: f64) -> Result<()> {
    if !eps.is_finite() || eps < 0.0 {
        return Err(Error::Config(format!(
            "norm epsilon `{eps}` must be finite and non-negative"
        )));
    }
    Ok(())
}

/// Run `f`, turning a panic inside it (a dependency's bug on hostile input)
/// into an error made by `wrap` from the panic's message. The default hook's
/// backtrace print is silenced on this thread only while `f` runs.
pub fn guard<T>(wrap: impl FnOnce(String) -> Error, f: impl FnOnce() -> Result<T>) -> Result<T> {
    install_quiet_hook();
    QUIET.with(|q| q.set(q.get() + 1));
    let out = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(q.get() - 1));
    out.unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(wrap(format!(
            "rejected ({})",
            super::locate::first_line(&msg)
        )))
    })
}

thread_local! {
    /// How many `guard`s this thread is inside; the hook is silent when > 0.
    static QUIET: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Wrap the process's panic hook once so guarded panics print nothing; any
/// other panic still reaches the previous hook.
fn install_quiet_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(|q| q.get()) == 0 {
                previous(info);
            }
        }));
    });
}

/// A GGUF header as far as the bounds need it: where tensor data starts and
/// each tensor's (name, offset, byte length).
#[derive(Debug)]
pub struct GgufLayout {
    pub alignment: u64,
    pub data_offset: u64,
    pub tensors: Vec<(String, u64, u64)>,
}

/// Walk a GGUF header over `bytes` with a reader that never allocates more
/// than the bytes it has seen, and check every count, length, dimension,
/// the alignment and every tensor's byte range before candle parses it.
/// Candle divides by a zero alignment and trusts element counts; this runs
/// first so it never sees such a file (issue #13 items 3–5).
pub fn check_gguf_header(bytes: &[u8]) -> std::result::Result<GgufLayout, String> {
    let mut r = Reader {
        bytes,
        pos: 0,
        v1: false,
    };
    if r.take(4)? != b"GGUF" {
        return Err("no `GGUF` magic at the start".into());
    }
    let version = r.u32()?;
    if !(1..=3).contains(&version) {
        return Err(format!("GGUF version `{version}` is not 1, 2 or 3"));
    }
    r.v1 = version == 1;
    let n_tensors = r.len()?;
    let n_kv = r.len()?;
    if n_tensors > MAX_TENSORS {
        return Err(format!(
            "header declares `{n_tensors}` tensors (at most {MAX_TENSORS})"
        ));
    }
    if n_kv > MAX_KV {
        return Err(format!(
            "header declares `{n_kv}` metadata entries (at most {MAX_KV})"
        ));
    }
    let mut alignment = 32u64;
    for _ in 0..n_kv {
        let key = r.string()?;
        let ty = r.u32()?;
        if key == b"general.alignment" {
            let v = match ty {
                0 => u64::from(r.take(1)?[0]),
                2 => u64::from(u16::from_le_bytes(r.array()?)),
                4 => u64::from(r.u32()?),
                // Signed widths: candle reads these too; negative is invalid.
                1 | 3 | 5 => {
                    let v = match ty {
                        1 => i64::from(r.take(1)?[0] as i8),
                        3 => i64::from(i16::from_le_bytes(r.array()?)),
                        _ => i64::from(i32::from_le_bytes(r.array()?)),
                    };
                    u64::try_from(v).map_err(|_| format!("`general.alignment` is `{v}`"))?
                }
                _ => {
                    r.value(ty, 0)?;
                    32
                }
            };
            if v == 0 || !v.is_power_of_two() || v > MAX_ALIGNMENT {
                return Err(format!(
                    "`general.alignment` is `{v}`: it must be a power of two up to {MAX_ALIGNMENT}"
                ));
            }
            alignment = v;
        } else {
            r.value(ty, 0)?;
        }
    }
    let mut tensors = Vec::with_capacity(n_tensors.min(bytes.len() as u64 / 24) as usize);
    for _ in 0..n_tensors {
        let name = String::from_utf8_lossy(r.string()?).into_owned();
        let n_dims = r.u32()?;
        if n_dims > MAX_DIMS {
            return Err(format!(
                "tensor `{name}` has `{n_dims}` dimensions (at most {MAX_DIMS})"
            ));
        }
        // The product of the non-zero dimensions must fit, not only the
        // product itself: candle multiplies them in reverse order, so
        // `[2, 0, 2^63, 2^63]` (0 elements here) overflows there (found by
        // the gguf_header fuzz target).
        let (mut nonzero, mut empty) = (1u64, false);
        for _ in 0..n_dims {
            let d = r.len()?;
            empty |= d == 0;
            nonzero = nonzero
                .checked_mul(d.max(1))
                .filter(|&e| e <= isize::MAX as u64)
                .ok_or_else(|| format!("tensor `{name}`: element count overflows"))?;
        }
        // A tensor without elements holds no weights; candle also builds a
        // misaligned slice for one (found by the gguf_header fuzz target).
        if empty {
            return Err(format!("tensor `{name}` has a dimension of 0"));
        }
        let elems = nonzero;
        let ty = r.u32()?;
        let offset = r.u64()?;
        let (block, block_bytes) =
            ggml_block(ty).ok_or_else(|| format!("tensor `{name}`: unknown type `{ty}`"))?;
        if !elems.is_multiple_of(block) {
            return Err(format!(
                "tensor `{name}` has {elems} elements, not a multiple of its type's block of {block}"
            ));
        }
        let len = (elems / block)
            .checked_mul(block_bytes)
            .ok_or_else(|| format!("tensor `{name}`: byte size overflows"))?;
        if offset % alignment != 0 {
            return Err(format!(
                "tensor `{name}` starts at offset `{offset}`, not a multiple of the alignment {alignment}"
            ));
        }
        tensors.push((name, offset, len));
    }
    let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
    for (name, offset, len) in &tensors {
        let end = data_offset
            .checked_add(*offset)
            .and_then(|s| s.checked_add(*len));
        if end.is_none_or(|end| end > bytes.len() as u64) {
            return Err(format!(
                "tensor `{name}` ends past the end of the file ({} bytes): the file is truncated or its offsets are corrupt",
                bytes.len()
            ));
        }
    }
    Ok(GgufLayout {
        alignment,
        data_offset,
        tensors,
    })
}

/// Block size (elements) and bytes per block of the GGML types candle reads;
/// `None` for the rest (candle then names the type in its own error).
fn ggml_block(ty: u32) -> Option<(u64, u64)> {
    Some(match ty {
        0 => (1, 4),      // F32
        1 => (1, 2),      // F16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        6 => (32, 22),    // Q5_0
        7 => (32, 24),    // Q5_1
        8 => (32, 34),    // Q8_0
        9 => (32, 36),    // Q8_1
        10 => (256, 84),  // Q2_K
        11 => (256, 110), // Q3_K
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        15 => (256, 292), // Q8_K
        30 => (1, 2),     // BF16
        // Other types: no size claimed (0 bytes), so the range check passes
        // and candle rejects the type by name afterwards.
        _ if ty < 64 => (1, 0),
        _ => return None,
    })
}

/// A cursor over header bytes that reports truncation instead of reading
/// past the end, and never allocates from a length it has not yet seen.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    v1: bool,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> std::result::Result<&'a [u8], String> {
        let end = (self.pos as u64)
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len() as u64)
            .ok_or_else(|| {
                format!(
                    "header is truncated: it needs {n} more bytes at offset {} but the file has {}",
                    self.pos,
                    self.bytes.len()
                )
            })? as usize;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        Ok(self
            .take(N as u64)?
            .try_into()
            .expect("take returned N bytes"))
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// A count or length: u32 in GGUF v1, u64 after.
    fn len(&mut self) -> std::result::Result<u64, String> {
        if self.v1 {
            self.u32().map(u64::from)
        } else {
            self.u64()
        }
    }
    fn string(&mut self) -> std::result::Result<&'a [u8], String> {
        let n = self.len()?;
        if n > MAX_STRING {
            return Err(format!("a string of `{n}` bytes (at most {MAX_STRING})"));
        }
        self.take(n)
    }
    /// Skip one metadata value of type `ty`.
    fn value(&mut self, ty: u32, depth: usize) -> std::result::Result<(), String> {
        match ty {
            0 | 1 | 7 => self.take(1).map(drop),
            2 | 3 => self.take(2).map(drop),
            4..=6 => self.take(4).map(drop),
            10..=12 => self.take(8).map(drop),
            8 => self.string().map(drop),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"));
                }
                let elem = self.u32()?;
                let n = self.len()?;
                if n > MAX_ARRAY {
                    return Err(format!("an array of `{n}` elements (at most {MAX_ARRAY})"));
                }
                // Fixed-width elements: one range check for the whole array.
                let width = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    10..=12 => 8,
                    _ => 0,
                };
                if width > 0 {
                    return self.take(n * width).map(drop);
                }
                for _ in 0..n {
                    self.value(elem, depth + 1)?;
                }
                Ok(())
            }
            other => Err(format!("unknown metadata value type `{other}`")),
        }
    }
}

/// An error if `t` holds a NaN or an infinity; `what` names the tensor or
/// layer. A non-finite weight or residual turns every lens cell after it
/// into garbage that would otherwise be drawn as certainty (issue #13 item 1).
/// Reads the tensor in place where it is a contiguous CPU buffer.
pub(crate) fn check_finite(t: &Tensor, what: impl FnOnce() -> String) -> Result<()> {
    if let Some(bad) = first_nonfinite(t)? {
        return Err(Error::NonFinite {
            what: what(),
            value: bad,
        });
    }
    Ok(())
}

/// The first non-finite value in `t`, if any.
fn first_nonfinite(t: &Tensor) -> Result<Option<f64>> {
    use candle_core::{CpuStorage, Storage};
    fn scan<T: Copy + Into<f64>>(v: &[T]) -> Option<f64> {
        v.iter().map(|&x| x.into()).find(|x: &f64| !x.is_finite())
    }
    {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((a, b))) = (&*storage, layout.contiguous_offsets()) {
            match cpu {
                CpuStorage::F32(v) => return Ok(scan(&v[a..b])),
                CpuStorage::F64(v) => return Ok(scan(&v[a..b])),
                _ => {}
            }
        }
    }
    let v = t
        .flatten_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_vec1::<f64>()?;
    Ok(scan(&v))
}
