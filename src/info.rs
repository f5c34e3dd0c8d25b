//! `lensmap info`: what a model is, read from its header and config only
//! (GGUF metadata, or `config.json` + safetensors headers + tokenizer files).
//! No weight is read, so it takes milliseconds even for large models.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::model::checkpoint::{Checkpoint, CheckpointFormat};
use crate::model::config::ModelConfig;
use crate::model::locate::ModelLocation;
use crate::model::weights::WeightSource;
use crate::tokenize::TextTokenizer;
use crate::Result;

/// A special token: id and text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpecialToken {
    pub id: u32,
    pub text: String,
}

/// What `lensmap info` prints.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    /// The file or directory.
    pub path: String,
    /// `GGUF` or `safetensors`.
    pub format: String,
    /// Files the weights are in.
    pub files: usize,
    /// The model's own name (`general.name`, or `architectures[0]`).
    pub name: Option<String>,
    /// The family lensmap runs it as (`llama`, `gemma3`, ...).
    pub arch: String,
    /// What the file calls it (`general.architecture` / `model_type`).
    pub file_arch: String,
    pub n_layers: usize,
    pub d_model: usize,
    pub d_ff: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Rows of the unembedding.
    pub vocab_size: usize,
    pub context_len: usize,
    /// Parameters, counted from tensor shapes.
    pub params: u64,
    /// Storage types by share of parameters, largest first: `Q4_1 95%, F32 5%`.
    pub dtype: String,
    pub tied_embeddings: bool,
    /// Sliding window and how many layers use it.
    pub sliding_window: Option<(usize, usize)>,
    /// Where the chat template comes from, if there is one.
    pub chat_template: Option<String>,
    pub bos: Option<SpecialToken>,
    pub eos: Option<SpecialToken>,
    /// Why the tokenizer could not be read, if it could not.
    pub tokenizer_error: Option<String>,
}

/// Describe the model at `loc` without loading its weights.
pub fn describe(loc: &ModelLocation) -> Result<ModelSummary> {
    let ckpt = Checkpoint::open_at(loc)?;
    let cfg = &ckpt.cfg;
    match &ckpt.format {
        CheckpointFormat::Gguf(file) => {
            let tensors = file
                .content
                .tensor_infos
                .values()
                .map(|t| (format!("{:?}", t.ggml_dtype), t.shape.elem_count() as u64));
            let mut s = summary(loc, "GGUF", 1, cfg, tensors);
            s.name = file.meta_str("general.name").map(str::to_string);
            s.file_arch = file
                .meta_str("general.architecture")
                .unwrap_or_default()
                .to_string();
            add_tokenizer(&mut s, TextTokenizer::from_gguf(&file.content.metadata));
            Ok(s)
        }
        CheckpointFormat::Hf { raw, weights, .. } => {
            let w = weights;
            let tensors = w.names().map(|n| {
                let dtype = w.dtype(n).map(|d| format!("{d:?}")).unwrap_or_default();
                (
                    dtype,
                    w.shape(n).map_or(0, |s| s.iter().product::<usize>() as u64),
                )
            });
            let mut s = summary(loc, "safetensors", w.n_files(), cfg, tensors);
            s.name = raw.architectures.as_ref().and_then(|a| a.first().cloned());
            s.file_arch = raw.model_type.clone().unwrap_or_default();
            add_tokenizer(&mut s, TextTokenizer::from_hf_dir(loc.path()));
            Ok(s)
        }
    }
}

/// The facts every format shares; `tensors` yields `(dtype, elements)`.
fn summary(
    loc: &ModelLocation,
    format: &str,
    files: usize,
    cfg: &ModelConfig,
    tensors: impl Iterator<Item = (String, u64)>,
) -> ModelSummary {
    let mut by_dtype: BTreeMap<String, u64> = BTreeMap::new();
    for (dtype, n) in tensors {
        *by_dtype.entry(dtype).or_default() += n;
    }
    let params: u64 = by_dtype.values().sum();
    let mut shares: Vec<(String, u64)> = by_dtype.into_iter().collect();
    shares.sort_by_key(|s| std::cmp::Reverse(s.1));
    let dtype = shares
        .iter()
        .map(|(d, n)| match 100.0 * *n as f64 / params.max(1) as f64 {
            p if p < 1.0 => format!("{d} <1%"),
            p => format!("{d} {p:.0}%"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sliding = (0..cfg.sizes.n_layers)
        .filter(|&i| cfg.is_sliding(i))
        .count();
    ModelSummary {
        path: loc.path().display().to_string(),
        format: format.to_string(),
        files,
        name: None,
        arch: cfg.family.name().to_string(),
        file_arch: String::new(),
        n_layers: cfg.sizes.n_layers,
        d_model: cfg.sizes.d_model,
        d_ff: cfg.sizes.d_ff,
        n_heads: cfg.sizes.n_heads,
        n_kv_heads: cfg.sizes.n_kv_heads,
        head_dim: cfg.sizes.head_dim,
        vocab_size: cfg.sizes.vocab_size,
        context_len: cfg.sizes.context_len,
        params,
        dtype,
        tied_embeddings: cfg.tied_embeddings,
        sliding_window: cfg
            .sliding_window
            .filter(|_| sliding > 0)
            .map(|w| (w, sliding)),
        chat_template: None,
        bos: None,
        eos: None,
        tokenizer_error: None,
    }
}

fn add_tokenizer(s: &mut ModelSummary, tok: Result<TextTokenizer>) {
    match tok {
        Ok(t) => {
            let special = |x: Option<(u32, &str)>| {
                x.map(|(id, text)| SpecialToken {
                    id,
                    text: text.to_string(),
                })
            };
            s.bos = special(t.bos());
            s.eos = special(t.eos());
            s.chat_template = t.chat_template().map(|(_, source)| source.to_string());
        }
        Err(e) => s.tokenizer_error = Some(e.to_string()),
    }
}

/// `1.2B`, `135M`, `460K`.
fn human(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.0}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.0}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

impl fmt::Display for ModelSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let row = |f: &mut fmt::Formatter<'_>, k: &str, v: String| writeln!(f, "{k:<14}{v}");
        row(f, "model", format!("`{}`", self.path))?;
        let files = if self.files == 1 {
            "1 file".into()
        } else {
            format!("{} files", self.files)
        };
        row(
            f,
            "format",
            format!(
                "{}, {files}, {} parameters",
                self.format,
                human(self.params)
            ),
        )?;
        let name = self
            .name
            .as_ref()
            .map(|n| format!(", `{n}`"))
            .unwrap_or_default();
        row(
            f,
            "architecture",
            format!("{} (file says `{}`{name})", self.arch, self.file_arch),
        )?;
        row(f, "layers", self.n_layers.to_string())?;
        row(
            f,
            "width",
            format!("d_model {}, d_ff {}", self.d_model, self.d_ff),
        )?;
        row(
            f,
            "heads",
            format!(
                "{} query, {} kv, head_dim {}",
                self.n_heads, self.n_kv_heads, self.head_dim
            ),
        )?;
        row(f, "vocabulary", self.vocab_size.to_string())?;
        row(f, "context", self.context_len.to_string())?;
        row(f, "dtype", self.dtype.clone())?;
        row(
            f,
            "embeddings",
            if self.tied_embeddings {
                "tied"
            } else {
                "separate head"
            }
            .into(),
        )?;
        let attention = match self.sliding_window {
            Some((w, n)) => format!("sliding window {w} on {n} of {} layers", self.n_layers),
            None => "full".into(),
        };
        row(f, "attention", attention)?;
        let token = |t: &Option<SpecialToken>| match t {
            Some(t) => format!("`{}` ({})", t.text, t.id),
            None => "none".into(),
        };
        match &self.tokenizer_error {
            None => {
                row(
                    f,
                    "chat template",
                    self.chat_template.clone().unwrap_or_else(|| "none".into()),
                )?;
                row(f, "bos", token(&self.bos))?;
                row(f, "eos", token(&self.eos))
            }
            Some(e) => row(f, "tokenizer", format!("unreadable: {e}")),
        }
    }
}
