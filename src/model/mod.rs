//! Models: loading a checkpoint and running the forward pass while recording
//! the residual stream after every block.
//!
//! The forward pass reads top to bottom like llama2.c's `forward()`: embed,
//! the block loop (each block adds attention and MLP into the residual `x`),
//! final norm, unembedding. The residual after each block goes to a
//! [`Recorder`], which is how the lens sees the model.

pub mod arch;
pub mod bounds;
pub mod cancel;
pub mod config;
pub mod hf;
pub mod layers;
pub mod locate;
pub mod safetensors;
pub mod weights;

use std::path::Path;

use candle_core::{Device, Tensor, D};
use rayon::prelude::*;

pub use config::{Family, ModelConfig};
use layers::{Block, LayerCache, Loader, Norm, Rope};
pub use weights::{GgufFile, Precision, WeightSource};

use crate::{Error, Result};
use arch::{Part, TensorNames};

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

/// Per-layer key/value caches for incremental decoding.
#[derive(Debug, Default)]
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

/// A loaded model: config and weights, ready to run.
pub struct Model {
    pub cfg: ModelConfig,
    /// File name (or directory / HF id) it came from.
    pub label: String,
    pub precision: Precision,
    /// `[vocab, d]`, f32, unscaled.
    embed: Tensor,
    /// `[context, d]` learned positions (GPT-2).
    pos_embed: Option<Tensor>,
    blocks: Vec<Block>,
    final_norm: Norm,
    /// `[vocab, d]` f32: the embedding itself when tied (one copy). Always
    /// dense, because the lens multiplies by it at every row. Unlike block
    /// weights it is not stored transposed: at lens sizes gemm is compute-bound
    /// either way (measured ~350 GFLOP/s both), and transposing costs load time.
    head: Tensor,
}

impl Model {
    /// Build a model from a resolved config, a weight source and its names.
    pub fn load(
        cfg: ModelConfig,
        src: &dyn WeightSource,
        names: &dyn TensorNames,
        precision: Precision,
    ) -> Result<Self> {
        let ld = Loader {
            src,
            names,
            cfg: &cfg,
            precision,
        };
        let (v, d) = (cfg.vocab_size, cfg.d_model);
        let embed = ld.f32(Part::TokenEmbd, None, false, &[v, d])?;
        let head = if cfg.tied_embeddings {
            embed.clone()
        } else {
            ld.f32(Part::Output, None, false, &[v, d])?
        };
        let pos_embed = if cfg.learned_pos {
            let name = names.name(Part::PositionEmbd, None, false);
            let n = src.shape(&name).map(|s| s[0]).unwrap_or(cfg.context_len);
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
        let blocks = (0..cfg.n_layers)
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
            embed,
            pos_embed,
            blocks,
            final_norm,
            head,
            cfg,
        })
    }

    /// Open a GGUF file.
    pub fn from_gguf(path: &Path, precision: Precision) -> Result<(Self, GgufFile)> {
        let file = GgufFile::open(path)?;
        let cfg = arch::config_from_gguf(&file)?;
        let model = Self::load(cfg, &file, &arch::GgufNames, precision)?;
        Ok((model, file))
    }

    /// Run `ids` at positions `cache.len()..`, recording every row if a
    /// recorder is given. Returns the raw output of the last block, `[T, d]`.
    pub fn forward(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        mut recorder: Option<&mut dyn Recorder>,
    ) -> Result<Tensor> {
        let start = cache.len;
        if start + ids.len() > self.cfg.context_len {
            return Err(Error::PromptTooLong {
                tokens: start + ids.len(),
                context: self.cfg.context_len,
            });
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
            return Err(Error::InvalidOption(format!(
                "token id `{bad}` is outside the model's vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        if cache.layers.is_empty() {
            cache.layers = vec![LayerCache::default(); self.cfg.n_layers];
        }
        let idx = Tensor::new(ids, &Device::Cpu)?;
        // Row 0: the embedding output, scaled (Gemma) and with positions (GPT-2).
        let mut x = self.embed.index_select(&idx, 0)?;
        if let Some(scale) = self.cfg.embed_scale {
            x = (x * scale as f32 as f64)?;
        }
        if let Some(pe) = &self.pos_embed {
            x = (x + pe.narrow(0, start, ids.len())?)?;
        }
        let mut x = x.to_dtype(self.precision.activation_dtype())?;
        bounds::check_finite(&x, || "the embedding output".into())?;
        if let Some(r) = recorder.as_deref_mut() {
            r.record(0, &x)?;
        }
        for (i, (block, lc)) in self.blocks.iter().zip(cache.layers.iter_mut()).enumerate() {
            x = block.forward(&x, start, lc)?;
            bounds::check_finite(&x, || format!("the residual after block {i}"))?;
            cancel::check()?;
            if let Some(r) = recorder.as_deref_mut() {
                r.record(i + 1, &x)?;
            }
        }
        cache.len += ids.len();
        Ok(x)
    }

    /// The model's own final-logit path on any residual: final norm, head,
    /// soft-cap. `h`: `[M, d]` → logits `[M, vocab]`. The lens calls this
    /// for every row, so lens row `n_layers` is exactly the model's output.
    pub fn unembed(&self, h: &Tensor) -> Result<Tensor> {
        // The head stays f32 whatever the forward dtype: it is the lens's cost.
        let normed = self
            .final_norm
            .forward(h)?
            .to_dtype(candle_core::DType::F32)?;
        let logits = normed.matmul(&self.head.t()?)?;
        Ok(match self.cfg.final_softcap {
            Some(c) => ((logits / c)?.tanh()? * c)?,
            None => logits,
        })
    }

    /// Greedy decoding after `prompt` has been run into `cache`, starting
    /// from `last_hidden` (`[1, d]` or `[T, d]`; its last row is used).
    /// Stops after `max_new` tokens or once a token in `stop` is produced
    /// (that token is kept).
    pub fn generate_greedy(
        &self,
        cache: &mut KvCache,
        last_hidden: &Tensor,
        max_new: usize,
        stop: &[u32],
    ) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(max_new);
        let t = last_hidden.dim(0)?;
        let mut h = last_hidden.narrow(0, t - 1, 1)?;
        for _ in 0..max_new {
            let logits = self.unembed(&h)?;
            let next = logits.argmax(D::Minus1)?.to_vec1::<u32>()?[0];
            out.push(next);
            if stop.contains(&next) || cache.len() >= self.cfg.context_len {
                break;
            }
            h = self.forward(&[next], cache, None)?;
        }
        Ok(out)
    }
}
