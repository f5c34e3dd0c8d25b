//! GGUF files: the memory-mapped file, its metadata readers (which
//! `tokenize.rs` reuses for the tokenizer) and its tensors as a
//! [`WeightSource`].

use std::collections::HashMap;
use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};

use super::locate::{file_name, first_line};
use super::weights::{StoredMatrix, WeightSource};
use crate::{Error, Result};

/// Quant types candle can read, for error messages.
const SUPPORTED_GGML: &str =
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

    /// The metadata, with typed readers.
    pub fn metadata(&self) -> Metadata<'_> {
        Metadata(&self.content.metadata)
    }

    /// A metadata value.
    pub fn meta(&self, key: &str) -> Option<&Value> {
        self.metadata().get(key)
    }

    /// A required metadata value as u64.
    pub(crate) fn meta_u64(&self, key: &str) -> Result<u64> {
        match self.meta(key) {
            Some(v) => int_value(v)
                .map(|x| x.max(0) as u64)
                .ok_or_else(|| Error::Config(format!("GGUF key `{key}` is not an integer"))),
            None => Err(Error::Config(format!("GGUF key `{key}` is missing"))),
        }
    }

    /// An optional metadata value as f64.
    pub(crate) fn meta_f64(&self, key: &str) -> Option<f64> {
        self.metadata().f64(key)
    }

    /// An optional metadata string.
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.metadata().str(key)
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
}

/// Typed reads of GGUF metadata, the one place they are written: the model
/// config ([`GgufFile`]'s `meta_*`) and the tokenizer (`tokenize.rs`, which
/// also reads metadata maps built by tests) both go through it. Integers of
/// any width are accepted: converters are not consistent about widths.
#[derive(Debug, Clone, Copy)]
pub struct Metadata<'a>(pub &'a HashMap<String, Value>);

impl<'a> Metadata<'a> {
    /// A value of any type.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key)
    }

    /// A string value.
    pub fn str(&self, key: &str) -> Option<&'a str> {
        match self.get(key)? {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// An integer of any width.
    pub(crate) fn int(&self, key: &str) -> Option<i64> {
        self.get(key).and_then(int_value)
    }

    /// An integer that fits a u32.
    pub fn u32(&self, key: &str) -> Option<u32> {
        self.int(key).and_then(|i| u32::try_from(i).ok())
    }

    /// A bool, or an integer read as one (non-zero is true).
    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            v => int_value(v).map(|i| i != 0),
        }
    }

    /// A float (f32 or f64).
    pub fn f64(&self, key: &str) -> Option<f64> {
        let v = self.get(key)?;
        v.to_f32().map(f64::from).or_else(|_| v.to_f64()).ok()
    }

    /// An array, if present; an error if the key holds something else.
    pub fn array(&self, key: &str) -> Result<Option<&'a [Value]>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(_) => Err(Error::Config(format!("GGUF key `{key}` is not an array"))),
        }
    }

    /// An array of strings.
    pub(crate) fn str_array(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        self.array_of(key, "strings", |v| match v {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// An array of integers of any width.
    pub(crate) fn int_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        self.array_of(key, "integers", int_value)
    }

    /// An array of numbers, as f32.
    pub(crate) fn f32_array(&self, key: &str) -> Result<Option<Vec<f32>>> {
        self.array_of(key, "numbers", |v| match v {
            Value::F32(x) => Some(*x),
            Value::F64(x) => Some(*x as f32),
            v => int_value(v).map(|i| i as f32),
        })
    }

    fn array_of<T>(
        &self,
        key: &str,
        what: &str,
        item: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<Vec<T>>> {
        let Some(arr) = self.array(key)? else {
            return Ok(None);
        };
        arr.iter()
            .map(|v| {
                item(v).ok_or_else(|| {
                    Error::Config(format!("GGUF key `{key}` is not an array of {what}"))
                })
            })
            .collect::<Result<_>>()
            .map(Some)
    }
}

/// Any GGUF integer type as i64.
fn int_value(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => *x as i64,
        Value::I8(x) => *x as i64,
        Value::U16(x) => *x as i64,
        Value::I16(x) => *x as i64,
        Value::U32(x) => *x as i64,
        Value::I32(x) => *x as i64,
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
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
