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

pub mod batch;
pub mod cli;
pub mod convert;
pub mod error;
pub mod grid;
pub mod info;
pub mod kernels;
pub mod lens;
pub mod model;
pub mod parse;
pub mod prompt;
pub mod rehearsal;
pub mod render;
pub mod run;
pub mod serve;
pub mod stats;
pub mod synth;
pub mod template;
pub mod tokenize;
pub mod train;
pub mod tuned;

pub use error::{Error, Result};
pub use grid::LensGrid;

/// Keep freed activation buffers in the heap instead of returning them to the
/// OS. A forward pass frees and reallocates tens of MB per layer; with glibc's
/// defaults every such buffer is `mmap`ed and page-faulted in afresh, which
/// cost ~20% of a 1024-token forward pass. Call once at start-up.
pub fn tune_allocator() {
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
