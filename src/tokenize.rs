//! Tokenizer: an HF `tokenizers::Tokenizer` built from GGUF metadata or from
//! `tokenizer.json`, plus the special tokens lensmap needs.
//!
//! GGUF files carry the vocabulary, not a `tokenizer.json`, so the pipeline is
//! rebuilt here the way HF's converters (and llama.cpp) define it:
//!
//! * `tokenizer.ggml.model = "gpt2"`: byte-level BPE from the tokens and merges,
//!   with the pre-tokenizer named by `tokenizer.ggml.pre` (llama.cpp's table).
//! * `tokenizer.ggml.model = "llama"`: SentencePiece. HF's converter turns it
//!   into a BPE whose merges are every split of a piece into two vocabulary
//!   pieces, ranked by the piece's score, with byte fallback and "▁" for spaces.
//!
//! Control and user-defined tokens become added tokens, so they are recognised
//! inside text (`<start_of_turn>`, `<|im_end|>`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use rayon::prelude::*;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
    Tokenizer,
};

use crate::model::gguf::Metadata;
use crate::model::Checkpoint;
use crate::{Error, Result};

/// Ids with the byte span of each token in the encoded text.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// Byte offsets `[start, end)` into the encoded text, one per id.
    pub offsets: Vec<(usize, usize)>,
}

/// A tokenizer and the special-token facts lensmap needs.
pub struct TextTokenizer {
    tok: Tokenizer,
    bos: Option<(u32, String)>,
    eos: Option<(u32, String)>,
    add_bos: bool,
    /// (template text, source).
    chat_template: Option<(String, String)>,
    /// Tokens the tokenizer knows, added tokens included; ids past it have no text.
    vocab_size: usize,
    /// Ids of special added tokens.
    special: std::collections::HashSet<u32>,
}

/// Well-known end-of-turn tokens that stop generation besides EOS.
const END_OF_TURN: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<end_of_turn>",
    "<|end|>",
    "<|endoftext|>",
];

/// `tokenizer.ggml.pre` values understood for byte-level BPE, for the error message.
const SUPPORTED_PRE: &str = "gpt-2, default, llama-bpe (llama3, llama-v3, falcon3), \
smollm (starcoder, refact, command-r, codeshell, exaone, minerva-7b), \
qwen2 (deepseek-r1-qwen, megrez), tekken";

// Pre-tokenizer regexes, as in llama.cpp's `llama-vocab.cpp` and the HF tokenizer.json files.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_REGEX: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

// llama.cpp token types (`tokenizer.ggml.token_type`).
const TYPE_NORMAL: i64 = 1;
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

fn tok_err(msg: impl std::fmt::Display) -> Error {
    Error::Tokenizer(msg.to_string())
}

impl TextTokenizer {
    /// Build from GGUF `tokenizer.ggml.*` metadata.
    pub fn from_gguf(meta: &HashMap<String, Value>) -> Result<Self> {
        let meta = Metadata(meta);
        let model = meta
            .str("tokenizer.ggml.model")
            .ok_or_else(|| tok_err("GGUF has no `tokenizer.ggml.model`"))?;
        let tokens = meta
            .str_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| tok_err("GGUF has no `tokenizer.ggml.tokens`"))?;
        let types = match meta.int_array("tokenizer.ggml.token_type")? {
            Some(t) if t.len() == tokens.len() => t,
            Some(t) => {
                return Err(tok_err(format!(
                    "`tokenizer.ggml.token_type` has {} entries for {} tokens",
                    t.len(),
                    tokens.len()
                )))
            }
            None => vec![TYPE_NORMAL; tokens.len()],
        };

        // llama.cpp's default for `add_bos` when the file does not say:
        // SentencePiece and the llama3/tekken BPE families add one.
        let pre = meta.str("tokenizer.ggml.pre").unwrap_or("default");
        let mut default_add_bos = true;
        let mut tok = match model {
            "gpt2" => {
                let merges = meta
                    .str_array("tokenizer.ggml.merges")?
                    .ok_or_else(|| tok_err("GGUF BPE tokenizer has no `tokenizer.ggml.merges`"))?;
                default_add_bos = matches!(
                    pre,
                    "llama-bpe" | "llama3" | "llama-v3" | "falcon3" | "tekken"
                );
                build_byte_level_bpe(&tokens, &merges, pre)?
            }
            "llama" => {
                let scores = meta.f32_array("tokenizer.ggml.scores")?.ok_or_else(|| {
                    tok_err("GGUF SentencePiece tokenizer has no `tokenizer.ggml.scores`")
                })?;
                if scores.len() != tokens.len() {
                    return Err(tok_err(format!(
                        "`tokenizer.ggml.scores` has {} entries for {} tokens",
                        scores.len(),
                        tokens.len()
                    )));
                }
                // llama.cpp's default for SentencePiece vocabularies is a prefix space.
                let add_space_prefix = meta.bool("tokenizer.ggml.add_space_prefix").unwrap_or(true);
                let unk = meta
                    .u32("tokenizer.ggml.unknown_token_id")
                    .and_then(|id| tokens.get(id as usize).copied());
                build_sentencepiece_bpe(&tokens, &scores, &types, unk, add_space_prefix)?
            }
            other => {
                return Err(tok_err(format!(
                    "unsupported GGUF tokenizer model `{other}` (supported: gpt2, llama)"
                )))
            }
        };

        // Control and user-defined tokens are matched in raw text before the
        // model sees it. Only control (and unknown) tokens count as special:
        // user-defined ones such as Gemma's "\n\n" are ordinary text.
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| matches!(**t, TYPE_CONTROL | TYPE_USER_DEFINED | TYPE_UNKNOWN))
            .map(|(s, t)| AddedToken::from(*s, *t != TYPE_USER_DEFINED).normalized(false))
            .collect();
        tok.add_special_tokens(added).map_err(tok_err)?;

        let token_at = |key: &str| {
            meta.u32(key)
                .and_then(|id| tokens.get(id as usize).map(|s| (id, s.to_string())))
        };
        let bos = token_at("tokenizer.ggml.bos_token_id");
        let eos = token_at("tokenizer.ggml.eos_token_id");
        let add_bos = bos.is_some()
            && meta
                .bool("tokenizer.ggml.add_bos_token")
                .unwrap_or(default_add_bos);
        let chat_template = meta
            .str("tokenizer.chat_template")
            .map(|t| (t.to_string(), "gguf:tokenizer.chat_template".to_string()));
        Ok(Self::assemble(tok, bos, eos, add_bos, chat_template))
    }

    /// The tokenizer of an opened checkpoint: from the GGUF metadata, or the
    /// HF directory's `tokenizer.json`.
    pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<Self> {
        match ckpt.gguf() {
            Some(file) => Self::from_gguf(&file.content.metadata),
            None => Self::from_hf_dir(ckpt.location.path()),
        }
    }

    /// Build from an HF directory: `tokenizer.json` and `tokenizer_config.json`.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(tok_err(format!(
                "`{}` not found; an HF model directory needs its tokenizer.json",
                path.display()
            )));
        }
        // The tokenizers crate panics on some malformed files (a typo inside
        // `"decoder"`): catch that here and report it like any parse error.
        let parse = || {
            Ok(Tokenizer::from_file(&path).map_err(|e| {
                tok_err(format!(
                    "`{}`: {}",
                    path.display(),
                    one_line(&e.to_string())
                ))
            }))
        };
        let wrap = |m: String| tok_err(format!("`{}`: {m}", path.display()));
        let mut tok = crate::model::bounds::guard(wrap, parse)??;

        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = if config_path.is_file() {
            let text =
                std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
            serde_json::from_str(&text)
                .map_err(|e| tok_err(format!("`{}`: {}", config_path.display(), e)))?
        } else {
            serde_json::Value::Null
        };

        let special = |key: &str| -> Option<(u32, String)> {
            let text = match config.get(key)? {
                serde_json::Value::String(s) => s.clone(),
                v => v.get("content")?.as_str()?.to_string(),
            };
            tok.token_to_id(&text).map(|id| (id, text))
        };
        let bos = special("bos_token");
        let eos = special("eos_token");

        let add_bos = match config.get("add_bos_token").and_then(|v| v.as_bool()) {
            Some(b) => b && bos.is_some(),
            // No explicit flag: the post-processor decides, as in transformers.
            None => bos.as_ref().is_some_and(|(bos_id, _)| {
                tok.encode("a", true)
                    .map(|e| e.get_ids().first() == Some(bos_id))
                    .unwrap_or(false)
            }),
        };

        let chat_template = match config.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            // A list of named templates: take `default`.
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            _ => None,
        }
        .map(|t| (t, "tokenizer_config.json".to_string()))
        .or_else(|| {
            // Newer checkpoints keep the template in its own file.
            let p = dir.join("chat_template.jinja");
            std::fs::read_to_string(p)
                .ok()
                .map(|t| (t, "chat_template.jinja".to_string()))
        });

        // The post-processor only adds special tokens (never wanted here: BOS
        // is handled by `build_prompt`), but ByteLevel's also trims offsets;
        // without it every byte of the text belongs to exactly one token.
        tok.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
        Ok(Self::assemble(tok, bos, eos, add_bos, chat_template))
    }

    fn assemble(
        tok: Tokenizer,
        bos: Option<(u32, String)>,
        eos: Option<(u32, String)>,
        add_bos: bool,
        chat_template: Option<(String, String)>,
    ) -> Self {
        let vocab_size = tok.get_vocab_size(true);
        let special = tok
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        TextTokenizer {
            tok,
            special,
            bos,
            eos,
            add_bos,
            chat_template,
            vocab_size,
        }
    }

    /// Encode text; special tokens in the text are recognised; BOS is never added.
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let enc = self.tok.encode(text, false).map_err(tok_err)?;
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            offsets: enc.get_offsets().to_vec(),
        })
    }

    /// Decode ids, keeping special tokens.
    pub fn decode(&self, ids: &[u32]) -> String {
        let ids: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&id| (id as usize) < self.vocab_size)
            .collect();
        self.tok.decode(&ids, false).unwrap_or_default()
    }

    /// One id decoded on its own; empty for ids past the vocabulary.
    pub fn token_text(&self, id: u32) -> String {
        self.decode(&[id])
    }

    /// The vocabulary piece for an id (`Ġthe`, `▁the`, `<0x0A>`), as HF
    /// `convert_ids_to_tokens`.
    pub fn token_piece(&self, id: u32) -> Option<String> {
        self.tok.id_to_token(id)
    }

    /// The id of a vocabulary piece or added token.
    pub fn token_to_id(&self, piece: &str) -> Option<u32> {
        self.tok.token_to_id(piece)
    }

    /// Whether the id is a special (control) token such as `<|im_start|>`.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    /// Number of tokens the tokenizer knows (added tokens included). The
    /// model's embedding may be larger (Qwen pads it).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The underlying HF tokenizer.
    pub(crate) fn inner(&self) -> &Tokenizer {
        &self.tok
    }

    /// BOS id and text.
    pub fn bos(&self) -> Option<(u32, &str)> {
        self.bos.as_ref().map(|(id, s)| (*id, s.as_str()))
    }

    /// EOS id and text.
    pub fn eos(&self) -> Option<(u32, &str)> {
        self.eos.as_ref().map(|(id, s)| (*id, s.as_str()))
    }

    /// Whether the model expects a BOS in front of raw text.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The chat template shipped with the tokenizer and where it came from.
    pub fn chat_template(&self) -> Option<(&str, &str)> {
        self.chat_template
            .as_ref()
            .map(|(t, s)| (t.as_str(), s.as_str()))
    }

    /// Extra ids that end generation besides EOS (`<|eot_id|>`, `<end_of_turn>`).
    /// EOS itself comes first.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.eos.iter().map(|(id, _)| *id).collect();
        for piece in END_OF_TURN {
            if let Some(id) = self.tok.token_to_id(piece) {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        ids
    }
}

/// Byte-level BPE (GPT-2 style) from GGUF tokens and merges.
fn build_byte_level_bpe(tokens: &[&str], merges: &[&str], pre: &str) -> Result<Tokenizer> {
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| tok_err(format!("malformed merge `{m}` in `tokenizer.ggml.merges`")))
        })
        .collect::<Result<_>>()?;

    // (normalizer, pre-tokenizer, ignore_merges) per llama.cpp's pre-type table.
    // llama.cpp sets ignore_merges for the llama3 and tekken families, as
    // their tokenizer.json files do: a whole word found in the vocabulary is
    // taken as is.
    let split = |re: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(
            SplitPattern::Regex(re.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(tok_err)?;
        Ok(PreSequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, false).into(),
        ])
        .into())
    };
    let (normalizer, pre_tokenizer, ignore_merges): (
        Option<NormalizerWrapper>,
        PreTokenizerWrapper,
        bool,
    ) = match pre {
        "gpt-2" | "gpt2" | "default" => (None, ByteLevel::new(false, true, true).into(), false),
        "llama-bpe" | "llama3" | "llama-v3" | "falcon3" => (None, split(LLAMA3_REGEX)?, true),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            (
                None,
                PreSequence::new(vec![
                    Digits::new(true).into(),
                    ByteLevel::new(false, true, true).into(),
                ])
                .into(),
                false,
            )
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" => (Some(NFC.into()), split(QWEN2_REGEX)?, false),
        "tekken" => (None, split(TEKKEN_REGEX)?, true),
        other => {
            return Err(tok_err(format!(
                "unsupported `tokenizer.ggml.pre` `{other}` (supported: {SUPPORTED_PRE})"
            )))
        }
    };

    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(tok_err)?;
    let mut tok = Tokenizer::new(bpe);
    // Set the normalizer before adding tokens: changing it later re-normalises them.
    tok.with_normalizer(normalizer).map_err(tok_err)?;
    tok.with_pre_tokenizer(Some(pre_tokenizer));
    tok.with_decoder(Some(ByteLevel::default()));
    Ok(tok)
}

/// SentencePiece vocabulary as an HF BPE, the way transformers' `SpmConverter`
/// (and `tokenizer.json` of Gemma, Llama 2…) does it.
///
/// SentencePiece BPE repeatedly joins the adjacent pair whose concatenation is
/// the highest-scoring piece. An HF BPE with one merge `(l, r)` for every way to
/// split a piece into two vocabulary pieces, ranked by the piece's score,
/// makes the same choices.
fn build_sentencepiece_bpe(
    tokens: &[&str],
    scores: &[f32],
    types: &[i64],
    unk: Option<&str>,
    add_space_prefix: bool,
) -> Result<Tokenizer> {
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();

    // Only normal pieces are produced by merging: SentencePiece never forms
    // control, byte or unused pieces from text, and user-defined ones are
    // matched as added tokens before BPE runs.
    // (score, piece, left, right), in vocabulary order. In parallel: Gemma
    // 3's 262k pieces give 514k candidates, the larger part of its load time.
    let mut candidates: Vec<(f32, u32, u32, u32)> = tokens
        .par_iter()
        .enumerate()
        .filter(|&(id, _)| types[id] == TYPE_NORMAL)
        .flat_map_iter(|(id, piece)| {
            let vocab = &vocab;
            piece.char_indices().skip(1).filter_map(move |(split, _)| {
                let (l, r) = piece.split_at(split);
                match (vocab.get(l), vocab.get(r)) {
                    (Some(&lid), Some(&rid)) => Some((scores[id], id as u32, lid, rid)),
                    _ => None,
                }
            })
        })
        .collect();
    // Highest score first; for one piece, splits in order of (left id, right
    // id), as HF's SentencePieceExtractor sorts them; equal scores keep
    // vocabulary order. No two candidates share (piece, left, right), so
    // the order is total and an unstable sort gives the one result.
    candidates.par_sort_unstable_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    let merges: Vec<(String, String)> = candidates
        .par_iter()
        .map(|&(_, _, l, r)| {
            (
                tokens[l as usize].to_string(),
                tokens[r as usize].to_string(),
            )
        })
        .collect();

    let byte_fallback = vocab.contains_key("<0x00>");
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(byte_fallback)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk.to_string());
    }
    let bpe = builder.build().map_err(tok_err)?;

    // Spaces become "▁". Llama-2-style vocabularies also prefix one ("legacy"
    // HF behaviour, which llama.cpp shares); Gemma's does not. There is no
    // pre-tokenizer: SentencePiece merges across the whole text, and its
    // vocabulary has multi-space pieces.
    let replace = Replace::new(" ", "▁").map_err(tok_err)?;
    let normalizer: NormalizerWrapper = if add_space_prefix {
        NormalizerSequence::new(vec![Prepend::new("▁".to_string()).into(), replace.into()]).into()
    } else {
        replace.into()
    };
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ").map_err(tok_err)?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }

    let mut tok = Tokenizer::new(bpe);
    tok.with_normalizer(Some(normalizer)).map_err(tok_err)?;
    tok.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tok)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
