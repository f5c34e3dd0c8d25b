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
//! atomically after every step lets an interrupted run resume to the same
//! translators.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use rayon::prelude::*;
use serde::Serialize;

use crate::model::{KvCache, Model, Precision, ResidualTrace};
use crate::run::Session;
use crate::tuned::{save_lens, write_atomic, TunedConfig, TunedLens};
use crate::{Error, Result};

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
    /// Seed of the chunk order
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Stop after this many steps (the checkpoint stays, to resume; for tests)
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
    /// No progress bar
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// `12288`, `100k`, `2M`.
pub fn parse_count(s: &str) -> std::result::Result<usize, String> {
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
pub fn documents(text: &str, jsonl: bool) -> Result<Vec<String>> {
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
pub fn split_heldout(text: &str) -> (&str, &str) {
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
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
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
            vocab: model.cfg.vocab_size,
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

/// KL(final ‖ softmax(z)) of every token; with `grad`, `z` becomes
/// `(softmax(z) − p) / T`. One f32 `exp` per logit, sums in f64.
fn kl_rows(z: &mut [f32], t: &Targets, vocab: usize, grad: bool) -> Vec<f64> {
    let scale = 1.0 / (z.len() / vocab) as f64;
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
            if grad {
                let inv = (1.0 / s) as f32;
                let scale = scale as f32;
                for (x, &p) in zr.iter_mut().zip(pr) {
                    *x = (*x * inv - p) * scale;
                }
            }
            plogp - pz + m as f64 + s.ln()
        })
        .collect()
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

/// Loss of every layer (mean KL over tokens) and the gradients `(dW, db)`.
fn step_grads(
    u: &Unembed,
    trace: &ResidualTrace,
    t: &Targets,
    params: &[Param],
    d: usize,
) -> Result<(Vec<f64>, Vec<LayerGrad>)> {
    let mut losses = Vec::with_capacity(params.len());
    let mut grads = Vec::with_capacity(params.len());
    for (i, p) in params.iter().enumerate() {
        let h = trace.rows[i].to_dtype(DType::F32)?;
        let (w, b) = (to_tensor(&p.w, &[d, d])?, to_tensor(&p.b, &[d])?);
        let x = translate(&h, &w, &b)?;
        let (mut z, xhat, rms) = u.logits(&x)?;
        let kl = kl_rows(&mut z, t, u.vocab, true);
        losses.push(kl.iter().sum::<f64>() / kl.len() as f64);
        let tt = kl.len();
        let dz = Tensor::from_vec(z, (tt, u.vocab), &Device::Cpu)?;
        let dn = dz.matmul(&u.head)?;
        let dxhat = dn.broadcast_mul(u.norm)?;
        let proj = (&dxhat * &xhat)?.mean_keepdim(D::Minus1)?;
        let dx = (dxhat - xhat.broadcast_mul(&proj)?)?.broadcast_div(&rms)?;
        let dw = dx.t()?.matmul(&h)?;
        let db = dx.sum(0)?;
        grads.push((dw.flatten_all()?.to_vec1::<f32>()?, db.to_vec1::<f32>()?));
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
    let l = model.cfg.n_layers;
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
                *sum += kl_rows(&mut z, &t, u.vocab, false).iter().sum::<f64>();
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

/// What a checkpoint must match to be resumed.
fn fingerprint(args: &TrainArgs, steps: usize, n_chunks: usize) -> String {
    format!(
        "{}|{}|{}|{:?}|{}|{}|{}|{}|{}",
        args.model,
        steps,
        n_chunks,
        args.lr,
        args.optimizer,
        args.weight_decay,
        args.seq_len,
        args.seed,
        args.precision.label()
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
            "written by a run with other settings; delete it or use another `--out`".into(),
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
        return Err(Error::InvalidOption(
            "`--seq-len` must be at least 2".into(),
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
            return Err(Error::InvalidOption(
                "a JSONL corpus needs `--heldout FILE`".into(),
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
    let (l, d) = (model.cfg.n_layers, model.cfg.d_model);
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
        return Err(Error::InvalidOption(format!(
            "`--tokens {}` is {steps} chunks of {} tokens, but the corpus has {} (at least 1 needed)",
            args.tokens,
            args.seq_len,
            train_chunks.len()
        )));
    }
    let order: Vec<usize> = permutation(train_chunks.len(), args.seed)
        .into_iter()
        .take(steps)
        .collect();
    let adam = args.optimizer == "adam";
    let opt = Optimiser {
        adam,
        lr: args.lr.unwrap_or(if adam { 1e-3 } else { 0.1 }),
        wd: args.weight_decay,
        total: steps,
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
    for (step, &c) in order.iter().enumerate().skip(start) {
        if args.stop_after == Some(step) {
            pb.finish_and_clear();
            return Ok(());
        }
        let ids = &train_chunks[c];
        let mut trace = ResidualTrace::default();
        model.forward(ids, &mut KvCache::default(), Some(&mut trace))?;
        let t = u.targets(model, &trace.rows[l])?;
        let (losses, mut grads) = step_grads(&u, &trace, &t, &params, d)?;
        clip(&mut grads, 1.0);
        opt.apply(&mut params, &grads, step);
        // Running loss per third of the layers.
        let g = l.div_ceil(3);
        let groups: Vec<String> = losses
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
        step_losses.push(losses);
        save_checkpoint(&args.out, &params, step + 1, &fp, &step_losses)?;
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
            "precision": "f32 lens forward and backward; model forward at --precision",
            "chunk_order": format!("splitmix64 Fisher-Yates, seed {}", args.seed),
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
