//! `lensmap convert`: a GGUF model written out as a Hugging Face directory
//! (`config.json`, f32 `model.safetensors`, `tokenizer.json`,
//! `tokenizer_config.json`) that transformers and lensmap load as any
//! checkpoint.
//!
//! Tensors are renamed through the logical [`Part`]s (GGUF name → part → HF
//! name), so no family needs a name table of its own here. Two things differ
//! in value, not just in name, and both follow from comparing the GGUF config
//! with the config the written `config.json` reads back as:
//! - RoPE: llama.cpp permuted Llama/Mistral q and k rows for interleaved
//!   pairs; HF checkpoints use rotate-half, so the rows are put back;
//! - norm gains: Gemma's GGUF stores `1 + w`, HF stores `w`.
//!
//! Tensors are dequantised and written one at a time, so memory stays near
//! the size of the largest tensor.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ::safetensors::{Dtype, View};

use crate::model::arch::{self, GgufNames, Part, PartKey, TensorNames};
use crate::model::checkpoint::Checkpoint;
use crate::model::config::{ModelConfig, RopeStyle};
use crate::model::gguf::GgufFile;
use crate::model::hf::{HfConfig, CONFIG_FILE};
use crate::model::locate::{ModelLocation, TOKENIZER_FILE};
use crate::model::safetensors::SINGLE_FILE;
use crate::model::weights::WeightSource;
use crate::tokenize::TextTokenizer;
use crate::{Error, Result};

/// What a conversion wrote.
#[derive(Debug, Clone)]
pub struct Converted {
    pub out_dir: PathBuf,
    /// Tensors written to `model.safetensors`.
    pub tensors: usize,
    /// Size of `model.safetensors` in bytes.
    pub bytes: u64,
    /// GGUF tensors with no HF counterpart, left out (e.g. `rope_freqs.weight`).
    pub skipped: Vec<String>,
}

/// Convert a GGUF model into an HF directory at `out_dir` (created if needed;
/// files of the same names are replaced).
pub fn to_safetensors(gguf: &Path, out_dir: &Path) -> Result<Converted> {
    if gguf.is_dir() {
        return Err(Error::InvalidOption(format!(
            "`{}` is a directory: `convert` reads one GGUF file (an HF directory is already safetensors; pass it to `run` as it is)",
            gguf.display()
        )));
    }
    let ckpt = Checkpoint::open_at(&ModelLocation::Gguf(gguf.to_path_buf()))?;
    let (file, cfg) = match ckpt.gguf() {
        Some(file) => (file, &ckpt.cfg),
        None => unreachable!("a GGUF location opens as GGUF"),
    };
    if cfg.rope.as_ref().is_some_and(|r| r.freq_factors.is_some()) {
        // HF describes this scaling by parameters (`rope_scaling`), which the
        // factors alone do not determine; refuse rather than drop it.
        return Err(Error::Config(
            "cannot convert a GGUF with `rope_freqs.weight` (Llama 3.1+ RoPE scaling) to safetensors".into(),
        ));
    }
    let tokenizer = TextTokenizer::from_gguf(&file.content.metadata)?;
    write_hf_dir(file, cfg, &tokenizer, out_dir)
}

/// Write the HF directory for an opened GGUF file.
fn write_hf_dir(
    file: &GgufFile,
    cfg: &ModelConfig,
    tokenizer: &TextTokenizer,
    out_dir: &Path,
) -> Result<Converted> {
    let mut config = arch::config_to_hf(cfg)?;
    config["bos_token_id"] = tokenizer.bos().map(|(id, _)| id).into();
    config["eos_token_id"] = tokenizer.eos().map(|(id, _)| id).into();
    let hf_cfg = read_back(&config, cfg)?;

    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let (tensors, skipped) = plan(file, cfg, &hf_cfg)?;
    let bytes = write_tensors(file, &tensors, &out_dir.join(SINGLE_FILE))?;
    write_json(&out_dir.join(CONFIG_FILE), &config)?;
    write_tokenizer(tokenizer, cfg, out_dir)?;
    Ok(Converted {
        out_dir: out_dir.to_path_buf(),
        tensors: tensors.len(),
        bytes,
        skipped,
    })
}

/// The config the written `config.json` will load as. It must be the GGUF
/// config up to the two representation changes the converter makes.
fn read_back(config: &serde_json::Value, cfg: &ModelConfig) -> Result<ModelConfig> {
    let raw = HfConfig::parse(&config.to_string()).map_err(Error::Config)?;
    let hf = arch::config_from_hf(&raw, !cfg.tied_embeddings)?;
    let mut expected = cfg.clone();
    expected.norm_weight_offset = hf.norm_weight_offset;
    if let (Some(r), Some(h)) = (expected.rope.as_mut(), hf.rope.as_ref()) {
        r.style = h.style;
    }
    if expected != hf {
        return Err(Error::Config(format!(
            "`{}` cannot be written as an HF config without changing the model",
            cfg.family.name()
        )));
    }
    Ok(hf)
}

/// How one tensor's values change on the way.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fix {
    None,
    /// Undo llama.cpp's interleaving permutation over this many heads.
    Unpermute {
        heads: usize,
    },
    /// Add to every element (norm gain convention).
    Shift(f32),
}

/// One tensor to write.
struct Planned {
    gguf: String,
    hf: String,
    shape: Vec<usize>,
    fix: Fix,
}

/// Map every GGUF tensor to its HF name and fix; unmapped names are returned.
fn plan(
    file: &GgufFile,
    cfg: &ModelConfig,
    hf_cfg: &ModelConfig,
) -> Result<(Vec<Planned>, Vec<String>)> {
    let hf_names = arch::hf_names(hf_cfg.family, |_| false);
    // GGUF keeps Phi-3's fused gate|up under `ffn_up`: one of the two parts only.
    let fused_mlp = cfg.mlp == crate::model::config::MlpLayout::GatedFused;
    let table: HashMap<String, PartKey> = arch::all_names(&GgufNames, cfg.sizes.n_layers)
        .into_iter()
        .filter(|((part, _, _), _)| match part {
            Part::FfnUp => !fused_mlp,
            Part::FfnGateUp => fused_mlp,
            _ => true,
        })
        .map(|(key, name)| (name, key))
        .collect();
    let unpermute = matches!(
        (
            cfg.rope.as_ref().map(|r| r.style),
            hf_cfg.rope.as_ref().map(|r| r.style)
        ),
        (Some(RopeStyle::Interleaved), Some(RopeStyle::NeoX))
    );
    let shift = cfg.norm_weight_offset - hf_cfg.norm_weight_offset;

    let mut names: Vec<&String> = file.content.tensor_infos.keys().collect();
    names.sort();
    let mut planned = Vec::new();
    let mut skipped = Vec::new();
    for gguf in names {
        let Some(&(part, layer, bias)) = table.get(gguf) else {
            skipped.push(gguf.clone());
            continue;
        };
        let fix = match part {
            Part::AttnQ if unpermute => Fix::Unpermute {
                heads: cfg.sizes.n_heads,
            },
            Part::AttnK if unpermute => Fix::Unpermute {
                heads: cfg.sizes.n_kv_heads,
            },
            p if p.is_norm() && !bias && shift != 0.0 => Fix::Shift(shift),
            _ => Fix::None,
        };
        planned.push(Planned {
            gguf: gguf.clone(),
            hf: hf_names.name(part, layer, bias),
            shape: file.shape(gguf).unwrap_or_default(),
            fix,
        });
    }
    Ok((planned, skipped))
}

/// llama.cpp wrote the rows of each head, seen in HF order as `[2, hd/2]`,
/// as `[hd/2, 2]`. Put them back. `row` is the length of one row (1 for a bias).
fn unpermute(v: &[f32], heads: usize, row: usize) -> Vec<f32> {
    let rows = v.len() / row;
    let (hd, half) = (rows / heads, rows / heads / 2);
    let mut out = vec![0f32; v.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * hd + i * 2 + j;
                let dst = h * hd + j * half + i;
                out[dst * row..(dst + 1) * row].copy_from_slice(&v[src * row..(src + 1) * row]);
            }
        }
    }
    out
}

/// A tensor dequantised only when the writer asks for its bytes.
struct Lazy<'a> {
    file: &'a GgufFile,
    planned: &'a Planned,
    /// The first failure; `View::data` cannot return one.
    error: &'a RefCell<Option<Error>>,
}

impl Lazy<'_> {
    fn values(&self) -> Result<Vec<f32>> {
        let p = self.planned;
        let v = self.file.f32(&p.gguf)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(match p.fix {
            Fix::None => v,
            Fix::Unpermute { heads } => {
                let row = if p.shape.len() > 1 {
                    p.shape[1..].iter().product()
                } else {
                    1
                };
                unpermute(&v, heads, row)
            }
            Fix::Shift(s) => v.into_iter().map(|x| x + s).collect(),
        })
    }
}

impl View for &Lazy<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.planned.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match self.values() {
            Ok(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Err(e) => {
                self.error.borrow_mut().get_or_insert(e);
                // Keep the file the promised length; it is deleted below.
                Cow::Owned(vec![0; self.data_len()])
            }
        }
    }
    fn data_len(&self) -> usize {
        self.planned.shape.iter().product::<usize>() * 4
    }
}

/// Write `model.safetensors` (via a temporary name, so a failure leaves no
/// file that looks complete). Returns its size.
fn write_tensors(file: &GgufFile, planned: &[Planned], path: &Path) -> Result<u64> {
    let error = RefCell::new(None);
    let views: Vec<Lazy> = planned
        .iter()
        .map(|planned| Lazy {
            file,
            planned,
            error: &error,
        })
        .collect();
    let partial = path.with_extension("safetensors.partial");
    let written = ::safetensors::serialize_to_file(
        views.iter().map(|v| (v.planned.hf.as_str(), v)),
        Some(HashMap::from([("format".to_string(), "pt".to_string())])),
        &partial,
    );
    let failed = match (written, error.into_inner()) {
        (_, Some(e)) => Some(e),
        (Err(e), None) => Some(Error::BadCheckpoint {
            path: partial.clone(),
            reason: format!("cannot write: {e}"),
        }),
        (Ok(()), None) => None,
    };
    if let Some(e) = failed {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, path).map_err(|e| Error::io(path, e))?;
    Ok(std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len())
}

/// `tokenizer.json` as the tokenizer module built it from GGUF, and a
/// `tokenizer_config.json` with the special tokens and chat template.
fn write_tokenizer(tokenizer: &TextTokenizer, cfg: &ModelConfig, out_dir: &Path) -> Result<()> {
    let path = out_dir.join(TOKENIZER_FILE);
    tokenizer
        .inner()
        .save(&path, false)
        .map_err(|e| Error::Output {
            what: format!("cannot write `{}`", path.display()),
            source: e,
        })?;
    let config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tokenizer.bos().map(|(_, t)| t),
        "eos_token": tokenizer.eos().map(|(_, t)| t),
        "add_bos_token": tokenizer.add_bos(),
        "chat_template": tokenizer.chat_template().map(|(t, _)| t),
        "model_max_length": cfg.sizes.context_len,
        "clean_up_tokenization_spaces": false,
    });
    write_json(&out_dir.join("tokenizer_config.json"), &config)
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("a JSON value serialises");
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's `permute`, as in `convert_hf_to_gguf.py`.
    fn permute(v: &[f32], heads: usize, row: usize) -> Vec<f32> {
        let rows = v.len() / row;
        let (hd, half) = (rows / heads, rows / heads / 2);
        let mut out = vec![0f32; v.len()];
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..half {
                    let src = h * hd + j * half + i;
                    let dst = h * hd + i * 2 + j;
                    out[dst * row..(dst + 1) * row].copy_from_slice(&v[src * row..(src + 1) * row]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_llama_cpp() {
        let v: Vec<f32> = (0..2 * 8 * 3).map(|x| x as f32).collect();
        assert_eq!(unpermute(&permute(&v, 2, 3), 2, 3), v);
        // One head of 4 rows, one column: HF rows [a0 a1 | b0 b1] → GGUF [a0 b0 a1 b1].
        assert_eq!(permute(&[0., 1., 2., 3.], 1, 1), vec![0., 2., 1., 3.]);
    }
}
