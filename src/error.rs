//! The library's error type. Every message is one line; values go in backticks.
//! `hint()` names the fix where there is an obvious one, and `main` prints it
//! on a line of its own. [`Error::kind`] sorts errors into what the user can
//! fix, what is missing, what ran out and what failed inside; the CLI's exit
//! code and the server's HTTP status follow from it.
//!
//! Messages and hints do not name CLI flags (each front end has its own
//! names for the same option): an error that is about one option either
//! carries it as data for the front end to word, as [`crate::run::SkipWithoutAuto`]
//! does, or names the option in words.

use std::path::PathBuf;

/// A cause kept as an error's `#[source]`, whatever library it came from.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
    #[error("prompt is {tokens} tokens (template and dummies included) but this request allows at most {limit} (the server's limit)")]
    PromptOverLimit { tokens: usize, limit: usize },
    /// A weight or residual holds NaN or infinity (issue #13): the lens
    /// would otherwise draw garbage as certainty.
    #[error("{what} holds a non-finite value (`{value}`): the model file is corrupt or its config makes the arithmetic overflow")]
    NonFinite { what: String, value: f64 },
    /// The request was withdrawn (its client disconnected) mid-computation.
    #[error("cancelled: the client disconnected")]
    Cancelled,
    /// An option is out of range or inconsistent.
    #[error("{0}")]
    InvalidOption(String),
    /// One named option is out of range or inconsistent; `reason` names it
    /// in words and `option` says which it is, for each front end to point
    /// at its own flag or field.
    #[error("{reason}")]
    BadOption { option: OptionName, reason: String },
    /// An input file the user gave could not be read as what it should be;
    /// the parser's own error is kept as the cause.
    #[error("{what}")]
    BadInput {
        what: String,
        #[source]
        source: BoxError,
    },
    /// The model at the chosen precision does not fit the memory lensmap may
    /// use; said before any weight is read.
    #[error("`{model}` at precision `{precision}` needs {needed} of memory but only {available} is available ({limit})")]
    OutOfMemory {
        model: String,
        precision: &'static str,
        needed: String,
        available: String,
        /// What set the limit: `MemAvailable`, the memory limit, the cgroup, `RLIMIT_AS`.
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
    /// A figure or table could not be drawn, encoded or written; the
    /// library's own error is kept as the cause.
    #[error("{what}")]
    Output {
        what: String,
        #[source]
        source: BoxError,
    },
    /// A value lensmap built could not be turned into JSON.
    #[error("{what} to JSON")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// Something inside lensmap failed that no input explains (a thread
    /// panicked, a server loop ended).
    #[error("{0}")]
    Internal(String),
}

/// What kind of failure an [`Error`] is: the CLI's exit code and the
/// server's HTTP status follow from it (`README.md`, "Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The user can fix it: an option out of range, a prompt too long, a
    /// broken template, a bad input line.
    UserInput,
    /// A model file (or a tuned lens for it) that is corrupt, unsupported or
    /// inconsistent: the user's input on the command line, the server's own
    /// fault behind `serve`.
    BadModel,
    /// A model, file or directory that does not exist.
    MissingResource,
    /// The model does not fit the memory lensmap may use.
    ResourceExhausted,
    /// The caller stopped the run (Ctrl-C, a client that went away).
    Interrupted,
    /// lensmap or the machine failed: an I/O error other than a missing
    /// file, a tensor operation, a panicked thread.
    Internal,
}

impl ErrorKind {
    /// The process exit code: 2 for input and model files (as clap's usage errors), 3
    /// missing, 4 out of memory, 130 interrupted (as after SIGINT), 1 internal.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::UserInput | ErrorKind::BadModel => 2,
            ErrorKind::MissingResource => 3,
            ErrorKind::ResourceExhausted => 4,
            ErrorKind::Interrupted => 130,
            ErrorKind::Internal => 1,
        }
    }

    /// The kind of an OS error: not found is missing, a permission or a
    /// directory where a file belongs is the user's to fix, the rest internal.
    pub(crate) fn of_io(e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::NotFound => ErrorKind::MissingResource,
            K::PermissionDenied | K::IsADirectory | K::NotADirectory | K::InvalidData => {
                ErrorKind::UserInput
            }
            _ if e.raw_os_error() == Some(libc::ENODEV) => ErrorKind::UserInput,
            K::OutOfMemory | K::StorageFull | K::QuotaExceeded => ErrorKind::ResourceExhausted,
            _ => ErrorKind::Internal,
        }
    }
}

impl Error {
    /// What kind of failure this is (see [`ErrorKind`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::BadGguf { .. }
            | Error::BadCheckpoint { .. }
            | Error::UnsupportedArch { .. }
            | Error::UnsupportedDtype { .. }
            | Error::MissingTensor { .. }
            | Error::ShapeMismatch { .. }
            | Error::Config(_)
            | Error::BadLens { .. }
            | Error::NonFinite { .. } => ErrorKind::BadModel,
            Error::ModelNotFound(_) | Error::ModelNotFoundIn { .. } => ErrorKind::MissingResource,
            Error::Tokenizer(_)
            | Error::Template(_)
            | Error::PromptTooLong { .. }
            | Error::PromptOverLimit { .. }
            | Error::InvalidOption(_)
            | Error::BadOption { .. }
            | Error::BadInput { .. } => ErrorKind::UserInput,
            Error::OutOfMemory { .. } => ErrorKind::ResourceExhausted,
            Error::Cancelled | Error::Interrupted => ErrorKind::Interrupted,
            Error::Io { err, .. } => ErrorKind::of_io(err),
            Error::Candle(_)
            | Error::Render(_)
            | Error::Output { .. }
            | Error::Serialize { .. }
            | Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// The one line `lensmap` prints after `error: `: this error and its
    /// causes, joined by `: ` (as `anyhow`'s `{:#}`). Front ends that do not
    /// go through `anyhow` (the server, Python, a batch's failed lines) use it.
    pub fn message(&self) -> String {
        chain(self).replace('\n', " ")
    }

    /// A suggestion for the user, printed after the error as `hint: ...`.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::ModelNotFound(path) => Some(crate::model::locate::not_found_hint(
                &path.to_string_lossy(),
            )),
            Error::ModelNotFoundIn { spec, .. } => {
                Some(crate::model::locate::not_found_hint(spec))
            }
            Error::BadGguf { .. } => Some(
                "re-download the file (`scripts/fetch-models` checks sha256); a partial download is cut short".into(),
            ),
            Error::PromptTooLong { .. } => {
                Some("shorten the prompt or use fewer dummy tokens".into())
            }
            Error::Template(_) => Some(
                "use another chat template file, or the raw prompt without a template".into(),
            ),
            Error::OutOfMemory { precision, .. } if matches!(*precision, "rest" | "quant") => Some(
                "allow more memory or raise the process limit, or free memory: at rest only the small tensors and one block's weights need to be resident".into(),
            ),
            Error::OutOfMemory { .. } => Some(
                "hold the weights at rest (precision `rest`: they stay in the mapped file) or allow more memory".into(),
            ),
            Error::NonFinite { .. } => Some(
                "allow non-finite values to mark the cells it spoils invalid instead".into(),
            ),
            Error::BadOption {
                option: OptionName::Stat,
                ..
            } => Some("track a target token, or colour by another statistic".into()),
            _ => None,
        }
    }

    /// A [`Error::BadOption`] about `option`.
    pub fn option(option: OptionName, reason: impl Into<String>) -> Self {
        Error::BadOption {
            option,
            reason: reason.into(),
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

/// The options an [`Error::BadOption`] can be about, named by what they
/// set rather than by any front end's flag (`--lens-precision`, `lens_precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionName {
    /// Which lenses to read the residual through.
    Lens,
    /// The precision of the lens arithmetic.
    LensPrecision,
    /// The positions the lens is computed at.
    Positions,
    /// The memory limit lensmap may use.
    MemoryLimit,
    /// The filler text of the dummy tokens.
    DummyText,
    /// The tracked answer (`auto` needs generated tokens).
    Answer,
    /// The number of prompts a batch runs through each block at once.
    Chunk,
    /// How many of the greedy answer's tokens to skip.
    AnswerSkip,
    /// The statistic a figure colours by.
    Stat,
    /// The file listing the training chunks' order.
    ChunkOrder,
    /// The training chunk length in tokens.
    SeqLen,
    /// The held-out corpus for training.
    Heldout,
    /// The number of training tokens.
    TrainTokens,
    /// The positions sampled per training step and the steps per chunk.
    StepSizes,
}

/// An error and its causes, joined by `: `, e.g. minijinja's `syntax error:
/// unexpected end of input (in chat_template:3)`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
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
