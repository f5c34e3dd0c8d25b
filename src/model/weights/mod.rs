//! How weights are held and handed out: the [`Precision`] a model runs at,
//! the [`WeightSource`] trait both formats implement (`gguf.rs`,
//! `safetensors.rs`), and [`StoredMatrix`], a matrix at rest in a mapped
//! file with the panel matmul that reads it.

use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::dequant::dequantize_blocks;
use super::int8;
use crate::kernels::f32dot::Isa;
use crate::kernels::i8dot;
use crate::{Error, Result};

/// How matmul weights are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// [`Precision::Rest`] on a CPU with AVX2 or AVX-512 (the f32 dot
    /// kernel); elsewhere f32 copies of every weight while they fit the
    /// memory budget (half of what is available, or `--max-memory`), else
    /// at rest. Both give the same numbers. Resolved at load
    /// ([`super::budget`]), so a loaded model never reports `Auto`.
    #[default]
    Auto,
    /// Dequantise everything to f32: the reference computation.
    F32,
    /// Run the forward pass in f64 (weights dequantised to f64); the lens
    /// matmul stays f32. Three times slower; use it when the last 1e-4 of a
    /// log-probability matters: an f32 forward differs from another f32
    /// implementation by up to ~1e-4 in log p after 30 layers, purely from
    /// summation order, and f64 removes lensmap's share of that.
    F64,
    /// Weights at rest: matmul weights, the embedding and the head stay as
    /// stored (quant blocks, bf16/f16, f32) in the memory-mapped file; each
    /// matmul dequantises a panel of rows at a time into a reused f32 buffer
    /// and runs the f32 gemm on it. Same numbers as `F32` up to summation
    /// order, at about the file's size in memory.
    Rest,
    /// llama.cpp's arithmetic, opt-in: weights at rest as for `Rest`, but a
    /// projection whose weights are stored as Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
    /// Q4_K, Q5_K or Q6_K rounds its input to 8 bits per block of 32 and
    /// multiplies integers (`kernels::i8dot`). Other weights, norms,
    /// attention, the embedding and the lens's unembedding stay exact f32.
    /// Faster, and the entropies move (by about 0.02 nats at the median on
    /// SmolLM2).
    Quant,
}

impl Precision {
    /// Whether matmul weights, the embedding and the head stay in the
    /// mapped file.
    pub(crate) fn at_rest(self) -> bool {
        matches!(self, Precision::Rest | Precision::Quant)
    }

    /// The dtype activations flow in.
    pub(crate) fn activation_dtype(self) -> candle_core::DType {
        match self {
            Precision::F64 => candle_core::DType::F64,
            _ => candle_core::DType::F32,
        }
    }

    /// The name used in JSON and on the terminal.
    pub fn label(self) -> &'static str {
        match self {
            Precision::Auto | Precision::F32 => "f32",
            Precision::F64 => "f64",
            Precision::Rest => "rest",
            Precision::Quant => "quant",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Precision::Auto),
            "f32" => Ok(Precision::F32),
            "f64" => Ok(Precision::F64),
            "rest" => Ok(Precision::Rest),
            "quant" => Ok(Precision::Quant),
            _ => Err(Error::InvalidOption(format!(
                "unknown precision `{s}` (expected auto, f32, f64, rest or quant)"
            ))),
        }
    }
}

/// A matmul weight `[out, in]`: a dense copy, at rest in the mapped file,
/// or at rest and multiplied in 8 bits (`--precision quant`).
#[derive(Debug, Clone)]
pub enum MatWeight {
    Dense(Tensor),
    Stored(StoredMatrix),
    Int8(StoredMatrix),
}

/// A source of named tensors: one checkpoint.
pub trait WeightSource: Send + Sync {
    /// The file (or directory) name, for messages.
    fn label(&self) -> String;
    /// Shape of a tensor (outermost first), or `None` if absent.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// The tensor in f32.
    fn f32(&self, name: &str) -> Result<Tensor>;
    /// A 2-D tensor `[rows, cols]` at rest in the mapped file, or `None`
    /// when its storage type cannot be read in place (then callers copy it).
    fn stored(&self, name: &str) -> Result<Option<StoredMatrix>> {
        let _ = name;
        Ok(None)
    }
    /// Whether a tensor exists.
    fn contains(&self, name: &str) -> bool {
        self.shape(name).is_some()
    }
}

/// A matrix `[rows, cols]` read through one panel routine: at rest in a
/// memory-mapped file in its stored type (never copied out: readers
/// dequantise the rows they need), or an f32 copy in memory. Both go through
/// the same panel routine (`kernels::f32dot` or the `gemm` crate, chosen by
/// the number of rows), so the f32 copies and the weights at rest sum in the
/// same order and give the same numbers.
#[derive(Clone)]
pub struct StoredMatrix {
    backing: Backing,
    /// Byte range of the tensor in the map.
    start: usize,
    len: usize,
    /// Storage type (GGML's names cover safetensors' F32/F16/BF16 too).
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
    /// Stored `[cols, rows]` (GPT-2's Conv1D); float types only.
    transposed: bool,
}

/// Where a matrix's bytes live.
#[derive(Clone)]
enum Backing {
    /// In the checkpoint's mapped file.
    Mapped(Arc<memmap2::Mmap>),
    /// An f32 copy, `[rows, cols]` row-major.
    Copied(Arc<Vec<f32>>),
}

impl std::fmt::Debug for StoredMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StoredMatrix({:?}, [{}, {}]{})",
            self.dtype,
            self.rows,
            self.cols,
            if self.transposed { ", transposed" } else { "" }
        )
    }
}

impl StoredMatrix {
    /// The matrix `[rows, cols]` at `start..start + len` of `map`; `None`
    /// when the type cannot be read in place or the sizes disagree.
    pub fn new(
        map: Arc<memmap2::Mmap>,
        start: usize,
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        transposed: bool,
    ) -> Option<Self> {
        let block = dtype.block_size();
        let float = matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        if !cols.is_multiple_of(block) || (transposed && !float) {
            return None;
        }
        let len = rows * cols / block * dtype.type_size();
        (start + len <= map.len()).then_some(Self {
            backing: Backing::Mapped(map),
            start,
            len,
            dtype,
            rows,
            cols,
            transposed,
        })
    }

    /// An f32 copy of a `[rows, cols]` tensor.
    pub fn copied(t: &Tensor) -> Result<Self> {
        let (rows, cols) = t.dims2()?;
        let values = t
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(Self {
            backing: Backing::Copied(Arc::new(values)),
            start: 0,
            len: rows * cols * 4,
            dtype: GgmlDType::F32,
            rows,
            cols,
            transposed: false,
        })
    }

    /// Whether the matrix is at rest in a mapped file (not an f32 copy).
    pub fn is_mapped(&self) -> bool {
        matches!(self.backing, Backing::Mapped(_))
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Bytes in the file.
    pub(crate) fn stored_bytes(&self) -> usize {
        self.len
    }

    /// Bytes the first `cols` weights of a stored row take in the file: a
    /// whole number of blocks when `cols` is (as [`StoredMatrix::new`]
    /// checks for a row).
    fn file_bytes(&self, cols: usize) -> usize {
        cols / self.dtype.block_size() * self.dtype.type_size()
    }

    /// Rows `r0..r1` in f32 into `out` (`(r1 - r0) * cols` values), with
    /// `dequant.rs`'s SIMD block decoders: the same values candle's
    /// `QTensor::dequantize` gives, so at rest equals the f32 copies bit for
    /// bit per weight.
    pub fn rows_f32(&self, r0: usize, r1: usize, out: &mut [f32]) -> Result<()> {
        let cols = self.cols;
        debug_assert_eq!(out.len(), (r1 - r0) * cols);
        let map = match &self.backing {
            Backing::Copied(values) => {
                out.copy_from_slice(&values[r0 * cols..r1 * cols]);
                return Ok(());
            }
            Backing::Mapped(map) => map,
        };
        let bytes = &map[self.start..self.start + self.len];
        if self.transposed {
            // Element (r, c) of the logical matrix is stored at c * rows + r.
            let size = self.dtype.type_size();
            for (i, row) in out.chunks_exact_mut(cols).enumerate() {
                let r = r0 + i;
                for (c, y) in row.iter_mut().enumerate() {
                    let at = (c * self.rows + r) * size;
                    *y = float_at(&bytes[at..at + size], self.dtype);
                }
            }
            return Ok(());
        }
        let row_bytes = self.file_bytes(cols);
        let src = &bytes[r0 * row_bytes..r1 * row_bytes];
        dequantize_blocks(self.dtype, src, out)
    }

    /// The first NaN or infinity among the weights, if any, decoding a
    /// panel of rows at a time.
    pub(crate) fn first_nonfinite(&self) -> Result<Option<f64>> {
        let p = panel_rows(self.cols);
        let mut buf = vec![0f32; p * self.cols];
        for r0 in (0..self.rows).step_by(p) {
            let r1 = (r0 + p).min(self.rows);
            let out = &mut buf[..(r1 - r0) * self.cols];
            self.rows_f32(r0, r1, out)?;
            if let Some(v) = out.iter().find(|v| !v.is_finite()) {
                return Ok(Some(*v as f64));
            }
        }
        Ok(None)
    }

    /// Rows `ids` (in any order) in f32, `[ids.len(), cols]`: an embedding
    /// lookup that reads only the looked-up rows.
    pub(crate) fn gather(&self, ids: &[u32]) -> Result<Tensor> {
        let cols = self.cols;
        let mut out = vec![0f32; ids.len() * cols];
        out.par_chunks_mut(cols)
            .zip(ids)
            .try_for_each(|(row, &id)| self.rows_f32(id as usize, id as usize + 1, row))?;
        Ok(Tensor::from_vec(out, (ids.len(), cols), &Device::Cpu)?)
    }

    /// `x · Wᵀ`: `x` `[t, cols]` → `[t, rows]`, one panel of rows at a time.
    /// Up to `DOT_MAX_ROWS` (512) rows on a CPU with AVX2 or AVX-512, the panel
    /// is decoded a `KC`-wide chunk at a time and multiplied by
    /// `kernels::f32dot` (`matmul_t_dot`); otherwise each panel is
    /// dequantised into a per-thread f32 buffer and the f32 gemm writes its
    /// product straight into the panel's output columns. The choice depends
    /// on `t` alone, so at rest and f32 copies still sum in the same order.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        let (t, _) = x.dims2()?;
        let mut y = Vec::new();
        with_f32_slice(&x.to_dtype(candle_core::DType::F32)?, |x| {
            self.matmul_t_into(x, t, &mut y)
        })??;
        Ok(Tensor::from_vec(y, (t, self.rows), &Device::Cpu)?)
    }

    /// [`Self::matmul_t`] on a row-major `[t, cols]` slice into `y`, resized
    /// to `[t, rows]`. A caller that multiplies many times (the lens) passes
    /// the same `y` back: a fresh 60 MB of logits per call cost as much in
    /// page faults as the statistics that read them.
    pub fn matmul_t_into(&self, x: &[f32], t: usize, y: &mut Vec<f32>) -> Result<()> {
        let (n, k) = (self.rows, self.cols);
        if x.len() != t * k {
            return Err(Error::Config(format!(
                "matmul of `[{t}, {}]` by a `[{n}, {k}]` weight",
                x.len() / t.max(1)
            )));
        }
        // Every element is written below (the gemm ignores what was there).
        y.resize(t * n, 0.0);
        let y = y.as_mut_slice();
        if let Some(isa) = dot_isa(t) {
            return self.matmul_t_dot(isa, x, t, y);
        }
        let p = panel_rows(k);
        let panels = n.div_ceil(p);
        let y_ptr = SendPtr(y.as_mut_ptr());
        (0..panels)
            .into_par_iter()
            .try_for_each_init(Vec::new, |buf, i| -> Result<()> {
                let (r0, r1) = (i * p, ((i + 1) * p).min(n));
                // An f32 copy is read in place; anything else is decoded first.
                let rhs = match &self.backing {
                    Backing::Copied(values) => values[r0 * k..r1 * k].as_ptr(),
                    Backing::Mapped(_) => {
                        buf.resize((r1 - r0) * k, 0.0);
                        self.rows_f32(r0, r1, buf)?;
                        buf.as_ptr()
                    }
                };
                // SAFETY: panels write disjoint column ranges r0..r1 of y, which
                // is [t, n] row-major and outlives the loop; x is [t, k] and rhs
                // [r1 - r0, k], both row-major, read only.
                unsafe {
                    gemm::gemm(
                        t,
                        r1 - r0,
                        k,
                        y_ptr.get().add(r0),
                        1,
                        n as isize,
                        false,
                        x.as_ptr(),
                        1,
                        k as isize,
                        rhs,
                        k as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    )
                };
                Ok(())
            })
    }

    /// [`Self::matmul_t`] for few rows `t` through `kernels::f32dot`: each
    /// panel of rows is decoded `KC` columns at a time into a small
    /// per-thread buffer (it stays in cache for the product), and the
    /// kernel reads the decoded rows and `x` as they lie.
    fn matmul_t_dot(&self, isa: Isa, x: &[f32], t: usize, y: &mut [f32]) -> Result<()> {
        use crate::kernels::f32dot::{chunk_matmul_t, Chunk, KC};

        let (n, k) = (self.rows, self.cols);
        let p = DOT_PANEL_ROWS;
        let panels = n.div_ceil(p);
        let y_ptr = SendPtr(y.as_mut_ptr());
        // Quant blocks and untransposed floats are cut by columns; a
        // transposed matrix is decoded a whole panel at a time, and an f32
        // copy is read in place.
        let by_chunk = matches!(self.backing, Backing::Mapped(_))
            && !self.transposed
            && KC.is_multiple_of(self.dtype.block_size());
        let row_bytes = self.file_bytes(k);
        (0..panels).into_par_iter().try_for_each_init(
            Vec::new,
            |buf: &mut Vec<f32>, i| -> Result<()> {
                let (r0, r1) = (i * p, ((i + 1) * p).min(n));
                let rows = r1 - r0;
                let whole = match &self.backing {
                    Backing::Copied(values) => Some(values[r0 * k..r1 * k].as_ptr()),
                    Backing::Mapped(_) if !by_chunk => {
                        buf.resize(rows * k, 0.0);
                        self.rows_f32(r0, r1, buf)?;
                        Some(buf.as_ptr())
                    }
                    Backing::Mapped(_) => None,
                };
                for k0 in (0..k).step_by(KC) {
                    let kc = KC.min(k - k0);
                    let (w, ldw) = match (whole, &self.backing) {
                        // SAFETY: k0 < k, inside the panel's first row.
                        (Some(w), _) => (unsafe { w.add(k0) }, k),
                        (None, Backing::Mapped(map)) => {
                            buf.resize(rows * kc, 0.0);
                            // k0 is a multiple of KC, itself a multiple of
                            // the block size, and so is k.
                            let (b0, b1) = (self.file_bytes(k0), self.file_bytes(k0 + kc));
                            self.prefetch_chunks(map, r0..r1, k0);
                            for (r, out) in (r0..r1).zip(buf.chunks_exact_mut(kc)) {
                                let at = self.start + r * row_bytes;
                                dequantize_blocks(self.dtype, &map[at + b0..at + b1], out)?;
                            }
                            (buf.as_ptr(), kc)
                        }
                        (None, Backing::Copied(_)) => unreachable!("copies are read whole"),
                    };
                    // SAFETY: isa was detected on this CPU and kc ≤ KC; x is
                    // [t, k] and w holds `rows` rows of kc floats ldw apart;
                    // panels write disjoint columns r0..r1 of y ([t, n]).
                    unsafe {
                        let c = Chunk {
                            x: x.as_ptr().add(k0),
                            ldx: k,
                            t,
                            w,
                            ldw,
                            p: rows,
                            kc,
                            y: y_ptr.get().add(r0),
                            ldy: n,
                            first: k0 == 0,
                        };
                        chunk_matmul_t(isa, c)
                    };
                }
                Ok(())
            },
        )
    }

    /// Before decoding columns `k0..k0 + KC` of rows `rows`: a chunk reads
    /// one short run of the file per row, too short for the hardware
    /// prefetcher, so ask for this chunk's runs at the panel's start
    /// (`k0 == 0`), and for the next chunk's while this one decodes and
    /// multiplies.
    fn prefetch_chunks(&self, map: &memmap2::Mmap, rows: std::ops::Range<usize>, k0: usize) {
        use crate::kernels::f32dot::KC;
        let k = self.cols;
        let row_bytes = self.file_bytes(k);
        let ahead = |c0: usize| {
            let (b0, b1) = (self.file_bytes(c0), self.file_bytes((c0 + KC).min(k)));
            for r in rows.clone() {
                let at = self.start + r * row_bytes;
                prefetch_l2(&map[at + b0..at + b1]);
            }
        };
        if k0 == 0 {
            ahead(0);
        }
        if k0 + KC < k {
            ahead(k0 + KC);
        }
    }

    /// Whether [`Self::matmul_t_int8`] can multiply this matrix: mapped, in
    /// a type with an 8-bit form.
    pub(crate) fn has_int8_form(&self) -> bool {
        self.is_mapped() && int8::form(self.dtype).is_some()
    }

    /// `x · Wᵀ` in llama.cpp's arithmetic (`--precision quant`): `x` rounded
    /// to 8 bits per block of 32, times the weights' own integers
    /// (`kernels::i8dot`). Each panel of rows is decoded a `KC` chunk of
    /// columns at a time into a small per-thread buffer. Each output's
    /// arithmetic is fixed by `k` alone, so rows stay independent at any `t`.
    pub(crate) fn matmul_t_int8(&self, x: &Tensor) -> Result<Tensor> {
        use crate::kernels::f32dot::KC;
        let (t, k) = x.dims2()?;
        let (n, dtype) = (self.rows, self.dtype);
        let (Backing::Mapped(map), Some(form)) = (&self.backing, int8::form(dtype)) else {
            return Err(Error::Config(format!("{self:?} has no 8-bit form")));
        };
        if k != self.cols {
            return Err(Error::Config(format!(
                "matmul of `[{t}, {k}]` by a {self:?}"
            )));
        }
        let xq = with_f32_slice(&x.to_dtype(candle_core::DType::F32)?, |x| {
            i8dot::quantize_rows(x, t, k)
        })?;
        let isa = i8dot::Isa::detect();
        let mut y = vec![0f32; t * n];
        let y_ptr = SendPtr(y.as_mut_ptr());
        let p = DOT_PANEL_ROWS;
        let row_bytes = self.file_bytes(k);
        // Rows of x that one kernel tile takes read the decoded panel once,
        // so decode whole rows of W: each is one sequential read of the
        // file. Generation (t = 1) on the 1B Q8_0 file: 8 tokens in 1.30 s
        // instead of 1.47 s with `KC` chunks.
        let width = if t <= i8dot::TILE_ROWS { k } else { KC };
        (0..n.div_ceil(p))
            .into_par_iter()
            .for_each_init(i8dot::Int8Panel::default, |panel, i| {
                let (r0, r1) = (i * p, ((i + 1) * p).min(n));
                for k0 in (0..k).step_by(width) {
                    let kc = width.min(k - k0);
                    // KC is a multiple of every block size, and so is k.
                    let (b0, b1) = (self.file_bytes(k0), self.file_bytes(k0 + kc));
                    panel.reset(r1 - r0, kc, form);
                    if width == k {
                        // Whole rows: the next panel's, while this one runs.
                        for r in r1..(r1 + p).min(n) {
                            let at = self.start + r * row_bytes;
                            prefetch_l2(&map[at..at + row_bytes]);
                        }
                    } else {
                        self.prefetch_chunks(map, r0..r1, k0);
                    }
                    for r in r0..r1 {
                        let at = self.start + r * row_bytes;
                        int8::decode_row(dtype, &map[at + b0..at + b1], panel, r - r0);
                    }
                    panel.pack();
                    // SAFETY: panels write disjoint columns r0..r1 of y
                    // ([t, n]); the chunk's blocks lie inside x's rows.
                    unsafe {
                        let out = i8dot::Dest {
                            y: y_ptr.get().add(r0),
                            ldy: n,
                            first: k0 == 0,
                        };
                        i8dot::panel_matmul(isa, &xq, k0 / i8dot::BLOCK, panel, r1 - r0, out)
                    };
                }
            });
        Ok(Tensor::from_vec(y, (t, n), &Device::Cpu)?)
    }

    /// Ask the kernel to read the matrix ahead (the next block while this
    /// one computes).
    pub(crate) fn prefetch(&self) {
        if let Backing::Mapped(map) = &self.backing {
            let _ = map.advise_range(memmap2::Advice::WillNeed, self.start, self.len);
        }
    }

    /// Drop the matrix's pages from this process's resident set and, where
    /// the kernel allows, from the page cache; a later read faults them back
    /// from the file.
    pub fn release(&self) {
        let Backing::Mapped(map) = &self.backing else {
            return;
        };
        // Only a streamed model releases, and its file does not fit in memory:
        // keeping the pages cached would only push out the blocks read next
        // (an LRU cache loses to a sequential scan larger than itself). Ask
        // the kernel to drop them from the page cache now (MADV_PAGEOUT,
        // Linux 5.4+; memmap2 has no name for it). It reclaims pages through
        // this process's page tables, so it goes before MADV_DONTNEED unmaps
        // them. Best effort: an older kernel, or a page another process maps,
        // keeps it cached.
        #[cfg(target_os = "linux")]
        {
            let page = 4096usize;
            let base = map.as_ptr() as usize + self.start;
            let aligned = base & !(page - 1);
            // SAFETY: the range lies inside the mapping (rounded down to its
            // page); MADV_PAGEOUT never changes the contents of a clean page.
            let _ = unsafe {
                libc::madvise(
                    aligned as *mut libc::c_void,
                    self.len + (base - aligned),
                    libc::MADV_PAGEOUT,
                )
            };
        }
        // SAFETY: the map is shared and read-only, so its pages are clean
        // copies of the file; MADV_DONTNEED only unmaps them and any later
        // access re-reads the same bytes.
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, self.start, self.len)
        };
    }
}

/// A raw pointer the panel loop may share across threads.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only for disjoint writes (see `matmul_t`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Call `f` on an f32 CPU tensor's values, row-major, borrowed in place
/// when the tensor is contiguous (copied otherwise).
pub(crate) fn with_f32_slice<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    use candle_core::Storage;
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => {
            let data: &[f32] = cpu.as_slice()?;
            let start = layout.start_offset();
            Ok(f(&data[start..start + layout.shape().elem_count()]))
        }
        #[allow(unreachable_patterns)]
        _ => {
            drop(storage);
            let v = t.flatten_all()?.to_vec1::<f32>()?;
            Ok(f(&v))
        }
    }
}

/// Output rows per panel: about 1 MiB of f32 weights, so the panel stays in
/// L2 while the gemm reads it, between 16 and 512 rows.
fn panel_rows(cols: usize) -> usize {
    ((1 << 18) / cols.max(1)).clamp(16, 512) / 16 * 16
}

/// Most rows `x` may have for [`StoredMatrix::matmul_t_dot`]: up to here
/// it beat the `gemm` crate on the synthetic 1B and 8B shapes (2-4x at 45
/// rows, 1.4x at 256, even at 512); from 1024 rows on the two are level and
/// `gemm`, which blocks `x` as well, is kept.
const DOT_MAX_ROWS: usize = 512;

/// Weight rows per panel of [`StoredMatrix::matmul_t_dot`]: each `KC`-wide
/// chunk of the panel (64 × 1024 floats, 256 KiB) is decoded into L2 and
/// read from there, and every panel reads `x` once, so wider panels read `x`
/// less often. 32 to 128 measured the same.
const DOT_PANEL_ROWS: usize = 64;

/// Most rows for which [`StoredMatrix::matmul_t`] gives each row the same
/// result whatever rows sit beside it: the `f32dot` kernel's range. `None`
/// where the `gemm` crate does every product (no AVX2), whose blocking is
/// not known to keep rows apart.
pub(crate) fn row_independent_rows() -> Option<usize> {
    Isa::detect().map(|_| DOT_MAX_ROWS)
}

/// The kernel [`StoredMatrix::matmul_t`] uses for `t` rows, `None` for the
/// `gemm` crate.
fn dot_isa(t: usize) -> Option<Isa> {
    Isa::detect().filter(|_| t <= DOT_MAX_ROWS)
}

/// Ask the CPU to bring `bytes` into L2 (x86-64; a no-op elsewhere). Not
/// [`StoredMatrix::prefetch`], which asks the OS for pages.
fn prefetch_l2(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in (0..bytes.len()).step_by(64) {
        // SAFETY: a prefetch of an address inside `bytes`; it never faults.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                bytes.as_ptr().add(line).cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// One little-endian float of a float storage type.
fn float_at(b: &[u8], dtype: GgmlDType) -> f32 {
    match dtype {
        GgmlDType::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlDType::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        _ => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{fill_random_blocks, Rng};

    /// At rest equals the f32 copy of the same decoded weights (one routine,
    /// so bit for bit) and an f64 product up to f32 rounding, for the few-row
    /// kernel (with a `KC` chunk tail and a panel tail) and the `gemm` path.
    #[test]
    fn matmul_t_at_rest_equals_f32_copy_and_f64() {
        let (n, k) = (70, 1024 + 256 + 512);
        for dtype in [
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
            GgmlDType::F16,
        ] {
            let mut bytes = vec![0u8; n * k / dtype.block_size() * dtype.type_size()];
            fill_random_blocks(dtype, &mut bytes, 0.02, &mut Rng::new(3));
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), &bytes).unwrap();
            // SAFETY: a private temporary file nobody else writes.
            let map = Arc::new(unsafe { memmap2::Mmap::map(file.as_file()).unwrap() });
            let rest = StoredMatrix::new(map, 0, dtype, n, k, false).unwrap();
            let mut w = vec![0f32; n * k];
            rest.rows_f32(0, n, &mut w).unwrap();
            let copy =
                StoredMatrix::copied(&Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap())
                    .unwrap();
            for t in [1, 45, DOT_MAX_ROWS + 3] {
                let x: Vec<f32> = (0..t * k)
                    .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3)
                    .collect();
                let xt = Tensor::from_vec(x.clone(), (t, k), &Device::Cpu).unwrap();
                let a = rest.matmul_t(&xt).unwrap().flatten_all().unwrap();
                let b = copy.matmul_t(&xt).unwrap().flatten_all().unwrap();
                let (a, b) = (a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
                assert_eq!(a, b, "{dtype:?} t={t}: at rest and the f32 copy differ");
                for i in 0..t {
                    for j in 0..n {
                        let want: f64 = (0..k)
                            .map(|c| x[i * k + c] as f64 * w[j * k + c] as f64)
                            .sum();
                        let scale: f64 = (0..k)
                            .map(|c| (x[i * k + c] as f64 * w[j * k + c] as f64).abs())
                            .sum();
                        let got = a[i * n + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-6 * scale + 1e-30,
                            "{dtype:?} t={t} ({i}, {j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
