//! `lensmap serve`: a local web app over the lens.
//!
//! * `GET /` is a self-contained page (assets embedded in the binary, no
//!   network) that draws grids with the same `LensView` script as the HTML
//!   output of `lensmap run`.
//! * `POST /api/lens` answers with exactly the JSON `lensmap run --json`
//!   writes for the same input; `POST /api/render` draws a figure of a grid;
//!   `GET /api/models` lists the models. `docs/api.md` has the details.
//!
//! Models are loaded once at start-up and named by file name; request names
//! are only ever looked up in that list. Lens runs and figures are drawn on a
//! bounded pool of worker threads (`pool.rs`); requests beyond `--workers`
//! running and `--queue` waiting get `503`. Every error is JSON.
//!
//! Tests and benchmarks start a server in-process with [`start`].

mod api;
#[doc(hidden)]
pub use api::check_lens_body;
mod error;
mod pool;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::run::Session;
use crate::{Error, Result};

pub use api::is_loopback_host;

/// Longest prompt (tokens, template and dummies included) by default.
pub(crate) const DEFAULT_MAX_TOKENS: usize = 1024;
/// Request body limit of `POST /api/lens` (bytes).
const MAX_BODY: usize = 64 * 1024;
/// Request body limit of `POST /api/render`, which receives a whole grid (bytes).
const MAX_RENDER_BODY: usize = 32 * 1024 * 1024;
/// Most dummy tokens a request may ask for.
const MAX_DUMMY: usize = 256;
/// Most tokens a request may generate.
const MAX_GENERATE: usize = 256;

/// Per-request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_tokens: usize,
    pub max_body: usize,
    pub max_render_body: usize,
    pub max_dummy: usize,
    pub max_generate: usize,
    pub max_top_k: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_tokens: DEFAULT_MAX_TOKENS,
            max_body: MAX_BODY,
            max_render_body: MAX_RENDER_BODY,
            max_dummy: MAX_DUMMY,
            max_generate: MAX_GENERATE,
            max_top_k: crate::run::MAX_TOP_K,
        }
    }
}

/// Everything [`start`] needs: loaded models and where and how to serve them.
pub struct ServeConfig {
    /// At least one; names (`Session::label`) must differ.
    pub models: Vec<Arc<Session>>,
    /// `127.0.0.1:0` by default.
    pub addr: SocketAddr,
    pub workers: usize,
    pub queue: usize,
    pub limits: Limits,
    /// Stop on Ctrl-C / SIGTERM (the CLI); tests stop the server by dropping it.
    pub stop_on_signal: bool,
    /// The lenses every request is read through (`--lens`).
    pub lenses: Vec<crate::lens::Lens>,
    /// How and where every request's lens is computed.
    pub lens_precision: crate::lens::LensPrecision,
    pub positions: crate::lens::PositionSpec,
}

impl ServeConfig {
    /// Serve these models on an ephemeral loopback port, with the defaults.
    pub fn new(models: Vec<Arc<Session>>) -> Self {
        Self {
            models,
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            workers: 2,
            queue: 16,
            limits: Limits::default(),
            stop_on_signal: false,
            lenses: vec![crate::lens::Lens::Logit],
            lens_precision: crate::lens::LensPrecision::F32,
            positions: crate::lens::PositionSpec::All,
        }
    }
}

/// The address to bind: an IP address, or `localhost`.
pub(crate) fn parse_host(host: &str) -> Result<IpAddr> {
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    host.trim_matches(|c| c == '[' || c == ']')
        .parse()
        .map_err(|_| {
            Error::InvalidOption(format!(
                "the host must be an IP address or `localhost`, got `{host}`"
            ))
        })
}

/// `http://ADDR` with IPv6 in brackets.
fn url_of(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// A running server. Dropping it stops the server and waits for it.
pub struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    /// The address actually bound (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        url_of(self.addr)
    }

    /// Stop accepting, finish open requests, and wait.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop_and_join()
    }

    /// Block until the server stops (on a signal when `stop_on_signal`).
    pub fn wait(mut self) -> Result<()> {
        let res = match self.thread.take() {
            Some(t) => t.join(),
            None => return Ok(()),
        };
        flatten(res)
    }

    fn stop_and_join(&mut self) -> Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => flatten(t.join()),
            None => Ok(()),
        }
    }
}

fn flatten(res: std::thread::Result<std::io::Result<()>>) -> Result<()> {
    match res {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::io("the server", e)),
        Err(_) => Err(Error::Internal("the server thread panicked".into())),
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

/// Bind, start the worker pool and the HTTP server on a background thread,
/// and return at once. The socket is bound before this returns, so
/// `local_addr()` is ready for clients.
pub fn start(config: ServeConfig) -> Result<Server> {
    if config.models.is_empty() {
        return Err(Error::InvalidOption(
            "the server needs at least one model".into(),
        ));
    }
    for (i, a) in config.models.iter().enumerate() {
        if config.models[..i].iter().any(|b| b.label == a.label) {
            return Err(Error::InvalidOption(format!(
                "two models are both named `{}`; requests name models by file name, so offer each once",
                a.label
            )));
        }
    }
    if config.workers == 0 {
        return Err(Error::InvalidOption(
            "the server needs at least one worker".into(),
        ));
    }
    let listener = std::net::TcpListener::bind(config.addr)
        .map_err(|e| Error::io(format!("listen on {}", config.addr), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("listener", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("listener", e))?;
    let pool = pool::WorkerPool::new(config.workers, config.queue)
        .map_err(|e| Error::io("worker threads", e))?;
    let state = Arc::new(api::AppState {
        models: config.models,
        pool,
        limits: config.limits,
        loopback_only: addr.ip().is_loopback(),
        lenses: config.lenses,
        lens_precision: config.lens_precision,
        positions: config.positions,
        cancelled: Default::default(),
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stop_on_signal = config.stop_on_signal;
    let thread = std::thread::Builder::new()
        .name("lensmap-http".into())
        .spawn(move || -> std::io::Result<()> {
            // The runtime only parses HTTP and waits on workers: two threads are plenty.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("lensmap-io")
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let app = api::router(state);
                let stop = async move {
                    if stop_on_signal {
                        tokio::select! {
                            _ = stop_rx => {}
                            _ = signal() => {}
                        }
                    } else {
                        let _ = stop_rx.await;
                    }
                };
                accept_loop(listener, app, stop).await;
                Ok(())
            })
        })
        .map_err(|e| Error::io("server thread", e))?;
    Ok(Server {
        addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// A client must send its request headers within this (slow-loris defence).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A client must send its whole body within this once the headers are in.
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// After a stop, requests still running get this long to finish; connections
/// with half-sent requests are dropped at once (issue #13 item 6).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Accept HTTP/1 connections until `stop`, then let running requests finish
/// for at most [`SHUTDOWN_GRACE`]. Idle and half-sent connections do not hold
/// the shutdown: hyper closes idle ones at once, and the deadline ends the rest.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    stop: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                let svc = hyper_util::service::TowerToHyperService::new(app.clone());
                let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), svc));
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut stop => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
}

/// Ctrl-C or SIGTERM.
async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

// Sessions are shared between worker threads.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Session>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            parse_host("localhost").unwrap(),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        assert!(parse_host("::1").unwrap().is_loopback());
        assert!(parse_host("[::1]").unwrap().is_loopback());
        assert!(parse_host("example.com").is_err());
        assert_eq!(url_of("[::1]:80".parse().unwrap()), "http://[::1]:80");
    }
}
