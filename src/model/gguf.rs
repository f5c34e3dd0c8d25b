//! GGUF files: the memory-mapped file, its metadata readers (which
//! `tokenize.rs` reuses for the tokenizer) and its tensors as a
//! [`WeightSource`].

use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Tensor};

use super::locate::{file_name, first_line};
use super::weights::{MatWeight, Precision, StoredMatrix, WeightSource};
use crate::{Error, Result};

/// Quant types candle can read, for error messages.
pub const SUPPORTED_GGML: &str =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K";

/// A memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Arc<memmap2::Mmap>,
    /// Header: metadata and tensor index.
    pub content: Content,
}

impl GgufFile {
    /// Map the file and parse its header. Every tensor's byte range is checked
    /// against the file length here, so a truncated download fails at once with
    /// one line rather than deep inside a tensor read.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::ModelNotFound(path.to_path_buf()));
        }
        let bad = |reason: String| Error::BadGguf {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and lensmap never writes model files; a
        // file changed underneath a run is outside what we can defend against.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        if mmap.len() < 4 || &mmap[..4] != b"GGUF" {
            return Err(bad("no `GGUF` magic at the start".into()));
        }
        super::bounds::check_gguf_header(&mmap).map_err(bad)?;
        let parse = || Ok(Content::read(&mut Cursor::new(&mmap[..])));
        let content =
            super::bounds::guard(|m| bad(format!("header: {m}")), parse)?.map_err(|e| {
                let msg = first_line(&e.to_string()).to_string();
                // candle rejects types it cannot read while parsing the header.
                match msg
                    .strip_prefix("unknown dtype for tensor ")
                    .and_then(|n| n.trim().parse().ok())
                {
                    Some(code) => Error::UnsupportedDtype {
                        tensor: "(in header)".into(),
                        dtype: ggml_type_name(code),
                        supported: SUPPORTED_GGML.to_string(),
                    },
                    None => bad(format!("header: {msg}")),
                }
            })?;
        for (name, info) in &content.tensor_infos {
            let dtype = info.ggml_dtype;
            let elems = info.shape.elem_count();
            if elems % dtype.block_size() != 0 {
                return Err(bad(format!(
                    "tensor `{name}` has {elems} elements, not a multiple of the {dtype:?} block"
                )));
            }
            let bytes = elems / dtype.block_size() * dtype.type_size();
            let start = content.tensor_data_offset + info.offset;
            let end = start.checked_add(bytes as u64);
            if end.is_none_or(|end| end > mmap.len() as u64) {
                return Err(bad(format!(
                    "tensor `{name}` ends past the end of the file ({} bytes): the file is truncated",
                    mmap.len()
                )));
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            mmap: Arc::new(mmap),
            content,
        })
    }

    /// A metadata value.
    pub fn meta(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// A required metadata value as u64.
    pub fn meta_u64(&self, key: &str) -> Result<u64> {
        match self.meta(key) {
            Some(v) => v
                .to_u64()
                .or_else(|_| v.to_u32().map(u64::from))
                .or_else(|_| v.to_i32().map(|x| x.max(0) as u64))
                .map_err(|_| Error::Config(format!("GGUF key `{key}` is not an integer"))),
            None => Err(Error::Config(format!("GGUF key `{key}` is missing"))),
        }
    }

    /// An optional metadata value as f64.
    pub fn meta_f64(&self, key: &str) -> Option<f64> {
        let v = self.meta(key)?;
        v.to_f32().map(f64::from).or_else(|_| v.to_f64()).ok()
    }

    /// An optional metadata string.
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.meta(key)
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
    }

    fn qtensor(&self, name: &str) -> Result<QTensor> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| Error::MissingTensor {
                tensor: name.to_string(),
                file: self.label(),
            })?;
        let mut cursor = Cursor::new(&self.mmap[..]);
        info.read(&mut cursor, self.content.tensor_data_offset, &Device::Cpu)
            .map_err(|e| Error::UnsupportedDtype {
                tensor: name.to_string(),
                dtype: format!("{:?} ({})", info.ggml_dtype, first_line(&e.to_string())),
                supported: SUPPORTED_GGML.to_string(),
            })
    }
}

impl WeightSource for GgufFile {
    fn label(&self) -> String {
        file_name(&self.path)
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.content
            .tensor_infos
            .get(name)
            .map(|i| i.shape.dims().to_vec())
    }

    fn f32(&self, name: &str) -> Result<Tensor> {
        Ok(self.qtensor(name)?.dequantize(&Device::Cpu)?)
    }

    fn stored(&self, name: &str) -> Result<Option<StoredMatrix>> {
        let Some(info) = self.content.tensor_infos.get(name) else {
            return Ok(None);
        };
        let (rows, cols) = match info.shape.dims() {
            [r, c] => (*r, *c),
            _ => return Ok(None),
        };
        let start = (self.content.tensor_data_offset + info.offset) as usize;
        Ok(StoredMatrix::new(
            self.mmap.clone(),
            start,
            info.ggml_dtype,
            rows,
            cols,
            false,
        ))
    }

    fn mat(&self, name: &str, precision: Precision) -> Result<MatWeight> {
        let q = self.qtensor(name)?;
        if precision.keep_quantized(q.dtype()) {
            Ok(MatWeight::Quant(QMatMul::from_qtensor(q)?))
        } else {
            Ok(MatWeight::Dense(q.dequantize(&Device::Cpu)?))
        }
    }
}

/// GGML's name for a type code, for messages about types candle cannot read.
fn ggml_type_name(code: u32) -> String {
    const NAMES: [&str; 40] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2",
        "Q4_3",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4",
        "IQ4_NL_4_8",
        "IQ4_NL_8_8",
        "MXFP4",
    ];
    match NAMES.get(code as usize) {
        Some(name) => format!("{name} (type {code})"),
        None => format!("type {code}"),
    }
}
