//! Llama and its close kin in GGUF form: llama (SmolLM2, Llama 2/3), mistral,
//! qwen2 (q/k/v bias). Paper: Touvron et al. 2023, "LLaMA"; reference code:
//! transformers `models/llama/modeling_llama.py`.
//!
//! Block: pre-RMSNorm, GQA attention with RoPE, SwiGLU MLP
//! `down(silu(gate(x)) * up(x))`; final RMSNorm; tied or separate `output`.

use super::GgufHyper;
use crate::model::config::{
    Activation, Family, MlpLayout, ModelConfig, NormKind, QkvLayout, RopeConfig, RopeStyle,
};
use crate::model::weights::GgufFile;
use crate::Result;

/// Read a llama-like GGUF file's metadata.
pub fn from_gguf(file: &GgufFile, family: Family) -> Result<ModelConfig> {
    let arch = family.name();
    let h = GgufHyper::read(file, arch)?;
    let rope_dim = file
        .meta_u64(&format!("{arch}.rope.dimension_count"))
        .map(|v| v as usize)
        .unwrap_or(h.head_dim);
    // llama.cpp's converter permutes Llama/Mistral q and k rows so that
    // adjacent pairs rotate together; Qwen2 keeps the rotate-half order.
    let style = match family {
        Family::Llama | Family::Mistral => RopeStyle::Interleaved,
        _ => RopeStyle::NeoX,
    };
    let sliding_window = match family {
        Family::Mistral => file
            .meta_u64(&format!("{arch}.attention.sliding_window"))
            .ok()
            .map(|w| w as usize),
        _ => None,
    };
    Ok(ModelConfig {
        family,
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
            local_theta: None,
            dim: rope_dim,
            style,
            llama3: None,
        }),
        attn_scale: 1.0 / (h.head_dim as f64).sqrt(),
        qkv_layout: QkvLayout::Separate,
        qkv_bias: family == Family::Qwen2,
        out_bias: false,
        qk_norm: false,
        sliding_window,
        sliding_layers: vec![sliding_window.is_some(); h.n_layers],
        act: Activation::Silu,
        mlp: MlpLayout::Gated,
        post_norms: false,
        embed_scale: None,
        final_softcap: None,
        tied_embeddings: !file.content.tensor_infos.contains_key("output.weight"),
        learned_pos: false,
    })
}
