//! Llama and its close kin: llama (SmolLM2, Llama 2/3), mistral, qwen2,
//! qwen3, phi3. Paper: Touvron et al. 2023, "LLaMA"; reference code:
//! transformers `models/llama/modeling_llama.py` and its siblings.
//!
//! Block: pre-RMSNorm, GQA attention with RoPE, SwiGLU MLP
//! `down(silu(gate(x)) * up(x))`; final RMSNorm; tied or separate head.
//! What the kin change, all as config data:
//! - mistral: a sliding window in every layer (q − W < k ≤ q);
//! - qwen2: q/k/v biases; its `sliding_window` counts only with `use_sliding_window`;
//! - qwen3: per-head RMSNorm on q and k before RoPE, `head_dim` ≠ d / heads;
//! - phi3: fused `qkv_proj` (`[q | k | v]`) and `gate_up_proj` (gate first),
//!   `partial_rotary_factor`, a window in every layer when set.

use super::{gguf_rope_theta, hf_common, with_fields, Part, Sizes};
use crate::model::config::{
    Activation, Family, Llama3Scaling, MlpLayout, ModelConfig, QkvLayout, RopeConfig, RopeStyle,
};
use crate::model::gguf::GgufFile;
use crate::model::hf::HfConfig;
use crate::model::weights::WeightSource;
use crate::{Error, Result};

/// What a llama-like family changes, as data in its registry row
/// ([`super::FamilySpec::kin`]). The translators below read nothing else
/// about the family.
#[derive(Debug, Clone, Copy)]
pub struct Kin {
    /// RoPE pair order in GGUF files: llama.cpp's converter permutes Llama
    /// and Mistral q/k rows so that adjacent pairs rotate together
    /// (interleaved); the others keep transformers' rotate-half order.
    pub gguf_rope: RopeStyle,
    /// Which layers have a sliding window.
    pub window: Window,
    /// Per-head RMSNorm on q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    /// q/k/v in one `qkv_proj` (in HF files) and gate/up in one
    /// `gate_up_proj`, gate first (Phi-3).
    pub fused: bool,
    /// `rms_norm_eps` when `config.json` omits it.
    pub hf_eps: f64,
    /// `config.json`'s `attention_bias` (q, k, v and o) applies.
    pub hf_attention_bias: bool,
    /// `config.json`'s `mlp_bias` applies.
    pub hf_mlp_bias: bool,
    /// q, k and v always have biases (Qwen2).
    pub qkv_bias: bool,
}

/// Where a llama-like family's sliding window applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Full attention in every layer.
    None,
    /// Every layer, when the config sets a window (Mistral, Phi-3; in GGUF
    /// `{arch}.attention.sliding_window`).
    EveryLayer,
    /// Only with `use_sliding_window`, from `max_window_layers` on (Qwen2/3;
    /// transformers' rule). GGUF files of these families carry no window.
    OptIn,
}

impl Kin {
    /// The plain llama-like block: rotate-half RoPE, full attention, no
    /// biases, separate projections.
    pub const PLAIN: Kin = Kin {
        gguf_rope: RopeStyle::NeoX,
        window: Window::None,
        qk_norm: false,
        fused: false,
        hf_eps: 1e-6,
        hf_attention_bias: false,
        hf_mlp_bias: false,
        qkv_bias: false,
    };
}

/// What sets one llama-like checkpoint apart once its file is read.
struct Variant {
    rope: RopeConfig,
    sliding_window: Option<usize>,
    sliding_layers: Vec<bool>,
    fused_qkv: bool,
    qkv_bias: bool,
    out_bias: bool,
    tied: bool,
}

/// The config of a llama-like family; its [`Kin`] fixes q/k norm and MLP layout.
fn build(family: Family, h: Sizes, v: Variant) -> ModelConfig {
    let kin = family.spec().kin;
    ModelConfig {
        rope: Some(v.rope),
        qkv_layout: if v.fused_qkv {
            QkvLayout::Fused
        } else {
            QkvLayout::Separate
        },
        qkv_bias: v.qkv_bias,
        out_bias: v.out_bias,
        qk_norm: kin.qk_norm,
        sliding_window: v.sliding_window,
        sliding_layers: v.sliding_layers,
        mlp: if kin.fused {
            MlpLayout::GatedFused
        } else {
            MlpLayout::Gated
        },
        tied_embeddings: v.tied,
        ..h.into_config(family)
    }
}

/// Read a llama-like GGUF file's metadata.
pub fn from_gguf(file: &GgufFile, family: Family) -> Result<ModelConfig> {
    let arch = family.name();
    let h = Sizes::from_gguf(file, arch)?;
    let has = |name: &str| file.content.tensor_infos.contains_key(name);
    if has("rope_factors_long.weight") || has("rope_factors_short.weight") {
        return Err(Error::Config(format!(
            "`{arch}` GGUF with LongRoPE factors is not supported (supported: plain RoPE)"
        )));
    }
    let rope_dim = file
        .meta_u64(&format!("{arch}.rope.dimension_count"))
        .map(|v| v as usize)
        .unwrap_or(h.head_dim);
    let kin = family.spec().kin;
    let sliding_window = match kin.window {
        Window::EveryLayer => file
            .meta_u64(&format!("{arch}.attention.sliding_window"))
            .ok()
            .map(|w| w as usize),
        Window::None | Window::OptIn => None,
    };
    let v = Variant {
        rope: RopeConfig {
            theta: gguf_rope_theta(file, arch),
            local_theta: None,
            dim: rope_dim,
            style: kin.gguf_rope,
            llama3: None,
            freq_factors: rope_freq_factors(file, rope_dim)?,
        },
        sliding_window,
        sliding_layers: vec![sliding_window.is_some(); h.n_layers],
        fused_qkv: has("blk.0.attn_qkv.weight"),
        qkv_bias: has("blk.0.attn_q.bias") || has("blk.0.attn_qkv.bias"),
        out_bias: has("blk.0.attn_output.bias"),
        tied: !has("output.weight"),
    };
    Ok(build(family, h, v))
}

/// Read a llama-like `config.json`.
pub fn from_hf(raw: &HfConfig, family: Family, has_lm_head: bool) -> Result<ModelConfig> {
    let kin = family.spec().kin;
    let h = raw.hyper(kin.hf_eps, None)?;
    if raw.activation("silu")? != Activation::Silu {
        return Err(Error::Config(format!(
            "`{}` with a non-SiLU activation is not supported",
            family.name()
        )));
    }
    let (theta, llama3) = raw.rope(None, 10_000.0)?;
    let rope_dim = (h.head_dim as f64 * raw.partial_rotary_factor.unwrap_or(1.0)) as usize;
    // Which layers have a window, as transformers decides it.
    let (sliding_window, first_sliding) = match kin.window {
        Window::EveryLayer => (raw.sliding_window, 0),
        Window::OptIn if raw.use_sliding_window.unwrap_or(false) => {
            (raw.sliding_window, raw.max_window_layers.unwrap_or(28))
        }
        Window::None | Window::OptIn => (None, 0),
    };
    let sliding_layers = raw.sliding_layers(h.n_layers, |i| {
        sliding_window.is_some() && i >= first_sliding
    })?;
    // Llama's `attention_bias` covers q, k, v and o; lensmap's `out_bias` puts
    // o and the MLP together, so only "all or none" fits.
    let attn_bias = raw.attention_bias.unwrap_or(false) && kin.hf_attention_bias;
    let mlp_bias = raw.mlp_bias.unwrap_or(false) && kin.hf_mlp_bias;
    if attn_bias != mlp_bias {
        return Err(Error::Config(format!(
            "`attention_bias` = {attn_bias} with `mlp_bias` = {mlp_bias} is not supported (both or neither)"
        )));
    }
    let v = Variant {
        rope: RopeConfig {
            theta,
            local_theta: None,
            dim: rope_dim,
            style: RopeStyle::NeoX,
            llama3,
            freq_factors: None,
        },
        sliding_window,
        sliding_layers,
        fused_qkv: kin.fused,
        qkv_bias: kin.qkv_bias || attn_bias,
        out_bias: attn_bias,
        tied: raw.tied(has_lm_head),
    };
    Ok(build(family, h, v))
}

/// transformers' names for the parts of a llama-like block.
pub fn hf_name(part: Part) -> &'static str {
    match part {
        Part::TokenEmbd => "embed_tokens",
        Part::PositionEmbd => "embed_positions",
        Part::OutputNorm => "norm",
        Part::Output => "lm_head",
        Part::AttnNorm => "input_layernorm",
        Part::AttnQ => "self_attn.q_proj",
        Part::AttnK => "self_attn.k_proj",
        Part::AttnV => "self_attn.v_proj",
        Part::AttnQkv => "self_attn.qkv_proj",
        Part::AttnOut => "self_attn.o_proj",
        Part::AttnQNorm => "self_attn.q_norm",
        Part::AttnKNorm => "self_attn.k_norm",
        // Gemma 3's names; llama has no such norms.
        Part::PostAttnNorm => "post_attention_layernorm",
        Part::PostFfnNorm => "post_feedforward_layernorm",
        // Llama calls its pre-MLP norm "post attention".
        Part::FfnNorm => "post_attention_layernorm",
        Part::FfnGate => "mlp.gate_proj",
        Part::FfnUp => "mlp.up_proj",
        Part::FfnGateUp => "mlp.gate_up_proj",
        Part::FfnDown => "mlp.down_proj",
    }
}

/// Write `cfg` as a transformers `config.json` (the inverse of [`from_hf`]).
pub(crate) fn to_hf(cfg: &ModelConfig) -> Result<serde_json::Value> {
    let spec = cfg.family.spec();
    let rope = cfg
        .rope
        .as_ref()
        .ok_or_else(|| Error::Config("a llama-like model needs RoPE".into()))?;
    let rope_scaling = rope.llama3.map(|s: Llama3Scaling| {
        serde_json::json!({
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        })
    });
    let first_sliding = cfg.sliding_layers.iter().position(|&s| s);
    let window = cfg.sliding_window.filter(|_| first_sliding.is_some());
    let attn_bias = cfg.out_bias;
    let extra = serde_json::json!({
        "rope_theta": rope.theta,
        "rope_scaling": rope_scaling,
        "partial_rotary_factor": rope.dim as f64 / cfg.sizes.head_dim as f64,
        "sliding_window": window,
        "use_sliding_window": window.is_some(),
        "max_window_layers": first_sliding.unwrap_or(0),
        "attention_bias": attn_bias,
        "mlp_bias": attn_bias,
        "hidden_act": "silu",
    });
    Ok(with_fields(hf_common(cfg, spec.name, spec.hf_class), extra))
}

/// Llama 3.1+ GGUF files store their RoPE frequency scaling as a tensor of
/// per-frequency divisors; ignoring it would give wrong numbers silently.
fn rope_freq_factors(file: &GgufFile, rope_dim: usize) -> Result<Option<Vec<f32>>> {
    const NAME: &str = "rope_freqs.weight";
    if !file.content.tensor_infos.contains_key(NAME) {
        return Ok(None);
    }
    let factors = file.f32(NAME)?.flatten_all()?.to_vec1::<f32>()?;
    if factors.len() != rope_dim / 2 || factors.iter().any(|f| !(f.is_finite() && *f > 0.0)) {
        return Err(Error::Config(format!(
            "`{NAME}` has {} entries, expected {} positive factors",
            factors.len(),
            rope_dim / 2
        )));
    }
    Ok(Some(factors))
}
