//! Hugging Face model directories: `config.json` + safetensors weights.
//!
//! [`HfConfig`] is `config.json` as written, every field optional; the arch
//! files resolve it once into a [`ModelConfig`](super::config::ModelConfig) (filling in transformers'
//! defaults there, never in the forward pass). Both config layouts are read:
//! transformers 4 (`rope_theta`, `rope_scaling`) and 5 (`rope_parameters`).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::config::{Activation, Llama3Scaling, Sizes};
use crate::{Error, Result};

pub use super::locate::CONFIG_FILE;

/// `config.json` as written. Field names are transformers'; GPT-2's own
/// names (`n_embd`, ...) are kept apart rather than aliased, because a file
/// may carry both spellings.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HfConfig {
    pub model_type: Option<String>,
    pub architectures: Option<Vec<String>>,
    pub hidden_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub vocab_size: Option<usize>,
    pub max_position_embeddings: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    pub hidden_act: Option<String>,
    /// Gemma's name for `hidden_act`.
    pub hidden_activation: Option<String>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub tie_word_embeddings: Option<bool>,

    // --- RoPE -------------------------------------------------------------
    pub rope_theta: Option<f64>,
    /// transformers 4: `null` or `{rope_type | type, factor, ...}`.
    pub rope_scaling: Option<Value>,
    /// transformers 5: `{rope_theta, rope_type, ...}`, or for Gemma 3 one
    /// such object per layer type.
    pub rope_parameters: Option<Value>,
    pub partial_rotary_factor: Option<f64>,
    /// Gemma 3: θ of the sliding layers.
    pub rope_local_base_freq: Option<f64>,

    // --- attention windows and scales ---------------------------------------
    pub sliding_window: Option<usize>,
    /// Qwen: the window applies only if this is true.
    pub use_sliding_window: Option<bool>,
    /// Qwen: layers below this index never slide.
    pub max_window_layers: Option<usize>,
    /// `sliding_attention` / `full_attention` per layer.
    pub layer_types: Option<Vec<String>>,
    pub sliding_window_pattern: Option<usize>,
    #[serde(rename = "_sliding_window_pattern")]
    pub sliding_window_pattern_private: Option<usize>,
    pub query_pre_attn_scalar: Option<f64>,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,

    // --- GPT-2 ---------------------------------------------------------------
    pub n_embd: Option<usize>,
    pub n_layer: Option<usize>,
    pub n_head: Option<usize>,
    pub n_inner: Option<usize>,
    pub n_positions: Option<usize>,
    pub layer_norm_epsilon: Option<f64>,
    pub activation_function: Option<String>,
    pub scale_attn_weights: Option<bool>,
    pub scale_attn_by_inverse_layer_idx: Option<bool>,

    /// Multimodal wrappers (`gemma3`) nest the language model's config here.
    pub text_config: Option<Box<HfConfig>>,
}

impl HfConfig {
    /// Read `dir/config.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        if !path.is_file() {
            return Err(Error::BadCheckpoint {
                path: dir.to_path_buf(),
                reason: format!("no `{CONFIG_FILE}`: not a Hugging Face model directory"),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Self::parse(&text).map_err(|reason| Error::BadCheckpoint { path, reason })
    }

    /// Parse the text of a `config.json`.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("not a valid config: {e}"))
    }

    /// The config that describes the language model: `text_config` when nested.
    pub fn text(&self) -> &HfConfig {
        self.text_config.as_deref().unwrap_or(self)
    }

    /// A required field.
    pub(crate) fn need<T>(v: Option<T>, key: &str) -> Result<T> {
        v.ok_or_else(|| Error::Config(format!("`{CONFIG_FILE}` lacks `{key}`")))
    }

    /// The sizes under transformers' usual names. `eps` and `head_dim` are the
    /// family's defaults when the file is silent (head_dim: hidden / heads).
    pub(crate) fn hyper(&self, eps: f64, head_dim: Option<usize>) -> Result<Sizes> {
        let d_model = Self::need(self.hidden_size, "hidden_size")?;
        let n_heads = Self::need(self.num_attention_heads, "num_attention_heads")?;
        let h = Sizes {
            n_layers: Self::need(self.num_hidden_layers, "num_hidden_layers")?,
            d_model,
            n_heads,
            n_kv_heads: self.num_key_value_heads.unwrap_or(n_heads),
            head_dim: self
                .head_dim
                .or(head_dim)
                .unwrap_or(d_model / n_heads.max(1)),
            d_ff: Self::need(self.intermediate_size, "intermediate_size")?,
            vocab_size: Self::need(self.vocab_size, "vocab_size")?,
            context_len: self.max_position_embeddings.unwrap_or(2048),
            norm_eps: self.rms_norm_eps.unwrap_or(eps),
        };
        h.check()?;
        Ok(h)
    }

    /// RoPE base and Llama 3 scaling, `theta` being the family's default
    /// base. `kind` picks a per-layer-type entry of a v5 `rope_parameters`
    /// (Gemma 3: `full_attention`, `sliding_attention`) where there is one.
    pub(crate) fn rope(
        &self,
        kind: Option<&str>,
        theta: f64,
    ) -> Result<(f64, Option<Llama3Scaling>)> {
        let (base, scaling) = match self.rope_parameters.as_ref().filter(|v| v.is_object()) {
            Some(p) => {
                let p = kind.and_then(|k| p.get(k)).unwrap_or(p);
                (p.get("rope_theta").and_then(Value::as_f64), Some(p))
            }
            None => (None, self.rope_scaling.as_ref()),
        };
        let scaling = match scaling {
            Some(s) => parse_scaling(s)?,
            None => None,
        };
        Ok((base.or(self.rope_theta).unwrap_or(theta), scaling))
    }

    /// Whether a v5 `rope_parameters` has an entry for layer type `kind`.
    pub(crate) fn has_rope_kind(&self, kind: &str) -> bool {
        self.rope_parameters
            .as_ref()
            .is_some_and(|p| p.get(kind).is_some())
    }

    /// The MLP activation, by whichever key the family uses.
    pub(crate) fn activation(&self, default: &str) -> Result<Activation> {
        let name = self
            .hidden_activation
            .as_deref()
            .or(self.hidden_act.as_deref())
            .or(self.activation_function.as_deref())
            .unwrap_or(default);
        match name {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(Activation::GeluTanh),
            other => Err(Error::Config(format!(
                "activation `{other}` is not supported (supported: silu, gelu_pytorch_tanh, gelu_new)"
            ))),
        }
    }

    /// Whether the head is the embedding: `tie_word_embeddings` as
    /// transformers reads it; when the file is silent, tied exactly when the
    /// checkpoint has no `lm_head.weight`.
    pub(crate) fn tied(&self, has_lm_head: bool) -> bool {
        self.tie_word_embeddings.unwrap_or(!has_lm_head)
    }

    /// Which layers slide: `layer_types` when given, else `default(i)`.
    pub(crate) fn sliding_layers(
        &self,
        n_layers: usize,
        default: impl Fn(usize) -> bool,
    ) -> Result<Vec<bool>> {
        match &self.layer_types {
            Some(types) if types.len() != n_layers => Err(Error::Config(format!(
                "`layer_types` has {} entries for {n_layers} layers",
                types.len()
            ))),
            Some(types) => Ok(types.iter().map(|t| t == "sliding_attention").collect()),
            None => Ok((0..n_layers).map(default).collect()),
        }
    }
}

/// A `rope_scaling` / `rope_parameters` object: `None` for plain RoPE.
fn parse_scaling(v: &Value) -> Result<Option<Llama3Scaling>> {
    if v.is_null() {
        return Ok(None);
    }
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |key: &str| {
        v.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| Error::Config(format!("`rope_scaling` of type `{kind}` lacks `{key}`")))
    };
    match kind {
        "default" => Ok(None),
        "llama3" => Ok(Some(Llama3Scaling {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        })),
        other => Err(Error::Config(format!(
            "RoPE scaling `{other}` is not supported (supported: default, llama3)"
        ))),
    }
}
