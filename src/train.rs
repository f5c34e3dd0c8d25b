//! `lensmap train-lens`: train a tuned lens on a CPU, natively.
//!
//! The objective is tuned-lens's: for every translator `i`, the mean over
//! tokens of KL(final ‖ lens_i), summed over layers, with `W_i = 0`, `b_i = 0`
//! at the start (the logit lens). The model is frozen, so the whole cost is
//! the unembedding at every layer, forward and backward, written out by hand
//! on candle's f32 matmul (candle has no autograd fit for this):
//!
//! ```text
//! x = h + h·Wᵀ + b,   n = g ⊙ x / rms(x),   z = n·W_Uᵀ,   q = softmax(z)
//! dz = (q − p_final) / T,   dn = dz·W_U,   dx = (g⊙dn − x̂·mean(g⊙dn⊙x̂)) / rms(x)
//! dW = dxᵀ·h,   db = Σ_t dx
//! ```
//!
//! Chunking follows tuned-lens's `chunk_and_tokenize`: documents split on
//! `"\n\f\n"` (or one JSONL record each), joined with EOS, starting with one,
//! cut into `--seq-len` token chunks, the ragged tail dropped. The run is
//! deterministic (fixed chunk order from `--seed`), and a checkpoint written
//! atomically (at most every 30 s, after a whole step) lets an interrupted
//! run resume to the same translators.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use rayon::prelude::*;
use serde::Serialize;

use crate::kernels::bf16::{Bf16Head, Bf16Kernel};
use crate::model::{KvCache, Model, Precision, ResidualTrace};
use crate::run::Session;
use crate::tuned::{save_lens, write_atomic, TunedConfig, TunedLens};
use crate::{Error, OptionName, Result};

/// Arguments of `lensmap train-lens`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// A `.gguf` file, an HF model directory, or `org/name` in the HF cache
    #[arg(long, short = 'm')]
    pub model: String,
    /// `auto` (f32 on CPU), `f32`, `f64` or `quant`: the frozen model's forward pass
    #[arg(long, default_value = "auto")]
    pub precision: Precision,
    /// Plain text (documents separated by a form-feed line) or JSONL (`{"text": ...}` a line)
    #[arg(long, value_name = "FILE")]
    pub corpus: PathBuf,
    /// Training budget in tokens (`12288`, `100k`, `2M`); rounded down to whole chunks
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub tokens: usize,
    /// The lens directory to write (config.json, params.pt, train_report.json)
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Held-out text; default: the last 10% of the corpus (split at a line end)
    #[arg(long, value_name = "FILE")]
    pub heldout: Option<PathBuf>,
    /// Held-out chunks to evaluate (from the start of the held-out split)
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub heldout_chunks: usize,
    /// Also evaluate this tuned lens on the same held-out tokens (e.g. a reference lens)
    #[arg(long, value_name = "DIR")]
    pub compare: Option<PathBuf>,
    /// `sgd` (Nesterov momentum 0.9, tuned-lens's recipe) or `adam`
    #[arg(long, default_value = "sgd", value_parser = ["sgd", "adam"])]
    pub optimizer: String,
    /// Peak learning rate, decayed linearly to 0 (default: 0.1 for sgd, 1e-3 for adam)
    #[arg(long)]
    pub lr: Option<f64>,
    /// Weight decay (added to the gradient, as torch's SGD and Adam do)
    #[arg(long, default_value_t = 1e-3)]
    pub weight_decay: f64,
    /// Tokens per chunk (one chunk per step)
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Seed of the chunk order and of the sampled positions
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The chunk order: a file of chunk indices (whitespace-separated), e.g.
    /// `data/torch_randperm_2916_seed1.txt`, the reference lenses' order;
    /// default: a splitmix64 shuffle from `--seed`
    #[arg(long, value_name = "FILE")]
    pub chunk_order: Option<PathBuf>,
    /// Positions of each chunk that enter the loss (sampled without
    /// replacement, fresh each step); default: all. The whole chunk still
    /// runs through the model, so every sampled position has its context
    #[arg(long, value_name = "N")]
    pub positions_per_step: Option<usize>,
    /// Optimiser steps per chunk, each on its own sample of positions: the
    /// model's forward pass (the residuals) is computed once per chunk and
    /// reused. The learning-rate schedule runs over chunks × this
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub steps_per_chunk: usize,
    /// `auto` (bf16 where the CPU has AVX512-BF16, else f32), `bf16` or `f32`:
    /// the unembedding products of training. The held-out report is always f32
    #[arg(long, default_value = "auto", value_parser = ["auto", "bf16", "f32"])]
    pub train_precision: String,
    /// Stop after this many steps (the checkpoint stays, to resume; for tests)
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
    /// No progress bar
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// `12288`, `100k`, `2M`.
fn parse_count(s: &str) -> std::result::Result<usize, String> {
    let t = s.trim();
    let (num, mul) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1_000.0),
        Some('m' | 'M') => (&t[..t.len() - 1], 1_000_000.0),
        _ => (t, 1.0),
    };
    num.parse::<f64>()
        .ok()
        .filter(|v| *v > 0.0)
        .map(|v| (v * mul) as usize)
        .ok_or_else(|| format!("expected a count like `12288`, `100k` or `2M`, got `{s}`"))
}

/// Documents of a corpus file: JSONL records (`{"text": ...}` or a string),
/// or text split on `"\n\f\n"`.
pub(crate) fn documents(text: &str, jsonl: bool) -> Result<Vec<String>> {
    if !jsonl {
        return Ok(text.split("\n\u{c}\n").map(str::to_string).collect());
    }
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::BadInput {
            what: format!("corpus line {}: not JSON", i + 1),
            source: e.into(),
        })?;
        match v.get("text").unwrap_or(&v).as_str() {
            Some(s) => out.push(s.to_string()),
            None => {
                return Err(Error::InvalidOption(format!(
                    "corpus line {}: expected a string or an object with `text`",
                    i + 1
                )))
            }
        }
    }
    Ok(out)
}

/// The training and held-out split of one text: the cut is just after the
/// first `\n` at or after 90% of the characters.
fn split_heldout(text: &str) -> (&str, &str) {
    let n = text.chars().count();
    let at = text
        .char_indices()
        .nth(n * 9 / 10)
        .map_or(text.len(), |(i, _)| i);
    let cut = text[at..].find('\n').map_or(text.len(), |j| at + j + 1);
    text.split_at(cut)
}

/// Token chunks of `docs`: EOS, doc 0, EOS, doc 1, …, cut into `len`-token
/// chunks, the ragged tail dropped.
pub fn chunks(session: &Session, docs: &[String], len: usize) -> Result<Vec<Vec<u32>>> {
    let eos = session.tokenizer.eos().map(|(id, _)| id).ok_or_else(|| {
        Error::Tokenizer("the tokenizer has no EOS token to join documents".into())
    })?;
    let encoded: Vec<Vec<u32>> = docs
        .par_iter()
        .map(|d| session.tokenizer.encode(d).map(|e| e.ids))
        .collect::<Result<_>>()?;
    let mut stream = Vec::new();
    for ids in encoded {
        stream.push(eos);
        stream.extend(ids);
    }
    Ok(stream.chunks_exact(len).map(<[u32]>::to_vec).collect())
}

/// A deterministic permutation of `0..n` (splitmix64 Fisher–Yates). Not
/// torch's `randperm`; the chunks it picks are listed in the report.
pub(crate) fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

/// Chunk indices listed in `path` (whitespace-separated), each below `n`.
fn read_chunk_order(path: &Path, n: usize) -> Result<Vec<usize>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.split_whitespace()
        .map(|w| match w.parse::<usize>() {
            Ok(i) if i < n => Ok(i),
            _ => Err(Error::option(
                OptionName::ChunkOrder,
                format!(
                    "the chunk order `{}`: `{w}` is not a chunk index below {n}",
                    path.display()
                ),
            )),
        })
        .collect()
}

/// The positions of a `t`-token chunk that enter step `step`'s loss:
/// `n` of them sampled without replacement (sorted), or `None` for all.
fn sample_positions(t: usize, n: Option<usize>, seed: u64, step: usize) -> Result<Option<Tensor>> {
    let Some(n) = n.filter(|&n| n < t) else {
        return Ok(None);
    };
    let mut idx: Vec<u32> = permutation(
        t,
        seed ^ (step as u64 + 1).wrapping_mul(0xa076_1d64_78bd_642f),
    )
    .into_iter()
    .take(n)
    .map(|i| i as u32)
    .collect();
    idx.sort_unstable();
    Ok(Some(Tensor::from_vec(idx, n, &Device::Cpu)?))
}

/// The frozen model's pieces the lens differentiates through.
struct Unembed<'a> {
    /// `[d]` RMSNorm weight (offset folded in).
    norm: &'a Tensor,
    eps: f64,
    /// `[vocab, d]`.
    head: Tensor,
    vocab: usize,
}

/// Final distributions of one chunk: `p` row-major `[T, vocab]` and Σ p log p per token.
struct Targets {
    p: Vec<f32>,
    plogp: Vec<f64>,
}

impl<'a> Unembed<'a> {
    fn of(model: &'a Model) -> Result<Self> {
        let (norm, eps, head) = model.unembed_parts()?.ok_or_else(|| {
            Error::InvalidOption(
                "train-lens supports models whose final norm is an RMSNorm without a final soft-cap"
                    .into(),
            )
        })?;
        Ok(Unembed {
            norm,
            eps: eps as f64,
            head,
            vocab: model.cfg.sizes.vocab_size,
        })
    }

    /// `x / rms(x)` and `rms(x)` (`[T, 1]`), statistics in f64 like the model's norm.
    fn normalise(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let x64 = x.to_dtype(DType::F64)?;
        let rms = (x64.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?;
        let xhat = x64.broadcast_div(&rms)?.to_dtype(DType::F32)?;
        Ok((xhat, rms.to_dtype(DType::F32)?))
    }

    /// Logits `[T, vocab]` of translated residuals `x`, with `x̂` and `rms`.
    fn logits(&self, x: &Tensor) -> Result<(Vec<f32>, Tensor, Tensor)> {
        let (xhat, rms) = self.normalise(x)?;
        let n = xhat.broadcast_mul(self.norm)?;
        let z = n.matmul(&self.head.t()?)?;
        Ok((z.flatten_all()?.to_vec1::<f32>()?, xhat, rms))
    }

    fn targets(&self, model: &Model, last: &Tensor) -> Result<Targets> {
        let z = model.unembed(last)?.flatten_all()?.to_vec1::<f32>()?;
        let v = self.vocab;
        let mut p = z;
        let plogp = p
            .par_chunks_mut(v)
            .map(|row| {
                let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
                let s: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
                let lse = m + s.ln();
                let mut acc = 0.0;
                for x in row.iter_mut() {
                    let lp = *x as f64 - lse;
                    let pr = lp.exp();
                    acc += pr * lp;
                    *x = pr as f32;
                }
                acc
            })
            .collect();
        Ok(Targets { p, plogp })
    }
}

/// KL(final ‖ softmax(z)) of every token (`z` is overwritten). One f32
/// `exp` per logit, sums in f64: the held-out report's exact path.
fn kl_rows(z: &mut [f32], t: &Targets, vocab: usize) -> Vec<f64> {
    z.par_chunks_mut(vocab)
        .zip(t.p.par_chunks(vocab))
        .zip(t.plogp.par_iter())
        .map(|((zr, pr), &plogp)| {
            let m = zr.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let (mut s, mut pz) = (0.0f64, 0.0f64);
            for (x, &p) in zr.iter_mut().zip(pr) {
                pz += p as f64 * *x as f64;
                let e = (*x - m).exp();
                s += e as f64;
                *x = e;
            }
            plogp - pz + m as f64 + s.ln()
        })
        .collect()
}

/// Training's [`kl_rows`] with the gradient: KL per token and `z` replaced
/// by `(softmax(z) − p) / T`, through the vectorised `exp` and f32 sums in
/// 16 lanes (the held-out report keeps `kl_rows`' f64 sums).
fn kl_grad_rows(z: &mut [f32], t: &Targets, vocab: usize) -> Vec<f64> {
    let scale = 1.0 / (z.len() / vocab) as f32;
    z.par_chunks_mut(vocab)
        .zip(t.p.par_chunks(vocab))
        .zip(t.plogp.par_iter())
        .map(|((zr, pr), &plogp)| {
            let (m, s, pz) = crate::kernels::dispatch!(softmax_grad_row(zr, pr, scale));
            plogp - pz + m as f64 + s.ln()
        })
        .collect()
}

/// One row of [`kl_grad_rows`]: returns `(max z, Σ e^(z−max), Σ p·z)`.
#[inline(always)]
fn softmax_grad_row(z: &mut [f32], p: &[f32], scale: f32) -> (f32, f64, f64) {
    const W: usize = 16;
    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (mut s, mut pz) = ([0f32; W], [0f32; W]);
    let mut zc = z.chunks_exact_mut(W);
    let mut pc = p.chunks_exact(W);
    for (zw, pw) in (&mut zc).zip(&mut pc) {
        for j in 0..W {
            pz[j] += pw[j] * zw[j];
            let e = crate::kernels::exp_neg(zw[j] - m);
            s[j] += e;
            zw[j] = e;
        }
    }
    let (mut s_tail, mut pz_tail) = (0f32, 0f32);
    for (x, &q) in zc.into_remainder().iter_mut().zip(pc.remainder()) {
        pz_tail += q * *x;
        *x = crate::kernels::exp_neg(*x - m);
        s_tail += *x;
    }
    let sum = s.iter().map(|&v| v as f64).sum::<f64>() + s_tail as f64;
    let pzs = pz.iter().map(|&v| v as f64).sum::<f64>() + pz_tail as f64;
    let inv = (1.0 / sum) as f32;
    for (x, &q) in z.iter_mut().zip(p) {
        *x = (*x * inv - q) * scale;
    }
    (m, sum, pzs)
}

/// One translator and its optimiser state, f32 host vectors.
#[derive(Clone)]
struct Param {
    w: Vec<f32>,
    b: Vec<f32>,
    /// Momentum (sgd) or first moment (adam), then second moment (adam).
    m: Vec<f32>,
    v: Vec<f32>,
}

fn to_tensor(v: &[f32], shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::from_slice(v, shape, &Device::Cpu)?)
}

/// Translate `h` (`[T, d]`) with `(w, b)`.
fn translate(h: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok((h + h.matmul(&w.t()?)?.broadcast_add(b)?)?)
}

/// `(dW, db)` of one translator, row-major.
type LayerGrad = (Vec<f32>, Vec<f32>);

/// Seconds spent in each part of training, summed over steps (the report's
/// `time_s`): where the time goes decides what to make faster.
#[derive(Debug, Default, Clone, Serialize)]
struct StepTimes {
    /// The frozen model's forward pass (all residuals of the chunk).
    model_forward: f64,
    /// Final distributions `p` of the sampled positions.
    targets: f64,
    /// Translators, final norm and the unembedding product, every layer.
    lens_forward: f64,
    /// Softmax, KL and `dz` over the vocabulary.
    softmax: f64,
    /// `dz·W_U`, every layer.
    lens_backward: f64,
    /// Back through the norm and the translators (`dW`, `db`).
    translator_grads: f64,
    /// Clipping, the optimiser and the checkpoint.
    optimiser: f64,
}

/// Add the seconds since `*t` to `slot` and restart `*t`.
fn lap(t: &mut Instant, slot: &mut f64) {
    *slot += t.elapsed().as_secs_f64();
    *t = Instant::now();
}

/// The two unembedding products of training, in f32 (candle) or bf16.
enum HeadProducts {
    F32,
    /// The bf16 kernel: the head for `z = n·W_Uᵀ`, and `W_Uᵀ` cut into
    /// vocabulary panels for `dn = dz·W_U`, so each panel's packed block
    /// stays in cache while the kernel sweeps the token rows.
    Bf16 {
        kernel: Bf16Kernel,
        head: Bf16Head,
        panels_t: Vec<(usize, Bf16Head)>,
    },
}

/// Vocabulary columns per panel of the bf16 backward (`48 × 2048` pairs of
/// packed bf16 = 384 KiB per column group: fits a 1 MiB L2).
const BACKWARD_PANEL: usize = 4096;

impl HeadProducts {
    fn new(u: &Unembed, bf16: bool) -> Result<Self> {
        if !bf16 {
            return Ok(HeadProducts::F32);
        }
        let (v, d) = (u.vocab, u.head.dim(1)?);
        let w = u.head.flatten_all()?.to_vec1::<f32>()?;
        let head = Bf16Head::pack(&w, v, d);
        let panels_t = (0..v)
            .step_by(BACKWARD_PANEL)
            .map(|v0| {
                let p = BACKWARD_PANEL.min(v - v0);
                let packed = Bf16Head::pack_rows(d, p, |r0, r1, out| {
                    for (r, row) in (r0..r1).zip(out.chunks_exact_mut(p)) {
                        for (j, o) in row.iter_mut().enumerate() {
                            *o = w[(v0 + j) * d + r];
                        }
                    }
                    Ok::<(), std::convert::Infallible>(())
                })
                .unwrap_or_else(|e| match e {});
                (v0, packed)
            })
            .collect();
        Ok(HeadProducts::Bf16 {
            kernel: Bf16Kernel::detect(),
            head,
            panels_t,
        })
    }

    /// `z = n·W_Uᵀ`, `[t, vocab]`.
    fn logits(&self, u: &Unembed, n: &Tensor) -> Result<Vec<f32>> {
        match self {
            HeadProducts::F32 => Ok(n.matmul(&u.head.t()?)?.flatten_all()?.to_vec1::<f32>()?),
            HeadProducts::Bf16 { kernel, head, .. } => {
                let t = n.dim(0)?;
                let a = n.flatten_all()?.to_vec1::<f32>()?;
                let mut z = vec![0f32; t * u.vocab];
                head.matmul(&a, t, &mut z, *kernel);
                Ok(z)
            }
        }
    }

    /// `dn = dz·W_U`, `[t, d]`.
    fn backward(&self, u: &Unembed, dz: Vec<f32>, t: usize) -> Result<Tensor> {
        match self {
            HeadProducts::F32 => {
                let dz = Tensor::from_vec(dz, (t, u.vocab), &Device::Cpu)?;
                Ok(dz.matmul(&u.head)?)
            }
            HeadProducts::Bf16 {
                kernel, panels_t, ..
            } => {
                let (v, d) = (u.vocab, u.head.dim(1)?);
                let mut dn = vec![0f32; t * d];
                let mut part = vec![0f32; t * d];
                let mut a = Vec::new();
                for (v0, panel) in panels_t {
                    let p = panel.cols();
                    a.clear();
                    for row in dz.chunks_exact(v) {
                        a.extend_from_slice(&row[*v0..v0 + p]);
                    }
                    panel.matmul(&a, t, &mut part, *kernel);
                    dn.iter_mut().zip(&part).for_each(|(o, x)| *o += x);
                }
                Ok(Tensor::from_vec(dn, (t, d), &Device::Cpu)?)
            }
        }
    }
}

/// Loss of every layer (mean KL over tokens) and the gradients `(dW, db)`,
/// from the residual rows `rows` (`[t, d]` each) of the sampled positions.
fn step_grads(
    u: &Unembed,
    products: &HeadProducts,
    rows: &[Tensor],
    t: &Targets,
    params: &[Param],
    d: usize,
    times: &mut StepTimes,
) -> Result<(Vec<f64>, Vec<LayerGrad>)> {
    let mut losses = Vec::with_capacity(params.len());
    let mut grads = Vec::with_capacity(params.len());
    let mut clock = Instant::now();
    for (p, h) in params.iter().zip(rows) {
        let (w, b) = (to_tensor(&p.w, &[d, d])?, to_tensor(&p.b, &[d])?);
        let x = translate(h, &w, &b)?;
        let (xhat, rms) = u.normalise(&x)?;
        let mut z = products.logits(u, &xhat.broadcast_mul(u.norm)?)?;
        lap(&mut clock, &mut times.lens_forward);
        let kl = kl_grad_rows(&mut z, t, u.vocab);
        losses.push(kl.iter().sum::<f64>() / kl.len() as f64);
        lap(&mut clock, &mut times.softmax);
        let dn = products.backward(u, z, kl.len())?;
        lap(&mut clock, &mut times.lens_backward);
        let dxhat = dn.broadcast_mul(u.norm)?;
        let proj = (&dxhat * &xhat)?.mean_keepdim(D::Minus1)?;
        let dx = (dxhat - xhat.broadcast_mul(&proj)?)?.broadcast_div(&rms)?;
        let dw = dx.t()?.matmul(h)?;
        let db = dx.sum(0)?;
        grads.push((dw.flatten_all()?.to_vec1::<f32>()?, db.to_vec1::<f32>()?));
        lap(&mut clock, &mut times.translator_grads);
    }
    Ok((losses, grads))
}

/// The optimiser, as torch does it (weight decay added to the gradient).
struct Optimiser {
    adam: bool,
    lr: f64,
    wd: f64,
    total: usize,
}

impl Optimiser {
    /// Apply step `step` (0-based) with already-clipped gradients.
    fn apply(&self, params: &mut [Param], grads: &[(Vec<f32>, Vec<f32>)], step: usize) {
        // Linear decay to 0 (get_linear_schedule_with_warmup, no warm-up).
        let lr = self.lr * (self.total - step) as f64 / self.total as f64;
        let (adam, wd) = (self.adam, self.wd);
        let t = (step + 1) as i32;
        params.par_iter_mut().zip(grads).for_each(|(p, (gw, gb))| {
            let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
            let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
            let n_w = p.w.len();
            let update = |x: &mut f32, g: f32, m: &mut f32, v: &mut f32| {
                let g = g as f64 + wd * *x as f64;
                if adam {
                    let mm = b1 * *m as f64 + (1.0 - b1) * g;
                    let vv = b2 * *v as f64 + (1.0 - b2) * g * g;
                    *m = mm as f32;
                    *v = vv as f32;
                    *x -= (lr * (mm / c1) / ((vv / c2).sqrt() + eps)) as f32;
                } else {
                    // Nesterov: buf = μ·buf + g (buf = g at the first step); x -= lr·(g + μ·buf).
                    let buf = if step == 0 { g } else { 0.9 * *m as f64 + g };
                    *m = buf as f32;
                    *x -= (lr * (g + 0.9 * buf)) as f32;
                }
            };
            let (mw, mb) = p.m.split_at_mut(n_w);
            let (vw, vb) = p.v.split_at_mut(n_w);
            for (((x, &g), m), v) in p.w.iter_mut().zip(gw).zip(mw).zip(vw) {
                update(x, g, m, v);
            }
            for (((x, &g), m), v) in p.b.iter_mut().zip(gb).zip(mb).zip(vb) {
                update(x, g, m, v);
            }
        });
    }
}

/// Scale all gradients so their global L2 norm is at most `max` (clip_grad_norm_).
fn clip(grads: &mut [(Vec<f32>, Vec<f32>)], max: f64) -> f64 {
    let sq: f64 = grads
        .iter()
        .flat_map(|(w, b)| w.iter().chain(b))
        .map(|&g| g as f64 * g as f64)
        .sum();
    let norm = sq.sqrt();
    if norm > max {
        let s = (max / (norm + 1e-6)) as f32;
        for (w, b) in grads.iter_mut() {
            w.iter_mut().chain(b.iter_mut()).for_each(|g| *g *= s);
        }
    }
    norm
}

/// Mean KL(final ‖ row i) per row `0 … L−1` over `chunks`, for each lens
/// (`None` = the logit lens).
pub fn heldout_kl(
    model: &Model,
    chunks: &[Vec<u32>],
    lenses: &[Option<&TunedLens>],
) -> Result<Vec<Vec<f64>>> {
    let u = Unembed::of(model)?;
    let l = model.cfg.sizes.n_layers;
    let mut sums = vec![vec![0.0f64; l]; lenses.len()];
    let mut count = 0usize;
    for ids in chunks {
        let mut trace = ResidualTrace::default();
        model.forward(ids, &mut KvCache::default(), Some(&mut trace))?;
        let t = u.targets(model, &trace.rows[l])?;
        for (k, lens) in lenses.iter().enumerate() {
            for (i, sum) in sums[k].iter_mut().enumerate() {
                let h = trace.rows[i].to_dtype(DType::F32)?;
                let x = match lens {
                    Some(tl) => tl.translate(i, &h)?,
                    None => h,
                };
                let (mut z, _, _) = u.logits(&x)?;
                *sum += kl_rows(&mut z, &t, u.vocab).iter().sum::<f64>();
            }
        }
        count += ids.len();
    }
    Ok(sums
        .into_iter()
        .map(|s| s.into_iter().map(|x| x / count.max(1) as f64).collect())
        .collect())
}

/// `DIR/train_report.json`.
#[derive(Debug, Serialize)]
struct TrainReport {
    heldout_kl: HeldoutKl,
    budget: Budget,
    wall_time_s: f64,
    train_time_s: f64,
    /// Where the training time went (this process's steps only).
    time_s: StepTimes,
    tokens_per_s: f64,
    threads: usize,
    recipe: serde_json::Value,
    corpus: serde_json::Value,
    step_losses: Vec<Vec<f64>>,
}

#[derive(Debug, Serialize)]
struct HeldoutKl {
    tuned: Vec<f64>,
    logit: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    compare: Option<Vec<f64>>,
    tokens: usize,
    chunks: usize,
}

#[derive(Debug, Serialize)]
struct Budget {
    tokens: usize,
    steps: usize,
    seq_len: usize,
    chunk_ids: Vec<usize>,
}

/// Checkpoint file in the output directory.
const CHECKPOINT: &str = "checkpoint.safetensors";
/// The checkpoint is written at most this often, and always after the last
/// step and before `--stop-after`: one write is the translators and both
/// optimiser moments (120 MB for SmolLM2, ~0.1 s), about 3 % of a fast-recipe step.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// What a checkpoint must match to be resumed.
fn fingerprint(args: &TrainArgs, steps: usize, n_chunks: usize) -> String {
    format!(
        "{}|{}|{}|{:?}|{}|{}|{}|{}|{}|{:?}|{:?}|{}|{}",
        args.model,
        steps,
        n_chunks,
        args.lr,
        args.optimizer,
        args.weight_decay,
        args.seq_len,
        args.seed,
        args.precision.label(),
        args.chunk_order,
        args.positions_per_step,
        args.train_precision,
        args.steps_per_chunk
    )
}

fn save_checkpoint(
    dir: &Path,
    params: &[Param],
    step: usize,
    fp: &str,
    losses: &[Vec<f64>],
) -> Result<()> {
    let mut map = std::collections::HashMap::new();
    for (i, p) in params.iter().enumerate() {
        map.insert(format!("{i}.weight"), to_tensor(&p.w, &[p.w.len()])?);
        map.insert(format!("{i}.bias"), to_tensor(&p.b, &[p.b.len()])?);
        map.insert(format!("{i}.m"), to_tensor(&p.m, &[p.m.len()])?);
        map.insert(format!("{i}.v"), to_tensor(&p.v, &[p.v.len()])?);
    }
    // Step, settings and losses ride along as a u8 tensor, so one atomic file holds everything.
    let meta = serde_json::json!({"step": step, "fingerprint": fp, "losses": losses})
        .to_string()
        .into_bytes();
    let n = meta.len();
    map.insert("meta".into(), Tensor::from_vec(meta, n, &Device::Cpu)?);
    let path = dir.join(CHECKPOINT);
    let tmp = dir.join(format!("{CHECKPOINT}.tmp"));
    candle_core::safetensors::save(&map, &tmp)?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

type Resumed = (Vec<Param>, usize, Vec<Vec<f64>>);

fn load_checkpoint(dir: &Path, l: usize, fp: &str) -> Result<Option<Resumed>> {
    let path = dir.join(CHECKPOINT);
    if !path.is_file() {
        return Ok(None);
    }
    let bad = |reason: String| Error::BadCheckpoint {
        path: path.clone(),
        reason,
    };
    let map = candle_core::safetensors::load(&path, &Device::Cpu)?;
    let meta = map.get("meta").ok_or_else(|| bad("no `meta`".into()))?;
    let meta: serde_json::Value =
        serde_json::from_slice(&meta.to_vec1::<u8>()?).map_err(|e| bad(e.to_string()))?;
    if meta["fingerprint"].as_str() != Some(fp) {
        return Err(bad(
            "written by a run with other settings; delete it or use another output directory"
                .into(),
        ));
    }
    let step = meta["step"].as_u64().unwrap_or(0) as usize;
    let losses: Vec<Vec<f64>> = serde_json::from_value(meta["losses"].clone()).unwrap_or_default();
    let get = |k: String| -> Result<Vec<f32>> {
        Ok(map
            .get(&k)
            .ok_or_else(|| bad(format!("tensor `{k}` missing")))?
            .to_vec1::<f32>()?)
    };
    let params = (0..l)
        .map(|i| {
            Ok(Param {
                w: get(format!("{i}.weight"))?,
                b: get(format!("{i}.bias"))?,
                m: get(format!("{i}.m"))?,
                v: get(format!("{i}.v"))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some((params, step, losses)))
}

/// `lensmap train-lens`.
pub fn run(args: TrainArgs) -> Result<()> {
    let wall = Instant::now();
    if args.seq_len < 2 {
        return Err(Error::option(
            OptionName::SeqLen,
            "the chunk length must be at least 2 tokens",
        ));
    }
    let text = std::fs::read_to_string(&args.corpus).map_err(|e| Error::io(&args.corpus, e))?;
    let jsonl = args.corpus.extension().is_some_and(|e| e == "jsonl");
    let (train_text, heldout_text) = match &args.heldout {
        Some(p) => (
            text.as_str(),
            std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?,
        ),
        None if jsonl => {
            return Err(Error::option(
                OptionName::Heldout,
                "a JSONL corpus needs a held-out corpus file",
            ))
        }
        None => {
            let (a, b) = split_heldout(&text);
            (a, b.to_string())
        }
    };
    let session = Session::open(&args.model, args.precision, None)?;
    let model = &session.model;
    let u = Unembed::of(model)?;
    let (l, d) = (model.cfg.sizes.n_layers, model.cfg.sizes.d_model);
    let train_chunks = chunks(&session, &documents(train_text, jsonl)?, args.seq_len)?;
    let heldout_jsonl = args
        .heldout
        .as_ref()
        .is_some_and(|p| p.extension().is_some_and(|e| e == "jsonl"));
    let heldout_chunks: Vec<Vec<u32>> = chunks(
        &session,
        &documents(&heldout_text, heldout_jsonl)?,
        args.seq_len,
    )?
    .into_iter()
    .take(args.heldout_chunks)
    .collect();
    let steps = args.tokens / args.seq_len;
    if steps == 0 || steps > train_chunks.len() {
        return Err(Error::option(
            OptionName::TrainTokens,
            format!(
                "{} training tokens are {steps} chunks of {} tokens, but the corpus has {} (at least 1 needed)",
                args.tokens,
                args.seq_len,
                train_chunks.len()
            ),
        ));
    }
    let order: Vec<usize> = match &args.chunk_order {
        Some(p) => read_chunk_order(p, train_chunks.len())?,
        None => permutation(train_chunks.len(), args.seed),
    };
    if order.len() < steps {
        return Err(Error::option(
            OptionName::ChunkOrder,
            format!(
                "the chunk order lists {} chunks, but {} training tokens need {steps}",
                order.len(),
                args.tokens
            ),
        ));
    }
    let order = order[..steps].to_vec();
    if args.positions_per_step == Some(0) || args.steps_per_chunk == 0 {
        return Err(Error::option(
            OptionName::StepSizes,
            "the positions per step and the steps per chunk must be at least 1",
        ));
    }
    let per_chunk = args.steps_per_chunk;
    let bf16 = match args.train_precision.as_str() {
        "auto" => Bf16Kernel::detect() == Bf16Kernel::Avx512Bf16,
        p => p == "bf16",
    };
    let products = HeadProducts::new(&u, bf16)?;
    let adam = args.optimizer == "adam";
    let opt = Optimiser {
        adam,
        lr: args.lr.unwrap_or(if adam { 1e-3 } else { 0.1 }),
        wd: args.weight_decay,
        total: steps * per_chunk,
    };
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    let fp = fingerprint(&args, steps, train_chunks.len());
    let fresh = || Param {
        w: vec![0.0; d * d],
        b: vec![0.0; d],
        m: vec![0.0; d * d + d],
        v: vec![0.0; d * d + d],
    };
    let (mut params, start, mut step_losses) = load_checkpoint(&args.out, l, &fp)?
        .unwrap_or_else(|| ((0..l).map(|_| fresh()).collect(), 0, Vec::new()));
    let pb = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let pb = indicatif::ProgressBar::new((steps * args.seq_len) as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} tokens · {per_sec} · {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb
    };
    pb.set_position((start * args.seq_len) as u64);
    let train_clock = Instant::now();
    let mut saved = Instant::now();
    let mut times = StepTimes::default();
    for (step, &c) in order.iter().enumerate().skip(start) {
        if args.stop_after == Some(step) {
            pb.finish_and_clear();
            return Ok(());
        }
        let mut clock = Instant::now();
        let ids = &train_chunks[c];
        let mut trace = ResidualTrace::default();
        model.forward(ids, &mut KvCache::default(), Some(&mut trace))?;
        lap(&mut clock, &mut times.model_forward);
        let residuals = trace
            .rows
            .iter()
            .map(|r| r.to_dtype(DType::F32))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut last = Vec::new();
        for k in 0..per_chunk {
            let s = step * per_chunk + k;
            let mut clock = Instant::now();
            let picked = sample_positions(ids.len(), args.positions_per_step, args.seed, s)?;
            let rows = residuals
                .iter()
                .map(|r| match &picked {
                    Some(idx) => r.index_select(idx, 0),
                    None => Ok(r.clone()),
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let t = u.targets(model, &rows[l])?;
            lap(&mut clock, &mut times.targets);
            let (losses, mut grads) =
                step_grads(&u, &products, &rows[..l], &t, &params, d, &mut times)?;
            let mut clock = Instant::now();
            clip(&mut grads, 1.0);
            opt.apply(&mut params, &grads, s);
            lap(&mut clock, &mut times.optimiser);
            step_losses.push(losses.clone());
            last = losses;
        }
        let mut clock = Instant::now();
        // Running loss per third of the layers.
        let g = l.div_ceil(3);
        let groups: Vec<String> = last
            .chunks(g)
            .enumerate()
            .map(|(k, c)| {
                format!(
                    "L{}-{} {:.2}",
                    k * g,
                    k * g + c.len() - 1,
                    c.iter().sum::<f64>() / c.len() as f64
                )
            })
            .collect();
        pb.set_message(format!("step {}/{steps} KL {}", step + 1, groups.join(" ")));
        pb.inc(ids.len() as u64);
        let done = step + 1;
        if saved.elapsed() >= CHECKPOINT_EVERY || done == steps || args.stop_after == Some(done) {
            save_checkpoint(&args.out, &params, done, &fp, &step_losses)?;
            saved = Instant::now();
        }
        lap(&mut clock, &mut times.optimiser);
    }
    pb.finish_and_clear();
    let train_time = train_clock.elapsed().as_secs_f64();
    let trained_tokens = (steps - start) * args.seq_len;

    let config = TunedConfig {
        base_model_name_or_path: session.label.clone(),
        d_model: d,
        num_hidden_layers: l,
        bias: true,
        base_model_revision: None,
        unembed_hash: None,
        lens_type: "linear_tuned_lens".into(),
    };
    let translators: Vec<(Vec<f32>, Vec<f32>)> =
        params.iter().map(|p| (p.w.clone(), p.b.clone())).collect();
    save_lens(&args.out, &config, &translators)?;
    // Read back through the loader: what the report measures is what was written.
    let lens = TunedLens::open(&args.out)?;
    let compare = args.compare.as_deref().map(TunedLens::open).transpose()?;
    let mut lenses: Vec<Option<&TunedLens>> = vec![Some(&lens), None];
    if let Some(c) = &compare {
        c.check(&model.cfg)?;
        lenses.push(Some(c));
    }
    let kl = heldout_kl(model, &heldout_chunks, &lenses)?;
    let report = TrainReport {
        heldout_kl: HeldoutKl {
            tuned: kl[0].clone(),
            logit: kl[1].clone(),
            compare: kl.get(2).cloned(),
            tokens: heldout_chunks.len() * args.seq_len,
            chunks: heldout_chunks.len(),
        },
        budget: Budget {
            tokens: steps * args.seq_len,
            steps,
            seq_len: args.seq_len,
            chunk_ids: order.clone(),
        },
        wall_time_s: wall.elapsed().as_secs_f64(),
        train_time_s: train_time,
        time_s: times.clone(),
        tokens_per_s: trained_tokens as f64 / train_time.max(1e-9),
        threads: rayon::current_num_threads(),
        recipe: serde_json::json!({
            "objective": "sum over layers of mean KL(final || lens_i), label shift 0",
            "optimizer": args.optimizer,
            "lr": opt.lr,
            "schedule": "linear decay to 0, no warm-up",
            "weight_decay": args.weight_decay,
            "clip_grad_norm": 1.0,
            "momentum": if adam { "adam betas (0.9, 0.999), eps 1e-8" } else { "nesterov 0.9" },
            "precision": if bf16 {
                "bf16 unembedding products (f32 sums), f32 elsewhere; model forward at --precision"
            } else {
                "f32 lens forward and backward; model forward at --precision"
            },
            "positions_per_step": args.positions_per_step.unwrap_or(args.seq_len).min(args.seq_len),
            "steps_per_chunk": per_chunk,
            "optimizer_steps": steps * per_chunk,
            "chunk_order": match &args.chunk_order {
                Some(p) => format!("listed in {}", p.display()),
                None => format!("splitmix64 Fisher-Yates, seed {}", args.seed),
            },
        }),
        corpus: serde_json::json!({
            "file": args.corpus.display().to_string(),
            "heldout": args.heldout.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "last 10% of the corpus".into()),
            "train_chunks": train_chunks.len(),
        }),
        step_losses,
    };
    let text = serde_json::to_string_pretty(&report).map_err(|source| Error::Serialize {
        what: "the training report",
        source,
    })?;
    write_atomic(&args.out.join("train_report.json"), text.as_bytes())?;
    let _ = std::fs::remove_file(args.out.join(CHECKPOINT));
    if !args.quiet {
        println!(
            "trained {} tokens in {:.1} s ({:.0} tokens/s, {} threads); held-out KL on {} tokens:",
            steps * args.seq_len,
            train_time,
            report.tokens_per_s,
            report.threads,
            report.heldout_kl.tokens
        );
        println!(
            " row   logit   tuned{}",
            if compare.is_some() { " compare" } else { "" }
        );
        for i in 0..l {
            let c = kl
                .get(2)
                .map(|c| format!(" {:7.3}", c[i]))
                .unwrap_or_default();
            println!("{i:>4} {:7.3} {:7.3}{c}", kl[1][i], kl[0][i]);
        }
    }
    Ok(())
}
