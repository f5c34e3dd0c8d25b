//! Gemma 3 (text). Reference: transformers `models/gemma3/modeling_gemma3.py`
//! and the Gemma 3 technical report (2025).
//!
//! Quirks, all expressed as config data:
//! - the embedding is multiplied by √d, but the tied head uses the unscaled matrix;
//! - RMSNorm multiplies by `(1 + w)`; GGUF stores `1 + w` already;
//! - four norms per block (pre/post attention, pre/post MLP) and q/k norm before RoPE;
//! - attention scale `query_pre_attn_scalar^-0.5`;
//! - sliding and global layers alternate (5 sliding : 1 global), with RoPE
//!   bases 10 000 and 1 000 000;
//! - GELU-tanh MLP; optional final logit soft-cap.

use super::GgufHyper;
use crate::model::config::{
    Activation, Family, MlpLayout, ModelConfig, NormKind, QkvLayout, RopeConfig, RopeStyle,
};
use crate::model::weights::GgufFile;
use crate::Result;

/// Every `SLIDING_PATTERN`-th layer is global; the rest slide. Gemma 3 GGUF
/// files do not record it; llama.cpp hard-codes the same value.
pub const SLIDING_PATTERN: usize = 6;
/// RoPE base of sliding layers (`rope_local_base_freq`), likewise not in GGUF.
pub const LOCAL_ROPE_THETA: f64 = 10_000.0;

/// Read a Gemma 3 GGUF file's metadata.
pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig> {
    let h = GgufHyper::read(file, "gemma3")?;
    let window = file
        .meta_u64("gemma3.attention.sliding_window")
        .ok()
        .map(|w| w as usize);
    let sliding_layers = (0..h.n_layers).map(|i| (i + 1) % SLIDING_PATTERN != 0).collect();
    Ok(ModelConfig {
        family: Family::Gemma3,
        n_layers: h.n_layers,
        d_model: h.d_model,
        n_heads: h.n_heads,
        n_kv_heads: h.n_kv_heads,
        head_dim: h.head_dim,
        d_ff: h.d_ff,
        vocab_size: h.vocab_size,
        context_len: h.context_len,
        norm: NormKind::Rms,
        norm_eps: h.norm_eps,
        norm_weight_offset: 0.0,
        rope: Some(RopeConfig {
            theta: h.rope_theta,
            local_theta: Some(LOCAL_ROPE_THETA),
            dim: h.head_dim,
            style: RopeStyle::NeoX,
            llama3: None,
        }),
        // Gemma 3 sets query_pre_attn_scalar = head_dim for every released size.
        attn_scale: 1.0 / (h.head_dim as f64).sqrt(),
        qkv_layout: QkvLayout::Separate,
        qkv_bias: false,
        out_bias: false,
        qk_norm: true,
        sliding_window: window,
        sliding_layers,
        act: Activation::GeluTanh,
        mlp: MlpLayout::Gated,
        post_norms: true,
        embed_scale: Some((h.d_model as f64).sqrt()),
        final_softcap: file.meta_f64("gemma3.final_logit_softcapping"),
        tied_embeddings: !file.content.tensor_infos.contains_key("output.weight"),
        learned_pos: false,
    })
}
