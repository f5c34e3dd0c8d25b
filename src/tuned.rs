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
        if d != cfg.sizes.d_model || l != cfg.sizes.n_layers {
            return Err(Error::BadLens {
                path: self.dir.clone(),
                reason: format!(
                    "made for d_model {d} and {l} layers, but the model has d_model {} and {} layers",
                    cfg.sizes.d_model, cfg.sizes.n_layers
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

/// Write a lens directory that tuned-lens 0.2.0's `TunedLens.load` reads:
/// `config.json` and `params.pt`, files replaced atomically.
/// `translators[i]` is `(W_i` row-major `[d, d]` as `nn.Linear.weight`, `b_i)`.
pub fn save_lens(
    dir: &Path,
    config: &TunedConfig,
    translators: &[(Vec<f32>, Vec<f32>)],
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let json = serde_json::to_string(config).map_err(|e| Error::BadLens {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_atomic(&dir.join("config.json"), json.as_bytes())?;
    let pt = torch_state_dict(config.d_model, translators).map_err(|e| Error::BadLens {
        path: dir.to_path_buf(),
        reason: format!("writing params.pt: {e}"),
    })?;
    write_atomic(&dir.join("params.pt"), &pt)
}

/// Write `bytes` to a temporary file next to `path`, then rename it over `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// The bytes of `torch.save(state_dict)` for `{i.weight, i.bias}` f32
/// tensors, in the layout `../shared/reference/tuned/README.md` documents
/// (zip archive `params/`, entries stored, storages 64-byte aligned, pickle
/// protocol 2 with `OrderedDict`, `_rebuild_tensor_v2` and `FloatStorage`
/// only). Hand-written because no Rust crate writes PyTorch's format; the
/// pickle is the fixed subset torch itself emits for a state dict.
fn torch_state_dict(
    d: usize,
    translators: &[(Vec<f32>, Vec<f32>)],
) -> std::result::Result<Vec<u8>, String> {
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    let mut pkl: Vec<u8> = vec![0x80, 2]; // PROTO 2
    let global = |p: &mut Vec<u8>, module: &str, name: &str| {
        p.push(b'c');
        p.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    };
    let unicode = |p: &mut Vec<u8>, s: &str| {
        p.push(b'X');
        p.extend_from_slice(&(s.len() as u32).to_le_bytes());
        p.extend_from_slice(s.as_bytes());
    };
    let int = |p: &mut Vec<u8>, v: usize| {
        p.push(b'J'); // BININT
        p.extend_from_slice(&(v as i32).to_le_bytes());
    };
    global(&mut pkl, "collections", "OrderedDict");
    pkl.extend_from_slice(b")R("); // OrderedDict(), MARK
    let mut storages: Vec<&[f32]> = Vec::new();
    for (i, (w, b)) in translators.iter().enumerate() {
        for (name, data, shape) in [
            (format!("{i}.weight"), w.as_slice(), vec![d, d]),
            (format!("{i}.bias"), b.as_slice(), vec![d]),
        ] {
            let key = storages.len();
            storages.push(data);
            unicode(&mut pkl, &name);
            global(&mut pkl, "torch._utils", "_rebuild_tensor_v2");
            pkl.push(b'('); // args
            pkl.push(b'('); // persistent id
            unicode(&mut pkl, "storage");
            global(&mut pkl, "torch", "FloatStorage");
            unicode(&mut pkl, &key.to_string());
            unicode(&mut pkl, "cpu");
            int(&mut pkl, data.len());
            pkl.extend_from_slice(b"tQ"); // TUPLE, BINPERSID
            int(&mut pkl, 0); // storage offset
            pkl.push(b'(');
            for &s in &shape {
                int(&mut pkl, s);
            }
            pkl.push(b't');
            pkl.push(b'(');
            let strides: Vec<usize> = if shape.len() == 2 {
                vec![d, 1]
            } else {
                vec![1]
            };
            for s in strides {
                int(&mut pkl, s);
            }
            pkl.push(b't');
            pkl.push(0x89); // NEWFALSE: requires_grad
            global(&mut pkl, "collections", "OrderedDict");
            pkl.extend_from_slice(b")R"); // backward hooks
            pkl.extend_from_slice(b"tR"); // TUPLE, REDUCE
        }
    }
    pkl.extend_from_slice(b"u."); // SETITEMS, STOP

    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    let opts = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .with_alignment(64);
    let e = |e: zip::result::ZipError| e.to_string();
    let io = |e: std::io::Error| e.to_string();
    let mut put = |name: &str, bytes: &[u8]| -> std::result::Result<(), String> {
        zip.start_file(format!("params/{name}"), opts).map_err(e)?;
        zip.write_all(bytes).map_err(io)
    };
    put("data.pkl", &pkl)?;
    put(".format_version", b"1")?;
    put(".storage_alignment", b"64")?;
    put("byteorder", b"little")?;
    for (k, data) in storages.iter().enumerate() {
        let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        put(&format!("data/{k}"), &bytes)?;
    }
    put("version", b"3\n")?;
    put(".data/serialization_id", b"lensmap-train-lens")?;
    zip.finish().map_err(e)?;
    Ok(out.into_inner())
}
