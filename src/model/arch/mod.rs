//! Architecture families. Each file supplies only what differs: how to read
//! its config (GGUF metadata or `config.json`) into a [`ModelConfig`], and how
//! its tensors are named. The forward pass itself is shared (`layers.rs`).
//!
//! - `llama.rs`: llama, mistral, qwen2, qwen3, phi3 (one block shape with
//!   options: biases, q/k norm, sliding window, fused projections);
//! - `gemma3.rs`: Gemma 3 (sandwich norms, `1 + w`, scaled embedding, soft-cap);
//! - `gpt2.rs`: GPT-2 (LayerNorm, learned positions, Conv1D weights).

pub mod gemma3;
pub mod gpt2;
pub mod llama;

pub(crate) use super::config::Hyper;
use super::config::{Family, ModelConfig};
use super::gguf::GgufFile;
use super::hf::HfConfig;
use super::safetensors::TransposeRule;
use crate::{Error, Result};

/// A logical tensor of the model, independent of any file's naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    TokenEmbd,
    /// Learned absolute positions (GPT-2).
    PositionEmbd,
    OutputNorm,
    /// The unembedding, when not tied.
    Output,
    AttnNorm,
    AttnQ,
    AttnK,
    AttnV,
    AttnQkv,
    AttnOut,
    AttnQNorm,
    AttnKNorm,
    PostAttnNorm,
    FfnNorm,
    FfnGate,
    FfnUp,
    FfnGateUp,
    FfnDown,
    PostFfnNorm,
}

impl Part {
    /// Parts that exist once per model.
    pub const GLOBAL: [Part; 4] = [
        Part::TokenEmbd,
        Part::PositionEmbd,
        Part::OutputNorm,
        Part::Output,
    ];
    /// Parts that exist once per block.
    pub const PER_LAYER: [Part; 15] = [
        Part::AttnNorm,
        Part::AttnQ,
        Part::AttnK,
        Part::AttnV,
        Part::AttnQkv,
        Part::AttnOut,
        Part::AttnQNorm,
        Part::AttnKNorm,
        Part::PostAttnNorm,
        Part::FfnNorm,
        Part::FfnGate,
        Part::FfnUp,
        Part::FfnGateUp,
        Part::FfnDown,
        Part::PostFfnNorm,
    ];

    /// Whether the tensor is a norm gain (Gemma's `1 + w` applies to these).
    pub fn is_norm(self) -> bool {
        matches!(
            self,
            Part::OutputNorm
                | Part::AttnNorm
                | Part::AttnQNorm
                | Part::AttnKNorm
                | Part::PostAttnNorm
                | Part::FfnNorm
                | Part::PostFfnNorm
        )
    }
}

/// One tensor of a model: the part, its block (`None` for model-wide parts),
/// and whether it is the bias.
pub type PartKey = (Part, Option<usize>, bool);

/// Maps logical parts to the names one checkpoint format uses.
pub trait TensorNames: Send + Sync {
    /// The tensor name of `part` (in block `layer`), its bias if `bias`.
    fn name(&self, part: Part, layer: Option<usize>, bias: bool) -> String;
}

/// Every `(part, layer, bias)` a model of `n_layers` blocks could have, with
/// its name under `names`: the table a converter inverts.
pub fn all_names(names: &dyn TensorNames, n_layers: usize) -> Vec<(PartKey, String)> {
    let globals = Part::GLOBAL.into_iter().map(|p| (p, None));
    let blocks = (0..n_layers).flat_map(|i| Part::PER_LAYER.into_iter().map(move |p| (p, Some(i))));
    globals
        .chain(blocks)
        .flat_map(|(p, l)| [false, true].map(|b| ((p, l, b), names.name(p, l, b))))
        .collect()
}

/// llama.cpp's names, shared by every GGUF architecture.
pub struct GgufNames;

impl TensorNames for GgufNames {
    fn name(&self, part: Part, layer: Option<usize>, bias: bool) -> String {
        let base = match part {
            Part::TokenEmbd => "token_embd",
            Part::PositionEmbd => "position_embd",
            Part::OutputNorm => "output_norm",
            Part::Output => "output",
            Part::AttnNorm => "attn_norm",
            Part::AttnQ => "attn_q",
            Part::AttnK => "attn_k",
            Part::AttnV => "attn_v",
            Part::AttnQkv => "attn_qkv",
            Part::AttnOut => "attn_output",
            Part::AttnQNorm => "attn_q_norm",
            Part::AttnKNorm => "attn_k_norm",
            Part::PostAttnNorm => "post_attention_norm",
            Part::FfnNorm => "ffn_norm",
            Part::FfnGate => "ffn_gate",
            Part::FfnUp => "ffn_up",
            Part::FfnGateUp => "ffn_up", // llama.cpp stores Phi-3's fused gate|up as ffn_up
            Part::FfnDown => "ffn_down",
            Part::PostFfnNorm => "post_ffw_norm",
        };
        let suffix = if bias { "bias" } else { "weight" };
        match layer {
            Some(i) => format!("blk.{i}.{base}.{suffix}"),
            None => format!("{base}.{suffix}"),
        }
    }
}

/// Hugging Face names: `{prefix}{layers}.{i}.{part}.weight`, with the part
/// names from the family's table (e.g. `model.layers.0.self_attn.q_proj`).
/// The unembedding is `lm_head.weight`, outside the prefix.
pub struct HfNames {
    /// `model.`, `transformer.`, `language_model.model.` or empty.
    pub prefix: String,
    /// The block list: `layers` (most) or `h` (GPT-2).
    pub layers: &'static str,
    /// The family's name for each part.
    pub table: fn(Part) -> &'static str,
}

impl TensorNames for HfNames {
    fn name(&self, part: Part, layer: Option<usize>, bias: bool) -> String {
        let suffix = if bias { "bias" } else { "weight" };
        let base = (self.table)(part);
        match (part, layer) {
            (Part::Output, _) => format!("{base}.{suffix}"),
            (_, Some(i)) => format!("{}{}.{i}.{base}.{suffix}", self.prefix, self.layers),
            (_, None) => format!("{}{base}.{suffix}", self.prefix),
        }
    }
}

/// Prefixes HF checkpoints put before the decoder's tensors, most common first.
const HF_PREFIXES: [&str; 5] = [
    "model.",
    "transformer.",
    "",
    "language_model.model.",
    "model.language_model.",
];

/// The names of an HF checkpoint of `family`. The prefix is whichever one
/// makes the token embedding exist (`has`); if none does, the usual one, so
/// that the loader reports the usual name as missing.
pub fn hf_names(family: Family, has: impl Fn(&str) -> bool) -> HfNames {
    let (layers, table): (&'static str, fn(Part) -> &'static str) = match family {
        Family::Gpt2 => ("h", gpt2::hf_name),
        Family::Gemma3 => ("layers", gemma3::hf_name),
        _ => ("layers", llama::hf_name),
    };
    let embd = table(Part::TokenEmbd);
    let default = if family == Family::Gpt2 {
        "transformer."
    } else {
        "model."
    };
    let prefix = HF_PREFIXES
        .into_iter()
        .find(|p| has(&format!("{p}{embd}.weight")))
        .unwrap_or(default);
    HfNames {
        prefix: prefix.to_string(),
        layers,
        table,
    }
}

/// Which tensors of an HF checkpoint of `family` are stored `[in, out]`.
pub fn hf_transpose_rule(family: Family) -> Option<TransposeRule> {
    match family {
        Family::Gpt2 => Some(gpt2::is_conv1d),
        _ => None,
    }
}

/// HF `model_type` values lensmap reads, for error messages.
pub const HF_MODEL_TYPES: &str = "llama, mistral, qwen2, qwen3, phi3, gemma3, gemma3_text, gpt2";

/// Resolve an HF `config.json` into a config. `has_lm_head`: whether the
/// checkpoint stores `lm_head.weight` (decides tying when the config is silent).
pub fn config_from_hf(raw: &HfConfig, has_lm_head: bool) -> Result<ModelConfig> {
    let model_type = raw.model_type.as_deref().unwrap_or("");
    let cfg = match model_type {
        "llama" => llama::from_hf(raw, Family::Llama, has_lm_head)?,
        "mistral" => llama::from_hf(raw, Family::Mistral, has_lm_head)?,
        "qwen2" => llama::from_hf(raw, Family::Qwen2, has_lm_head)?,
        "qwen3" => llama::from_hf(raw, Family::Qwen3, has_lm_head)?,
        "phi3" => llama::from_hf(raw, Family::Phi3, has_lm_head)?,
        "gemma3_text" => gemma3::from_hf(raw, has_lm_head)?,
        // The multimodal wrapper: the language model's config is nested.
        "gemma3" => gemma3::from_hf(raw.text(), has_lm_head)?,
        "gpt2" => gpt2::from_hf(raw, has_lm_head)?,
        other => {
            return Err(Error::UnsupportedArch {
                arch: if other.is_empty() {
                    "(no `model_type`)".into()
                } else {
                    other.to_string()
                },
                supported: HF_MODEL_TYPES.into(),
            })
        }
    };
    cfg.validate()?;
    Ok(cfg)
}

/// The `config.json` fields every family writes the same way; arch files add
/// their own to it.
pub(crate) fn hf_common(cfg: &ModelConfig, model_type: &str, class: &str) -> serde_json::Value {
    serde_json::json!({
        "architectures": [class],
        "model_type": model_type,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.context_len,
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tied_embeddings,
        "vocab_size": cfg.vocab_size,
        "torch_dtype": "float32",
    })
}

/// `base` with the fields of `extra` added (both JSON objects).
pub(crate) fn with_fields(
    mut base: serde_json::Value,
    extra: serde_json::Value,
) -> serde_json::Value {
    if let (Some(b), serde_json::Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

/// Write a config as a transformers `config.json` (for `convert`).
pub fn config_to_hf(cfg: &ModelConfig) -> Result<serde_json::Value> {
    match cfg.family {
        Family::Gemma3 => gemma3::to_hf(cfg),
        Family::Gpt2 => Err(Error::UnsupportedArch {
            arch: "gpt2".into(),
            supported: "llama, mistral, qwen2, qwen3, phi3, gemma3 (conversion)".into(),
        }),
        _ => llama::to_hf(cfg),
    }
}

/// Resolve a GGUF file's `general.architecture` into a config.
pub fn config_from_gguf(file: &GgufFile) -> Result<ModelConfig> {
    let arch = file
        .meta_str("general.architecture")
        .ok_or_else(|| Error::Config("GGUF key `general.architecture` is missing".into()))?;
    let cfg = match arch {
        "llama" => llama::from_gguf(file, Family::Llama)?,
        "mistral" => llama::from_gguf(file, Family::Mistral)?,
        "qwen2" => llama::from_gguf(file, Family::Qwen2)?,
        "qwen3" => llama::from_gguf(file, Family::Qwen3)?,
        "phi3" => llama::from_gguf(file, Family::Phi3)?,
        "gemma3" => gemma3::from_gguf(file)?,
        other => {
            return Err(Error::UnsupportedArch {
                arch: other.to_string(),
                supported: "llama, mistral, qwen2, qwen3, phi3, gemma3 (GGUF)".into(),
            })
        }
    };
    cfg.validate()?;
    Ok(cfg)
}

impl Hyper {
    /// The `{arch}.*` GGUF keys.
    pub fn from_gguf(file: &GgufFile, arch: &str) -> Result<Self> {
        let k = |s: &str| format!("{arch}.{s}");
        let n_layers = file.meta_u64(&k("block_count"))? as usize;
        let d_model = file.meta_u64(&k("embedding_length"))? as usize;
        let n_heads = file.meta_u64(&k("attention.head_count"))? as usize;
        let n_kv_heads = file
            .meta_u64(&k("attention.head_count_kv"))
            .map(|v| v as usize)
            .unwrap_or(n_heads);
        let head_dim = file
            .meta_u64(&k("attention.key_length"))
            .map(|v| v as usize)
            .unwrap_or(d_model / n_heads.max(1));
        let vocab_size = match file.meta_u64(&k("vocab_size")) {
            Ok(v) => v as usize,
            // Older files omit it: the embedding has one row per token.
            Err(_) => file
                .content
                .tensor_infos
                .get("token_embd.weight")
                .and_then(|t| t.shape.dims().first().copied())
                .ok_or_else(|| Error::Config("cannot tell the vocabulary size".into()))?,
        };
        let eps_key = k("attention.layer_norm_rms_epsilon");
        let h = Self {
            n_layers,
            d_model,
            n_heads,
            n_kv_heads,
            d_ff: file.meta_u64(&k("feed_forward_length"))? as usize,
            context_len: file.meta_u64(&k("context_length"))? as usize,
            norm_eps: file
                .meta_f64(&eps_key)
                .ok_or_else(|| Error::Config(format!("GGUF key `{eps_key}` is missing")))?,
            head_dim,
            vocab_size,
        };
        crate::model::bounds::check_hyper(&h)?;
        Ok(h)
    }
}

/// The GGUF RoPE base, llama.cpp's default when absent.
pub(crate) fn gguf_rope_theta(file: &GgufFile, arch: &str) -> f64 {
    file.meta_f64(&format!("{arch}.rope.freq_base"))
        .unwrap_or(10_000.0)
}
