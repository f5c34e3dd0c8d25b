//! `lensmap serve`: its flags, loading the models, and what it prints.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;

use super::{HoldArgs, LensChoiceArgs};
use crate::run::Session;
use crate::serve::{parse_host, start, Limits, ServeConfig, DEFAULT_MAX_TOKENS};
use crate::{Error, Result};

/// Arguments of `lensmap serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A `.gguf` file or HF model to offer (repeatable); requests name it by file name
    #[arg(
        long,
        short = 'm',
        required = true,
        value_name = "MODEL",
        help_heading = "Model"
    )]
    pub model: Vec<String>,
    #[command(flatten)]
    pub hold: HoldArgs,
    /// Address to listen on; anything but loopback exposes the server (no authentication)
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port; 0 picks a free one (the actual URL is printed)
    #[arg(long, default_value_t = 7860)]
    pub port: u16,
    /// Requests computed at once (each is one CPU-heavy forward pass)
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub workers: usize,
    /// Requests allowed to wait for a worker; more get `503`
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub queue: usize,
    /// Longest prompt in tokens (template and dummies included; never more than the model's context)
    #[arg(long, default_value_t = DEFAULT_MAX_TOKENS, value_name = "N")]
    pub max_tokens: usize,
    /// The lens, its precision and positions, for every request
    #[command(flatten)]
    pub choice: LensChoiceArgs,
}

/// The warning printed when the server listens beyond loopback.
fn exposure_warning(ip: IpAddr) -> Option<String> {
    (!ip.is_loopback()).then(|| {
        format!(
            "warning: listening on {ip}, not loopback: anyone who can reach this machine can run \
             prompts on it and read the results (there is no authentication); omit `--host` to stay on 127.0.0.1"
        )
    })
}

/// `lensmap serve`: load the models, listen, print the URL, block until Ctrl-C.
pub fn run(args: ServeArgs) -> Result<()> {
    let ip = parse_host(&args.host).map_err(|_| {
        Error::InvalidOption(format!(
            "`--host` must be an IP address or `localhost`, got `{}`",
            args.host
        ))
    })?;
    if args.workers == 0 {
        return Err(Error::InvalidOption(
            "`--workers` must be at least 1".into(),
        ));
    }
    if args.max_tokens == 0 {
        return Err(Error::InvalidOption(
            "`--max-tokens` must be at least 1".into(),
        ));
    }
    let lenses = crate::lens::Lens::parse_list(&args.choice.lens)?;
    let mut models = Vec::with_capacity(args.model.len());
    for spec in &args.model {
        let clock = Instant::now();
        let s = Session::open_within(
            spec,
            args.hold.precision,
            args.hold.max_memory,
            None,
            args.hold.allow_nonfinite,
        )?;
        let cfg = &s.model.cfg;
        eprintln!(
            "loaded {} ({}, {} layers, vocab {}, context {}) in {:.1} s",
            s.label,
            cfg.family.name(),
            cfg.sizes.n_layers,
            cfg.sizes.vocab_size,
            cfg.sizes.context_len,
            clock.elapsed().as_secs_f64()
        );
        for lens in &lenses {
            lens.check(&s.model)?;
        }
        models.push(Arc::new(s));
    }
    let server = start(ServeConfig {
        models,
        addr: SocketAddr::new(ip, args.port),
        workers: args.workers,
        queue: args.queue,
        limits: Limits {
            max_tokens: args.max_tokens,
            ..Limits::default()
        },
        stop_on_signal: true,
        lenses,
        lens_precision: args.choice.lens_precision,
        positions: args.choice.positions,
    })?;
    if let Some(w) = exposure_warning(ip) {
        eprintln!("{w}");
    }
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {}", server.url());
        let _ = out.flush();
    }
    eprintln!(
        "{} worker(s), queue {}, prompts up to {} tokens; Ctrl-C to stop",
        args.workers, args.queue, args.max_tokens
    );
    server.wait()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposure_warnings() {
        assert!(exposure_warning("127.0.0.1".parse().unwrap()).is_none());
        assert!(exposure_warning("::1".parse().unwrap()).is_none());
        assert!(exposure_warning("0.0.0.0".parse().unwrap()).is_some());
        assert!(exposure_warning("192.168.1.2".parse().unwrap()).is_some());
    }
}
