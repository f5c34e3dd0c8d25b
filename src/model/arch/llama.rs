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

/// The config of a llama-like family; the family fixes q/k norm and MLP layout.
fn build(family: Family, h: Sizes, v: Variant) -> ModelConfig {
    ModelConfig {
        rope: Some(v.rope),
        qkv_layout: if v.fused_qkv {
            QkvLayout::Fused
        } else {
            QkvLayout::Separate
        },
        qkv_bias: v.qkv_bias,
        out_bias: v.out_bias,
        qk_norm: family == Family::Qwen3,
        sliding_window: v.sliding_window,
        sliding_layers: v.sliding_layers,
        mlp: if family == Family::Phi3 {
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
    // llama.cpp's converter permutes Llama/Mistral q and k rows so that
    // adjacent pairs rotate together; the others keep rotate-half order.
    let style = match family {
        Family::Llama | Family::Mistral => RopeStyle::Interleaved,
        _ => RopeStyle::NeoX,
    };
    let sliding_window = match family {
        Family::Mistral | Family::Phi3 => file
            .meta_u64(&format!("{arch}.attention.sliding_window"))
            .ok()
            .map(|w| w as usize),
        _ => None,
    };
    let v = Variant {
        rope: RopeConfig {
            theta: gguf_rope_theta(file, arch),
            local_theta: None,
            dim: rope_dim,
            style,
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
    let eps = if family == Family::Phi3 { 1e-5 } else { 1e-6 };
    let h = raw.hyper(eps, None)?;
    if raw.activation("silu")? != Activation::Silu {
        return Err(Error::Config(format!(
            "`{}` with a non-SiLU activation is not supported",
            family.name()
        )));
    }
    let (theta, llama3) = raw.rope(None, 10_000.0)?;
    let rope_dim = (h.head_dim as f64 * raw.partial_rotary_factor.unwrap_or(1.0)) as usize;
    // Which layers have a window, as transformers decides it.
    let (sliding_window, first_sliding) = match family {
        Family::Mistral | Family::Phi3 => (raw.sliding_window, 0),
        Family::Qwen2 | Family::Qwen3 if raw.use_sliding_window.unwrap_or(false) => {
            (raw.sliding_window, raw.max_window_layers.unwrap_or(28))
        }
        _ => (None, 0),
    };
    let sliding_layers = raw.sliding_layers(h.n_layers, |i| {
        sliding_window.is_some() && i >= first_sliding
    })?;
    // Llama's `attention_bias` covers q, k, v and o; lensmap's `out_bias` puts
    // o and the MLP together, so only "all or none" fits.
    let attn_bias =
        raw.attention_bias.unwrap_or(false) && matches!(family, Family::Llama | Family::Qwen3);
    let mlp_bias = raw.mlp_bias.unwrap_or(false) && family == Family::Llama;
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
        fused_qkv: family == Family::Phi3,
        qkv_bias: family == Family::Qwen2 || attn_bias,
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
