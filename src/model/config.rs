//! `ModelConfig`: every architectural fact the forward pass needs, resolved
//! once from GGUF metadata or `config.json`, so forward code never fills in
//! defaults. Arch files (`arch/*.rs`) build it; `layers.rs` only reads it.

use super::bounds;

/// Architecture families lensmap implements. Names follow HF `model_type`
/// / GGUF `general.architecture`; everything else about a family (names,
/// translators, tensor names, template) is its row in
/// [`super::arch::FAMILIES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma3,
    Gpt2,
    Phi3,
}

/// Which normalisation the blocks use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NormKind {
    /// `x · rsqrt(mean(x²) + eps) · (w + offset)`.
    Rms,
    /// LayerNorm with weight and bias (GPT-2).
    Layer,
}

/// How RoPE pairs dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// HF "rotate-half": dimension j pairs with j + d/2.
    NeoX,
    /// Adjacent pairs (2j, 2j+1). llama.cpp permutes Llama's q/k rows into
    /// this order when it writes GGUF, so GGUF Llama files need it.
    Interleaved,
}

/// Llama 3 frequency scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// Rotary position embedding parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// Base θ of global (or all) layers.
    pub theta: f64,
    /// Base θ of sliding-window layers where it differs (Gemma 3).
    pub local_theta: Option<f64>,
    /// Rotated dimensions per head (≤ head_dim).
    pub dim: usize,
    pub style: RopeStyle,
    pub llama3: Option<Llama3Scaling>,
    /// Per-frequency divisors `[dim / 2]` (GGUF `rope_freqs.weight`): how
    /// llama.cpp stores Llama 3.1+ frequency scaling. Each inverse frequency
    /// is divided by its factor.
    pub freq_factors: Option<Vec<f32>>,
}

/// MLP activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU, tanh approximation (`gelu_pytorch_tanh`, `gelu_new`).
    GeluTanh,
}

/// How the MLP's input projections are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpLayout {
    /// `down(act(gate(x)) * up(x))` with separate gate and up.
    Gated,
    /// Gated, but gate and up fused in one matrix, gate first (Phi-3).
    GatedFused,
    /// `down(act(up(x)))` (GPT-2).
    Plain,
}

/// How q, k and v projections are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkvLayout {
    Separate,
    /// One matrix whose output is `[q | k | v]` (Phi-3, GPT-2).
    Fused,
}

/// Everything the forward pass and the lens need to know about a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub family: Family,
    /// Layer count, widths, vocabulary, context and norm epsilon.
    pub sizes: Sizes,
    pub norm: NormKind,
    /// Added to every norm weight at load: 1 for Gemma's `(1 + w)` in HF files,
    /// 0 for GGUF, where llama.cpp stored `1 + w` already.
    pub norm_weight_offset: f32,
    /// `None` for learned absolute positions (GPT-2).
    pub rope: Option<RopeConfig>,
    /// Multiplies q·k: `head_dim^-0.5`, or `query_pre_attn_scalar^-0.5` for Gemma.
    pub attn_scale: f64,
    pub qkv_layout: QkvLayout,
    pub qkv_bias: bool,
    /// Bias on the attention output and MLP projections (GPT-2).
    pub out_bias: bool,
    /// Per-head RMSNorm on q and k before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Window W: a query at q sees keys q−W < k ≤ q on sliding layers.
    pub sliding_window: Option<usize>,
    /// Per layer: does it use the sliding window (and the local RoPE base)?
    pub sliding_layers: Vec<bool>,
    pub act: Activation,
    pub mlp: MlpLayout,
    /// Gemma's sandwich norms: a norm after attention and after the MLP, before each residual add.
    pub post_norms: bool,
    /// Multiplies the embedding lookup (Gemma: √d_model). The tied head uses the unscaled matrix.
    pub embed_scale: Option<f64>,
    /// `tanh(x / c) · c` on the final logits (and so on every lens row).
    pub final_softcap: Option<f64>,
    pub tied_embeddings: bool,
    /// Learned absolute position embeddings added to row 0 (GPT-2).
    pub learned_pos: bool,
}

impl ModelConfig {
    /// Whether layer `i` uses the sliding window.
    pub fn is_sliding(&self, layer: usize) -> bool {
        self.sliding_window.is_some() && self.sliding_layers.get(layer).copied().unwrap_or(false)
    }

    /// Check internal consistency; arch files call this after building a config.
    pub(crate) fn validate(&self) -> crate::Result<()> {
        let bad = |m: String| Err(crate::Error::Config(m));
        bounds::check_eps(self.sizes.norm_eps)?;
        if self.sizes.n_layers == 0 || self.sizes.d_model == 0 || self.sizes.vocab_size == 0 {
            return bad(format!(
                "n_layers `{}`, d_model `{}` and vocab `{}` must be positive",
                self.sizes.n_layers, self.sizes.d_model, self.sizes.vocab_size
            ));
        }
        if self.sizes.n_heads == 0
            || self.sizes.n_kv_heads == 0
            || !self.sizes.n_heads.is_multiple_of(self.sizes.n_kv_heads)
        {
            return bad(format!(
                "`{}` query heads cannot share `{}` kv heads",
                self.sizes.n_heads, self.sizes.n_kv_heads
            ));
        }
        if let Some(rope) = &self.rope {
            if rope.dim == 0 || rope.dim > self.sizes.head_dim || rope.dim % 2 != 0 {
                return bad(format!(
                    "rope dimension `{}` does not fit head_dim `{}`",
                    rope.dim, self.sizes.head_dim
                ));
            }
        }
        if self.sliding_layers.len() != self.sizes.n_layers {
            return bad(format!(
                "`{}` layer types for `{}` layers",
                self.sliding_layers.len(),
                self.sizes.n_layers
            ));
        }
        Ok(())
    }
}

/// The sizes every family has, whatever file they come from.
#[derive(Debug, Clone, PartialEq)]
pub struct Sizes {
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub d_ff: usize,
    /// Rows of the unembedding (may exceed the tokenizer's vocabulary).
    pub vocab_size: usize,
    /// Longest sequence the model supports.
    pub context_len: usize,
    pub norm_eps: f64,
}

impl Sizes {
    /// Check the sizes a config declares against the [`bounds`], before any
    /// per-layer list or tensor is built from them.
    pub fn check(&self) -> crate::Result<()> {
        let limits = [
            ("layers", self.n_layers, bounds::MAX_LAYERS),
            ("hidden size", self.d_model, bounds::MAX_D_MODEL),
            ("attention heads", self.n_heads, bounds::MAX_HEADS),
            ("kv heads", self.n_kv_heads, bounds::MAX_HEADS),
            ("head_dim", self.head_dim, bounds::MAX_HEAD_DIM),
            ("MLP width", self.d_ff, bounds::MAX_D_FF),
            ("vocabulary", self.vocab_size, bounds::MAX_VOCAB),
            ("context", self.context_len, bounds::MAX_CONTEXT),
        ];
        for (what, value, max) in limits {
            if value == 0 || value > max {
                return Err(crate::Error::Config(format!(
                    "{what} `{value}` is outside 1..={max}: the file is corrupt or not a language model lensmap can hold"
                )));
            }
        }
        // Projections are [heads × head_dim, d_model]: both products must fit.
        bounds::checked_product(
            "query projection",
            &[self.n_heads, self.head_dim, self.d_model],
        )?;
        bounds::checked_product("embedding", &[self.vocab_size, self.d_model])?;
        bounds::check_eps(self.norm_eps)
    }

    /// A plain pre-norm transformer of these sizes: RMSNorm, separate q/k/v
    /// without biases, SiLU-gated MLP, full attention, untied, no RoPE yet.
    /// Arch files override what their family changes.
    pub(crate) fn into_config(self, family: Family) -> ModelConfig {
        ModelConfig {
            family,
            norm: NormKind::Rms,
            norm_weight_offset: 0.0,
            rope: None,
            attn_scale: 1.0 / (self.head_dim as f64).sqrt(),
            qkv_layout: QkvLayout::Separate,
            qkv_bias: false,
            out_bias: false,
            qk_norm: false,
            sliding_window: None,
            sliding_layers: vec![false; self.n_layers],
            act: Activation::Silu,
            mlp: MlpLayout::Gated,
            post_norms: false,
            embed_scale: None,
            final_softcap: None,
            tied_embeddings: false,
            learned_pos: false,
            sizes: self,
        }
    }
}
