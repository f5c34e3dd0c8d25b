//! Safetensors checkpoints: `model.safetensors`, or the shards listed in
//! `model.safetensors.index.json`, memory-mapped and read as f32.
//!
//! The header of every file is checked once, at open, by the `safetensors`
//! crate: offsets must be contiguous, each tensor's byte range must match its
//! dtype and shape, and the last one must end exactly at the end of the file.
//! A header that lies is rejected there with one line; after that every
//! tensor read is a slice inside the map.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ::safetensors::tensor::{Metadata, TensorInfo};
use ::safetensors::{Dtype, SafeTensorError, SafeTensors};
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::locate::{file_name, label};
pub use super::locate::{weight_files, INDEX_FILE, SINGLE_FILE};
use super::weights::{StoredMatrix, WeightSource};
use crate::{Error, Result};

/// Element types read (and widened to f32).
const SUPPORTED_DTYPES: &str = "F32, F16, BF16, F64";

/// One memory-mapped safetensors file with its validated header.
struct Shard {
    path: PathBuf,
    mmap: Arc<memmap2::Mmap>,
    /// Where the data section starts: 8 + header length.
    data_start: usize,
    meta: Metadata,
}

impl Shard {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: read-only map of a file lensmap never writes; see `GgufFile::open`.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (header_len, meta) =
            SafeTensors::read_metadata(&mmap).map_err(|e| Error::BadCheckpoint {
                path: path.to_path_buf(),
                reason: format!("not a valid safetensors file: {}", explain(&e)),
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            data_start: 8 + header_len,
            mmap: Arc::new(mmap),
            meta,
        })
    }

    fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.meta.info(name)
    }

    /// The bytes of a tensor; in bounds because `read_metadata` checked
    /// that the offsets tile the data section exactly.
    fn bytes(&self, info: &TensorInfo) -> &[u8] {
        let (s, e) = info.data_offsets;
        &self.mmap[self.data_start + s..self.data_start + e]
    }
}

impl Shard {
    /// Drop a tensor's pages from this process once it has been copied out:
    /// they stay in the page cache, but no longer count twice (map + f32
    /// copy) in the resident set. A later read faults them back in.
    fn release(&self, info: &TensorInfo) {
        let (s, e) = info.data_offsets;
        // SAFETY: the map is shared and read-only, so its pages are clean
        // copies of the file; MADV_DONTNEED only unmaps them, and any later
        // access (a neighbouring tensor on the same page) re-reads the same
        // bytes. Failure only means the pages stay resident.
        let _ = unsafe {
            self.mmap.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                self.data_start + s,
                e - s,
            )
        };
    }
}

/// Decides which tensors are stored `[in, out]` (GPT-2's Conv1D) and must be
/// transposed to the `[out, in]` every other layer expects.
pub(crate) type TransposeRule = fn(&str) -> bool;

/// A checkpoint of one or more safetensors files, addressed by tensor name.
pub struct SafetensorsFiles {
    /// What messages call it: the directory or file name.
    label: String,
    shards: Vec<Shard>,
    /// Tensor name → index into `shards`.
    index: HashMap<String, usize>,
    transpose: Option<TransposeRule>,
}

impl SafetensorsFiles {
    /// Open the weights of an HF directory: `model.safetensors`, or the
    /// shards its index lists.
    pub(crate) fn open_dir(dir: &Path) -> Result<Self> {
        Self::open_files(&weight_files(dir)?, label(dir))
    }

    /// Open the given files as one checkpoint.
    pub fn open_files(files: &[PathBuf], label: String) -> Result<Self> {
        let shards = files
            .iter()
            .map(|p| Shard::open(p))
            .collect::<Result<Vec<_>>>()?;
        let mut index = HashMap::new();
        for (i, shard) in shards.iter().enumerate() {
            for name in shard.meta.offset_keys() {
                if let Some(j) = index.insert(name.clone(), i) {
                    return Err(Error::BadCheckpoint {
                        path: shard.path.clone(),
                        reason: format!(
                            "tensor `{name}` is also in `{}`",
                            file_name(&shards[j].path)
                        ),
                    });
                }
            }
        }
        Ok(Self {
            label,
            shards,
            index,
            transpose: None,
        })
    }

    /// Report and read the tensors `rule` picks with their two axes swapped.
    pub(crate) fn with_transposed(mut self, rule: TransposeRule) -> Self {
        self.transpose = Some(rule);
        self
    }

    /// Every tensor name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// The stored element type of a tensor (`BF16`, `F32`, ...).
    pub fn dtype(&self, name: &str) -> Option<Dtype> {
        self.lookup(name).map(|(_, info)| info.dtype)
    }

    /// The number of files.
    pub(crate) fn n_files(&self) -> usize {
        self.shards.len()
    }

    fn lookup(&self, name: &str) -> Option<(&Shard, &TensorInfo)> {
        let shard = &self.shards[*self.index.get(name)?];
        Some((shard, shard.info(name)?))
    }

    fn transposed(&self, name: &str, ndim: usize) -> bool {
        ndim == 2 && self.transpose.is_some_and(|rule| rule(name))
    }
}

impl WeightSource for SafetensorsFiles {
    fn label(&self) -> String {
        self.label.clone()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let (_, info) = self.lookup(name)?;
        let mut shape = info.shape.clone();
        if self.transposed(name, shape.len()) {
            shape.reverse();
        }
        Some(shape)
    }

    fn stored(&self, name: &str) -> Result<Option<StoredMatrix>> {
        let Some((shard, info)) = self.lookup(name) else {
            return Ok(None);
        };
        let dtype = match info.dtype {
            Dtype::F32 => GgmlDType::F32,
            Dtype::F16 => GgmlDType::F16,
            Dtype::BF16 => GgmlDType::BF16,
            _ => return Ok(None),
        };
        let transposed = self.transposed(name, info.shape.len());
        let (rows, cols) = match (info.shape.as_slice(), transposed) {
            ([r, c], false) => (*r, *c),
            ([c, r], true) => (*r, *c),
            _ => return Ok(None),
        };
        Ok(StoredMatrix::new(
            shard.mmap.clone(),
            shard.data_start + info.data_offsets.0,
            dtype,
            rows,
            cols,
            transposed,
        ))
    }

    fn f32(&self, name: &str) -> Result<Tensor> {
        let (shard, info) = self.lookup(name).ok_or_else(|| Error::MissingTensor {
            tensor: name.to_string(),
            file: self.label.clone(),
        })?;
        let values =
            widen(shard.bytes(info), info.dtype).ok_or_else(|| Error::UnsupportedDtype {
                tensor: name.to_string(),
                dtype: format!("{:?}", info.dtype),
                supported: SUPPORTED_DTYPES.into(),
            })?;
        shard.release(info);
        let t = Tensor::from_vec(values, info.shape.as_slice(), &Device::Cpu)?;
        Ok(if self.transposed(name, info.shape.len()) {
            t.t()?.contiguous()?
        } else {
            t
        })
    }
}

/// The crate's header errors, said in terms of what probably happened.
fn explain(e: &SafeTensorError) -> String {
    match e {
        SafeTensorError::MetadataIncompleteBuffer => {
            "the header's tensor offsets do not end where the file ends (truncated download or corrupt header)".into()
        }
        SafeTensorError::InvalidOffset(name) => {
            format!("tensor `{name}` does not start where the previous one ends (overlapping or gapped offsets)")
        }
        SafeTensorError::TensorInvalidInfo => "a tensor's byte range does not match its dtype and shape".into(),
        SafeTensorError::InvalidHeaderLength => "the header length runs past the end of the file".into(),
        other => other.to_string(),
    }
}

/// Little-endian values of a supported float type, as f32. Reads by bytes:
/// the data section need not be aligned (the header length is arbitrary).
fn widen(bytes: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    fn each<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32 + Sync) -> Vec<f32> {
        bytes
            .par_chunks(1 << 16)
            .flat_map_iter(|c| {
                c.chunks_exact(N)
                    .map(|b| f(b.try_into().expect("chunk of N bytes")))
            })
            .collect()
    }
    Some(match dtype {
        Dtype::F32 => each(bytes, f32::from_le_bytes),
        Dtype::F16 => each(bytes, |b| half::f16::from_le_bytes(b).to_f32()),
        Dtype::BF16 => each(bytes, |b| half::bf16::from_le_bytes(b).to_f32()),
        Dtype::F64 => each(bytes, |b| f64::from_le_bytes(b) as f32),
        _ => return None,
    })
}
