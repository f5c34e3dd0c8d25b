//! Routes and handlers. See `docs/api.md` for the contract.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::error::{json_errors, ApiError};
use super::pool::WorkerPool;
use super::Limits;
use crate::grid::LensGrid;
use crate::render::{self, FigureOptions, Stat};
use crate::run::{AnswerSpec, LensFlags, Session};

/// What the handlers share.
pub(crate) struct AppState {
    /// Configured models, in command-line order; looked up by `label` only.
    pub models: Vec<Arc<Session>>,
    pub pool: WorkerPool,
    pub limits: Limits,
    /// Bound to a loopback address: only accept loopback `Host` headers
    /// (a web page cannot reach the server through DNS rebinding).
    pub loopback_only: bool,
    /// The lenses every request is read through (`serve --lens`).
    pub lenses: Vec<crate::lens::Lens>,
    /// How and where every request's lens is computed.
    pub lens_precision: crate::lens::LensPrecision,
    pub positions: crate::lens::PositionSpec,
    /// Requests stopped early because their client disconnected
    /// (`/api/health`'s `cancelled`).
    pub cancelled: Arc<std::sync::atomic::AtomicUsize>,
}

type Shared = Arc<AppState>;

/// Most distractors (`answer_alt`) per request.
const MAX_ALTS: usize = 32;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The page's Content-Security-Policy: nothing but this server.
const CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub(crate) fn router(state: Shared) -> Router {
    let lens_limit = state.limits.max_body;
    let render_limit = state.limits.max_render_body;
    Router::new()
        .route("/", get(index))
        .route(
            "/assets/lensview.js",
            get(|| asset(render::LENSVIEW_JS, "text/javascript")),
        )
        .route(
            "/assets/lensview.css",
            get(|| asset(render::LENSVIEW_CSS, "text/css")),
        )
        .route("/assets/app.js", get(|| asset(APP_JS, "text/javascript")))
        .route("/assets/app.css", get(|| asset(APP_CSS, "text/css")))
        .route("/api/models", get(models))
        .route("/api/health", get(health))
        .route(
            "/api/lens",
            post(lens).layer(DefaultBodyLimit::max(lens_limit)),
        )
        .route(
            "/api/render",
            post(render_figure).layer(DefaultBodyLimit::max(render_limit)),
        )
        .route(
            "/api/view",
            post(view).layer(DefaultBodyLimit::max(render_limit)),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            bounded_body,
        ))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            check_host,
        ))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::map_response(common_headers))
        .with_state(state)
}

async fn common_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// Refuse a declared `Content-Length` over the route's limit with 413 before
/// reading a byte of it, and read the rest of the body within
/// [`super::BODY_TIMEOUT`] (a slow body would otherwise hold a connection).
async fn bounded_body(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let limit = match req.uri().path() {
        "/api/lens" => state.limits.max_body,
        "/api/render" | "/api/view" => state.limits.max_render_body,
        _ => state.limits.max_body,
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        let mut resp = ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {limit} bytes"),
        )
        .into_response();
        // Do not wait for a body we refuse: close after answering.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    let (parts, body) = req.into_parts();
    // One byte over the limit, so the handler's own limit still answers 413.
    let read = axum::body::to_bytes(body, limit.saturating_add(1));
    let bytes = match tokio::time::timeout(super::BODY_TIMEOUT, read).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than the limit of {limit} bytes"),
            )
            .into_response()
        }
        Err(_) => {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    super::BODY_TIMEOUT.as_secs()
                ),
            )
            .into_response()
        }
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// Refuse `Host` headers that are not loopback names when bound to loopback.
async fn check_host(State(state): State<Shared>, req: Request, next: Next) -> Response {
    if state.loopback_only {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !is_loopback_host(host) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!("host `{host}` is not allowed: this server only answers to localhost, 127.0.0.1 and [::1]"),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Exactly `localhost`, `127.0.0.1` or `[::1]`, with or without a numeric
/// port: no other spelling of a loopback address (`127.1`, `0x7f.1`,
/// `localhost.`), which DNS-rebinding tricks lean on (issue #13).
pub fn is_loopback_host(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, port)) => (ip, port),
            None => return false,
        }
    } else {
        match host.split_once(':') {
            Some((h, p)) => (h, &host[h.len()..][..p.len() + 1]),
            None => (host, ""),
        }
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|p| {
            !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
        });
    port_ok && (name.eq_ignore_ascii_case("localhost") || name == "127.0.0.1" || name == "::1")
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint `{} {}` (see docs/api.md)",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        INDEX_HTML,
    )
        .into_response()
}

async fn asset(body: &'static str, mime: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, format!("{mime}; charset=utf-8")),
            (header::CACHE_CONTROL, "no-cache".to_string()),
        ],
        body,
    )
        .into_response()
}

// ---------------------------------------------------------------------------
// GET /api/models, /api/health

async fn models(State(state): State<Shared>) -> Response {
    let models: Vec<_> = state
        .models
        .iter()
        .map(|s| {
            let cfg = &s.model.cfg;
            serde_json::json!({
                "name": s.label,
                "arch": cfg.family.name(),
                "layers": cfg.sizes.n_layers,
                "vocab": cfg.sizes.vocab_size,
                "d_model": cfg.sizes.d_model,
                "context": cfg.sizes.context_len,
                "max_tokens": state.limits.max_tokens.min(cfg.sizes.context_len),
                "precision": s.model.precision.label(),
                "template": s.template.as_ref().map(|t| t.source.clone()),
            })
        })
        .collect();
    let l = &state.limits;
    Json(serde_json::json!({
        "models": models,
        "limits": {
            "max_tokens": l.max_tokens,
            "max_dummy": l.max_dummy,
            "max_generate": l.max_generate,
            "top_k": [1, l.max_top_k],
            "max_body_bytes": l.max_body,
            "max_render_body_bytes": l.max_render_body,
        },
    }))
    .into_response()
}

async fn health(State(state): State<Shared>) -> Response {
    let load = state.pool.load();
    Json(serde_json::json!({
        "status": "ok",
        "workers": state.pool.workers(),
        "queue": state.pool.queue(),
        "running": load.running,
        "waiting": load.waiting,
        "cancelled": state.cancelled.load(std::sync::atomic::Ordering::SeqCst),
    }))
    .into_response()
}

// ---------------------------------------------------------------------------
// Request plumbing shared by the POST endpoints

/// POST bodies must say `Content-Type: application/json`: a browser cannot
/// send that cross-origin without a CORS preflight, which this server never
/// grants, so other web pages cannot make it run prompts.
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "expected `Content-Type: application/json`, got `{}`",
                if ct.is_empty() { "none" } else { ct }
            ),
        ))
    }
}

fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rej| {
        let status = rej.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                format!("request body is larger than the limit of {} bytes", limit),
            )
        } else {
            ApiError::new(
                status,
                format!("cannot read the request body: {}", rej.body_text()),
            )
        }
    })
}

/// Run a job on the pool and wait for it, or say why there is no answer.
/// The payload gets the time it waited for a worker and the time it took.
async fn run_job(
    state: &AppState,
    job: impl FnOnce() -> Result<Payload, ApiError> + Send + 'static,
) -> Result<Payload, ApiError> {
    let submitted = Instant::now();
    // Set when this handler's future is dropped: hyper drops it when the
    // client disconnects, and the forward pass stops at the next block.
    struct CancelOnDrop(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for CancelOnDrop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _cancel = CancelOnDrop(Arc::clone(&flag));
    let cancelled = Arc::clone(&state.cancelled);
    let rx = state
        .pool
        .try_run(move || {
            let started = Instant::now();
            let out = crate::model::cancel::with_flag(Arc::clone(&flag), job);
            if out.is_err() && flag.load(std::sync::atomic::Ordering::Relaxed) {
                cancelled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                eprintln!(
                    "request cancelled after {:.2} s: the client disconnected",
                    started.elapsed().as_secs_f64()
                );
            }
            out.map(|mut p| {
                p.timing = Some((started - submitted, started.elapsed()));
                p
            })
        })
        .map_err(|busy| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!(
                "server busy: {} requests running and {} waiting (the limit); retry later",
                busy.workers, busy.queue
            ),
            retry_after: Some(1),
        })?;
    rx.await
        .map_err(|_| ApiError::internal("the worker failed while answering this request"))?
}

/// A finished answer: bytes and their type.
struct Payload {
    bytes: Vec<u8>,
    format: Format,
    /// Waiting for a worker, and working (`Server-Timing`).
    timing: Option<(Duration, Duration)>,
}

impl IntoResponse for Payload {
    fn into_response(self) -> Response {
        let mut resp = ([(header::CONTENT_TYPE, self.format.mime())], self.bytes).into_response();
        if self.format != Format::Json {
            let disp = format!("inline; filename=\"lensmap.{}\"", self.format.extension());
            if let Ok(v) = HeaderValue::from_str(&disp) {
                resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
            }
        }
        if let Some((wait, work)) = self.timing {
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            let v = format!("queue;dur={:.1}, compute;dur={:.1}", ms(wait), ms(work));
            if let Ok(v) = HeaderValue::from_str(&v) {
                resp.headers_mut().insert("server-timing", v);
            }
        }
        resp
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Svg,
    Png,
    Html,
}

impl Format {
    fn parse(s: &str, allow_json: bool) -> Result<Self, ApiError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" if allow_json => Ok(Format::Json),
            "svg" => Ok(Format::Svg),
            "png" => Ok(Format::Png),
            "html" => Ok(Format::Html),
            _ => Err(ApiError::bad_request(format!(
                "unknown format `{s}` (expected {}svg, png or html)",
                if allow_json { "json, " } else { "" }
            ))),
        }
    }

    fn mime(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Svg => "image/svg+xml",
            Format::Png => "image/png",
            Format::Html => "text/html; charset=utf-8",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Svg => "svg",
            Format::Png => "png",
            Format::Html => "html",
        }
    }
}

/// Figure options from request fields; `None` fields keep the defaults.
fn figure_options(
    stat: Option<&str>,
    window: Option<(usize, usize)>,
    zoom: Option<usize>,
    title: Option<String>,
) -> Result<FigureOptions, ApiError> {
    let stat = match stat {
        Some(s) => s
            .parse::<Stat>()
            .map_err(|e| ApiError::bad_request(e.to_string()))?,
        None => Stat::default(),
    };
    if let Some((s, e)) = window {
        if e <= s {
            return Err(ApiError::bad_request(format!(
                "window `{s}..{e}`: END must be greater than START"
            )));
        }
    }
    Ok(FigureOptions {
        title,
        stat,
        window,
        zoom,
        ..FigureOptions::default()
    })
}

/// Draw a figure of a grid (on a worker thread).
fn draw(
    grid: &LensGrid,
    format: Format,
    opts: &FigureOptions,
    render_is_input: bool,
) -> Result<Payload, ApiError> {
    let err = |e| ApiError::from_lensmap(e, render_is_input);
    let bytes = match format {
        Format::Json => serde_json::to_vec(grid)
            .map_err(|e| ApiError::internal(format!("grid to JSON: {e}")))?,
        Format::Svg => render::render_svg(grid, opts).map_err(err)?.into_bytes(),
        Format::Png => {
            render::render_png(&render::render_svg(grid, opts).map_err(err)?).map_err(err)?
        }
        Format::Html => render::render_html(grid, opts).map_err(err)?.into_bytes(),
    };
    Ok(Payload {
        bytes,
        format,
        timing: None,
    })
}

// ---------------------------------------------------------------------------
// POST /api/lens

/// The body of `POST /api/lens`; field names follow `lensmap run`'s flags.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LensBody {
    /// A configured model's file name; the first model when absent.
    model: Option<String>,
    prompt: String,
    system: Option<String>,
    #[serde(default)]
    raw: bool,
    #[serde(default)]
    dummy: usize,
    dummy_text: Option<String>,
    top_k: Option<usize>,
    target: Option<String>,
    #[serde(default)]
    generate: usize,
    /// `auto` or a text, as `--answer`; `auto` when absent and `generate > 0`.
    answer: Option<String>,
    /// Distractors, as `--answer-alt`.
    #[serde(default)]
    answer_alt: Vec<String>,
    /// As `--answer-skip`.
    #[serde(default)]
    answer_skip: usize,
    /// `json` (default), `svg`, `png` or `html`.
    format: Option<String>,
    stat: Option<String>,
    window: Option<[usize; 2]>,
    zoom: Option<usize>,
    title: Option<String>,
}

fn parse_lens_body(bytes: &[u8]) -> Result<LensBody, ApiError> {
    // serde would also take a struct from an array; say what is expected instead.
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        None => {
            return Err(ApiError::bad_request(
                "the request body is empty; expected a JSON object",
            ))
        }
        Some(_) if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() => {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ))
        }
        Some(_) => {}
    }
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::bad_request(format!("invalid request: {e}")),
            _ => ApiError::bad_request(format!("malformed JSON: {e}")),
        }
    })
}

async fn lens(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Payload, ApiError> {
    require_json(&headers)?;
    let bytes = body_bytes(body, state.limits.max_body)?;
    let b = parse_lens_body(&bytes)?;
    let limits = state.limits;

    if b.top_k.is_some_and(|k| k == 0 || k > limits.max_top_k) {
        return Err(ApiError::bad_request(format!(
            "`top_k` must be between 1 and {}, got `{}`",
            limits.max_top_k,
            b.top_k.unwrap_or(0)
        )));
    }
    if b.dummy > limits.max_dummy {
        return Err(ApiError::bad_request(format!(
            "`dummy` must be at most {}, got `{}`",
            limits.max_dummy, b.dummy
        )));
    }
    if b.generate > limits.max_generate {
        return Err(ApiError::bad_request(format!(
            "`generate` must be at most {}, got `{}`",
            limits.max_generate, b.generate
        )));
    }
    if b.answer_alt.len() > MAX_ALTS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_ALTS} `answer_alt` entries, got {}",
            b.answer_alt.len()
        )));
    }
    // As `lensmap run` decides it.
    let answer =
        AnswerSpec::from_flags(b.answer.as_deref(), b.answer_skip, b.generate).map_err(|_| {
            ApiError::bad_request(
                "`answer_skip` applies to `answer: \"auto\"` (with `generate`) only",
            )
        })?;
    if b.prompt.trim().is_empty() {
        return Err(ApiError::bad_request("`prompt` is empty"));
    }
    let format = match &b.format {
        Some(f) => Format::parse(f, true)?,
        None => Format::Json,
    };
    let opts = figure_options(
        b.stat.as_deref(),
        b.window.map(|[s, e]| (s, e)),
        b.zoom,
        b.title.clone(),
    )?;

    let session = match &b.model {
        None => Arc::clone(&state.models[0]),
        Some(name) => state
            .models
            .iter()
            .find(|s| &s.label == name)
            .cloned()
            .ok_or_else(|| {
                let names: Vec<&str> = state.models.iter().map(|s| s.label.as_str()).collect();
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "unknown model `{name}` (this server has: {})",
                        names.join(", ")
                    ),
                )
            })?,
    };

    // As `lensmap run` builds it, so the JSON is the same.
    let defaults = LensFlags::default();
    let req = LensFlags {
        prompt: b.prompt,
        system: b.system,
        raw: b.raw,
        dummy: b.dummy,
        dummy_text: b.dummy_text.unwrap_or(defaults.dummy_text),
        top_k: b.top_k.unwrap_or(defaults.top_k),
        target: b.target,
        generate: b.generate,
        answer_alt: b.answer_alt,
        lenses: state.lenses.clone(),
        lens_precision: state.lens_precision,
        positions: state.positions,
        max_tokens: Some(limits.max_tokens),
        ..LensFlags::default()
    }
    .request_with(answer);
    run_job(&state, move || {
        // Tokenising is cheap: refuse a bad window or zoom before the forward pass.
        session
            .check_figure_positions(&req, opts.window, opts.zoom)
            .map_err(|e| ApiError::from_lensmap(e, false))?;
        let grid = session
            .run(&req)
            .map_err(|e| ApiError::from_lensmap(e, false))?;
        draw(&grid, format, &opts, false)
    })
    .await
}

// ---------------------------------------------------------------------------
// POST /api/render

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RenderQuery {
    format: Option<String>,
    stat: Option<String>,
    /// `START..END` (END exclusive), or `START,END`.
    window: Option<String>,
    zoom: Option<usize>,
    title: Option<String>,
}

fn parse_window(s: &str) -> Result<(usize, usize), ApiError> {
    let bad = || ApiError::bad_request(format!("`window` must be START..END, got `{s}`"));
    let (a, b) = s
        .split_once("..")
        .or_else(|| s.split_once(','))
        .ok_or_else(bad)?;
    let a = a.trim().parse().map_err(|_| bad())?;
    let b = b.trim().parse().map_err(|_| bad())?;
    Ok((a, b))
}

/// A request that sends a grid (`/api/render`, `/api/view`): its `format`,
/// its figure options and the grid's bytes, checked before any work.
struct GridRequest {
    format: Option<String>,
    opts: FigureOptions,
    bytes: Bytes,
}

impl FromRequest<Shared> for GridRequest {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Shared) -> Result<Self, ApiError> {
        let (mut parts, body) = req.into_parts();
        let Query(q) = Query::<RenderQuery>::from_request_parts(&mut parts, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
        require_json(&parts.headers)?;
        let body = Bytes::from_request(Request::from_parts(parts, body), state).await;
        let bytes = body_bytes(body, state.limits.max_render_body)?;
        let window = q.window.as_deref().map(parse_window).transpose()?;
        let opts = figure_options(q.stat.as_deref(), window, q.zoom, q.title)?;
        Ok(Self {
            format: q.format,
            opts,
            bytes,
        })
    }
}

impl GridRequest {
    /// The grid the body holds (parse it on a worker: it may be 32 MiB).
    fn grid(&self) -> Result<LensGrid, ApiError> {
        serde_json::from_slice(&self.bytes)
            .map_err(|e| ApiError::bad_request(format!("the body is not a lensmap grid: {e}")))
    }
}

async fn render_figure(State(state): State<Shared>, req: GridRequest) -> Result<Payload, ApiError> {
    let format = match &req.format {
        Some(f) => Format::parse(f, false)?,
        None => Format::Svg,
    };
    run_job(&state, move || draw(&req.grid()?, format, &req.opts, true)).await
}

// ---------------------------------------------------------------------------
// POST /api/view

/// The view spec of a grid (`lensview.js` draws by it): what the HTML page of
/// `lensmap run` embeds for the same grid and options.
async fn view(State(state): State<Shared>, req: GridRequest) -> Result<Payload, ApiError> {
    if req.format.is_some() {
        return Err(ApiError::bad_request(
            "`/api/view` answers JSON and takes no `format`",
        ));
    }
    run_job(&state, move || {
        let json = render::view_spec_json(&req.grid()?, &req.opts)
            .map_err(|e| ApiError::from_lensmap(e, true))?;
        Ok(Payload {
            bytes: json.into_bytes(),
            format: Format::Json,
            timing: None,
        })
    })
    .await
}

/// Parse and check a `POST /api/lens` body as the handler does before it
/// queues any work; for the fuzz target (`fuzz/fuzz_targets/serve_body.rs`).
#[doc(hidden)]
pub fn check_lens_body(bytes: &[u8]) -> Result<(), String> {
    let b = parse_lens_body(bytes).map_err(|e| e.message)?;
    if let Some(f) = &b.format {
        Format::parse(f, true).map_err(|e| e.message)?;
    }
    figure_options(
        b.stat.as_deref(),
        b.window.map(|[s, e]| (s, e)),
        b.zoom,
        b.title,
    )
    .map(drop)
    .map_err(|e| e.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:7860",
            "127.0.0.1:1",
            "[::1]:80",
            "[::1]",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "",
            "evil.example",
            "evil.example:7860",
            "10.0.0.1",
            "[::2]:80",
            "localhost.evil.example",
            "[::1",
            // Issue #13: only the exact names.
            "127.1.2.3",
            "127.1",
            "localhost.",
            "localhost:",
            "localhost:80:80",
            "[::1]x",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn lens_body_errors() {
        assert!(parse_lens_body(b"{")
            .unwrap_err()
            .message
            .starts_with("malformed JSON"));
        let e = parse_lens_body(br#"{"prompt":"x","topk":3}"#).unwrap_err();
        assert!(e.message.contains("unknown field `topk`"), "{}", e.message);
        let e = parse_lens_body(br#"{"prompt":"x","dummy":-1}"#).unwrap_err();
        assert!(e.message.starts_with("invalid request"), "{}", e.message);
        assert!(parse_lens_body(br#"{"dummy":1}"#).is_err());
        let e = parse_lens_body(b"[]").unwrap_err();
        assert_eq!(e.message, "the request body must be a JSON object");
        assert!(parse_lens_body(b" ").unwrap_err().message.contains("empty"));
        assert!(parse_lens_body(b"nope")
            .unwrap_err()
            .message
            .starts_with("malformed JSON"));
        let b = parse_lens_body(br#"{"prompt":"x","window":[1,4]}"#).unwrap();
        assert_eq!(b.window, Some([1, 4]));
    }

    #[test]
    fn windows() {
        assert_eq!(parse_window("3..9").unwrap(), (3, 9));
        assert_eq!(parse_window("3,9").unwrap(), (3, 9));
        assert!(parse_window("3").is_err());
        assert!(parse_window("a..b").is_err());
    }
}
