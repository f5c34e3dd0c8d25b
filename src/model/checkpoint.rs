//! One way to open a model: [`Checkpoint::open`] resolves a spec, decides
//! between a GGUF file and an HF directory (the only place that does), reads
//! the config and maps the weights, reading no tensor yet. The session,
//! `info`, `convert` and the tests all start here; [`Checkpoint::load`] then
//! builds the [`Model`].

use std::path::Path;

use super::arch::{self, GgufNames, HfNames, TensorNames};
use super::budget::{self, MemoryRequest};
use super::config::ModelConfig;
use super::gguf::GgufFile;
use super::hf::HfConfig;
use super::locate::{self, ModelLocation};
use super::safetensors::SafetensorsFiles;
use super::weights::{Precision, WeightSource};
use super::Model;
use crate::Result;

/// The weights of a checkpoint, in the format they are stored in.
pub enum CheckpointFormat {
    /// One GGUF file (its metadata also holds the tokenizer).
    Gguf(GgufFile),
    /// An HF directory: `config.json` as written, and the safetensors files.
    Hf {
        raw: Box<HfConfig>,
        weights: SafetensorsFiles,
        names: HfNames,
    },
}

/// An opened checkpoint: where it is, its resolved config, its mapped weights.
pub struct Checkpoint {
    pub location: ModelLocation,
    pub cfg: ModelConfig,
    pub format: CheckpointFormat,
}

impl Checkpoint {
    /// Open what `spec` names: a `.gguf` file, an HF directory, or an
    /// `org/name` in the HF cache (see [`locate`]).
    pub fn open(spec: impl AsRef<Path>) -> Result<Self> {
        let spec = spec.as_ref().to_string_lossy();
        Self::open_at(&locate::resolve(&spec)?)
    }

    /// Open a resolved location.
    pub(crate) fn open_at(location: &ModelLocation) -> Result<Self> {
        let (cfg, format) = match location {
            ModelLocation::Gguf(path) => {
                let file = GgufFile::open(path)?;
                (arch::config_from_gguf(&file)?, CheckpointFormat::Gguf(file))
            }
            ModelLocation::HfDir(dir) => {
                let raw = Box::new(HfConfig::read(dir)?);
                let weights = SafetensorsFiles::open_dir(dir)?;
                let cfg = arch::config_from_hf(&raw, weights.contains("lm_head.weight"))?;
                let names = arch::hf_names(cfg.family, |n| weights.contains(n));
                let weights = match arch::hf_transpose_rule(cfg.family) {
                    Some(rule) => weights.with_transposed(rule),
                    None => weights,
                };
                (
                    cfg,
                    CheckpointFormat::Hf {
                        raw,
                        weights,
                        names,
                    },
                )
            }
        };
        Ok(Self {
            location: location.clone(),
            cfg,
            format,
        })
    }

    /// The weights by file name.
    pub fn source(&self) -> &dyn WeightSource {
        match &self.format {
            CheckpointFormat::Gguf(file) => file,
            CheckpointFormat::Hf { weights, .. } => weights,
        }
    }

    /// How this checkpoint names each logical tensor.
    pub fn names(&self) -> &dyn TensorNames {
        match &self.format {
            CheckpointFormat::Gguf(_) => &GgufNames,
            CheckpointFormat::Hf { names, .. } => names,
        }
    }

    /// The GGUF file, when the checkpoint is one.
    pub fn gguf(&self) -> Option<&GgufFile> {
        match &self.format {
            CheckpointFormat::Gguf(file) => Some(file),
            CheckpointFormat::Hf { .. } => None,
        }
    }

    /// The name of a tensor in this checkpoint.
    pub fn name(&self, part: arch::Part, layer: Option<usize>, bias: bool) -> String {
        self.names().name(part, layer, bias)
    }

    /// Build the model at `precision` after the memory preflight
    /// ([`budget::plan`]; `Auto` is resolved there).
    pub fn load(&self, precision: Precision) -> Result<Model> {
        self.load_within(precision, MemoryRequest::default(), false)
    }

    /// As [`Checkpoint::load`], within `req` (`--max-memory`, and what the
    /// run needs beside the model); `allow_nonfinite` lets weights holding
    /// NaN or infinity load (`--allow-nonfinite`).
    pub(crate) fn load_within(
        &self,
        precision: Precision,
        req: MemoryRequest,
        allow_nonfinite: bool,
    ) -> Result<Model> {
        let need = budget::need(self.source(), self.names(), self.cfg.sizes.n_layers)?;
        let plan = budget::plan(need, &self.location.label(), precision, req)?;
        Model::load(self, &plan, allow_nonfinite)
    }
}
