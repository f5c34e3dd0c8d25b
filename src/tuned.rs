//! The tuned lens (Belrose et al., 2023, <https://arxiv.org/abs/2303.08112>):
//! one affine translator per layer, `h ↦ h + h·W_iᵀ + b_i`, applied to the
//! residual before the model's own final norm and unembedding.
//!
//! A [`TunedLens`] is read from a directory in the format of the Python
//! `tuned-lens` package (0.2.0, `TunedLens.save`): `config.json` plus
//! `params.pt`, a PyTorch zip/pickle state dict with tensors `i.weight`
//! (`nn.Linear` layout, `[out, in]`) and `i.bias`. The same tensors may come as
//! `params.safetensors` instead. `../shared/reference/tuned/README.md` states
//! the format and the row convention: translator `i` reads lens row `i`
//! (row 0 = embeddings), for `i < n_layers`; row `n_layers` is the model's own
//! logits, untouched.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::ModelConfig;
use crate::{Error, Result};

/// `config.json` of a tuned-lens directory. Unknown keys are kept as they are
/// (tuned-lens drops them with a warning; lensmap only carries them along).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TunedConfig {
    /// Free text: the model the lens was trained for.
    #[serde(default)]
    pub base_model_name_or_path: String,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of blocks; the lens has one translator per block.
    pub num_hidden_layers: usize,
    /// Whether the translators have a bias.
    #[serde(default = "yes")]
    pub bias: bool,
    #[serde(default)]
    pub base_model_revision: Option<String>,
    /// `sha256(numpy.array_str(W_U, precision=1))`; tuned-lens only warns on a mismatch.
    #[serde(default)]
    pub unembed_hash: Option<String>,
    /// `linear_tuned_lens` is the only kind tuned-lens 0.2.0 writes.
    #[serde(default = "linear")]
    pub lens_type: String,
}

fn yes() -> bool {
    true
}
fn linear() -> String {
    "linear_tuned_lens".into()
}

/// One layer's translator, f32.
#[derive(Debug, Clone)]
pub struct Translator {
    /// `[d, d]` as `nn.Linear.weight` (`[out, in]`).
    pub weight: Tensor,
    /// `[d]`, zeros when the lens has no bias.
    pub bias: Tensor,
}

/// A loaded tuned lens: one [`Translator`] per block.
#[derive(Debug, Clone)]
pub struct TunedLens {
    pub config: TunedConfig,
    /// The directory it was read from.
    pub dir: PathBuf,
    /// sha256 of each file read, `(file name, hex)`.
    pub files_sha256: Vec<(String, String)>,
    /// `num_hidden_layers` translators, translator `i` for lens row `i`.
    pub translators: Vec<Translator>,
}

/// The tensor file of a lens directory, in order of preference.
const PARAM_FILES: [&str; 2] = ["params.pt", "params.safetensors"];

impl TunedLens {
    /// Read `dir/config.json` and `dir/params.pt` (or `dir/params.safetensors`).
    pub fn open(dir: &Path) -> Result<Self> {
        let bad = |reason: String| Error::BadLens {
            path: dir.to_path_buf(),
            reason,
        };
        let config_path = dir.join("config.json");
        let config_bytes = std::fs::read(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let config: TunedConfig =
            serde_json::from_slice(&config_bytes).map_err(|e| bad(format!("config.json: {e}")))?;
        if config.lens_type != "linear_tuned_lens" {
            return Err(bad(format!(
                "lens type `{}` is not supported (only `linear_tuned_lens`)",
                config.lens_type
            )));
        }
        let params_path = PARAM_FILES
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .ok_or_else(|| bad("neither `params.pt` nor `params.safetensors` is there".into()))?;
        let params_bytes = std::fs::read(&params_path).map_err(|e| Error::io(&params_path, e))?;
        let tensors = if params_path.extension().is_some_and(|e| e == "pt") {
            read_pt(&params_path).map_err(|e| bad(format!("params.pt: {e}")))?
        } else {
            candle_core::safetensors::load_buffer(&params_bytes, &Device::Cpu)
                .map_err(|e| bad(format!("params.safetensors: {e}")))?
                .into_iter()
                .collect()
        };
        let translators = assemble(&config, tensors).map_err(bad)?;
        let hex = |b: &[u8]| format!("{:x}", Sha256::digest(b));
        Ok(Self {
            files_sha256: vec![
                ("config.json".into(), hex(&config_bytes)),
                (file_name_of(&params_path), hex(&params_bytes)),
            ],
            config,
            dir: dir.to_path_buf(),
            translators,
        })
    }

    /// Refuse a lens made for another width or depth.
    pub fn check(&self, cfg: &ModelConfig) -> Result<()> {
        let (d, l) = (self.config.d_model, self.config.num_hidden_layers);
        if d != cfg.d_model || l != cfg.n_layers {
            return Err(Error::BadLens {
                path: self.dir.clone(),
                reason: format!(
                    "made for d_model {d} and {l} layers, but the model has d_model {} and {} layers",
                    cfg.d_model, cfg.n_layers
                ),
            });
        }
        Ok(())
    }

    /// Translate residual rows read at lens row `row`: `h + h·W_rowᵀ + b_row`
    /// in f32. Rows without a translator (the model's own output, row
    /// `n_layers`) come back unchanged.
    pub fn translate(&self, row: usize, h: &Tensor) -> Result<Tensor> {
        let Some(t) = self.translators.get(row) else {
            return Ok(h.clone());
        };
        let h = h.to_dtype(DType::F32)?;
        let delta = h.matmul(&t.weight.t()?)?.broadcast_add(&t.bias)?;
        Ok((h + delta)?)
    }

    /// Frobenius norm of each `W_i` and L2 norm of each `b_i`: a quick check
    /// that the right tensors were read.
    pub fn norms(&self) -> Result<(Vec<f64>, Vec<f64>)> {
        let norm = |t: &Tensor| -> Result<f64> {
            Ok(t.to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?
                .sqrt())
        };
        let w = self
            .translators
            .iter()
            .map(|t| norm(&t.weight))
            .collect::<Result<_>>()?;
        let b = self
            .translators
            .iter()
            .map(|t| norm(&t.bias))
            .collect::<Result<_>>()?;
        Ok((w, b))
    }
}

fn file_name_of(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Every tensor of a `torch.save` zip archive, through candle's pickle reader
/// (it reads tuned-lens's `OrderedDict` of `_rebuild_tensor_v2` entries and
/// ignores the trailing `_metadata` BUILD).
fn read_pt(path: &Path) -> candle_core::Result<std::collections::HashMap<String, Tensor>> {
    Ok(candle_core::pickle::read_all(path)?.into_iter().collect())
}

/// Pick `i.weight` and `i.bias` for every layer and check their shapes.
fn assemble(
    config: &TunedConfig,
    mut tensors: std::collections::HashMap<String, Tensor>,
) -> std::result::Result<Vec<Translator>, String> {
    let d = config.d_model;
    let mut take = |name: String, shape: &[usize]| -> std::result::Result<Tensor, String> {
        let t = tensors
            .remove(&name)
            .ok_or_else(|| format!("tensor `{name}` is missing"))?;
        if t.dims() != shape {
            return Err(format!(
                "tensor `{name}` has shape {:?}, expected {shape:?} from config.json",
                t.dims()
            ));
        }
        t.to_dtype(DType::F32).map_err(|e| e.to_string())
    };
    let mut out = Vec::with_capacity(config.num_hidden_layers);
    for i in 0..config.num_hidden_layers {
        let weight = take(format!("{i}.weight"), &[d, d])?;
        let bias = if config.bias {
            take(format!("{i}.bias"), &[d])?
        } else {
            Tensor::zeros(d, DType::F32, &Device::Cpu).map_err(|e| e.to_string())?
        };
        out.push(Translator { weight, bias });
    }
    if let Some(extra) = tensors.keys().next() {
        return Err(format!(
            "tensor `{extra}` is not a translator of a {}-layer lens",
            config.num_hidden_layers
        ));
    }
    Ok(out)
}
