//! The library's error type. Every message is one line; values go in backticks.
//! `hint()` names the fix where there is an obvious one, and `main` prints it
//! on a line of its own.

use std::path::PathBuf;

/// Result alias used throughout lensmap.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong between a model file and a figure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- model files -------------------------------------------------------
    /// The model path does not exist.
    #[error("model file `{0}` not found")]
    ModelNotFound(PathBuf),
    /// A model spec that names no file, directory or HF cache entry.
    #[error("model `{spec}` not found; looked at {looked}")]
    ModelNotFoundIn { spec: String, looked: String },
    /// A file that should be GGUF is not, or is cut short or corrupt.
    #[error("`{path}` is not a valid GGUF file: {reason}")]
    BadGguf { path: PathBuf, reason: String },
    /// A safetensors file or HF directory is unusable.
    #[error("`{path}`: {reason}")]
    BadCheckpoint { path: PathBuf, reason: String },
    /// The architecture is not one lensmap implements.
    #[error("unsupported architecture `{arch}` (supported: {supported})")]
    UnsupportedArch { arch: String, supported: String },
    /// A tensor's quantisation type cannot be read.
    #[error(
        "unsupported quantisation type `{dtype}` for tensor `{tensor}` (supported: {supported})"
    )]
    UnsupportedDtype {
        tensor: String,
        dtype: String,
        supported: String,
    },
    /// A tensor the architecture needs is absent.
    #[error("tensor `{tensor}` missing from `{file}`")]
    MissingTensor { tensor: String, file: String },
    /// A tensor's shape disagrees with the config.
    #[error("tensor `{tensor}` has shape {got:?}, expected {expected:?} from the config")]
    ShapeMismatch {
        tensor: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    /// A metadata key or config field is absent or of the wrong type.
    #[error("config: {0}")]
    Config(String),

    // --- tokenizer and template --------------------------------------------
    /// The tokenizer could not be built or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template failed to parse or render; carries the template's own message.
    #[error("chat template: {0}")]
    Template(String),

    /// A tuned-lens directory that cannot be read or does not fit the model.
    #[error("tuned lens `{path}`: {reason}")]
    BadLens { path: PathBuf, reason: String },

    // --- run-time limits and options ---------------------------------------
    /// The prompt does not fit the model's context.
    #[error("prompt is {tokens} tokens but the model's context is {context}")]
    PromptTooLong { tokens: usize, context: usize },
    /// The prompt exceeds a limit the caller set below the context (`lensmap serve --max-tokens`).
    #[error("prompt is {tokens} tokens (template and dummies included) but this request allows at most {limit} (`--max-tokens`)")]
    PromptOverLimit { tokens: usize, limit: usize },
    /// A weight or residual holds NaN or infinity (issue #13): the lens
    /// would otherwise draw garbage as certainty.
    #[error("{what} holds a non-finite value (`{value}`): the model file is corrupt or its config makes the arithmetic overflow (`--allow-nonfinite` marks the cells it spoils invalid instead)")]
    NonFinite { what: String, value: f64 },
    /// The request was withdrawn (its client disconnected) mid-computation.
    #[error("cancelled: the client disconnected")]
    Cancelled,
    /// An option is out of range or inconsistent.
    #[error("{0}")]
    InvalidOption(String),
    /// The model at the chosen precision does not fit the memory lensmap may
    /// use; said before any weight is read.
    #[error("`{model}` at precision `{precision}` needs {needed} of memory but only {available} is available ({limit})")]
    OutOfMemory {
        model: String,
        precision: &'static str,
        needed: String,
        available: String,
        /// What set the limit: `MemAvailable`, `--max-memory`, the cgroup, `RLIMIT_AS`.
        limit: &'static str,
    },

    /// The caller stopped the run (Ctrl-C in Python).
    #[error("interrupted")]
    Interrupted,

    // --- plumbing ------------------------------------------------------------
    /// File I/O with the path it concerned. The OS error is part of the
    /// message and deliberately not a `source`, so `{:#}` prints it once
    /// (issue #13 item 7).
    #[error("`{path}`: {}", io_message(err))]
    Io { path: PathBuf, err: std::io::Error },
    /// A tensor operation failed inside candle.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A figure could not be drawn or written.
    #[error("render: {0}")]
    Render(String),
}

impl Error {
    /// A suggestion for the user, printed after the error as `hint: ...`.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::ModelNotFound(_) | Error::ModelNotFoundIn { .. } => {
                Some("run `scripts/fetch-models` to download the default models into `models/`".into())
            }
            Error::BadGguf { .. } => Some(
                "re-download the file (`scripts/fetch-models` checks sha256); a partial download is cut short".into(),
            ),
            Error::PromptTooLong { .. } => {
                Some("shorten the prompt or lower `--dummy`".into())
            }
            Error::Template(_) => Some(
                "pass `--chat-template FILE` to use another template, or `--raw` to skip it".into(),
            ),
            Error::OutOfMemory { precision, .. } if *precision == "rest" => Some(
                "raise `--max-memory` or the process limit, or free memory: at rest only the small tensors and one block's weights need to be resident".into(),
            ),
            Error::OutOfMemory { .. } => Some(
                "pass `--precision rest` (weights stay in the mapped file) or a larger `--max-memory`".into(),
            ),
            _ => None,
        }
    }

    /// Wrap an I/O error with the path it concerned.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err: source,
        }
    }
}

/// An OS error in words, without Rust's ` (os error N)` suffix; a directory
/// where a file was expected says so (mapping one fails with ENODEV, "No
/// such device", which tells a user nothing).
fn io_message(e: &std::io::Error) -> String {
    if e.raw_os_error() == Some(libc::ENODEV) || e.kind() == std::io::ErrorKind::IsADirectory {
        return "is a directory, not a file".into();
    }
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}
