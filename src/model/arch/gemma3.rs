//! Gemma 3 (text). Reference: transformers `models/gemma3/modeling_gemma3.py`
//! and the Gemma 3 technical report (2025).
//!
//! Quirks, all expressed as config data:
//! - the embedding is multiplied by √d, but the tied head uses the unscaled matrix;
//! - RMSNorm multiplies by `(1 + w)`: HF files store `w` (offset 1 at load),
//!   GGUF stores `1 + w` already;
//! - four norms per block (pre/post attention, pre/post MLP) and q/k norm before RoPE;
//! - attention scale `query_pre_attn_scalar^-0.5`;
//! - sliding and global layers alternate (5 sliding : 1 global), with RoPE
//!   bases 10 000 and 1 000 000;
//! - GELU-tanh MLP; optional final logit soft-cap.

use super::{gguf_rope_theta, hf_common, llama, with_fields, Part, Sizes};
use crate::model::config::{Activation, Family, ModelConfig, RopeConfig, RopeStyle};
use crate::model::gguf::GgufFile;
use crate::model::hf::HfConfig;
use crate::{Error, Result};

/// Every `SLIDING_PATTERN`-th layer is global; the rest slide. Gemma 3 GGUF
/// files do not record it; llama.cpp hard-codes the same value, and it is
/// transformers' default.
const SLIDING_PATTERN: usize = 6;
/// RoPE base of sliding layers (`rope_local_base_freq`), likewise not in GGUF.
const LOCAL_ROPE_THETA: f64 = 10_000.0;

/// What one Gemma 3 checkpoint says beyond its sizes.
struct Variant {
    theta: f64,
    local_theta: f64,
    sliding_window: Option<usize>,
    sliding_layers: Vec<bool>,
    query_pre_attn_scalar: f64,
    final_softcap: Option<f64>,
    norm_weight_offset: f32,
    tied: bool,
}

fn build(h: Sizes, v: Variant) -> ModelConfig {
    let d_model = h.d_model;
    ModelConfig {
        norm_weight_offset: v.norm_weight_offset,
        rope: Some(RopeConfig {
            theta: v.theta,
            local_theta: Some(v.local_theta),
            dim: h.head_dim,
            style: RopeStyle::NeoX,
            llama3: None,
            freq_factors: None,
        }),
        attn_scale: 1.0 / v.query_pre_attn_scalar.sqrt(),
        qk_norm: true,
        sliding_window: v.sliding_window,
        sliding_layers: v.sliding_layers,
        act: Activation::GeluTanh,
        post_norms: true,
        // transformers keeps √d as an f32 tensor; the forward pass rounds it so.
        embed_scale: Some((d_model as f64).sqrt()),
        final_softcap: v.final_softcap,
        tied_embeddings: v.tied,
        ..h.into_config(Family::Gemma3)
    }
}

/// Read a Gemma 3 GGUF file's metadata (`family` is always `Gemma3`).
pub fn from_gguf(file: &GgufFile, _family: Family) -> Result<ModelConfig> {
    let h = Sizes::from_gguf(file, "gemma3")?;
    let v = Variant {
        theta: gguf_rope_theta(file, "gemma3"),
        local_theta: LOCAL_ROPE_THETA,
        sliding_window: file
            .meta_u64("gemma3.attention.sliding_window")
            .ok()
            .map(|w| w as usize),
        sliding_layers: (0..h.n_layers)
            .map(|i| (i + 1) % SLIDING_PATTERN != 0)
            .collect(),
        // Gemma 3 sets query_pre_attn_scalar = head_dim for every released size.
        query_pre_attn_scalar: h.head_dim as f64,
        final_softcap: file.meta_f64("gemma3.final_logit_softcapping"),
        norm_weight_offset: 0.0,
        tied: !file.content.tensor_infos.contains_key("output.weight"),
    };
    Ok(build(h, v))
}

/// Read a Gemma 3 `config.json` (`gemma3_text`, or the `text_config` of
/// `gemma3`, the multimodal wrapper). `family` is always `Gemma3`.
pub fn from_hf(raw: &HfConfig, _family: Family, has_lm_head: bool) -> Result<ModelConfig> {
    let raw = raw.text();
    let h = raw.hyper(1e-6, Some(256))?;
    if raw.activation("gelu_pytorch_tanh")? != Activation::GeluTanh {
        return Err(Error::Config(
            "Gemma 3 with a non-GELU activation is not supported".into(),
        ));
    }
    if raw.attn_logit_softcapping.is_some() {
        return Err(Error::Config(
            "attention logit soft-capping (`attn_logit_softcapping`) is not supported".into(),
        ));
    }
    let (theta, scaling) = raw.rope(Some("full_attention"), 1_000_000.0)?;
    if scaling.is_some() {
        return Err(Error::Config(
            "RoPE scaling on Gemma 3 is not supported (supported: default)".into(),
        ));
    }
    let local_theta = if raw.has_rope_kind("sliding_attention") {
        raw.rope(Some("sliding_attention"), LOCAL_ROPE_THETA)?.0
    } else {
        raw.rope_local_base_freq.unwrap_or(LOCAL_ROPE_THETA)
    };
    let pattern = raw
        .sliding_window_pattern
        .or(raw.sliding_window_pattern_private)
        .unwrap_or(SLIDING_PATTERN)
        .max(1);
    let v = Variant {
        theta,
        local_theta,
        sliding_window: raw.sliding_window,
        sliding_layers: raw.sliding_layers(h.n_layers, |i| (i + 1) % pattern != 0)?,
        query_pre_attn_scalar: raw.query_pre_attn_scalar.unwrap_or(256.0),
        final_softcap: raw.final_logit_softcapping,
        norm_weight_offset: 1.0,
        tied: raw.tied(has_lm_head),
    };
    Ok(build(h, v))
}

/// transformers' names: llama's, but the pre-MLP norm is `pre_feedforward_layernorm`
/// and `post_attention_layernorm` is a true post-norm.
pub fn hf_name(part: Part) -> &'static str {
    match part {
        Part::FfnNorm => "pre_feedforward_layernorm",
        other => llama::hf_name(other),
    }
}

/// Write `cfg` as a transformers `gemma3_text` `config.json`.
pub(crate) fn to_hf(cfg: &ModelConfig) -> Result<serde_json::Value> {
    let rope = cfg
        .rope
        .as_ref()
        .ok_or_else(|| Error::Config("Gemma 3 needs RoPE".into()))?;
    let layer_types: Vec<&str> = (0..cfg.sizes.n_layers)
        .map(|i| {
            if cfg.is_sliding(i) {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    let extra = serde_json::json!({
        "rope_theta": rope.theta,
        "rope_local_base_freq": rope.local_theta.unwrap_or(rope.theta),
        "rope_scaling": null,
        "sliding_window": cfg.sliding_window,
        "layer_types": layer_types,
        "query_pre_attn_scalar": (cfg.attn_scale.powi(-2)).round(),
        "final_logit_softcapping": cfg.final_softcap,
        "attn_logit_softcapping": null,
        "hidden_activation": "gelu_pytorch_tanh",
    });
    Ok(with_fields(
        hf_common(cfg, "gemma3_text", cfg.family.spec().hf_class),
        extra,
    ))
}
