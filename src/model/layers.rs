//! The parts of a transformer block, one copy each: `Linear`, `Norm`, `Rope`,
//! `Attention`, `Mlp` and `Block`. Architectures differ only in the
//! `ModelConfig` they build and the tensor names they map; a model that seems
//! to need its own forward gets an option here instead.
//!
//! Every activation is `[T, d]` for one sequence of T positions (no batch),
//! or several sequences' rows stacked (`[ΣT, d]`, `Block::forward_stacked`):
//! everything but attention works row by row, and attention is split back
//! into its sequences.

use candle_core::{DType, Device, Tensor, D};

use super::arch::{Part, TensorNames};
use super::config::{
    Activation, MlpLayout, ModelConfig, NormKind, QkvLayout, RopeConfig, RopeStyle,
};
use super::weights::{with_f32_slice, MatWeight, Precision, StoredMatrix, WeightSource};
use crate::kernels::f32dot::Isa;
use crate::kernels::f32outer::{self, OuterChunk};
use crate::kernels::{masked_softmax, masked_softmax_row};
use crate::{Error, Result};
use rayon::prelude::*;

/// Queries per attention block: bounds the score matrix to
/// `[heads, QUERY_BLOCK, T]` so a 4096-token prompt does not need a
/// `[heads, 4096, 4096]` tensor.
const QUERY_BLOCK: usize = 512;

/// Reads a block's tensors by logical part, checking shapes against the config.
pub struct Loader<'a> {
    pub src: &'a dyn WeightSource,
    pub names: &'a dyn TensorNames,
    pub cfg: &'a ModelConfig,
    pub precision: Precision,
    /// `--allow-nonfinite`: load weights holding NaN or infinity instead of
    /// refusing them (the lens marks the cells they spoil as invalid).
    pub allow_nonfinite: bool,
}

impl Loader<'_> {
    /// The file name of a part.
    pub fn name(&self, part: Part, layer: Option<usize>, bias: bool) -> String {
        self.names.name(part, layer, bias)
    }

    /// Whether a part exists in the checkpoint.
    pub fn has(&self, part: Part, layer: Option<usize>) -> bool {
        self.src.contains(&self.name(part, layer, false))
    }

    /// A tensor in f32, which must have `shape`.
    pub fn f32(
        &self,
        part: Part,
        layer: Option<usize>,
        bias: bool,
        shape: &[usize],
    ) -> Result<Tensor> {
        let name = self.name(part, layer, bias);
        self.check_shape(&name, shape)?;
        let t = self.src.f32(&name)?;
        self.check_finite(&t, &name)?;
        Ok(t.reshape(shape)?)
    }

    /// A 2-D tensor of `shape` at rest in the file, if its type allows.
    pub fn stored(
        &self,
        part: Part,
        layer: Option<usize>,
        shape: &[usize],
    ) -> Result<Option<StoredMatrix>> {
        let name = self.name(part, layer, false);
        self.check_shape(&name, shape)?;
        Ok(self.src.stored(&name)?.filter(|m| {
            let (r, c) = m.dims();
            [r, c] == shape
        }))
    }

    /// Refuse a weight holding NaN or infinity, unless `allow_nonfinite`.
    fn check_finite(&self, t: &Tensor, name: &str) -> Result<()> {
        if self.allow_nonfinite {
            return Ok(());
        }
        super::bounds::check_finite(t, || format!("tensor `{name}`"))
    }

    fn check_shape(&self, name: &str, expected: &[usize]) -> Result<()> {
        let got = self.src.shape(name).ok_or_else(|| Error::MissingTensor {
            tensor: name.to_string(),
            file: self.src.label(),
        })?;
        // A vector may be stored as [n] or [1, n]; compare element layouts.
        let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
        if squeeze(&got) != squeeze(expected) {
            return Err(Error::ShapeMismatch {
                tensor: name.to_string(),
                got,
                expected: expected.to_vec(),
            });
        }
        Ok(())
    }

    /// A projection `[out, in]`, with its bias if `bias`.
    pub fn linear(
        &self,
        part: Part,
        layer: usize,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Linear> {
        let name = self.name(part, Some(layer), false);
        self.check_shape(&name, &[out, inp])?;
        let at_rest = if self.precision.at_rest() {
            self.stored(part, Some(layer), &[out, inp])?
        } else {
            None
        };
        // Dense f64 weights are stored transposed, `[in, out]` row-major: gemm
        // then reads them without re-packing on every call, which cost more
        // than the multiply itself at prompt-sized M.
        let dtype = self.precision.activation_dtype();
        let weight = match at_rest {
            Some(m) if self.precision == Precision::Quant && m.has_int8_form() => {
                MatWeight::Int8(m)
            }
            Some(m) => MatWeight::Stored(m),
            None => {
                let w = self.src.f32(&name)?;
                self.check_finite(&w, &name)?;
                if dtype == DType::F32 {
                    // f32 copies go through the same panel routine as
                    // weights at rest, so the two precisions sum in the same
                    // order.
                    MatWeight::Stored(StoredMatrix::copied(&w)?)
                } else {
                    MatWeight::Dense(w.t()?.contiguous()?.to_dtype(dtype)?)
                }
            }
        };

        let bias = if bias {
            Some(self.f32(part, Some(layer), true, &[out])?.to_dtype(dtype)?)
        } else {
            None
        };
        Ok(Linear { name, weight, bias })
    }

    /// A norm over `dim` features.
    pub fn norm(&self, part: Part, layer: Option<usize>, dim: usize) -> Result<Norm> {
        let weight = self.f32(part, layer, false, &[dim])?;
        let offset = self.cfg.norm_weight_offset;
        let weight = if offset != 0.0 {
            (weight + offset as f64)?
        } else {
            weight
        };
        let bias = match self.cfg.norm {
            NormKind::Layer => Some(self.f32(part, layer, true, &[dim])?),
            NormKind::Rms => None,
        };
        // Norm weights match the activations they scale.
        let dtype = self.precision.activation_dtype();
        let weight = weight.to_dtype(dtype)?;
        let bias = bias.map(|b| b.to_dtype(dtype)).transpose()?;
        Ok(Norm {
            kind: self.cfg.norm,
            eps: self.cfg.sizes.norm_eps as f32,
            weight,
            bias,
        })
    }
}

/// `y = x Wᵀ + b`, with W dense, at rest, or at rest in 8 bits.
#[derive(Debug, Clone)]
pub struct Linear {
    /// The weight's tensor name, for messages.
    name: String,
    /// Dense: `[in, out]` (transposed at load); at rest: `[out, in]`.
    weight: MatWeight,
    /// `[out]`.
    bias: Option<Tensor>,
}

impl Linear {
    /// Up to how many rows this projection gives each row the numbers it
    /// gives that row alone; `None` when not known (the f64 matmul), so its
    /// sequences go one at a time. The 8-bit product's arithmetic is fixed
    /// per output, at any row count.
    pub(crate) fn row_independent(&self) -> Option<usize> {
        match self.weight {
            MatWeight::Stored(_) => super::weights::row_independent_rows(),
            MatWeight::Int8(_) => Some(usize::MAX),
            MatWeight::Dense(_) => None,
        }
    }

    /// The weight at rest, if it is.
    fn stored(&self) -> Option<&StoredMatrix> {
        match &self.weight {
            MatWeight::Stored(m) | MatWeight::Int8(m) => Some(m),
            MatWeight::Dense(_) => None,
        }
    }

    /// `x`: `[T, in]` → `[T, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            MatWeight::Dense(w) => x.matmul(w)?,
            MatWeight::Stored(m) => m.matmul_t(x)?,
            MatWeight::Int8(m) => m.matmul_t_int8(x)?,
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// RMSNorm or LayerNorm over the last dimension.
#[derive(Debug, Clone)]
pub struct Norm {
    kind: NormKind,
    eps: f32,
    /// `[d]`, with Gemma's `+1` already folded in.
    weight: Tensor,
    /// `[d]`, LayerNorm only.
    bias: Option<Tensor>,
}

impl Norm {
    /// `(weight, eps)` of an RMSNorm (Gemma's `+1` folded into the weight);
    /// `None` for LayerNorm. The tuned-lens trainer differentiates through it.
    pub(crate) fn rms_parts(&self) -> Option<(&Tensor, f32)> {
        self.bias.is_none().then_some((&self.weight, self.eps))
    }

    /// Normalise `x` (f32 or f64); the result has `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Statistics in f64, like an exact reference: candle's fused kernels
        // sum squares in f32 one element at a time, while residual streams
        // carry outlier features (|x| ≈ 4400 in SmolLM2).
        let dtype = x.dtype();
        let x64 = x.to_dtype(DType::F64)?;
        let eps = self.eps as f64;
        let y = match (self.kind, &self.bias) {
            (NormKind::Layer, Some(b)) => {
                let centred = x64.broadcast_sub(&x64.mean_keepdim(D::Minus1)?)?;
                let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
                let y = centred
                    .broadcast_div(&(var + eps)?.sqrt()?)?
                    .to_dtype(dtype)?;
                y.broadcast_mul(&self.weight)?.broadcast_add(b)?
            }
            _ => {
                let ms = x64.sqr()?.mean_keepdim(D::Minus1)?;
                let y = x64.broadcast_div(&(ms + eps)?.sqrt()?)?.to_dtype(dtype)?;
                y.broadcast_mul(&self.weight)?
            }
        };
        Ok(y)
    }
}

/// Inverse frequencies of one RoPE base, and the rotation style.
#[derive(Debug, Clone)]
pub struct Rope {
    /// `[dim / 2]`, f32 as transformers computes them.
    inv_freq: Vec<f32>,
    dim: usize,
    style: RopeStyle,
}

impl Rope {
    /// Frequencies for base `theta`, with Llama 3 scaling if configured.
    pub fn new(cfg: &RopeConfig, theta: f64) -> Self {
        let dim = cfg.dim;
        let mut inv_freq: Vec<f32> = (0..dim / 2)
            .map(|i| (1.0 / theta.powf((2 * i) as f64 / dim as f64)) as f32)
            .collect();
        if let Some(s) = &cfg.llama3 {
            // transformers `_compute_llama3_parameters`: long wavelengths are
            // divided by `factor`, short ones kept, the band between blended.
            let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
            let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
            for f in inv_freq.iter_mut() {
                let freq = *f as f64;
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                let scaled = if wavelen > low_wavelen {
                    freq / s.factor
                } else {
                    freq
                };
                let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                let out = if medium {
                    let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * scaled / s.factor + smooth * scaled
                } else {
                    scaled
                };
                *f = out as f32;
            }
        }
        if let Some(factors) = &cfg.freq_factors {
            for (f, factor) in inv_freq.iter_mut().zip(factors) {
                *f /= factor;
            }
        }
        Self {
            inv_freq,
            dim,
            style: cfg.style,
        }
    }

    /// cos and sin tables `[t, dim/2]` for positions `start..start + t`.
    fn tables(&self, start: usize, t: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for p in start..start + t {
            for &f in &self.inv_freq {
                // The angle is an f32 product, as in transformers.
                let angle = (p as f32 * f) as f64;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Ok((
            Tensor::from_vec(cos, (t, half), &Device::Cpu)?.to_dtype(dtype)?,
            Tensor::from_vec(sin, (t, half), &Device::Cpu)?.to_dtype(dtype)?,
        ))
    }

    /// Rotate `x`: `[heads, t, head_dim]` at positions `start..`.
    fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let (_h, t, head_dim) = x.dims3()?;
        let (cos, sin) = self.tables(start, t, x.dtype())?;
        let rotate = |x: &Tensor| -> Result<Tensor> {
            let x = x.unsqueeze(0)?.contiguous()?;
            let y = match self.style {
                RopeStyle::NeoX => candle_nn::rotary_emb::rope(&x, &cos, &sin)?,
                RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, &cos, &sin)?,
            };
            Ok(y.squeeze(0)?)
        };
        if self.dim == head_dim {
            rotate(x)
        } else {
            // Partial rotary: only the first `dim` features turn.
            let rot = rotate(&x.narrow(D::Minus1, 0, self.dim)?)?;
            let pass = x.narrow(D::Minus1, self.dim, head_dim - self.dim)?;
            Ok(Tensor::cat(&[&rot, &pass], D::Minus1)?)
        }
    }
}

/// One sequence's rows in a stacked block call ([`Block::forward_stacked`]).
pub(crate) struct StackedSeq<'a> {
    /// Rows (positions) of this sequence in the stack.
    pub len: usize,
    /// Position of its first row.
    pub start: usize,
    /// Its cache for this block.
    pub cache: &'a mut LayerCache,
}

/// Keys and values seen so far by one layer, for generation.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    /// `[n_kv_heads, T, head_dim]`, after RoPE.
    k: Option<Tensor>,
    /// `[n_kv_heads, T, head_dim]`.
    v: Option<Tensor>,
}

/// The q, k, v projections as stored.
#[derive(Debug, Clone)]
enum QkvProj {
    Separate {
        q: Linear,
        k: Linear,
        v: Linear,
    },
    /// One `[q | k | v]` projection (Phi-3, GPT-2).
    Fused(Linear),
}

/// Multi-head attention with grouped kv heads, optional sliding window.
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    qkv: QkvProj,
    o: Linear,
    q_norm: Option<Norm>,
    k_norm: Option<Norm>,
    rope: Option<Rope>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f64,
    window: Option<usize>,
}

impl Attention {
    pub fn load(ld: &Loader, layer: usize, rope: Option<Rope>) -> Result<Self> {
        let cfg = ld.cfg;
        let (d, hd) = (cfg.sizes.d_model, cfg.sizes.head_dim);
        let (q_out, kv_out) = (cfg.sizes.n_heads * hd, cfg.sizes.n_kv_heads * hd);
        let bias = cfg.qkv_bias;
        let qkv = match cfg.qkv_layout {
            QkvLayout::Separate => QkvProj::Separate {
                q: ld.linear(Part::AttnQ, layer, q_out, d, bias)?,
                k: ld.linear(Part::AttnK, layer, kv_out, d, bias)?,
                v: ld.linear(Part::AttnV, layer, kv_out, d, bias)?,
            },
            QkvLayout::Fused => {
                QkvProj::Fused(ld.linear(Part::AttnQkv, layer, q_out + 2 * kv_out, d, bias)?)
            }
        };
        let qk_norm = |part| -> Result<Option<Norm>> {
            if cfg.qk_norm {
                Ok(Some(ld.norm(part, Some(layer), hd)?))
            } else {
                Ok(None)
            }
        };
        Ok(Self {
            qkv,
            o: ld.linear(Part::AttnOut, layer, d, q_out, cfg.out_bias)?,
            q_norm: qk_norm(Part::AttnQNorm)?,
            k_norm: qk_norm(Part::AttnKNorm)?,
            rope,
            n_heads: cfg.sizes.n_heads,
            n_kv_heads: cfg.sizes.n_kv_heads,
            head_dim: hd,
            scale: cfg.attn_scale,
            window: if cfg.is_sliding(layer) {
                cfg.sliding_window
            } else {
                None
            },
        })
    }

    /// `x`: the stacked rows `[ΣT, d]` of `seqs`, each at its positions
    /// `start..start+T` → `[ΣT, d]`. The projections take all rows at once;
    /// attention runs per sequence and appends to its cache.
    fn forward_stacked(&self, x: &Tensor, seqs: &mut [StackedSeq<'_>]) -> Result<Tensor> {
        let (h, kvh, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let (q, k, v) = match &self.qkv {
            QkvProj::Fused(qkv) => {
                let y = qkv.forward(x)?;
                (
                    y.narrow(1, 0, h * hd)?,
                    y.narrow(1, h * hd, kvh * hd)?,
                    y.narrow(1, (h + kvh) * hd, kvh * hd)?,
                )
            }
            QkvProj::Separate { q, k, v } => (q.forward(x)?, k.forward(x)?, v.forward(x)?),
        };
        let mut ys = Vec::with_capacity(seqs.len());
        let mut at = 0;
        for seq in seqs.iter_mut() {
            let t = seq.len;
            ys.push(self.attend_seq(
                q.narrow(0, at, t)?,
                k.narrow(0, at, t)?,
                v.narrow(0, at, t)?,
                seq.start,
                seq.cache,
            )?);
            at += t;
        }
        let y = if ys.len() == 1 {
            ys.pop().expect("one sequence")
        } else {
            Tensor::cat(&ys, 0)?
        };
        self.o.forward(&y)
    }

    /// One sequence's projected `q`, `k`, `v` (`[T, heads·hd]`) at positions
    /// `start..start+T` → the attention output `[T, heads·hd]`, before the
    /// output projection. Appends to `cache`.
    fn attend_seq(
        &self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        start: usize,
        cache: &mut LayerCache,
    ) -> Result<Tensor> {
        let (h, kvh, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let t = q.dim(0)?;
        // [T, heads*hd] -> [T, heads, hd]; q/k norm is per head, before RoPE.
        let mut q = q.reshape((t, h, hd))?;
        let mut k = k.reshape((t, kvh, hd))?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        let mut q = q.transpose(0, 1)?.contiguous()?; // [h, T, hd]
        let mut k = k.transpose(0, 1)?.contiguous()?; // [kvh, T, hd]
        let v = v.reshape((t, kvh, hd))?.transpose(0, 1)?.contiguous()?;
        if let Some(rope) = &self.rope {
            q = rope.apply(&q, start)?;
            k = rope.apply(&k, start)?;
        }
        let (k, v) = match (&cache.k, &cache.v) {
            (Some(ck), Some(cv)) => (Tensor::cat(&[ck, &k], 1)?, Tensor::cat(&[cv, &v], 1)?),
            _ => (k, v),
        };
        cache.k = Some(k.clone());
        cache.v = Some(v.clone());

        // Query head i reads kv head i / group (transformers' repeat_kv), which
        // is what viewing [h, T, hd] as [kvh, group, T, hd] gives.
        let group = h / kvh;
        let q = q.reshape((kvh, group, t, hd))?;
        let mut out = Vec::new();
        for a in (0..t).step_by(QUERY_BLOCK) {
            let b = (a + QUERY_BLOCK).min(t);
            out.push(self.attend(&q.narrow(2, a, b - a)?, &k, &v, start + a)?);
        }
        let y = Tensor::cat(&out, 2)?; // [kvh, group, T, hd]
        Ok(y.reshape((h, t, hd))?
            .transpose(0, 1)?
            .reshape((t, h * hd))?)
    }

    /// Queries `[kvh, group, n, hd]` at positions `p0..p0+n` against all keys.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, p0: usize) -> Result<Tensor> {
        let (kvh, group, n, hd) = q.dims4()?;
        let outer = match q.dtype() {
            DType::F32 => Isa::detect(),
            _ => None,
        };
        // Keys beyond the last query are masked anyway, and keys before the
        // first query's window too: narrow them away instead of computing
        // them. On the outer-product kernel the output sums over the keys
        // in position order from here, and the keys before a query's own
        // window add exact zeros, so a query sums the same terms in the same
        // order however the sequence was cut into calls (a prompt whole, or
        // a shared prefix and then the rest).
        let k_end = p0 + n;
        let k_start = match self.window {
            Some(w) => (p0 + 1).saturating_sub(w),
            None => 0,
        };
        let nk = k_end - k_start;
        let k = k.narrow(1, k_start, nk)?;
        let v = v.narrow(1, k_start, nk)?;
        let q = q.contiguous()?.reshape((kvh, group * n, hd))?;
        // Softmax over each query's visible keys only: causal (key ≤ query)
        // and inside the window (key > query − W); no mask tensor is built.
        let window = self.window;
        let visible = move |row: usize| {
            let p = p0 + row % n; // rows are (head, query) pairs
            let lo = window.map_or(0, |w| (p + 1).saturating_sub(w).max(k_start) - k_start);
            (lo, p + 1 - k_start)
        };
        if let Some(isa) = outer {
            // Borrowed in place (`q` and the two copies made contiguous here),
            // not copied once more into vectors.
            let (k, v) = (k.contiguous()?, v.contiguous()?);
            let shape = HeadShape {
                kvh,
                rows: group * n,
                nk,
                hd,
            };
            let out = with_f32_slice(&q, |q| {
                with_f32_slice(&k, |k| {
                    with_f32_slice(&v, |v| {
                        outer_attention(isa, [q, k, v], shape, self.scale as f32, visible)
                    })
                })
            })???;
            return Ok(Tensor::from_vec(out, (kvh, group, n, hd), &Device::Cpu)?);
        }
        let scores = (q.matmul(&k.t()?)? * self.scale)?; // [kvh, group*n, nk]
        let probs = match scores.dtype() {
            DType::F64 => {
                let mut x = scores.flatten_all()?.to_vec1::<f64>()?;
                masked_softmax(&mut x, nk, visible);
                Tensor::from_vec(x, (kvh, group * n, nk), &Device::Cpu)?
            }
            _ => {
                let mut x = scores.flatten_all()?.to_vec1::<f32>()?;
                masked_softmax(&mut x, nk, visible);
                Tensor::from_vec(x, (kvh, group * n, nk), &Device::Cpu)?
            }
        };
        Ok(probs
            .matmul(&v.contiguous()?)?
            .reshape((kvh, group, n, hd))?)
    }
}

/// The sizes of one attention call on the outer-product kernel: kv heads,
/// query rows per kv head (group × queries), keys, head width.
#[derive(Clone, Copy)]
struct HeadShape {
    kvh: usize,
    rows: usize,
    nk: usize,
    hd: usize,
}

/// Query rows per task of [`outer_attention`]: a few kv heads would leave
/// one of two cores idle if each head were one task.
const ROWS_PER_TASK: usize = 32;

/// Attention on `kernels::f32outer`, per kv head: scores `q · kᵀ` (lanes
/// over keys, summed over the head width) times `scale`, the softmax over
/// each row's `visible` keys (the rest exactly 0), then probabilities ·
/// values (lanes over the head width, summed over the keys in order).
/// `q` is `[kvh, rows, hd]`, `k` and `v` `[kvh, nk, hd]`; returns
/// `[kvh, rows, hd]`.
fn outer_attention(
    isa: Isa,
    [q, k, v]: [&[f32]; 3],
    shape: HeadShape,
    scale: f32,
    visible: impl Fn(usize) -> (usize, usize) + Sync,
) -> Vec<f32> {
    let HeadShape { kvh, rows, nk, hd } = shape;
    let l = f32outer::lanes(isa);
    // Keys packed in groups of lanes ([hd][l] each), values by columns
    // ([nk][l] per group of l columns), one head at a time.
    let (kg, vg) = (nk.div_ceil(l), hd.div_ceil(l));
    let packed: Vec<(Vec<f32>, Vec<f32>)> = (0..kvh)
        .into_par_iter()
        .map(|h| {
            let (mut kp, mut vp) = (Vec::new(), Vec::new());
            f32outer::pack_rows(isa, &k[h * nk * hd..][..nk * hd], nk, hd, &mut kp);
            f32outer::pack_cols(isa, &v[h * nk * hd..][..nk * hd], nk, hd, &mut vp);
            (kp, vp)
        })
        .collect();
    let (lds, ldo) = (kg * l, vg * l);
    let mut out = vec![0f32; kvh * rows * hd];
    out.par_chunks_mut(rows * hd)
        .enumerate()
        .flat_map(|(h, head)| {
            head.par_chunks_mut(ROWS_PER_TASK * hd)
                .enumerate()
                .map(move |(b, o)| (h, b * ROWS_PER_TASK, o))
        })
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(scores, yt): &mut (Vec<f32>, Vec<f32>), (h, r0, o)| {
                let nr = o.len() / hd;
                let (kp, vp) = &packed[h];
                scores.resize(nr * lds, 0.0);
                yt.resize(nr * ldo, 0.0);
                // SAFETY: `isa` was detected; kp holds kg groups of hd
                // columns, q's rows r0.. of head h are nr rows of hd floats,
                // and `scores` is this task's [nr, lds].
                unsafe {
                    f32outer::chunk_matmul_t(
                        isa,
                        OuterChunk {
                            xp: kp.as_ptr(),
                            xstride: hd * l,
                            groups: kg,
                            w: q[(h * rows + r0) * hd..].as_ptr(),
                            ldw: hd,
                            p: nr,
                            kc: hd,
                            yt: scores.as_mut_ptr(),
                            ldt: lds,
                            first: true,
                        },
                    )
                };
                for (i, row) in scores.chunks_exact_mut(lds).enumerate() {
                    let (lo, hi) = visible(r0 + i);
                    row[lo..hi].iter_mut().for_each(|s| *s *= scale);
                    masked_softmax_row(row, (lo, hi));
                }
                // SAFETY: as above; vp holds vg groups of nk rows, and the
                // probabilities are nr rows of nk (≤ lds) floats.
                unsafe {
                    f32outer::chunk_matmul_t(
                        isa,
                        OuterChunk {
                            xp: vp.as_ptr(),
                            xstride: nk * l,
                            groups: vg,
                            w: scores.as_ptr(),
                            ldw: lds,
                            p: nr,
                            kc: nk,
                            yt: yt.as_mut_ptr(),
                            ldt: ldo,
                            first: true,
                        },
                    )
                };
                for (dst, src) in o.chunks_exact_mut(hd).zip(yt.chunks_exact(ldo)) {
                    dst.copy_from_slice(&src[..hd]);
                }
            },
        );
    out
}

/// The MLP's input projections as stored.
#[derive(Debug, Clone)]
enum MlpProj {
    /// `act(gate(x)) * up(x)`, gate and up separate.
    Gated { gate: Linear, up: Linear },
    /// Gate and up in one `[gate | up]` projection, gate first (Phi-3).
    Fused(Linear),
    /// `act(up(x))` (GPT-2).
    Plain(Linear),
}

/// The feed-forward part of a block.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    proj: MlpProj,
    down: Linear,
    act: Activation,
}

impl Mlp {
    pub fn load(ld: &Loader, layer: usize) -> Result<Self> {
        let cfg = ld.cfg;
        let (d, f, b) = (cfg.sizes.d_model, cfg.sizes.d_ff, cfg.out_bias);
        let proj = match cfg.mlp {
            MlpLayout::Gated => MlpProj::Gated {
                gate: ld.linear(Part::FfnGate, layer, f, d, b)?,
                up: ld.linear(Part::FfnUp, layer, f, d, b)?,
            },
            MlpLayout::GatedFused => {
                MlpProj::Fused(ld.linear(Part::FfnGateUp, layer, 2 * f, d, b)?)
            }
            MlpLayout::Plain => MlpProj::Plain(ld.linear(Part::FfnUp, layer, f, d, b)?),
        };
        Ok(Self {
            proj,
            down: ld.linear(Part::FfnDown, layer, d, f, b)?,
            act: cfg.act,
        })
    }

    fn act(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.act {
            Activation::Silu => candle_nn::ops::silu(x)?,
            Activation::GeluTanh => x.gelu()?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = match &self.proj {
            MlpProj::Gated { gate, up } => (self.act(&gate.forward(x)?)? * up.forward(x)?)?,
            MlpProj::Fused(gate_up) => {
                let gu = gate_up.forward(x)?;
                let f = gu.dim(1)? / 2;
                (self.act(&gu.narrow(1, 0, f)?)? * gu.narrow(1, f, f)?)?
            }
            MlpProj::Plain(up) => self.act(&up.forward(x)?)?,
        };
        self.down.forward(&h)
    }

    /// The input projections, in load order.
    fn projections(&self) -> Vec<&Linear> {
        match &self.proj {
            MlpProj::Gated { gate, up } => vec![gate, up],
            MlpProj::Fused(l) | MlpProj::Plain(l) => vec![l],
        }
    }
}

/// One transformer block: pre-norm attention and MLP, each added back into
/// the residual stream, with Gemma's optional post-norms.
#[derive(Debug, Clone)]
pub struct Block {
    attn_norm: Norm,
    attn: Attention,
    post_attn_norm: Option<Norm>,
    ffn_norm: Norm,
    mlp: Mlp,
    post_ffn_norm: Option<Norm>,
}

impl Block {
    pub fn load(ld: &Loader, layer: usize, rope: Option<Rope>) -> Result<Self> {
        let d = ld.cfg.sizes.d_model;
        let post = |part| -> Result<Option<Norm>> {
            if ld.cfg.post_norms {
                Ok(Some(ld.norm(part, Some(layer), d)?))
            } else {
                Ok(None)
            }
        };
        Ok(Self {
            attn_norm: ld.norm(Part::AttnNorm, Some(layer), d)?,
            attn: Attention::load(ld, layer, rope)?,
            post_attn_norm: post(Part::PostAttnNorm)?,
            ffn_norm: ld.norm(Part::FfnNorm, Some(layer), d)?,
            mlp: Mlp::load(ld, layer)?,
            post_ffn_norm: post(Part::PostFfnNorm)?,
        })
    }

    /// The block's projections.
    fn linears(&self) -> Vec<&Linear> {
        let a = &self.attn;
        let m = &self.mlp;
        let qkv: Vec<&Linear> = match &a.qkv {
            QkvProj::Separate { q, k, v } => vec![q, k, v],
            QkvProj::Fused(l) => vec![l],
        };
        qkv.into_iter()
            .chain([&a.o, &m.down])
            .chain(m.projections())
            .collect()
    }

    /// Most stacked rows [`Block::forward_stacked`] takes while keeping each
    /// sequence's numbers its own; `None`: one sequence at a time.
    pub(crate) fn stack_rows(&self) -> Option<usize> {
        self.linears()
            .into_iter()
            .map(Linear::row_independent)
            .try_fold(usize::MAX, |m, r| r.map(|r| m.min(r)))
    }

    /// The block's weights at rest.
    fn stored(&self) -> Vec<&StoredMatrix> {
        self.linears()
            .into_iter()
            .filter_map(Linear::stored)
            .collect()
    }

    /// The first weight at rest in this block holding NaN or infinity, by
    /// tensor name, and the value. Weights at rest are not scanned at load
    /// (that would read the whole file); a non-finite residual after this
    /// block is traced back to its weight instead.
    pub(crate) fn nonfinite_weight(&self) -> Result<Option<(&str, f64)>> {
        for l in self.linears() {
            // f32 copies were scanned at load.
            if let Some(v) = l
                .stored()
                .filter(|m| m.is_mapped())
                .map(StoredMatrix::first_nonfinite)
                .transpose()?
                .flatten()
            {
                return Ok(Some((&l.name, v)));
            }
        }
        Ok(None)
    }

    /// For weights at rest: prefetch the block's pages (`release` false:
    /// `MADV_WILLNEED`) or drop them from the resident set (`MADV_DONTNEED`).
    pub(crate) fn advise(&self, release: bool) {
        for m in self.stored() {
            if release {
                m.release()
            } else {
                m.prefetch()
            }
        }
    }

    /// `x`: the residual stream `[T, d]` at positions `start..start+T` → the
    /// residual stream after this block. Appends to `cache`.
    pub fn forward(&self, x: &Tensor, start: usize, cache: &mut LayerCache) -> Result<Tensor> {
        let t = x.dim(0)?;
        self.forward_stacked(
            x,
            &mut [StackedSeq {
                len: t,
                start,
                cache,
            }],
        )
    }

    /// Several sequences' residual rows stacked, `[ΣT, d]` in the order of
    /// `seqs` → the stacked rows after this block. The norms, projections and
    /// MLP take all rows in one call each, attention takes each sequence
    /// alone. Each sequence gets the numbers [`Block::forward`] gives it
    /// alone as long as every projection is row-independent
    /// ([`Linear::row_independent`]) at the stacked row count.
    pub(crate) fn forward_stacked(
        &self,
        x: &Tensor,
        seqs: &mut [StackedSeq<'_>],
    ) -> Result<Tensor> {
        let mut h = self
            .attn
            .forward_stacked(&self.attn_norm.forward(x)?, seqs)?;
        if let Some(n) = &self.post_attn_norm {
            h = n.forward(&h)?;
        }
        let x = (x + h)?; // residual add after attention
        let mut h = self.mlp.forward(&self.ffn_norm.forward(&x)?)?;
        if let Some(n) = &self.post_ffn_norm {
            h = n.forward(&h)?;
        }
        Ok((x + h)?) // residual add after the MLP
    }
}
