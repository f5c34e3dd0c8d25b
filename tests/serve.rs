//! `lensmap serve` end to end: servers started in-process on ephemeral
//! loopback ports (one spawned from the binary), spoken to over plain
//! HTTP/1.1 with a small client on `std::net::TcpStream`.
//!
//! Needs `models/SmolLM2-135M-Instruct.Q4_1.gguf` (`scripts/fetch-models`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use crate::common::{lensmap_cmd, output_ok, stderr_of_failure};
use lensmap::model::Precision;
use lensmap::prompt::PromptSpec;
use lensmap::run::{AnswerSpec, LensRequest, Session};
use lensmap::serve::{self, Limits, ServeConfig, Server};
use serde_json::Value;

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
);
const MODEL_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const SEED: &str = "What is the capital of Australia?";

/// The model, loaded once for every test in this file.
fn session() -> Arc<Session> {
    static S: OnceLock<Arc<Session>> = OnceLock::new();
    S.get_or_init(|| {
        assert!(
            std::path::Path::new(MODEL).exists(),
            "{MODEL} is missing: run `scripts/fetch-models`"
        );
        Arc::new(Session::open(MODEL, Precision::Auto, None).expect("load SmolLM2"))
    })
    .clone()
}

fn server_with(workers: usize, queue: usize, limits: Limits) -> Server {
    let mut cfg = ServeConfig::new(vec![session()]);
    cfg.workers = workers;
    cfg.queue = queue;
    cfg.limits = limits;
    serve::start(cfg).expect("start server")
}

fn server() -> Server {
    server_with(2, 16, Limits::default())
}

// ---------------------------------------------------------------------------
// A tiny HTTP/1.1 client: one request per connection.

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text()))
    }
    /// The body of an error answer: JSON with a non-empty `error` string.
    fn error(&self) -> String {
        assert!(
            self.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "error {} is not JSON: {:?} {}",
            self.status,
            self.headers,
            self.text()
        );
        let v = self.json();
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no `error` in {v}"));
        assert!(!msg.is_empty());
        msg.to_string()
    }
}

fn request_raw(addr: SocketAddr, head: &str, body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    // A guard against a hung server, not a timing goal: in the one test
    // binary the 50-request burst shares 2 cores with other heavy tests
    // (300 s was exceeded on a busy machine).
    s.set_read_timeout(Some(Duration::from_secs(900))).unwrap();
    let mut req = head.as_bytes().to_vec();
    req.extend_from_slice(body);
    // The server may answer (413) before reading everything; the answer still counts.
    let _ = s.write_all(&req);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Resp {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..end]).expect("head is UTF-8");
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    } else if let Some(len) = headers.iter().find(|(k, _)| k == "content-length") {
        let len: usize = len.1.parse().unwrap();
        assert_eq!(body.len(), len, "body shorter than content-length");
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n").expect("chunk size");
        let size = usize::from_str_radix(
            std::str::from_utf8(&b[..nl])
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .expect("hex chunk size");
        b = &b[nl + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Resp {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    if method == "POST" || !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    request_raw(addr, &head, body)
}

fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, None, b"")
}

fn post_json(addr: SocketAddr, path: &str, body: &Value) -> Resp {
    post_bytes(addr, path, body.to_string().as_bytes())
}

fn post_bytes(addr: SocketAddr, path: &str, body: &[u8]) -> Resp {
    request(addr, "POST", path, Some("application/json"), body)
}

fn seed_body() -> Value {
    serde_json::json!({ "model": MODEL_NAME, "prompt": SEED, "dummy": 8, "generate": 8 })
}

// ---------------------------------------------------------------------------

#[test]
fn seed_request_matches_lensmap_run_json() {
    let srv = server();
    let resp = post_json(srv.local_addr(), "/api/lens", &seed_body());
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert!(resp
        .header("server-timing")
        .is_some_and(|t| t.contains("compute;dur=")));

    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("seed.json");
    output_ok(
        lensmap_cmd()
            .args([
                "run",
                "--model",
                MODEL,
                "--prompt",
                SEED,
                "--dummy",
                "8",
                "--generate",
                "8",
                "-q",
                "--json",
            ])
            .arg(&json),
    );
    let cli_text = std::fs::read(&json).unwrap();
    let cli: Value = serde_json::from_slice(&cli_text).unwrap();
    let api = resp.json();
    assert_eq!(api["answer"]["text"], cli["answer"]["text"]);
    assert!(
        api == cli,
        "the API's grid differs from `lensmap run --json`"
    );
    // Same serialiser, same struct: the bytes agree too.
    assert!(resp.body == cli_text, "same values but different bytes");
}

#[test]
fn models_health_page_and_assets() {
    let srv = server();
    let a = srv.local_addr();
    let m = get(a, "/api/models").json();
    let models = m["models"].as_array().unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!(models[0]["name"], MODEL_NAME);
    assert_eq!(models[0]["arch"], "llama");
    assert_eq!(models[0]["layers"], 30);
    assert_eq!(models[0]["vocab"], 49152);
    assert_eq!(m["limits"]["max_dummy"], 256);

    let h = get(a, "/api/health").json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["workers"], 2);
    assert_eq!(h["queue"], 16);

    let page = get(a, "/");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let csp = page.header("content-security-policy").expect("CSP header");
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    let html = page.text();
    for needle in [
        "/assets/lensview.js",
        "/assets/app.js",
        "id=\"prompt\"",
        "id=\"system\"",
        "id=\"template\"",
        "id=\"dummy\"",
        "id=\"model\"",
        "id=\"dl-png\"",
    ] {
        assert!(html.contains(needle), "page lacks {needle}");
    }
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page must not load anything remote"
    );
    // The grid script is the render module's, byte for byte.
    let js = get(a, "/assets/lensview.js");
    assert_eq!(js.status, 200);
    assert!(js
        .header("content-type")
        .unwrap()
        .starts_with("text/javascript"));
    assert_eq!(js.text(), lensmap::render::LENSVIEW_JS);
    assert_eq!(
        get(a, "/assets/lensview.css").text(),
        lensmap::render::LENSVIEW_CSS
    );
    assert!(get(a, "/assets/app.js").text().contains("LensView.mount"));
    assert_eq!(get(a, "/assets/app.css").status, 200);
}

#[test]
fn limits_and_malformed_requests_get_json_errors() {
    let srv = server_with(
        2,
        16,
        Limits {
            max_tokens: 32,
            ..Limits::default()
        },
    );
    let a = srv.local_addr();
    let long_prompt = (0..40)
        .map(|i| format!("word{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let long_body = serde_json::json!({ "prompt": long_prompt }).to_string();
    // Every case is refused with 400 and a JSON error naming what is wrong.
    #[rustfmt::skip]
    let cases: &[(&str, &str, &str)] = &[
        ("dummy 300", r#"{"prompt":"hi","dummy":300}"#, "`dummy` must be at most 256"),
        ("top_k 0", r#"{"prompt":"hi","top_k":0}"#, "`top_k` must be between 1 and 100"),
        ("top_k 101", r#"{"prompt":"hi","top_k":101}"#, "`top_k` must be between 1 and 100"),
        ("generate 1000", r#"{"prompt":"hi","generate":1000}"#, "`generate` must be at most"),
        ("prompt over --max-tokens", &long_body, "at most 32 (the server's limit)"),
        ("malformed JSON", r#"{"prompt": "hi""#, "malformed JSON"),
        ("not JSON at all", "prompt=hi", "malformed JSON"),
        ("empty body", "", "empty"),
        ("array", "[1,2]", "must be a JSON object"),
        ("missing prompt", r#"{"dummy":2}"#, "missing field `prompt`"),
        ("empty prompt", r#"{"prompt":"  "}"#, "`prompt` is empty"),
        ("wrong type", r#"{"prompt":"hi","dummy":"8"}"#, "invalid type"),
        ("negative", r#"{"prompt":"hi","dummy":-1}"#, "invalid value"),
        ("unknown field", r#"{"prompt":"hi","topk":3}"#, "unknown field `topk`"),
        ("bad dummy_text", r#"{"prompt":"hi","dummy":2,"dummy_text":"two words"}"#, "exactly one token"),
        ("bad format", r#"{"prompt":"hi","format":"pdf"}"#, "unknown format `pdf`"),
        ("bad stat", r#"{"prompt":"hi","format":"svg","stat":"joy"}"#, "unknown statistic"),
        ("answer_skip without auto", r#"{"prompt":"hi","answer_skip":2}"#, "answer_skip"),
    ];
    for &(what, body, needle) in cases {
        let r = post_bytes(a, "/api/lens", body.as_bytes());
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        let msg = r.error();
        assert!(msg.contains(needle), "{what}: `{msg}` lacks `{needle}`");
    }

    // Body over 64 KiB: 413, JSON.
    let big = serde_json::json!({ "prompt": "a".repeat(70 * 1024) }).to_string();
    let r = post_bytes(a, "/api/lens", big.as_bytes());
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.error().contains("65536 bytes"));
    // Just under the limit is read (and then refused for its length in tokens).
    let under = serde_json::json!({ "prompt": "a ".repeat(30 * 1024) }).to_string();
    let r = post_bytes(a, "/api/lens", under.as_bytes());
    assert_eq!(r.status, 400, "{}", r.text());
    let msg = r.error();
    assert!(msg.contains("tokens"), "{msg}");

    // Not JSON by type, wrong method, no such route: JSON errors too.
    let r = request(
        a,
        "POST",
        "/api/lens",
        Some("text/plain"),
        br#"{"prompt":"hi"}"#,
    );
    assert_eq!(r.status, 415);
    assert!(r.error().contains("application/json"));
    let r = request(a, "POST", "/api/lens", None, br#"{"prompt":"hi"}"#);
    assert_eq!(r.status, 415);
    r.error();
    let r = get(a, "/api/lens");
    assert_eq!(r.status, 405);
    assert!(r.error().contains("GET"));
    assert_eq!(r.header("allow"), Some("POST"));
    let r = get(a, "/api/nothing");
    assert_eq!(r.status, 404);
    r.error();
    let r = request(
        a,
        "POST",
        "/api/render?format=gif",
        Some("application/json"),
        b"{}",
    );
    assert_eq!(r.status, 400);
    assert!(r.error().contains("unknown format"));
    let r = request(
        a,
        "POST",
        "/api/render",
        Some("application/json"),
        br#"{"grid":1}"#,
    );
    assert_eq!(r.status, 400);
    assert!(r.error().contains("not a lensmap grid"));
}

#[test]
fn unknown_models_are_404_and_never_paths() {
    let srv = server();
    let a = srv.local_addr();
    for name in [
        "nope.gguf",
        "../models/SmolLM2-135M-Instruct.Q4_1.gguf",
        MODEL,
        "smollm2-135m-instruct.q4_1.gguf",
    ] {
        let r = post_json(
            a,
            "/api/lens",
            &serde_json::json!({ "model": name, "prompt": "hi" }),
        );
        assert_eq!(r.status, 404, "{name}: {}", r.text());
        let msg = r.error();
        assert!(
            msg.contains("unknown model") && msg.contains(MODEL_NAME),
            "{msg}"
        );
    }
}

#[test]
fn foreign_host_headers_are_refused_on_loopback() {
    let srv = server();
    let a = srv.local_addr();
    let r = request_raw(
        a,
        "GET /api/models HTTP/1.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert_eq!(r.status, 403);
    assert!(r.error().contains("attacker.example"));
    let port = a.port();
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "[::1]".to_string(),
    ] {
        let r = request_raw(
            a,
            &format!("GET /api/health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
            b"",
        );
        assert_eq!(r.status, 200, "{host}");
    }
}

/// The grid `/api/lens` answers for the seed question with 4 dummies and
/// the target " Canberra".
fn seed_grid_bytes(a: SocketAddr) -> Vec<u8> {
    let r = post_json(
        a,
        "/api/lens",
        &serde_json::json!({ "prompt": SEED, "dummy": 4, "target": " Canberra" }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.body
}

#[test]
fn render_endpoint_and_figure_formats() {
    let srv = server();
    let a = srv.local_addr();
    let grid = seed_grid_bytes(a);

    let svg = post_bytes(a, "/api/render?format=svg&stat=target-prob", &grid);
    assert_eq!(svg.status, 200, "{}", svg.text());
    assert_eq!(svg.header("content-type"), Some("image/svg+xml"));
    assert!(svg.text().trim_start().starts_with("<svg") || svg.text().starts_with("<?xml"));

    let png = post_bytes(
        a,
        "/api/render?format=png&stat=kl&window=20..30&zoom=25",
        &grid,
    );
    assert_eq!(png.status, 200, "{}", png.text());
    assert_eq!(png.header("content-type"), Some("image/png"));
    assert!(png.body.starts_with(b"\x89PNG\r\n\x1a\n"));

    let html = post_bytes(a, "/api/render?format=html", &grid);
    assert_eq!(html.status, 200);
    assert!(html.text().contains("LensView.mount"));

    // Default format is SVG; out-of-range views are 400.
    assert_eq!(
        post_bytes(a, "/api/render", &grid).header("content-type"),
        Some("image/svg+xml")
    );
    let r = post_bytes(a, "/api/render?zoom=999", &grid);
    assert_eq!(r.status, 400);
    assert!(r.error().contains("zoom"));
    let r = post_bytes(a, "/api/render?window=5..2", &grid);
    assert_eq!(r.status, 400);
    r.error();

    // Or ask /api/lens for the figure directly.
    let r = post_json(
        a,
        "/api/lens",
        &serde_json::json!({ "prompt": SEED, "dummy": 4, "format": "svg", "stat": "kl" }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("image/svg+xml"));
}

/// `POST /api/view` answers the view spec the HTML page of the same grid
/// embeds (one source of view rules for both pages), and refuses what the
/// figure refuses.
#[test]
fn view_endpoint_answers_the_html_pages_spec() {
    let srv = server();
    let a = srv.local_addr();
    let grid_bytes = seed_grid_bytes(a);
    let grid = lensmap::LensGrid::from_json(std::str::from_utf8(&grid_bytes).unwrap()).unwrap();
    let view = post_bytes(a, "/api/view?stat=kl&window=20..30&zoom=25", &grid_bytes);
    assert_eq!(view.status, 200, "{}", view.text());
    assert_eq!(view.header("content-type"), Some("application/json"));
    let opts = lensmap::render::FigureOptions {
        stat: lensmap::render::Stat::Kl,
        window: Some((20, 30)),
        zoom: Some(25),
        ..Default::default()
    };
    assert_eq!(
        view.text(),
        lensmap::render::view_spec_json(&grid, &opts).unwrap()
    );
    let spec: Value = serde_json::from_slice(&view.body).unwrap();
    assert_eq!(spec["window"], serde_json::json!([20, 30]));
    assert_eq!(spec["stats"].as_array().unwrap().len(), 5);
    // What the figure refuses, the view refuses.
    for bad in [
        "/api/view?zoom=999",
        "/api/view?window=5..2",
        "/api/view?stat=nope",
        "/api/view?format=svg",
    ] {
        let r = post_bytes(a, bad, &grid_bytes);
        assert_eq!(r.status, 400, "{bad}");
        r.error();
    }
    assert_eq!(post_bytes(a, "/api/view", b"{}").status, 400);
}

fn variants() -> Vec<(Value, Vec<u8>)> {
    let s = session();
    ["Australia", "France", "Japan", "Canada", "Kenya"]
        .iter()
        .map(|c| {
            let prompt = format!("What is the capital of {c}?");
            let body = serde_json::json!({ "prompt": prompt, "dummy": 8, "generate": 8 });
            let req = LensRequest {
                prompt: PromptSpec {
                    user: prompt,
                    dummy: 8,
                    dummy_text: Some(".".into()),
                    ..PromptSpec::default()
                },
                top_k: 5,
                generate: 8,
                answer: AnswerSpec::Auto { skip: 0 },
                ..LensRequest::default()
            };
            let grid = s.run(&req).expect("reference run");
            (body, serde_json::to_vec(&grid).unwrap())
        })
        .collect()
}

#[test]
fn fifty_concurrent_requests_with_two_workers() {
    let expected = Arc::new(variants());
    let srv = server_with(2, 64, Limits::default());
    let a = srv.local_addr();
    let start = Arc::new(Barrier::new(50));
    let clock = Instant::now();
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let expected = Arc::clone(&expected);
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                let (body, want) = &expected[i % expected.len()];
                start.wait();
                let r = post_json(a, "/api/lens", body);
                assert_eq!(r.status, 200, "request {i}: {}", r.text());
                assert!(
                    &r.body == want,
                    "request {i}: grid differs from a direct run"
                );
            })
        })
        .collect();
    let mut failed = 0;
    for h in handles {
        failed += h.join().is_err() as usize;
    }
    assert_eq!(failed, 0, "{failed} of 50 requests failed");
    eprintln!(
        "50 concurrent requests in {:.1} s",
        clock.elapsed().as_secs_f64()
    );
    let h = get(a, "/api/health").json();
    assert_eq!(h["running"], 0);
    assert_eq!(h["waiting"], 0);
}

#[test]
fn a_full_queue_answers_503() {
    let srv = server_with(1, 1, Limits::default());
    let a = srv.local_addr();
    let n = 6;
    let start = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                // Connect first, then send together.
                let body = seed_body().to_string();
                let head = format!(
                    "POST /api/lens HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let mut s = TcpStream::connect(a).unwrap();
                start.wait();
                s.write_all(head.as_bytes()).unwrap();
                s.write_all(body.as_bytes()).unwrap();
                let mut raw = Vec::new();
                s.read_to_end(&mut raw).unwrap();
                parse_response(&raw)
            })
        })
        .collect();
    let resps: Vec<Resp> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok: Vec<&Resp> = resps.iter().filter(|r| r.status == 200).collect();
    let busy: Vec<&Resp> = resps.iter().filter(|r| r.status == 503).collect();
    assert_eq!(
        ok.len() + busy.len(),
        n,
        "only 200 or 503 expected: {:?}",
        resps.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    // One running and one waiting fit; the other four arrive while both are taken.
    assert!(ok.len() >= 2, "{} succeeded", ok.len());
    assert!(
        !busy.is_empty(),
        "no request was refused with 1 worker and queue 1"
    );
    for r in busy {
        let msg = r.error();
        assert!(msg.contains("busy"), "{msg}");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    let first = &ok[0].body;
    assert!(ok.iter().all(|r| &r.body == first));
    // And the server recovers.
    assert_eq!(get(a, "/api/health").json()["waiting"], 0);
    assert_eq!(
        post_json(a, "/api/lens", &serde_json::json!({ "prompt": "hi" })).status,
        200
    );
}

#[test]
fn the_binary_prints_its_url_and_serves() {
    let mut child = lensmap_cmd()
        .args([
            "serve",
            "--model",
            MODEL,
            "--port",
            "0",
            "--workers",
            "1",
            "--queue",
            "2",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lensmap serve");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut child = Kill(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line `{line}`"));
    let addr: SocketAddr = url.strip_prefix("http://").unwrap().parse().unwrap();
    assert!(addr.ip().is_loopback(), "binds loopback by default");
    assert_ne!(addr.port(), 0);
    let m = get(addr, "/api/models").json();
    assert_eq!(m["models"][0]["name"], MODEL_NAME);
    assert_eq!(get(addr, "/api/health").json()["queue"], 2);
    assert_eq!(get(addr, "/").status, 200);
    let _ = child.0.kill();
    let _ = child.0.wait();
    let mut err = String::new();
    BufReader::new(stderr).read_to_string(&mut err).unwrap();
    assert!(err.contains(&format!("loaded {MODEL_NAME}")), "{err}");
    assert!(
        !err.contains("warning"),
        "no exposure warning on loopback: {err}"
    );
}

#[test]
fn bad_serve_arguments_fail_cleanly() {
    let stderr = stderr_of_failure(lensmap_cmd().args([
        "serve",
        "--model",
        "models/nope.gguf",
        "--port",
        "0",
    ]));
    assert!(stderr.contains("not found"), "{stderr}");
    let stderr =
        stderr_of_failure(lensmap_cmd().args(["serve", "--model", MODEL, "--host", "example.com"]));
    assert!(stderr.contains("--host"), "{stderr}");
    assert!(
        serve::start(ServeConfig::new(vec![session(), session()])).is_err(),
        "duplicate names"
    );
}
