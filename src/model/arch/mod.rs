//! Architecture families. Each file supplies only what differs: how to read
//! its config (GGUF metadata or `config.json`) into a [`ModelConfig`], and how
//! its tensors are named. The forward pass itself is shared (`layers.rs`).

pub mod gemma3;
pub mod llama;

use super::config::{Family, ModelConfig};
use super::weights::GgufFile;
use crate::{Error, Result};

/// A logical tensor of the model, independent of any file's naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Maps logical parts to the names one checkpoint format uses.
pub trait TensorNames: Send + Sync {
    /// The tensor name of `part` (in block `layer`), its bias if `bias`.
    fn name(&self, part: Part, layer: Option<usize>, bias: bool) -> String;
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

/// Resolve a GGUF file's `general.architecture` into a config.
pub fn config_from_gguf(file: &GgufFile) -> Result<ModelConfig> {
    let arch = file
        .meta_str("general.architecture")
        .ok_or_else(|| Error::Config("GGUF key `general.architecture` is missing".into()))?;
    let cfg = match arch {
        "llama" => llama::from_gguf(file, Family::Llama)?,
        "mistral" => llama::from_gguf(file, Family::Mistral)?,
        "qwen2" => llama::from_gguf(file, Family::Qwen2)?,
        "gemma3" => gemma3::from_gguf(file)?,
        other => {
            return Err(Error::UnsupportedArch {
                arch: other.to_string(),
                supported: "llama, mistral, qwen2, gemma3 (GGUF)".into(),
            })
        }
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Shared GGUF hyper-parameters under the `{arch}.` prefix.
pub(crate) struct GgufHyper {
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub d_ff: usize,
    pub context_len: usize,
    pub norm_eps: f64,
    pub rope_theta: f64,
    pub head_dim: usize,
    pub vocab_size: usize,
}

impl GgufHyper {
    pub fn read(file: &GgufFile, arch: &str) -> Result<Self> {
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
                .map(|t| t.shape.dims()[0])
                .ok_or_else(|| Error::Config("cannot tell the vocabulary size".into()))?,
        };
        Ok(Self {
            n_layers,
            d_model,
            n_heads,
            n_kv_heads,
            d_ff: file.meta_u64(&k("feed_forward_length"))? as usize,
            context_len: file.meta_u64(&k("context_length"))? as usize,
            norm_eps: file
                .meta_f64(&k("attention.layer_norm_rms_epsilon"))
                .ok_or_else(|| Error::Config(format!("GGUF key `{arch}.attention.layer_norm_rms_epsilon` is missing")))?,
            rope_theta: file.meta_f64(&k("rope.freq_base")).unwrap_or(10_000.0),
            head_dim,
            vocab_size,
        })
    }
}
