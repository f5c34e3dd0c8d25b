//! lensmap: the logit lens for local language models.
//!
//! # Brief overview
//!
//! The pipeline runs in this order, one module per stage:
//!
//! 1. [`model`] loads a checkpoint (GGUF or an HF safetensors directory) into a
//!    [`model::Model`]: a resolved [`model::ModelConfig`] plus weights.
//! 2. [`tokenize`] and [`template`] turn a chat into ids; [`prompt`] labels
//!    every position `text`, `template` or `dummy` and yields a [`prompt::Prompt`].
//! 3. [`model::Model::forward`] runs the forward pass and hands the residual
//!    stream after every block to a [`model::Recorder`]; a
//!    [`model::ResidualTrace`] keeps them.
//! 4. [`lens`] reads each recorded row through the model's own final norm and
//!    unembedding, a block of cells at a time.
//! 5. [`stats`] reduces each cell's logits at once to entropy, top-k, KL to
//!    final and the rank and probability of chosen tokens, so the full
//!    `[rows × positions × vocab]` tensor never exists.
//! 6. The result is a [`grid::LensGrid`], which [`render`] draws (SVG, PNG,
//!    HTML) and `serve` puts in a browser.
//!
//! [`run::Session`] strings the stages together: it loads a model once and
//! answers [`run::LensRequest`]s with [`grid::LensGrid`]s.
//!
//! # Stable seams
//!
//! Four interfaces are meant to be built on; everything else may change with
//! the code around it.
//!
//! - [`model::Recorder`]: the forward pass hands it the residual stream
//!   `[T, d_model]` at every row (0 = embeddings, `i` = after block `i`).
//!   Anything that wants the residual (the lens, a probe, a dump) implements it.
//! - [`model::WeightSource`]: named tensors from one checkpoint (GGUF or
//!   safetensors), by shape and dtype, mapped not copied. A new file format
//!   is a new `WeightSource`.
//! - The tensor-name map: [`model::arch::Part`] names each logical tensor;
//!   [`model::arch::TensorNames`] turns it into a file's name (llama.cpp's
//!   [`model::arch::GgufNames`], or transformers' from the family's row of
//!   [`model::arch::FAMILIES`]). Loaders and `convert` only ask for `Part`s.
//! - The [`grid::LensGrid`] JSON, versioned by [`grid::FORMAT_VERSION`] and
//!   documented field by field in `docs/json-format.md`: what `run --json`
//!   writes, `plot` and the Python package read, and `serve` answers with.
//!
//! The modules below are listed in pipeline order.

// ------------------------------------------------------------------------
// Shared: errors, numeric kernels, option parsing
// ------------------------------------------------------------------------
pub mod error;
pub mod kernels;
pub mod parse;

// ------------------------------------------------------------------------
// 1. Model: checkpoint, config, weights, forward pass
// ------------------------------------------------------------------------
pub mod model;

// ------------------------------------------------------------------------
// 2. Prompt: tokenizer, chat template, labelled ids
// ------------------------------------------------------------------------
pub mod prompt;
pub mod template;
pub mod tokenize;

// ------------------------------------------------------------------------
// 3-5. Lens and statistics (the tuned lens is a lens too)
// ------------------------------------------------------------------------
pub mod lens;
pub mod stats;
pub mod tuned;

// ------------------------------------------------------------------------
// 6. The result: the grid, its rehearsal summary, its figures
// ------------------------------------------------------------------------
pub mod grid;
pub mod rehearsal;
pub mod render;

// ------------------------------------------------------------------------
// One run, start to finish, the commands built on it, and the CLI edge
// ------------------------------------------------------------------------
pub mod batch;
pub mod cli;
pub mod convert;
pub mod info;
pub mod run;
pub mod serve;

// ------------------------------------------------------------------------
// Tools: training a tuned lens, synthetic checkpoints for tests and fuzzing
// ------------------------------------------------------------------------
pub mod synth;
pub mod train;

pub use error::{Error, OptionName, Result};
pub use grid::LensGrid;

/// Process-wide settings, called once at start-up before any thread:
///
/// - Keep freed activation buffers in the heap instead of returning them to
///   the OS. A forward pass frees and reallocates tens of MB per layer; with
///   glibc's defaults every such buffer is `mmap`ed and page-faulted in
///   afresh, which cost ~20% of a 1024-token forward pass.
/// - Let candle's worker threads spin 1,000 rounds, not 25,000, before they
///   park (`CANDLE_BARRIER_POOL_SPIN_LIMIT`, unless set). Candle's small ops
///   and our rayon kernels alternate hundreds of times a forward pass; a
///   spinning candle thread took a core from the kernel after every op.
///   The seed case's forward pass went from 0.14 to 0.12 s on 2 cores.
pub fn tune_process() {
    const SPIN: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(SPIN).is_none() {
        std::env::set_var(SPIN, "1000");
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before any
    // threads are spawned.
    unsafe {
        // 32 MiB is glibc's largest mmap threshold on 64-bit; trimming is
        // left to exit.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
