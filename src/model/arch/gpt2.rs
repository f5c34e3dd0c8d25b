//! GPT-2. Paper: Radford et al. 2019, "Language Models are Unsupervised
//! Multitask Learners"; reference code: transformers `models/gpt2/modeling_gpt2.py`.
//!
//! Quirks, as config data and load-time rules:
//! - learned absolute positions `wpe` added to the token embedding;
//! - LayerNorm with bias; every projection has a bias; MLP `c_proj(gelu_new(c_fc(x)))`;
//! - one fused `c_attn` giving `[q | k | v]`, no GQA, no RoPE;
//! - the projections are `Conv1D`, stored `[in, out]`: the weight source
//!   transposes them at load (see [`is_conv1d`]), the square `attn.c_proj` too.

use super::{Part, Sizes};
use crate::model::config::{Activation, Family, MlpLayout, ModelConfig, NormKind, QkvLayout};
use crate::model::hf::HfConfig;
use crate::{Error, Result};

/// Read a GPT-2 `config.json` (`family` is always `Gpt2`).
pub fn from_hf(raw: &HfConfig, _family: Family, has_lm_head: bool) -> Result<ModelConfig> {
    let d_model = HfConfig::need(raw.n_embd, "n_embd")?;
    let n_heads = HfConfig::need(raw.n_head, "n_head")?;
    if raw.scale_attn_by_inverse_layer_idx == Some(true) {
        return Err(Error::Config(
            "`scale_attn_by_inverse_layer_idx` is not supported".into(),
        ));
    }
    let head_dim = d_model / n_heads.max(1);
    let h = Sizes {
        n_layers: HfConfig::need(raw.n_layer, "n_layer")?,
        d_model,
        n_heads,
        n_kv_heads: n_heads,
        head_dim,
        d_ff: raw.n_inner.unwrap_or(d_model.saturating_mul(4)),
        vocab_size: HfConfig::need(raw.vocab_size, "vocab_size")?,
        context_len: raw.n_positions.unwrap_or(1024),
        norm_eps: raw.layer_norm_epsilon.unwrap_or(1e-5),
    };
    h.check()?;
    let act = raw.activation("gelu_new")?;
    if act != Activation::GeluTanh {
        return Err(Error::Config(
            "GPT-2 with an activation other than `gelu_new` is not supported".into(),
        ));
    }
    let scale = if raw.scale_attn_weights.unwrap_or(true) {
        1.0 / (head_dim as f64).sqrt()
    } else {
        1.0
    };
    Ok(ModelConfig {
        norm: NormKind::Layer,
        attn_scale: scale,
        qkv_layout: QkvLayout::Fused,
        qkv_bias: true,
        out_bias: true,
        act,
        mlp: MlpLayout::Plain,
        tied_embeddings: raw.tied(has_lm_head),
        learned_pos: true,
        ..h.into_config(Family::Gpt2)
    })
}

/// transformers' names (under `transformer.`, or no prefix in the original
/// OpenAI checkpoint).
pub fn hf_name(part: Part) -> &'static str {
    match part {
        Part::TokenEmbd => "wte",
        Part::PositionEmbd => "wpe",
        Part::OutputNorm => "ln_f",
        Part::Output => "lm_head",
        Part::AttnNorm => "ln_1",
        Part::AttnQkv => "attn.c_attn",
        Part::AttnOut => "attn.c_proj",
        Part::FfnNorm => "ln_2",
        Part::FfnUp => "mlp.c_fc",
        Part::FfnDown => "mlp.c_proj",
        // GPT-2 has none of these; the loader never asks for them.
        Part::AttnQ => "attn.q_proj",
        Part::AttnK => "attn.k_proj",
        Part::AttnV => "attn.v_proj",
        Part::AttnQNorm => "attn.q_norm",
        Part::AttnKNorm => "attn.k_norm",
        Part::PostAttnNorm => "ln_post_attn",
        Part::FfnGate => "mlp.gate",
        Part::FfnGateUp => "mlp.gate_up",
        Part::PostFfnNorm => "ln_post_mlp",
    }
}

/// Conv1D weights, stored `[in, out]`: `c_attn`, `c_fc` and both `c_proj`.
/// The square `attn.c_proj` is the one that fails silently if missed.
pub fn is_conv1d(name: &str) -> bool {
    const CONV1D: [&str; 4] = [
        "attn.c_attn.weight",
        "attn.c_proj.weight",
        "mlp.c_fc.weight",
        "mlp.c_proj.weight",
    ];
    CONV1D.iter().any(|s| name.ends_with(s))
}
