//! Synthetic real-shape models for benchmarks: random-weight GGUF files with
//! the tensor shapes, quantisation mix, tokenizer and metadata of a real
//! checkpoint (Llama-3.2-1B, Llama-3.1-8B, Llama-3.1-70B), written to disk as
//! a stream so a 38 GB file never sits in memory.
//!
//! Their outputs mean nothing; their memory and time are real. The weights
//! are random but valid quant blocks whose scales give each matrix a weight
//! standard deviation of about `1/sqrt(fan_in)`, and the norms are about 1,
//! so activations stay finite through every layer.
//!
//! `examples/synth_gguf.rs` is the command line; CI only ever writes the
//! `tiny` shape.

use std::io::Write;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value, ValueType};
use candle_core::quantized::GgmlDType;
use half::f16;

use crate::model::dequant;
use crate::{Error, Result};

/// A small deterministic generator (xorshift64*): the files must be the same
/// bytes on every machine, and this is all the randomness they need.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (any value, zero included).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    fn next_u64(&mut self) -> u64 {
        let x = &mut self.0;
        *x ^= *x >> 12;
        *x ^= *x << 25;
        *x ^= *x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Fills `bytes` with random bits.
    pub fn fill(&mut self, bytes: &mut [u8]) {
        let mut chunks = bytes.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

/// Byte offsets of the f16 scale fields (d, dmin, m) inside one block.
fn scale_offsets(dtype: GgmlDType) -> &'static [usize] {
    match dtype {
        GgmlDType::Q4_0 | GgmlDType::Q5_0 | GgmlDType::Q8_0 => &[0],
        GgmlDType::Q4_1 | GgmlDType::Q5_1 | GgmlDType::Q8_1 => &[0, 2],
        GgmlDType::Q2K => &[80, 82],
        GgmlDType::Q3K => &[108],
        GgmlDType::Q4K | GgmlDType::Q5K => &[0, 2],
        GgmlDType::Q6K => &[208],
        _ => &[],
    }
}

/// Writes `fields[i]` into scale field `i` of every block (Q8_K's f32 `d`
/// too), times a per-block factor: a random sign and a size within ±25%.
fn set_scales(dtype: GgmlDType, bytes: &mut [u8], rng: &mut Rng, fields: &[f32]) {
    for block in bytes.chunks_exact_mut(dtype.type_size()) {
        let sign = if rng.next_u64() & 1 == 0 { 1.0 } else { -1.0 };
        let factor = sign * (0.75 + 0.5 * rng.unit());
        for (&o, &v) in scale_offsets(dtype).iter().zip(fields) {
            block[o..o + 2].copy_from_slice(&f16::from_f32(v * factor).to_bits().to_le_bytes());
        }
        if dtype == GgmlDType::Q8K {
            block[..4].copy_from_slice(&(fields[0] * factor).to_le_bytes());
        }
    }
}

/// Fills `bytes` (whole blocks of `dtype`) with random valid blocks whose
/// weights have a mean of about 0 and a standard deviation of about `std`.
///
/// Quant blocks get random quants and finite scales. Every weight of a GGML
/// block is linear in its (one or two) f16 scale fields, so the fields are
/// calibrated on a sample decoded with unit fields: the second field (a min)
/// cancels the mean the first one leaves, then both are scaled to `std`.
/// Float types get uniform values.
pub fn fill_random_blocks(dtype: GgmlDType, bytes: &mut [u8], std: f32, rng: &mut Rng) {
    match dtype {
        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
            let width = std * 3f32.sqrt();
            let size = dtype.type_size();
            for w in bytes.chunks_exact_mut(size) {
                let v = width * (2.0 * rng.unit() - 1.0);
                match dtype {
                    GgmlDType::F32 => w.copy_from_slice(&v.to_le_bytes()),
                    GgmlDType::F16 => w.copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes()),
                    _ => w.copy_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes()),
                }
            }
        }
        _ => {
            rng.fill(bytes);
            let n = (bytes.len() / dtype.type_size()).min(64) * dtype.type_size();
            let mut sample = bytes[..n].to_vec();
            // Unit fields with the sign and size noise left out.
            let moments = |fields: &[f32], sample: &mut Vec<u8>| {
                for block in sample.chunks_exact_mut(dtype.type_size()) {
                    for (&o, &v) in scale_offsets(dtype).iter().zip(fields) {
                        block[o..o + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
                    }
                    if dtype == GgmlDType::Q8K {
                        block[..4].copy_from_slice(&fields[0].to_le_bytes());
                    }
                }
                sample_moments(dtype, sample)
            };
            let mut fields = vec![1.0f32, 0.0];
            if scale_offsets(dtype).len() == 2 {
                let (a0, _) = moments(&[1.0, 0.0], &mut sample);
                let (a1, _) = moments(&[0.0, 1.0], &mut sample);
                if a1 != 0.0 {
                    fields[1] = -a0 / a1;
                }
            }
            let (_, unit_std) = moments(&fields, &mut sample);
            let scale = std / unit_std.max(1e-6);
            let fields: Vec<f32> = fields.iter().map(|f| f * scale).collect();
            set_scales(dtype, bytes, rng, &fields);
        }
    }
}

/// Mean and standard deviation of the weights in whole `dtype` blocks.
fn sample_moments(dtype: GgmlDType, bytes: &[u8]) -> (f32, f32) {
    let mut w = vec![0f32; bytes.len() / dtype.type_size() * dtype.block_size()];
    if w.is_empty() || dequant::dequantize_blocks(dtype, bytes, &mut w).is_err() {
        return (0.0, 1.0);
    }
    let n = w.len() as f64;
    let mean = w.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = w.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean as f32, var.sqrt() as f32)
}

// --- the streaming GGUF writer ----------------------------------------------
//
// Hand-written because candle's `gguf_file::write` takes every tensor as a
// `QTensor` in memory (38 GB for the 70B shape); this one writes the header
// from the plan and then streams each tensor's bytes as they are generated.

/// GGUF alignment of the tensor data (llama.cpp's default).
const ALIGNMENT: u64 = 32;

/// How a synthetic tensor's values are drawn.
#[derive(Debug, Clone)]
pub enum Fill {
    /// Random valid blocks with this weight standard deviation.
    Random { std: f32 },
    /// Norm weights: 1 plus uniform noise of ±0.05.
    Norm,
    /// These exact values (an f32 tensor).
    Values(Vec<f32>),
}

/// One tensor of a synthetic file.
#[derive(Debug, Clone)]
pub struct TensorPlan {
    /// GGUF name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Row-major shape, `[rows, cols]` for a matrix (GGUF stores it reversed).
    pub shape: Vec<usize>,
    /// Storage type.
    pub dtype: GgmlDType,
    /// How its values are drawn.
    pub fill: Fill,
}

impl TensorPlan {
    /// Bytes the tensor takes in the file.
    pub fn bytes(&self) -> u64 {
        let elems: usize = self.shape.iter().product();
        (elems / self.dtype.block_size() * self.dtype.type_size()) as u64
    }
}

/// Everything a synthetic GGUF file holds, before any weight is drawn.
#[derive(Debug, Clone)]
pub struct GgufPlan {
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensors in file order.
    pub tensors: Vec<TensorPlan>,
    /// Seed of every random draw.
    pub seed: u64,
}

impl GgufPlan {
    /// Size of the whole file in bytes.
    pub fn file_bytes(&self) -> u64 {
        let mut header = Vec::new();
        self.write_header(&mut header).expect("writing to a Vec");
        let data: u64 = self
            .tensors
            .iter()
            .map(|t| t.bytes().next_multiple_of(ALIGNMENT))
            .sum();
        (header.len() as u64).next_multiple_of(ALIGNMENT) + data
    }

    fn write_header(&self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(b"GGUF")?;
        w.write_all(&3u32.to_le_bytes())?;
        w.write_all(&(self.tensors.len() as u64).to_le_bytes())?;
        w.write_all(&(self.metadata.len() as u64).to_le_bytes())?;
        for (key, value) in &self.metadata {
            write_str(w, key)?;
            w.write_all(&value_type_code(value).to_le_bytes())?;
            write_value(w, value)?;
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            write_str(w, &t.name)?;
            w.write_all(&(t.shape.len() as u32).to_le_bytes())?;
            for &d in t.shape.iter().rev() {
                w.write_all(&(d as u64).to_le_bytes())?;
            }
            w.write_all(&ggml_code(t.dtype).to_le_bytes())?;
            w.write_all(&offset.to_le_bytes())?;
            offset += t.bytes().next_multiple_of(ALIGNMENT);
        }
        Ok(())
    }
}

/// Bytes generated per chunk; each chunk has its own random stream, so
/// chunks can be drawn in parallel and the file is the same on any machine.
const CHUNK_BYTES: usize = 4 << 20;

/// Draws tensor `t`'s bytes chunk by chunk (in parallel, in order) and hands
/// each chunk to `sink`.
pub fn generate_tensor(
    t: &TensorPlan,
    seed: u64,
    mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    use rayon::prelude::*;
    let total = t.bytes() as usize;
    let size = t.dtype.type_size();
    let chunk = CHUNK_BYTES / size * size;
    let n_chunks = total.div_ceil(chunk);
    let name_hash = t.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    let batch = 2 * rayon::current_num_threads();
    let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); batch];
    for first in (0..n_chunks).step_by(batch) {
        let last = (first + batch).min(n_chunks);
        bufs[..last - first]
            .par_iter_mut()
            .enumerate()
            .for_each(|(k, buf)| {
                let i = first + k;
                let len = chunk.min(total - i * chunk);
                buf.resize(len, 0);
                let mut rng =
                    Rng::new(seed ^ name_hash ^ (i as u64).wrapping_mul(0xA24B_AED4_963E_E407));
                fill_chunk(t, i * chunk / size * t.dtype.block_size(), buf, &mut rng);
            });
        for buf in &bufs[..last - first] {
            sink(buf)?;
        }
    }
    Ok(())
}

fn fill_chunk(t: &TensorPlan, first_elem: usize, buf: &mut [u8], rng: &mut Rng) {
    match &t.fill {
        Fill::Random { std } => fill_random_blocks(t.dtype, buf, *std, rng),
        Fill::Norm => {
            for w in buf.chunks_exact_mut(4) {
                w.copy_from_slice(&(1.0 + 0.1 * (rng.unit() - 0.5)).to_le_bytes());
            }
        }
        Fill::Values(values) => {
            for (w, v) in buf.chunks_exact_mut(4).zip(&values[first_elem..]) {
                w.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}

/// Writes `plan` to `path`, streaming: at most a few chunks of weights are
/// in memory at once. The file appears under its name only when complete
/// (written to `path.partial`, then renamed). `progress` gets bytes written
/// and the total after every tensor.
pub fn write_gguf(plan: &GgufPlan, path: &Path, mut progress: impl FnMut(u64, u64)) -> Result<()> {
    let partial = path.with_extension("gguf.partial");
    let written = write_to(plan, &partial, &mut progress);
    if written.is_err() {
        // A half-written file must not look like a model (e.g. a full disk).
        let _ = std::fs::remove_file(&partial);
    }
    written?;
    std::fs::rename(&partial, path).map_err(|e| Error::io(path, e))
}

fn write_to(plan: &GgufPlan, partial: &Path, progress: &mut impl FnMut(u64, u64)) -> Result<()> {
    let io = |e| Error::io(partial, e);
    let total = plan.file_bytes();
    let file = std::fs::File::create(partial).map_err(io)?;
    let mut w = std::io::BufWriter::with_capacity(8 << 20, file);
    let mut header = Vec::new();
    plan.write_header(&mut header).map_err(io)?;
    let mut written = header.len() as u64;
    w.write_all(&header).map_err(io)?;
    pad(&mut w, &mut written).map_err(io)?;
    for t in &plan.tensors {
        generate_tensor(t, plan.seed, |bytes| {
            written += bytes.len() as u64;
            w.write_all(bytes)
        })
        .map_err(io)?;
        pad(&mut w, &mut written).map_err(io)?;
        progress(written, total);
    }
    w.flush().map_err(io)?;
    Ok(())
}

fn pad(w: &mut impl Write, written: &mut u64) -> std::io::Result<()> {
    let n = written.next_multiple_of(ALIGNMENT) - *written;
    w.write_all(&[0u8; ALIGNMENT as usize][..n as usize])?;
    *written += n;
    Ok(())
}

fn write_str(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

/// GGUF value type codes (gguf.md).
fn value_type_code(v: &Value) -> u32 {
    match v.value_type() {
        ValueType::U8 => 0,
        ValueType::I8 => 1,
        ValueType::U16 => 2,
        ValueType::I16 => 3,
        ValueType::U32 => 4,
        ValueType::I32 => 5,
        ValueType::F32 => 6,
        ValueType::Bool => 7,
        ValueType::String => 8,
        ValueType::Array => 9,
        ValueType::U64 => 10,
        ValueType::I64 => 11,
        ValueType::F64 => 12,
    }
}

fn write_value(w: &mut impl Write, v: &Value) -> std::io::Result<()> {
    match v {
        Value::U8(x) => w.write_all(&x.to_le_bytes()),
        Value::I8(x) => w.write_all(&x.to_le_bytes()),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[*x as u8]),
        Value::String(s) => write_str(w, s),
        Value::Array(items) => {
            // An empty array's element type is unknown; u8 is as good as any.
            let code = items.first().map_or(0, value_type_code);
            w.write_all(&code.to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            items.iter().try_for_each(|item| write_value(w, item))
        }
    }
}

/// GGML type ids as GGUF stores them (candle's own mapping is private).
fn ggml_code(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

// --- real shapes -------------------------------------------------------------

/// The dimensions of a Llama-3-class checkpoint (numbers from the published
/// `config.json` files).
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Name on the command line, e.g. `llama-3.1-8b`.
    pub name: &'static str,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    /// Whether the head reuses the embedding (no `output.weight`).
    pub tied: bool,
    pub context: usize,
    /// Llama 3.1 RoPE scaling factor (`rope_scaling.factor`).
    pub rope_factor: f32,
}

/// The shapes [`Shape::named`] knows. `tiny` (a few MB) is for tests.
const SHAPES: [Shape; 4] = [
    Shape {
        name: "llama-3.2-1b",
        d_model: 2048,
        n_layers: 16,
        n_heads: 32,
        n_kv_heads: 8,
        head_dim: 64,
        ffn: 8192,
        vocab: 128_256,
        tied: true,
        context: 131_072,
        rope_factor: 32.0,
    },
    Shape {
        name: "llama-3.1-8b",
        d_model: 4096,
        n_layers: 32,
        n_heads: 32,
        n_kv_heads: 8,
        head_dim: 128,
        ffn: 14_336,
        vocab: 128_256,
        tied: false,
        context: 131_072,
        rope_factor: 8.0,
    },
    Shape {
        name: "llama-3.1-70b",
        d_model: 8192,
        n_layers: 80,
        n_heads: 64,
        n_kv_heads: 8,
        head_dim: 128,
        ffn: 28_672,
        vocab: 128_256,
        tied: false,
        context: 131_072,
        rope_factor: 8.0,
    },
    Shape {
        name: "tiny",
        d_model: 256,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 64,
        ffn: 512,
        vocab: 49_152 + 64 + 256,
        tied: true,
        context: 8192,
        rope_factor: 8.0,
    },
];

impl Shape {
    /// The shape called `name`, or an error listing the known ones.
    pub fn named(name: &str) -> Result<Shape> {
        SHAPES
            .iter()
            .find(|s| s.name == name)
            .copied()
            .ok_or_else(|| {
                let known: Vec<_> = SHAPES.iter().map(|s| s.name).collect();
                Error::InvalidOption(format!(
                    "unknown shape `{name}` (known: {})",
                    known.join(", ")
                ))
            })
    }

    /// Parameter count (embedding and head included once each).
    pub fn params(&self) -> u64 {
        let (d, h) = (self.d_model as u64, self.head_dim as u64);
        let attn = d * h * (2 * self.n_heads as u64 + 2 * self.n_kv_heads as u64);
        let mlp = 3 * d * self.ffn as u64;
        let head = if self.tied { 0 } else { d * self.vocab as u64 };
        self.n_layers as u64 * (attn + mlp + 2 * d) + d * self.vocab as u64 + head + d
    }
}

/// A quantisation mix, named after llama.cpp's `llama-quantize` presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    /// Every matrix Q8_0.
    Q8_0,
    /// Every matrix Q4_0, the head Q6_K.
    Q4_0,
    /// Q4_K_M: Q4_K, with Q6_K for the head and for `attn_v`/`ffn_down` in
    /// the layers llama.cpp gives more bits.
    Q4K,
}

impl std::str::FromStr for Quant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Quant> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" => Ok(Quant::Q8_0),
            "q4_0" => Ok(Quant::Q4_0),
            "q4_k" | "q4_k_m" => Ok(Quant::Q4K),
            _ => Err(Error::InvalidOption(format!(
                "unknown quantisation `{s}` (known: q8_0, q4_0, q4_k)"
            ))),
        }
    }
}

impl Quant {
    /// llama.cpp's `general.file_type` for this mix.
    fn file_type(self) -> u32 {
        match self {
            Quant::Q4_0 => 2,
            Quant::Q8_0 => 7,
            Quant::Q4K => 15,
        }
    }

    /// The type of matrix `part` in block `layer` of `n_layers`.
    fn matrix_type(self, part: &str, layer: usize, n_layers: usize) -> GgmlDType {
        // llama.cpp's `use_more_bits`: the first and last eighth of the
        // layers, and every third one between.
        let more_bits =
            layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2;
        match self {
            Quant::Q8_0 => GgmlDType::Q8_0,
            Quant::Q4_0 if part == "output" => GgmlDType::Q6K,
            Quant::Q4_0 => GgmlDType::Q4_0,
            Quant::Q4K if part == "output" => GgmlDType::Q6K,
            Quant::Q4K if matches!(part, "attn_v" | "ffn_down") && more_bits => GgmlDType::Q6K,
            Quant::Q4K => GgmlDType::Q4K,
        }
    }
}

/// Llama 3.1's RoPE frequency divisors, as llama.cpp's converter writes them
/// to `rope_freqs.weight` (low/high frequency factors 1 and 4, original
/// context 8192).
fn llama3_rope_factors(head_dim: usize, theta: f32, factor: f32) -> Vec<f32> {
    let (low, high, old_context) = (1.0f64, 4.0f64, 8192.0f64);
    let (low_wavelen, high_wavelen) = (old_context / low, old_context / high);
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / (theta as f64).powf(2.0 * i as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor as f64
            } else {
                let smooth = (old_context / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor as f64 + smooth)
            };
            f as f32
        })
        .collect()
}

/// A Llama 3 chat template (system, user and assistant turns; the header
/// tokens and `<|eot_id|>` around each).
const LLAMA3_CHAT_TEMPLATE: &str = "{{- bos_token }}\
{%- for message in messages %}\
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}\
{%- endfor %}\
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}";

/// Llama 3's 256 special tokens, in id order from 128000 (the first is
/// `<|begin_of_text|>`, the tenth `<|eot_id|>`).
fn llama3_special_tokens() -> Vec<String> {
    let named = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        "<|finetune_right_pad_id|>",
        "<|reserved_special_token_2|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eom_id|>",
        "<|eot_id|>",
        "<|python_tag|>",
    ];
    let mut tokens: Vec<String> = named.iter().map(|s| s.to_string()).collect();
    tokens.extend(
        (3..)
            .take(256 - named.len())
            .map(|i| format!("<|reserved_special_token_{i}|>")),
    );
    tokens
}

// llama.cpp token types.
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_UNUSED: i32 = 5;

/// The tokenizer metadata of a synthetic file: `source`'s (SmolLM2's)
/// byte-level BPE, padded to `vocab` as llama.cpp's converter pads one
/// (`[PAD{id}]`, type unused), with Llama 3's special tokens in the last 256
/// ids and a Llama 3 chat template.
pub fn padded_tokenizer(source: &Content, vocab: usize) -> Result<Vec<(String, Value)>> {
    let bad = |what: &str| Error::Tokenizer(format!("tokenizer source: {what}"));
    let tokens = match source.metadata.get("tokenizer.ggml.tokens") {
        Some(Value::Array(t)) => t.clone(),
        _ => return Err(bad("no `tokenizer.ggml.tokens`")),
    };
    let types = match source.metadata.get("tokenizer.ggml.token_type") {
        Some(Value::Array(t)) if t.len() == tokens.len() => t.clone(),
        _ => vec![Value::I32(TOKEN_NORMAL); tokens.len()],
    };
    let specials = llama3_special_tokens();
    let special_base = vocab
        .checked_sub(specials.len())
        .filter(|&b| b >= tokens.len())
        .ok_or_else(|| {
            bad(&format!(
                "{} tokens do not fit a vocabulary of {vocab}",
                tokens.len()
            ))
        })?;
    let (mut tokens, mut types) = (tokens, types);
    for id in tokens.len()..special_base {
        tokens.push(Value::String(format!("[PAD{id}]")));
        types.push(Value::I32(TOKEN_UNUSED));
    }
    for s in specials {
        tokens.push(Value::String(s));
        types.push(Value::I32(TOKEN_CONTROL));
    }
    let mut meta: Vec<(String, Value)> = source
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer.") && !k.starts_with("tokenizer.chat_template"))
        .filter(|(k, _)| !k.ends_with("_token_id") && !k.ends_with(".tokens"))
        .filter(|(k, _)| !k.ends_with(".token_type") && !k.ends_with(".scores"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    meta.sort_by(|a, b| a.0.cmp(&b.0));
    let id = |i: usize| Value::U32((special_base + i) as u32);
    for (key, value) in [
        ("tokenizer.ggml.tokens", Value::Array(tokens)),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.bos_token_id", id(0)),
        ("tokenizer.ggml.eos_token_id", id(9)),
        ("tokenizer.ggml.padding_token_id", id(4)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
        (
            "tokenizer.chat_template",
            Value::String(LLAMA3_CHAT_TEMPLATE.into()),
        ),
    ] {
        // Replace the source's value: llama.cpp refuses a file with a key twice.
        meta.retain(|(k, _)| k != key);
        meta.push((key.into(), value));
    }
    Ok(meta)
}

/// The full plan of a synthetic `shape` file in `quant`, with `tokenizer`
/// metadata from [`padded_tokenizer`]. Tensors come in llama.cpp's order.
pub fn llama_plan(shape: &Shape, quant: Quant, tokenizer: Vec<(String, Value)>) -> GgufPlan {
    let (d, hd) = (shape.d_model, shape.head_dim);
    let theta = 500_000.0f32;
    let u32v = |v: usize| Value::U32(v as u32);
    let mut metadata = vec![
        (
            "general.architecture".to_string(),
            Value::String("llama".into()),
        ),
        (
            "general.name".into(),
            Value::String(format!("synthetic {} (random weights)", shape.name)),
        ),
        ("general.file_type".into(), Value::U32(quant.file_type())),
        ("general.quantization_version".into(), Value::U32(2)),
        ("general.alignment".into(), Value::U32(ALIGNMENT as u32)),
        ("llama.block_count".into(), u32v(shape.n_layers)),
        ("llama.context_length".into(), u32v(shape.context)),
        ("llama.embedding_length".into(), u32v(d)),
        ("llama.feed_forward_length".into(), u32v(shape.ffn)),
        ("llama.attention.head_count".into(), u32v(shape.n_heads)),
        (
            "llama.attention.head_count_kv".into(),
            u32v(shape.n_kv_heads),
        ),
        ("llama.attention.key_length".into(), u32v(hd)),
        ("llama.attention.value_length".into(), u32v(hd)),
        ("llama.rope.freq_base".into(), Value::F32(theta)),
        ("llama.rope.dimension_count".into(), u32v(hd)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
        ("llama.vocab_size".into(), u32v(shape.vocab)),
    ];
    metadata.extend(tokenizer);

    let matrix = |name: String, rows: usize, cols: usize, dtype: GgmlDType| TensorPlan {
        name,
        shape: vec![rows, cols],
        dtype,
        fill: Fill::Random {
            std: 1.0 / (cols as f32).sqrt(),
        },
    };
    let norm = |name: String| TensorPlan {
        name,
        shape: vec![d],
        dtype: GgmlDType::F32,
        fill: Fill::Norm,
    };
    let embd_type = match quant {
        Quant::Q8_0 => GgmlDType::Q8_0,
        Quant::Q4_0 => GgmlDType::Q4_0,
        Quant::Q4K => GgmlDType::Q4K,
    };
    let mut tensors = vec![
        matrix("token_embd.weight".into(), shape.vocab, d, embd_type),
        TensorPlan {
            name: "rope_freqs.weight".into(),
            shape: vec![hd / 2],
            dtype: GgmlDType::F32,
            fill: Fill::Values(llama3_rope_factors(hd, theta, shape.rope_factor)),
        },
    ];
    let (q_rows, kv_rows) = (shape.n_heads * hd, shape.n_kv_heads * hd);
    for i in 0..shape.n_layers {
        let ty = |part: &str| quant.matrix_type(part, i, shape.n_layers);
        let name = |part: &str| format!("blk.{i}.{part}.weight");
        tensors.push(norm(name("attn_norm")));
        tensors.push(matrix(name("attn_q"), q_rows, d, ty("attn_q")));
        tensors.push(matrix(name("attn_k"), kv_rows, d, ty("attn_k")));
        tensors.push(matrix(name("attn_v"), kv_rows, d, ty("attn_v")));
        tensors.push(matrix(name("attn_output"), d, q_rows, ty("attn_output")));
        tensors.push(norm(name("ffn_norm")));
        tensors.push(matrix(name("ffn_gate"), shape.ffn, d, ty("ffn_gate")));
        tensors.push(matrix(name("ffn_up"), shape.ffn, d, ty("ffn_up")));
        tensors.push(matrix(name("ffn_down"), d, shape.ffn, ty("ffn_down")));
    }
    tensors.push(norm("output_norm.weight".into()));
    if !shape.tied {
        let ty = quant.matrix_type("output", 0, shape.n_layers);
        tensors.push(matrix("output.weight".into(), shape.vocab, d, ty));
    }
    GgufPlan {
        metadata,
        tensors,
        seed: 0x006c_656e_736d_6170,
    }
}
