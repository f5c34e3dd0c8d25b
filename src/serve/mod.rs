//! `lensmap serve`: a local web app over the lens. (STUB: owned by the serve helper.)

use crate::Result;

/// Arguments of `lensmap serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Model files to offer (repeatable)
    #[arg(long, short = 'm', required = true)]
    pub model: Vec<String>,
}

/// Start the server and block until it stops.
pub fn run(_args: ServeArgs) -> Result<()> {
    Err(crate::Error::InvalidOption("`lensmap serve` is not available yet".into()))
}
