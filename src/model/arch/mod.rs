//! Architecture families. Each file supplies only what differs: how to read
//! its config (GGUF metadata or `config.json`) into a [`ModelConfig`], and how
//! its tensors are named. The forward pass itself is shared (`layers.rs`).
//!
//! - `llama.rs`: llama, mistral, qwen2, qwen3, phi3 (one block shape with
//!   options: biases, q/k norm, sliding window, fused projections);
//! - `gemma3.rs`: Gemma 3 (sandwich norms, `1 + w`, scaled embedding, soft-cap);
//! - `gpt2.rs`: GPT-2 (LayerNorm, learned positions, Conv1D weights).
//!
//! [`FAMILIES`] is the one registry: every dispatch on a family (which
//! translator reads a `config.json` or a GGUF file, which tensor names an HF
//! checkpoint uses, which built-in chat template applies) and every
//! "supported: …" message is read from it.
//!
//! # Adding a family
//!
//! A llama-like family (pre-norm, RoPE, gated MLP) needs no new forward code:
//!
//! 1. a [`Family`] variant (`model/config.rs`, one line);
//! 2. one [`FamilySpec`] row in [`FAMILIES`]: its HF `model_type`s,
//!    transformers class, the translators (`llama::from_hf`,
//!    `llama::from_gguf` and `llama::to_hf` serve every llama-like family),
//!    its tensor names, built-in chat template and [`Kin`]. With
//!    llama's names that is one `llama_like(..)` entry; overriding fields
//!    makes it about ten lines;
//! 3. tensor names, only if they differ from llama's: a `fn(Part) -> &str`
//!    table like [`gemma3::hf_name`] (one line per renamed part, the rest
//!    falling through to [`llama::hf_name`]); GGUF names are llama.cpp's for
//!    every family ([`GgufNames`]);
//! 4. what the family changes in the llama block goes in the row's
//!    [`Kin`]: RoPE order in GGUF, where the sliding window
//!    applies, q/k norm, fused projections, default epsilon, which biases
//!    `config.json` may turn on (`Kin::PLAIN` when nothing changes). The
//!    translators read these as data and never `match` on the family; a quirk
//!    the forward pass cannot express yet becomes an option on
//!    [`ModelConfig`] and in `layers.rs`, never a second forward;
//! 5. a reference test: a tiny checkpoint and its transformers numbers in
//!    `../shared/reference/`, compared in `tests/hf_loading.rs`.
//!
//! The test `registry::a_llama_like_family_is_one_entry` builds such a row
//! (InternLM-style tensor names under a new `model_type`) and reads a config
//! and its tensor names through it.

pub mod gemma3;
pub mod gpt2;
pub mod llama;

pub use super::config::Sizes;
use super::config::{Family, ModelConfig, RopeStyle};
use super::gguf::GgufFile;
use super::hf::HfConfig;
use super::safetensors::TransposeRule;
use crate::{Error, Result};
use llama::{Kin, Window};

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
    const GLOBAL: [Part; 4] = [
        Part::TokenEmbd,
        Part::PositionEmbd,
        Part::OutputNorm,
        Part::Output,
    ];
    /// Parts that exist once per block.
    const PER_LAYER: [Part; 15] = [
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
    pub(crate) fn is_norm(self) -> bool {
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
pub(crate) type PartKey = (Part, Option<usize>, bool);

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
/// makes the token embedding exist (`has`); if none does, the family's usual
/// one, so that the loader reports the usual name as missing.
pub fn hf_names(family: Family, has: impl Fn(&str) -> bool) -> HfNames {
    family.spec().hf_names(has)
}

/// Which tensors of an HF checkpoint of `family` are stored `[in, out]`.
pub(crate) fn hf_transpose_rule(family: Family) -> Option<TransposeRule> {
    family.spec().hf_transpose
}

// ------------------------------------------------------------------------
// The family registry
// ------------------------------------------------------------------------

/// Reads a `config.json` of the family; `has_lm_head`: whether the
/// checkpoint stores `lm_head.weight` (decides tying when the config is silent).
type FromHf = fn(&HfConfig, Family, bool) -> Result<ModelConfig>;
/// Reads a GGUF file's metadata of the family.
type FromGguf = fn(&GgufFile, Family) -> Result<ModelConfig>;
/// Writes a config as a transformers `config.json` (for `convert`).
type ToHf = fn(&ModelConfig) -> Result<serde_json::Value>;

/// One family: everything lensmap dispatches on. See the module doc for how
/// to add one.
#[derive(Debug, Clone, Copy)]
pub struct FamilySpec {
    pub family: Family,
    /// The canonical name: GGUF `general.architecture`, the JSON's `model.arch`.
    pub name: &'static str,
    /// HF `model_type` values read as this family.
    pub hf_model_types: &'static [&'static str],
    /// transformers' class (`architectures` in `config.json`).
    pub hf_class: &'static str,
    pub from_hf: FromHf,
    /// `None` when lensmap does not read this family from GGUF.
    pub from_gguf: Option<FromGguf>,
    /// `None` when `convert` cannot write this family.
    pub to_hf: Option<ToHf>,
    /// transformers' name of each part inside a block (`self_attn.q_proj`).
    pub hf_name: fn(Part) -> &'static str,
    /// The block list: `layers` (most) or `h` (GPT-2).
    pub hf_layers: &'static str,
    /// The usual prefix before the decoder's tensors (`model.`).
    pub hf_prefix: &'static str,
    /// HF tensors stored `[in, out]` (GPT-2's Conv1D), transposed at load.
    pub hf_transpose: Option<TransposeRule>,
    /// The built-in chat template (`crate::template`) for files that carry none.
    pub template: Option<&'static str>,
    /// What a llama-like family changes (read by `llama.rs`'s translators).
    pub kin: llama::Kin,
}

impl FamilySpec {
    /// The names of an HF checkpoint of this family: see [`hf_names`].
    pub fn hf_names(&self, has: impl Fn(&str) -> bool) -> HfNames {
        let embd = (self.hf_name)(Part::TokenEmbd);
        let prefix = HF_PREFIXES
            .into_iter()
            .find(|p| has(&format!("{p}{embd}.weight")))
            .unwrap_or(self.hf_prefix);
        HfNames {
            prefix: prefix.to_string(),
            layers: self.hf_layers,
            table: self.hf_name,
        }
    }
}

/// A llama-like family: llama's translators and tensor names.
const fn llama_like(
    family: Family,
    name: &'static str,
    hf_model_types: &'static [&'static str],
    hf_class: &'static str,
    kin: llama::Kin,
) -> FamilySpec {
    FamilySpec {
        family,
        name,
        hf_model_types,
        hf_class,
        from_hf: llama::from_hf,
        from_gguf: Some(llama::from_gguf),
        to_hf: Some(llama::to_hf),
        hf_name: llama::hf_name,
        hf_layers: "layers",
        hf_prefix: "model.",
        hf_transpose: None,
        template: None,
        kin,
    }
}

/// Every family lensmap reads, in the order messages list them.
pub const FAMILIES: [FamilySpec; 7] = [
    llama_like(
        Family::Llama,
        "llama",
        &["llama"],
        "LlamaForCausalLM",
        Kin {
            gguf_rope: RopeStyle::Interleaved,
            hf_attention_bias: true,
            hf_mlp_bias: true,
            ..Kin::PLAIN
        },
    ),
    llama_like(
        Family::Mistral,
        "mistral",
        &["mistral"],
        "MistralForCausalLM",
        Kin {
            gguf_rope: RopeStyle::Interleaved,
            window: Window::EveryLayer,
            ..Kin::PLAIN
        },
    ),
    llama_like(
        Family::Qwen2,
        "qwen2",
        &["qwen2"],
        "Qwen2ForCausalLM",
        Kin {
            window: Window::OptIn,
            qkv_bias: true,
            ..Kin::PLAIN
        },
    ),
    llama_like(
        Family::Qwen3,
        "qwen3",
        &["qwen3"],
        "Qwen3ForCausalLM",
        Kin {
            window: Window::OptIn,
            qk_norm: true,
            hf_attention_bias: true,
            ..Kin::PLAIN
        },
    ),
    llama_like(
        Family::Phi3,
        "phi3",
        &["phi3"],
        "Phi3ForCausalLM",
        Kin {
            window: Window::EveryLayer,
            fused: true,
            hf_eps: 1e-5,
            ..Kin::PLAIN
        },
    ),
    FamilySpec {
        family: Family::Gemma3,
        name: "gemma3",
        // `gemma3` is the multimodal wrapper: the text model's config is nested.
        hf_model_types: &["gemma3", "gemma3_text"],
        hf_class: "Gemma3ForCausalLM",
        from_hf: gemma3::from_hf,
        from_gguf: Some(gemma3::from_gguf),
        to_hf: Some(gemma3::to_hf),
        hf_name: gemma3::hf_name,
        template: Some("gemma3"),
        ..llama_like(Family::Gemma3, "", &[], "", Kin::PLAIN)
    },
    FamilySpec {
        family: Family::Gpt2,
        name: "gpt2",
        hf_model_types: &["gpt2"],
        hf_class: "GPT2LMHeadModel",
        from_hf: gpt2::from_hf,
        from_gguf: None,
        to_hf: None,
        hf_name: gpt2::hf_name,
        hf_layers: "h",
        hf_prefix: "transformer.",
        hf_transpose: Some(gpt2::is_conv1d),
        template: None,
        kin: Kin::PLAIN,
    },
];

impl Family {
    /// This family's row of [`FAMILIES`].
    pub fn spec(self) -> &'static FamilySpec {
        FAMILIES
            .iter()
            .find(|s| s.family == self)
            .expect("every Family has a row in FAMILIES (checked by a test)")
    }

    /// The canonical name (GGUF `general.architecture`, HF `model_type`).
    pub fn name(self) -> &'static str {
        self.spec().name
    }
}

/// The names in `table` for which `has` holds, comma-separated: every
/// "supported: …" message is made here.
fn supported(table: &[FamilySpec], names: impl Fn(&FamilySpec) -> Vec<&'static str>) -> String {
    table.iter().flat_map(names).collect::<Vec<_>>().join(", ")
}

/// Resolve an HF `config.json` into a config. `has_lm_head`: whether the
/// checkpoint stores `lm_head.weight` (decides tying when the config is silent).
pub fn config_from_hf(raw: &HfConfig, has_lm_head: bool) -> Result<ModelConfig> {
    config_from_hf_in(&FAMILIES, raw, has_lm_head)
}

/// [`config_from_hf`] over any registry (tests add a row).
fn config_from_hf_in(
    table: &[FamilySpec],
    raw: &HfConfig,
    has_lm_head: bool,
) -> Result<ModelConfig> {
    let model_type = raw.model_type.as_deref().unwrap_or("");
    let spec = table
        .iter()
        .find(|s| s.hf_model_types.contains(&model_type))
        .ok_or_else(|| Error::UnsupportedArch {
            arch: if model_type.is_empty() {
                "(no `model_type`)".into()
            } else {
                model_type.to_string()
            },
            supported: supported(table, |s| s.hf_model_types.to_vec()),
        })?;
    let cfg = (spec.from_hf)(raw, spec.family, has_lm_head)?;
    cfg.validate()?;
    Ok(cfg)
}

/// The `config.json` fields every family writes the same way; arch files add
/// their own to it.
pub(crate) fn hf_common(cfg: &ModelConfig, model_type: &str, class: &str) -> serde_json::Value {
    serde_json::json!({
        "architectures": [class],
        "model_type": model_type,
        "hidden_size": cfg.sizes.d_model,
        "intermediate_size": cfg.sizes.d_ff,
        "num_hidden_layers": cfg.sizes.n_layers,
        "num_attention_heads": cfg.sizes.n_heads,
        "num_key_value_heads": cfg.sizes.n_kv_heads,
        "head_dim": cfg.sizes.head_dim,
        "max_position_embeddings": cfg.sizes.context_len,
        "rms_norm_eps": cfg.sizes.norm_eps,
        "tie_word_embeddings": cfg.tied_embeddings,
        "vocab_size": cfg.sizes.vocab_size,
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
    match cfg.family.spec().to_hf {
        Some(to_hf) => to_hf(cfg),
        None => Err(Error::UnsupportedArch {
            arch: cfg.family.name().into(),
            supported: format!(
                "{} (conversion)",
                supported(&FAMILIES, |s| s.to_hf.map_or(vec![], |_| vec![s.name]))
            ),
        }),
    }
}

/// Resolve a GGUF file's `general.architecture` into a config.
pub fn config_from_gguf(file: &GgufFile) -> Result<ModelConfig> {
    let arch = file
        .meta_str("general.architecture")
        .ok_or_else(|| Error::Config("GGUF key `general.architecture` is missing".into()))?;
    let read = FAMILIES
        .iter()
        .find(|s| s.name == arch)
        .and_then(|s| Some((s.family, s.from_gguf?)));
    let Some((family, from_gguf)) = read else {
        return Err(Error::UnsupportedArch {
            arch: arch.to_string(),
            supported: format!(
                "{} (GGUF)",
                supported(&FAMILIES, |s| s.from_gguf.map_or(vec![], |_| vec![s.name]))
            ),
        });
    };
    let cfg = from_gguf(file, family)?;
    cfg.validate()?;
    Ok(cfg)
}

impl Sizes {
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
        h.check()?;
        Ok(h)
    }
}

/// The GGUF RoPE base, llama.cpp's default when absent.
pub(crate) fn gguf_rope_theta(file: &GgufFile, arch: &str) -> f64 {
    file.meta_f64(&format!("{arch}.rope.freq_base"))
        .unwrap_or(10_000.0)
}

#[cfg(test)]
mod registry {
    use super::*;

    #[test]
    fn every_family_has_exactly_one_row() {
        let all = [
            Family::Llama,
            Family::Mistral,
            Family::Qwen2,
            Family::Qwen3,
            Family::Gemma3,
            Family::Gpt2,
            Family::Phi3,
        ];
        for f in all {
            // A new variant fails to compile here until it is listed above.
            match f {
                Family::Llama
                | Family::Mistral
                | Family::Qwen2
                | Family::Qwen3
                | Family::Gemma3
                | Family::Gpt2
                | Family::Phi3 => {}
            }
            assert_eq!(
                FAMILIES.iter().filter(|s| s.family == f).count(),
                1,
                "{f:?}"
            );
        }
        let mut types: Vec<_> = FAMILIES.iter().flat_map(|s| s.hf_model_types).collect();
        types.sort();
        let n = types.len();
        types.dedup();
        assert_eq!(types.len(), n, "an HF model_type is claimed twice");
    }

    // The whole of a new llama-like family, here Meta's original checkpoint
    // names (`layers.0.attention.wq.weight`) under a made-up `model_type`:
    // a name table (16 lines) and a registry row (10 lines), plus the one-line
    // `Family` variant a real family would add (the example borrows `Llama`).
    fn meta_name(part: Part) -> &'static str {
        match part {
            Part::TokenEmbd => "tok_embeddings",
            Part::Output => "output",
            Part::AttnNorm => "attention_norm",
            Part::AttnQ => "attention.wq",
            Part::AttnK => "attention.wk",
            Part::AttnV => "attention.wv",
            Part::AttnOut => "attention.wo",
            Part::FfnNorm => "ffn_norm",
            Part::FfnGate => "feed_forward.w1",
            Part::FfnDown => "feed_forward.w2",
            Part::FfnUp => "feed_forward.w3",
            other => llama::hf_name(other),
        }
    }
    const META_LLAMA: FamilySpec = FamilySpec {
        hf_name: meta_name,
        hf_prefix: "",
        ..llama_like(
            Family::Llama,
            "meta_llama",
            &["meta_llama"],
            "MetaLlamaForCausalLM",
            Kin::PLAIN,
        )
    };

    #[test]
    fn a_llama_like_family_is_one_entry() {
        let table: Vec<FamilySpec> = FAMILIES.iter().copied().chain([META_LLAMA]).collect();
        let raw = HfConfig::parse(
            r#"{"model_type": "meta_llama", "hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "vocab_size": 100, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
                "rope_theta": 500000.0}"#,
        )
        .unwrap();
        let cfg = config_from_hf_in(&table, &raw, true).unwrap();
        assert_eq!(
            (cfg.family, cfg.sizes.n_layers, cfg.sizes.head_dim),
            (Family::Llama, 2, 16)
        );
        assert_eq!(cfg.rope.as_ref().map(|r| r.theta), Some(500000.0));
        assert!(!cfg.tied_embeddings);

        let names = META_LLAMA.hf_names(|n| n == "tok_embeddings.weight");
        assert_eq!(
            names.name(Part::AttnQ, Some(1), false),
            "layers.1.attention.wq.weight"
        );
        assert_eq!(
            names.name(Part::FfnUp, Some(0), false),
            "layers.0.feed_forward.w3.weight"
        );
        assert_eq!(names.name(Part::OutputNorm, None, false), "norm.weight");
        assert_eq!(names.name(Part::Output, None, false), "output.weight");

        // The row is in every "supported" list made from the table.
        let bert = HfConfig::parse(r#"{"model_type": "bert"}"#).unwrap();
        let msg = config_from_hf_in(&table, &bert, true)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("meta_llama") && msg.contains("gemma3_text"),
            "{msg}"
        );
    }
}
