//! The `lensmap` binary: parse arguments, run, and print any error as one
//! line (with a hint where there is one) and a non-zero exit.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    lensmap::tune_allocator();
    let cli = cli::Cli::parse();
    match cli::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed pipe (`lensmap run ... | head`) is not a failure.
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::BrokenPipe {
                    return ExitCode::SUCCESS;
                }
            }
            let msg = format!("{err:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            if let Some(hint) = err.downcast_ref::<lensmap::Error>().and_then(|e| e.hint()) {
                eprintln!("\nhint: {hint}");
            }
            ExitCode::from(2)
        }
    }
}
