//! `lensmap batch`: the lens over many prompts, with rehearsal statistics.
//! (STUB: owned by the batch helper.)

use crate::Result;

/// Arguments of `lensmap batch`.
#[derive(Debug, clap::Args)]
pub struct BatchArgs {
    /// A `.gguf` file, an HF model directory, or `org/name` in the HF cache
    #[arg(long, short = 'm')]
    pub model: String,
}

/// Run a batch.
pub fn run(_args: BatchArgs) -> Result<()> {
    Err(crate::Error::InvalidOption("`lensmap batch` is not available yet".into()))
}
