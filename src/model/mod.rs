//! Models: loading a checkpoint and running the forward pass while recording
//! the residual stream after every block.
//!
//! The forward pass reads top to bottom like llama2.c's `forward()`: embed,
//! the block loop (each block adds attention and MLP into the residual `x`),
//! final norm, unembedding. The residual after each block goes to a
//! [`Recorder`], which is how the lens sees the model.

// In layers, bottom up: file names; formats; weights and config; arch; the
// one checkpoint opener and its memory preflight; the layers; `Model`.
pub mod locate;

pub mod bounds;
pub mod cancel;

pub mod gguf;
pub mod safetensors;

pub mod config;
pub mod dequant;
pub mod hf;
pub(crate) mod int8;
pub mod weights;

pub mod arch;

pub mod budget;
pub mod checkpoint;

pub mod layers;

use candle_core::{Tensor, D};
use rayon::prelude::*;

pub use budget::MemoryPlan;
pub use checkpoint::Checkpoint;
pub use config::{Family, ModelConfig, Sizes};
pub use gguf::GgufFile;
use layers::{Block, LayerCache, Loader, Norm, Rope, StackedSeq};
use weights::with_f32_slice;
pub use weights::{Precision, StoredMatrix, WeightSource};

use crate::{Error, Result};
use arch::Part;

/// Receives the residual stream as the forward pass produces it.
pub trait Recorder {
    /// `row` 0 is the embedding output, row `i` the residual after block `i`
    /// (so the last call, row `n_layers`, is the raw output of the last block).
    /// `residual`: `[T, d_model]`.
    fn record(&mut self, row: usize, residual: &Tensor) -> Result<()>;
}

/// The residual stream at every row: `n_layers + 1` tensors of `[T, d_model]`,
/// row 0 = embeddings. Small next to the logits it produces: 31 × 45 × 576
/// floats for the seed case, where the logits would be 31 × 45 × 49152.
#[derive(Debug, Default)]
pub struct ResidualTrace {
    pub rows: Vec<Tensor>,
}

impl Recorder for ResidualTrace {
    fn record(&mut self, row: usize, residual: &Tensor) -> Result<()> {
        debug_assert_eq!(row, self.rows.len());
        self.rows.push(residual.clone());
        Ok(())
    }
}

/// A sequence's recorder behind a shared prefix
/// ([`Model::forward_sharing_prefix`]): each row it records gets the
/// prefix's row of the same index in front.
struct AfterPrefix<'a> {
    prefix: &'a [Tensor],
    inner: &'a mut dyn Recorder,
}

impl Recorder for AfterPrefix<'_> {
    fn record(&mut self, row: usize, residual: &Tensor) -> Result<()> {
        let head = self
            .prefix
            .get(row)
            .ok_or_else(|| Error::Config(format!("the shared prefix has no row {row}")))?;
        self.inner.record(row, &Tensor::cat(&[head, residual], 0)?)
    }
}

/// Per-layer key/value caches for incremental decoding.
#[derive(Debug, Default, Clone)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
}

impl KvCache {
    /// Positions already processed.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether nothing has been processed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One sequence of a block-major forward pass ([`Model::forward_many`]):
/// its new tokens, its cache (positions continue from `cache.len()`), and
/// where its residual rows go.
pub(crate) struct Sequence<'a> {
    pub ids: &'a [u32],
    pub cache: &'a mut KvCache,
    pub recorder: Option<&'a mut dyn Recorder>,
}

/// The lens's logits block, lent by [`Model::logit_buffer`].
pub(crate) struct LogitBuffer<'a> {
    model: &'a Model,
    pub buf: Vec<f32>,
}

impl Drop for LogitBuffer<'_> {
    fn drop(&mut self) {
        if let Ok(mut kept) = self.model.logit_scratch.try_lock() {
            if kept.capacity() < self.buf.capacity() {
                *kept = std::mem::take(&mut self.buf);
            }
        }
    }
}

/// A loaded model: config and weights, ready to run.
pub struct Model {
    pub cfg: ModelConfig,
    /// File name (or directory / HF id) it came from.
    pub label: String,
    /// The precision it runs at (`Auto` resolved).
    pub precision: Precision,
    /// Whether finished blocks are released to the page cache (larger than
    /// memory: the file is streamed block by block).
    pub streaming: bool,
    /// `--allow-nonfinite`: NaN or infinity in a weight or a residual is
    /// carried through instead of refused; the lens marks the cells it
    /// spoils as invalid ([`crate::stats::CellStats::invalid`]).
    pub allow_nonfinite: bool,
    /// `[vocab, d]`, unscaled: an f32 copy, or at rest.
    embed: StoredMatrix,
    /// `[context, d]` learned positions (GPT-2).
    pos_embed: Option<Tensor>,
    blocks: Vec<Block>,
    final_norm: Norm,
    /// `[vocab, d]`: the embedding itself when tied (one copy), multiplied
    /// in vocabulary panels by [`StoredMatrix::matmul_t`], whose logits the
    /// lens reads as whole-row blocks.
    head: StoredMatrix,
    /// The head rounded to bf16 and packed for `--lens-precision bf16`, built
    /// on first use from [`Model::head_rows`] (once per loaded model).
    head_bf16: std::sync::OnceLock<crate::kernels::bf16::Bf16Head>,
    /// The lens's block of logits, kept between calls ([`Model::logit_buffer`]).
    logit_scratch: std::sync::Mutex<Vec<f32>>,
}

impl Model {
    /// Build a model from an opened checkpoint, after the memory preflight
    /// ([`budget::plan`]) has resolved the precision. A weight holding NaN or
    /// infinity is an error naming the tensor, unless `allow_nonfinite`.
    pub fn load(ckpt: &Checkpoint, plan: &MemoryPlan, allow_nonfinite: bool) -> Result<Self> {
        let (cfg, src, names) = (&ckpt.cfg, ckpt.source(), ckpt.names());
        let precision = plan.precision;
        let ld = Loader {
            src,
            names,
            cfg,
            precision,
            allow_nonfinite,
        };
        let (v, d) = (cfg.sizes.vocab_size, cfg.sizes.d_model);
        let table = |part| -> Result<StoredMatrix> {
            if precision.at_rest() {
                if let Some(m) = ld.stored(part, None, &[v, d])? {
                    return Ok(m);
                }
            }
            StoredMatrix::copied(&ld.f32(part, None, false, &[v, d])?)
        };
        let embed = table(Part::TokenEmbd)?;
        let head = if cfg.tied_embeddings {
            embed.clone()
        } else {
            table(Part::Output)?
        };
        let pos_embed = if cfg.learned_pos {
            let name = names.name(Part::PositionEmbd, None, false);
            let n = src
                .shape(&name)
                .map(|s| s[0])
                .unwrap_or(cfg.sizes.context_len);
            Some(ld.f32(Part::PositionEmbd, None, false, &[n, d])?)
        } else {
            None
        };
        let ropes = cfg.rope.as_ref().map(|r| {
            let global = Rope::new(r, r.theta);
            let local = r.local_theta.map(|t| Rope::new(r, t));
            (global, local)
        });
        // Blocks load (and dequantise) independently: spread them over cores.
        let blocks = (0..cfg.sizes.n_layers)
            .into_par_iter()
            .map(|i| {
                let rope = ropes.as_ref().map(|(global, local)| match local {
                    Some(local) if cfg.is_sliding(i) => local.clone(),
                    _ => global.clone(),
                });
                Block::load(&ld, i, rope)
            })
            .collect::<Result<Vec<_>>>()?;
        let final_norm = ld.norm(Part::OutputNorm, None, d)?;
        Ok(Self {
            label: src.label(),
            precision,
            streaming: plan.streaming,
            allow_nonfinite,
            embed,
            pos_embed,
            blocks,
            final_norm,
            head,
            head_bf16: Default::default(),
            logit_scratch: Default::default(),
            cfg: cfg.clone(),
        })
    }

    /// Run `ids` at positions `cache.len()..`, recording every row if a
    /// recorder is given. Returns the raw output of the last block, `[T, d]`.
    pub fn forward(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        recorder: Option<&mut dyn Recorder>,
    ) -> Result<Tensor> {
        let mut seqs = [Sequence {
            ids,
            cache,
            recorder: recorder.map(|r| -> &mut dyn Recorder { r }),
        }];
        let [out] = <[_; 1]>::try_from(self.forward_many(&mut seqs)?)
            .map_err(|_| Error::Config("one sequence in, one out".into()))?;
        out
    }

    /// Block-major forward pass over several sequences (a `batch` chunk):
    /// every sequence goes through block `i` before block `i + 1` is
    /// touched, so a model at rest reads each block's weights once per call,
    /// not once per sequence. Within a block the sequences' rows are stacked
    /// ([`Block::forward_stacked`]; attention stays per sequence, no
    /// padding), so each projection is one call for the stack. Each sequence
    /// gets exactly the numbers [`Model::forward`] gives it alone: the
    /// projections keep rows apart up to [`Block::stack_rows`] rows, and
    /// every other step is row-wise or per sequence.
    ///
    /// Fresh sequences that start with the same tokens (a chat template's
    /// system prompt and the shared start of a question) run those tokens
    /// once ([`Model::forward_sharing_prefix`]).
    ///
    /// The outer error ends every sequence (cancellation); an inner one only
    /// its own (too long, a non-finite residual), and the others carry on.
    pub(crate) fn forward_many(&self, seqs: &mut [Sequence<'_>]) -> Result<Vec<Result<Tensor>>> {
        match self.shared_prefix(seqs) {
            Some(n) => self.forward_sharing_prefix(seqs, n),
            None => self.forward_block_major(seqs),
        }
    }

    /// How many leading tokens every sequence shares, when running them once
    /// gives each sequence its own numbers bit for bit and saves work: two
    /// or more fresh sequences, at least `MIN_SHARED` tokens, each sequence
    /// longer than the prefix, and every block on the row-independent
    /// kernels (`f32dot` for projections, `f32outer` for attention, whose
    /// sums depend on positions alone; see
    /// `tests/forward_consistency.rs`). Not for a streamed model, whose file
    /// would then be read twice.
    fn shared_prefix(&self, seqs: &[Sequence<'_>]) -> Option<usize> {
        const MIN_SHARED: usize = 4;
        let first = seqs.first()?.ids;
        let n = seqs[1..].iter().fold(first.len(), |n, s| {
            n.min(first.iter().zip(s.ids).take_while(|(a, b)| a == b).count())
        });
        let fits = seqs.len() > 1
            && n >= MIN_SHARED
            && seqs.iter().all(|s| s.cache.len == 0 && s.ids.len() > n)
            && !self.streaming
            && self.blocks.iter().all(|b| b.stack_rows().is_some());
        fits.then_some(n)
    }

    /// [`Model::forward_many`] with the first `n` tokens, which every
    /// sequence shares, run once: each sequence then continues from a copy of
    /// that cache, and its recorder gets the prefix's rows in front of its
    /// own. If the prefix fails, every sequence runs whole, so each reports
    /// its own error.
    fn forward_sharing_prefix(
        &self,
        seqs: &mut [Sequence<'_>],
        n: usize,
    ) -> Result<Vec<Result<Tensor>>> {
        let mut cache = KvCache::default();
        let mut trace = ResidualTrace::default();
        let ids = &seqs[0].ids[..n];
        let recording = seqs.iter().any(|s| s.recorder.is_some());
        let mut prefix = [Sequence {
            ids,
            cache: &mut cache,
            recorder: recording.then_some(&mut trace as &mut dyn Recorder),
        }];
        let head = match self.forward_block_major(&mut prefix)?.pop() {
            Some(Ok(head)) => head,
            _ => return self.forward_block_major(seqs),
        };
        let mut parts: Vec<(&[u32], &mut KvCache, Option<AfterPrefix>)> = seqs
            .iter_mut()
            .map(|s| {
                let after = s.recorder.as_deref_mut().map(|inner| AfterPrefix {
                    prefix: &trace.rows,
                    inner,
                });
                (&s.ids[n..], &mut *s.cache, after)
            })
            .collect();
        let mut rest: Vec<Sequence> = parts
            .iter_mut()
            .map(|(ids, seq_cache, after)| {
                **seq_cache = cache.clone();
                Sequence {
                    ids,
                    cache: seq_cache,
                    recorder: after.as_mut().map(|r| r as &mut dyn Recorder),
                }
            })
            .collect();
        let outs = self.forward_block_major(&mut rest)?;
        drop(rest);
        drop(parts);
        for (s, out) in seqs.iter_mut().zip(&outs) {
            if out.is_err() {
                // As if the sequence had failed whole: nothing of it kept.
                *s.cache = KvCache::default();
            }
        }
        Ok(outs
            .into_iter()
            .map(|out| out.and_then(|y| Ok(Tensor::cat(&[&head, &y], 0)?)))
            .collect())
    }

    /// The block-major pass itself, every sequence from its own first token.
    fn forward_block_major(&self, seqs: &mut [Sequence<'_>]) -> Result<Vec<Result<Tensor>>> {
        let mut xs: Vec<Result<Tensor>> = seqs.iter_mut().map(|s| self.embed_seq(s)).collect();
        for (i, block) in self.blocks.iter().enumerate() {
            // At rest, ask for the next block's pages while this one computes;
            // when streaming, hand this block's back once every sequence is done.
            if let Some(next) = self.blocks.get(i + 1) {
                next.advise(false);
            }
            for group in stacks(seqs, &xs, block.stack_rows()) {
                let rows: Vec<&Tensor> =
                    group.iter().filter_map(|&j| xs[j].as_ref().ok()).collect();
                let x = match rows[..] {
                    [one] => one.clone(),
                    _ => Tensor::cat(&rows, 0)?,
                };
                let mut members: Vec<StackedSeq> = seqs
                    .iter_mut()
                    .enumerate()
                    .filter(|(j, _)| group.contains(j))
                    .map(|(_, s)| StackedSeq {
                        len: s.ids.len(),
                        start: s.cache.len,
                        cache: &mut s.cache.layers[i],
                    })
                    .collect();
                let y = block.forward_stacked(&x, &mut members);
                drop(members);
                let y = match y {
                    Ok(y) => y,
                    // Not a sequence's own fault: the first gets the error,
                    // the others its message.
                    Err(e) => {
                        let msg = format!("block {i}: {e}");
                        let mut e = Some(e);
                        for &j in &group {
                            xs[j] = Err(e.take().unwrap_or_else(|| Error::Config(msg.clone())));
                        }
                        continue;
                    }
                };
                let mut at = 0;
                for &j in &group {
                    let len = seqs[j].ids.len();
                    let seq = &mut seqs[j];
                    xs[j] = y.narrow(0, at, len).map_err(Error::from).and_then(|y| {
                        self.check_finite(&y, || format!("the residual after block {i}"))
                            .map_err(|e| match block.nonfinite_weight() {
                                Ok(Some((name, value))) => Error::NonFinite {
                                    what: format!("tensor `{name}`"),
                                    value,
                                },
                                _ => e,
                            })?;
                        if let Some(r) = seq.recorder.as_deref_mut() {
                            r.record(i + 1, &y)?;
                        }
                        Ok(y)
                    });
                    at += len;
                }
                cancel::check()?;
            }
            if self.streaming {
                block.advise(true);
            }
        }
        for (seq, x) in seqs.iter_mut().zip(&xs) {
            if x.is_ok() {
                seq.cache.len += seq.ids.len();
            }
        }
        Ok(xs)
    }

    /// Row 0 of one sequence: its checks, the embedding output (scaled for
    /// Gemma, with positions for GPT-2), recorded.
    fn embed_seq(&self, seq: &mut Sequence<'_>) -> Result<Tensor> {
        let (ids, start) = (seq.ids, seq.cache.len);
        if start + ids.len() > self.cfg.sizes.context_len {
            return Err(Error::PromptTooLong {
                tokens: start + ids.len(),
                context: self.cfg.sizes.context_len,
            });
        }
        if let Some(&bad) = ids
            .iter()
            .find(|&&id| id as usize >= self.cfg.sizes.vocab_size)
        {
            return Err(Error::InvalidOption(format!(
                "token id `{bad}` is outside the model's vocabulary of {}",
                self.cfg.sizes.vocab_size
            )));
        }
        if seq.cache.layers.is_empty() {
            seq.cache.layers = vec![LayerCache::default(); self.cfg.sizes.n_layers];
        }
        let mut x = self.embed.gather(ids)?;
        if let Some(scale) = self.cfg.embed_scale {
            x = (x * scale as f32 as f64)?;
        }
        if let Some(pe) = &self.pos_embed {
            x = (x + pe.narrow(0, start, ids.len())?)?;
        }
        let x = x.to_dtype(self.precision.activation_dtype())?;
        self.check_finite(&x, || "the embedding output".into())?;
        if let Some(r) = seq.recorder.as_deref_mut() {
            r.record(0, &x)?;
        }
        Ok(x)
    }

    /// Refuse a residual holding NaN or infinity, unless `allow_nonfinite`.
    fn check_finite(&self, x: &Tensor, what: impl FnOnce() -> String) -> Result<()> {
        if self.allow_nonfinite {
            return Ok(());
        }
        bounds::check_finite(x, what)
    }

    /// The final norm's `(weight, eps)` if it is an RMSNorm, and the
    /// `[vocab, d]` head as an f32 tensor: what the tuned-lens trainer's
    /// backward pass needs. The head is decoded here even when it is at rest
    /// (training multiplies by it twice per layer per step). `None` for
    /// LayerNorm or a final soft-cap (not differentiated).
    pub(crate) fn unembed_parts(&self) -> Result<Option<(&Tensor, f32, Tensor)>> {
        if self.cfg.final_softcap.is_some() {
            return Ok(None);
        }
        let Some((w, eps)) = self.final_norm.rms_parts() else {
            return Ok(None);
        };
        let (rows, cols) = self.head.dims();
        let mut head = vec![0f32; rows * cols];
        self.head.rows_f32(0, rows, &mut head)?;
        Ok(Some((
            w,
            eps,
            Tensor::from_vec(head, (rows, cols), &candle_core::Device::Cpu)?,
        )))
    }

    /// The model's own final-logit path on any residual: final norm, head,
    /// soft-cap. `h`: `[M, d]` → logits `[M, vocab]`. The lens calls this
    /// for every row, so lens row `n_layers` is exactly the model's output.
    pub fn unembed(&self, h: &Tensor) -> Result<Tensor> {
        let mut logits = Vec::new();
        self.unembed_into(h, None, &mut logits)?;
        let m = h.dim(0)?;
        Ok(Tensor::from_vec(
            logits,
            (m, self.cfg.sizes.vocab_size),
            &candle_core::Device::Cpu,
        )?)
    }

    /// [`Model::unembed`] into `logits` (resized to `[M, vocab]`, row-major),
    /// so the lens reuses one buffer for all its blocks of rows. With a
    /// `bf16` kernel (`--lens-precision bf16`) the product runs on the packed
    /// bf16 head instead; the norm and soft-cap are the same.
    pub(crate) fn unembed_into(
        &self,
        h: &Tensor,
        bf16: Option<crate::kernels::bf16::Bf16Kernel>,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        let normed = self.final_normed(h)?;
        let m = normed.dim(0)?;
        with_f32_slice(&normed, |x| match bf16 {
            None => self.head.matmul_t_into(x, m, logits),
            Some(kernel) => {
                let head = self.head_bf16()?;
                logits.resize(m * head.rows(), 0.0);
                head.matmul(x, m, logits, kernel);
                Ok(())
            }
        })??;
        self.softcap_in_place(logits);
        Ok(())
    }

    /// A buffer for one block of the lens's logits, handed back to the model
    /// when dropped. The block (64 MiB) is past glibc's mmap threshold, so a
    /// fresh one per lens call was mapped and page-faulted anew each time:
    /// 30-40 ms of a 0.13 s `batch` prompt. A concurrent call (`serve`) gets
    /// its own.
    pub(crate) fn logit_buffer(&self) -> LogitBuffer<'_> {
        let buf = self
            .logit_scratch
            .try_lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        LogitBuffer { model: self, buf }
    }

    /// The first step of [`Model::unembed`]: the final norm, in f32 (the head
    /// stays f32 whatever the forward dtype: it is the lens's cost).
    pub(crate) fn final_normed(&self, h: &Tensor) -> Result<Tensor> {
        Ok(self
            .final_norm
            .forward(h)?
            .to_dtype(candle_core::DType::F32)?)
    }

    /// The last step of [`Model::unembed`]: Gemma's soft-cap
    /// `c · tanh(z / c)`, nothing for other models. The f32 operations of
    /// candle's `(z / c).tanh() * c`, which this replaced without moving a
    /// bit: a multiply by `1/c`, then `tanh`, then a multiply by `c`.
    fn softcap_in_place(&self, logits: &mut [f32]) {
        if let Some(c) = self.cfg.final_softcap {
            let (inv, c) = ((1.0 / c) as f32, c as f32);
            logits.iter_mut().for_each(|z| *z = (*z * inv).tanh() * c);
        }
    }

    /// The unembedding rounded to bf16 and packed for the bf16 lens; packed
    /// on the first call from [`Model::head_rows`] a panel at a time (about
    /// 0.1 s for SmolLM2), kept for the model's life.
    fn head_bf16(&self) -> Result<&crate::kernels::bf16::Bf16Head> {
        if let Some(h) = self.head_bf16.get() {
            return Ok(h);
        }
        let (v, d) = (self.cfg.sizes.vocab_size, self.cfg.sizes.d_model);
        let packed = crate::kernels::bf16::Bf16Head::pack_rows(v, d, |r0, r1, out| {
            self.head_rows(r0, r1, out)
        })?;
        Ok(self.head_bf16.get_or_init(|| packed))
    }

    /// Head rows `r0..r1` in f32 into `out` (`(r1 - r0) * d_model` values),
    /// from the f32 copy or dequantised from the file: the accessor for
    /// anything that needs the head in its own layout (a packed copy).
    fn head_rows(&self, r0: usize, r1: usize, out: &mut [f32]) -> Result<()> {
        if r0 > r1
            || r1 > self.cfg.sizes.vocab_size
            || out.len() != (r1 - r0) * self.cfg.sizes.d_model
        {
            return Err(Error::InvalidOption(format!(
                "head rows `{r0}..{r1}` into {} values",
                out.len()
            )));
        }
        self.head.rows_f32(r0, r1, out)
    }

    /// Greedy decoding after `prompt` has been run into `cache`, starting
    /// from `last_hidden` (`[1, d]` or `[T, d]`; its last row is used).
    /// Stops after `max_new` tokens or once a token in `stop` is produced
    /// (that token is kept).
    pub(crate) fn generate_greedy(
        &self,
        cache: &mut KvCache,
        last_hidden: &Tensor,
        max_new: usize,
        stop: &[u32],
    ) -> Result<Vec<u32>> {
        let mut out =
            self.generate_greedy_many(&mut [(cache, last_hidden.clone())], max_new, stop)?;
        out.pop()
            .unwrap_or_else(|| Err(Error::Config("one sequence in, one out".into())))
    }

    /// [`Model::generate_greedy`] for several sequences in lockstep: each
    /// step takes every unfinished sequence's new token through the blocks
    /// block-major ([`Model::forward_many`]), so a model at rest is read once
    /// per step, not once per step per sequence. Each sequence's tokens are
    /// those it would get alone.
    pub(crate) fn generate_greedy_many(
        &self,
        seqs: &mut [(&mut KvCache, Tensor)],
        max_new: usize,
        stop: &[u32],
    ) -> Result<Vec<Result<Vec<u32>>>> {
        let mut outs: Vec<Result<Vec<u32>>> = seqs
            .iter()
            .map(|_| Ok(Vec::with_capacity(max_new)))
            .collect();
        // The last row of each sequence's hidden state; `None` once finished.
        let mut hs: Vec<Option<Tensor>> = seqs
            .iter()
            .zip(outs.iter_mut())
            .map(
                |((_, h), out)| match h.dim(0).and_then(|t| h.narrow(0, t - 1, 1)) {
                    Ok(h) => Some(h),
                    Err(e) => {
                        *out = Err(e.into());
                        None
                    }
                },
            )
            .collect();
        for step in 0..max_new {
            let mut next_ids = vec![None; seqs.len()];
            for (k, h) in hs.iter_mut().enumerate() {
                let Some(hk) = h.as_ref() else { continue };
                // When non-finite values are allowed the forward pass lets NaN through; a
                // greedy token picked from it would be garbage, so refuse it.
                let next = self.unembed(hk).and_then(|l| {
                    bounds::check_finite(&l, || {
                        format!("the model's output logits at generated token {step} (generation needs finite logits even when non-finite values are allowed)")
                    })?;
                    Ok(l.argmax(D::Minus1)?.to_vec1::<u32>()?[0])
                });
                match (next, &mut outs[k]) {
                    (Ok(next), Ok(out)) => {
                        out.push(next);
                        if stop.contains(&next) || seqs[k].0.len() >= self.cfg.sizes.context_len {
                            *h = None;
                        } else {
                            next_ids[k] = Some([next]);
                        }
                    }
                    (Err(e), out) => {
                        *out = Err(e);
                        *h = None;
                    }
                    (Ok(_), Err(_)) => *h = None,
                }
            }
            let active: Vec<usize> = (0..seqs.len()).filter(|&k| hs[k].is_some()).collect();
            // The last token is not run: nothing would read its output.
            if active.is_empty() || step + 1 == max_new {
                break;
            }
            let mut step: Vec<Sequence> = seqs
                .iter_mut()
                .zip(&next_ids)
                .filter_map(|((cache, _), id)| {
                    id.as_ref().map(|id| Sequence {
                        ids: &id[..],
                        cache,
                        recorder: None,
                    })
                })
                .collect();
            let ys = self.forward_many(&mut step)?;
            drop(step);
            for (k, y) in active.into_iter().zip(ys) {
                match y {
                    Ok(y) => hs[k] = Some(y),
                    Err(e) => {
                        outs[k] = Err(e);
                        hs[k] = None;
                    }
                }
            }
        }
        Ok(outs)
    }
}

/// The live sequences (`xs[j]` is `Ok`) of a block-major step cut into stacks
/// for [`Block::forward_stacked`], in order: each stack holds at most `limit`
/// rows, a longer sequence goes alone, and `None` puts every sequence alone.
fn stacks(seqs: &[Sequence<'_>], xs: &[Result<Tensor>], limit: Option<usize>) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut rows = 0;
    for j in (0..seqs.len()).filter(|&j| xs[j].is_ok()) {
        let len = seqs[j].ids.len();
        match (limit, out.last_mut()) {
            (Some(l), Some(last)) if rows + len <= l => {
                last.push(j);
                rows += len;
            }
            _ => {
                out.push(vec![j]);
                rows = len;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value of a tensor as bits, for exact comparison.
    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .unwrap()
            .into_iter()
            .map(f32::to_bits)
            .collect()
    }

    /// A stacked block-major pass ([`Model::forward_many`]) gives every
    /// sequence the bits [`Model::forward`] gives it alone: on every tiny
    /// architecture, at rest and with f32 copies, for three prompts of
    /// different lengths (every residual row and the output), without and
    /// with a shared start (then run once), and for one more token each
    /// through the caches, as lockstep generation runs it.
    #[test]
    fn stacked_sequences_equal_each_alone() {
        let tiny =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/tiny");
        let names = [
            "llama",
            "llama3_rope",
            "mistral",
            "gemma3",
            "gpt2",
            "qwen2",
            "qwen3",
            "phi3",
        ];
        let dot = crate::kernels::f32dot::Isa::detect().is_some();
        for name in names {
            for precision in [Precision::Rest, Precision::F32] {
                let model = Checkpoint::open(tiny.join(name))
                    .and_then(|c| c.load(precision))
                    .unwrap();
                // The test would pass vacuously if nothing were stacked.
                assert_eq!(model.blocks[0].stack_rows().is_some(), dot, "{name}");
                let vocab = model.cfg.sizes.vocab_size as u32;
                for shared in [0u32, 6] {
                    let prompts: Vec<Vec<u32>> = [11u32, 8, 17]
                        .iter()
                        .enumerate()
                        .map(|(s, &n)| {
                            let s = s as u32;
                            (0..n)
                                .map(|i| (i * 7 + if i < shared { 0 } else { s * 13 } + 1) % vocab)
                                .collect()
                        })
                        .collect();
                    let what = format!("{name} {precision:?} shared {shared}");
                    let sharing = (shared > 0 && dot).then_some(shared as usize);
                    check_stacked(&model, &prompts, sharing, &what);
                }
            }
        }
    }

    /// `prompts` through `forward_many` against each through `forward`,
    /// bit for bit; `sharing`: the prefix `forward_many` must share.
    fn check_stacked(model: &Model, prompts: &[Vec<u32>], sharing: Option<usize>, what: &str) {
        let mut alone = Vec::new();
        for ids in prompts {
            let (mut cache, mut trace) = (KvCache::default(), ResidualTrace::default());
            let out = model.forward(ids, &mut cache, Some(&mut trace)).unwrap();
            let step = model.forward(&ids[..1], &mut cache, None).unwrap();
            alone.push((trace, out, step));
        }

        let mut caches: Vec<KvCache> = prompts.iter().map(|_| KvCache::default()).collect();
        let mut traces: Vec<ResidualTrace> =
            prompts.iter().map(|_| ResidualTrace::default()).collect();
        let mut seqs: Vec<Sequence> = prompts
            .iter()
            .zip(caches.iter_mut().zip(traces.iter_mut()))
            .map(|(ids, (cache, trace))| Sequence {
                ids,
                cache,
                recorder: Some(trace),
            })
            .collect();
        assert_eq!(model.shared_prefix(&seqs), sharing, "{what}");
        let outs = model.forward_many(&mut seqs).unwrap();
        drop(seqs);
        let mut step_seqs: Vec<Sequence> = prompts
            .iter()
            .zip(caches.iter_mut())
            .map(|(ids, cache)| Sequence {
                ids: &ids[..1],
                cache,
                recorder: None,
            })
            .collect();
        let steps = model.forward_many(&mut step_seqs).unwrap();

        for (k, (trace, out, step)) in alone.iter().enumerate() {
            assert_eq!(trace.rows.len(), traces[k].rows.len(), "{what} prompt {k}");
            for (r, (a, b)) in trace.rows.iter().zip(&traces[k].rows).enumerate() {
                assert!(bits(a) == bits(b), "{what} prompt {k}: row {r} differs");
            }
            let (got_out, got_step) = (outs[k].as_ref().unwrap(), steps[k].as_ref().unwrap());
            assert!(bits(out) == bits(got_out), "{what} prompt {k}: output");
            assert!(bits(step) == bits(got_step), "{what} prompt {k}: next step");
        }
    }
}
