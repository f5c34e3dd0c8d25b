//! The `lensmap` binary: parse arguments, run, and print any error as one
//! line (with a hint where there is one) and an exit code chosen by the
//! error's kind (`README.md`, "Exit codes"; clap's usage errors exit with 2).

use std::process::ExitCode;

use clap::Parser;

use lensmap::cli;

fn main() -> ExitCode {
    lensmap::tune_process();
    let args = cli::Cli::parse();
    match cli::dispatch(args) {
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
            if let Some(hint) = cli::hint(&err) {
                eprintln!("\nhint: {hint}");
            }
            ExitCode::from(cli::exit_code(&err))
        }
    }
}
