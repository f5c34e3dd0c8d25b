//! Issue #13 "Hardened against bad files and hostile clients" (`issues show
//! 13`): one test per numbered item, each reproducing the original input.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::{assert_error, lensmap, lensmap_cmd, run_hi};

use candle_core::quantized::gguf_file::{write, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

/// A copy of the tiny HF llama with `edit` applied to its directory.
fn tiny_llama(edit: impl FnOnce(&Path)) -> (tempfile::TempDir, PathBuf) {
    let src = crate::common::reference_dir().join("tiny/llama");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("llama");
    std::fs::create_dir(&d).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
    }
    edit(&d);
    (dir, d)
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// Overwrite element `at` of safetensors tensor `name` (f32) with `x`.
fn poke_f32(dir: &Path, name: &str, at: usize, x: f32) {
    let p = dir.join("model.safetensors");
    let mut b = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let start = h[name]["data_offsets"][0].as_u64().unwrap() as usize;
    let o = 8 + n + start + 4 * at;
    b[o..o + 4].copy_from_slice(&x.to_le_bytes());
    std::fs::write(&p, b).unwrap();
}

/// A tiny llama GGUF whose metadata is `meta` on top of sane defaults.
fn gguf(path: &Path, meta: &[(&str, Value)]) {
    let mut kv: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("llama.block_count".into(), Value::U32(1)),
        ("llama.embedding_length".into(), Value::U32(32)),
        ("llama.attention.head_count".into(), Value::U32(2)),
        ("llama.feed_forward_length".into(), Value::U32(64)),
        ("llama.context_length".into(), Value::U32(128)),
        ("llama.vocab_size".into(), Value::U32(4)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
    ];
    for (k, v) in meta {
        kv.retain(|(key, _)| key != k);
        kv.push((k.to_string(), v.clone()));
    }
    let t = Tensor::zeros((4, 32), DType::F32, &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, GgmlDType::F32).unwrap();
    let kv_ref: Vec<(&str, &Value)> = kv.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    write(&mut f, &kv_ref, &[("token_embd.weight", &q)]).unwrap();
}

/// The byte offset of the `offset` field of the single tensor's header entry.
fn tensor_offset_field(bytes: &[u8]) -> usize {
    let name = b"token_embd.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    at + 4 + 16 + 4 // n_dims, two u64 dims, type
}

// --- item 1: NaN reported as certainty ---------------------------------------

#[test]
fn negative_norm_epsilon_is_refused() {
    let (_d, m) = tiny_llama(|d| {
        edit_json(&d.join("config.json"), |v| {
            v["rms_norm_eps"] = (-1.0).into()
        })
    });
    assert_error(&run_hi(&m, &["--raw"]), "norm epsilon `-1`");
}

/// f32 copies are scanned at load; weights at rest are not (that would read
/// the whole file), and the residual they spoil is traced back to them.
#[test]
fn nan_weight_names_its_tensor() {
    let (_d, m) = tiny_llama(|d| poke_f32(d, "model.layers.1.mlp.up_proj.weight", 7, f32::NAN));
    for precision in ["f32", "rest"] {
        assert_error(
            &run_hi(&m, &["--raw", "--precision", precision]),
            "tensor `model.layers.1.mlp.up_proj.weight` holds a non-finite value (`NaN`)",
        );
    }
    let (_d, m) = tiny_llama(|d| poke_f32(d, "model.norm.weight", 0, f32::INFINITY));
    assert_error(
        &run_hi(&m, &["--raw"]),
        "tensor `model.norm.weight` holds a non-finite value (`inf`)",
    );
}

#[test]
fn overflowing_residual_names_its_layer() {
    // Finite weights whose product overflows f32: the residual becomes inf.
    let (_d, m) = tiny_llama(|d| {
        for i in 0..64 * 128 {
            poke_f32(d, "model.layers.0.mlp.down_proj.weight", i, 3e38);
        }
    });
    assert_error(
        &run_hi(&m, &["--raw"]),
        "the residual after block 0 holds a non-finite value",
    );
}

/// `--allow-nonfinite`: the same NaN weight as above no longer stops the
/// run. The cells it spoils (every row after block 1, whose MLP holds the
/// NaN) are `invalid` in the JSON with `null` values, hatched in the SVG and
/// shown as `non-finite` in the terminal table; the rows before it keep
/// their numbers. Without the flag: one `error:` line, a hint naming the
/// flag, and exit code 2.
#[test]
fn nonfinite_weight_under_allow_nonfinite_gives_invalid_cells_and_a_hatched_svg() {
    let (d, m) = tiny_llama(|d| poke_f32(d, "model.layers.1.mlp.up_proj.weight", 7, f32::NAN));
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["run", "--model", m.to_str().unwrap()]
            .iter()
            .chain(&["--prompt", "The capital of France is"])
            .chain(extra)
            .map(|s| s.to_string())
            .collect();
        a.push("--answer".into());
        a.push(" Paris".into());
        a
    };
    let strict = lensmap(&args(&[]).iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let first = assert_error(&strict, "tensor `model.layers.1.mlp.up_proj.weight`");
    assert_eq!(
        String::from_utf8_lossy(&strict.stderr).trim_end(),
        format!(
            "{first}\n\nhint: pass `--allow-nonfinite` to mark the cells it spoils invalid instead"
        ),
        "one error line, and a hint naming the flag"
    );
    assert_eq!(strict.status.code(), Some(2));

    let base = d.path().join("fig");
    let out = lensmap(
        &args(&[
            "--allow-nonfinite",
            "--out",
            base.to_str().unwrap(),
            "--format",
            "json,svg,png",
        ])
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base.with_extension("json")).unwrap())
            .unwrap();
    let (rows, n) = (
        g["n_rows"].as_u64().unwrap() as usize,
        g["tokens"].as_array().unwrap().len(),
    );
    assert_eq!(rows, 4);
    assert!(n >= 4, "{n} positions");
    let entropy = crate::common::grid_f64(&g["entropy"]);
    let kl = crate::common::grid_f64(&g["kl_to_final"]);
    assert!(entropy[1].iter().any(|&h| h > 2.0), "{:?}", entropy[1]);
    for r in 0..rows {
        for p in 0..n {
            let invalid = g["invalid"][r][p].as_bool().unwrap();
            assert_eq!(invalid, r >= 2, "cell ({r}, {p})");
            if invalid {
                // No number at all: never 0 nats, never a top token.
                assert!(g["entropy"][r][p].is_null() && g["kl_to_final"][r][p].is_null());
                assert_eq!(g["topk"][r][p], serde_json::json!([]));
                assert_eq!(g["tracked"][0]["cells"][r][p]["rank"], 0);
            } else {
                // The valid rows keep real entropies (row 0 reads the tied
                // embedding back, near 0 nats; row 1 up to 3.6 nats) but
                // have no KL: the output row is invalid.
                let h = entropy[r][p];
                assert!((0.0..=512f64.ln()).contains(&h), "({r}, {p}): {h}");
                assert!(kl[r][p].is_nan(), "KL against an invalid output row");
                assert!(!g["topk"][r][p].as_array().unwrap().is_empty());
            }
        }
    }
    // The rehearsal summary skips every position: their output cells are invalid.
    assert_eq!(g["rehearsal"]["positions"], serde_json::json!([]));
    assert!(stdout.contains(&format!(
        "invalid   {} of {} cells",
        (rows - 2) * n,
        rows * n
    )));
    assert!(stdout.contains("non-finite"), "{stdout}");

    // The SVG hatches exactly the invalid cells of B with the diagonal pattern.
    let svg = std::fs::read_to_string(base.with_extension("svg")).unwrap();
    assert!(svg.contains(r#"<pattern id="hatch""#) && svg.contains("rotate(45)"));
    let mut seen = [0usize; 2];
    for line in svg
        .lines()
        .filter(|l| l.starts_with(r#"<rect class="cell""#))
    {
        let row: usize = line
            .split("data-row=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let hatched = line.contains(r#"fill="url(#hatch)""#);
        assert_eq!(hatched, row >= 2, "{line}");
        assert_eq!(hatched, line.contains(r#"data-invalid="true""#));
        seen[hatched as usize] += 1;
    }
    assert!(seen[0] > 0 && seen[1] == seen[0], "{seen:?}");
    assert!(svg.contains(r#"id="hatch-key""#));
    assert!(std::fs::metadata(base.with_extension("png")).unwrap().len() > 1000);
}

// --- item 2: unbounded chat templates ------------------------------------------

#[test]
fn looping_template_runs_out_of_fuel() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("loop.jinja");
    std::fs::write(
        &t,
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    )
    .unwrap();
    let m = crate::common::reference_dir().join("tiny/llama");
    let line = assert_error(
        &run_hi(&m, &["--chat-template", t.to_str().unwrap()]),
        "ran out of fuel",
    );
    assert!(line.contains("loop.jinja"), "names the template: {line}");
    // The model's own template, through tokenizer_config.json.
    let (_d, m) = tiny_llama(|d| {
        edit_json(&d.join("tokenizer_config.json"), |v| {
            v["chat_template"] =
                "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
                    .into()
        })
    });
    assert_error(&run_hi(&m, &[]), "template `");
}

// --- item 3: unbounded sizes --------------------------------------------------

#[test]
fn huge_layer_count_in_config_is_refused() {
    let (_d, m) = tiny_llama(|d| {
        edit_json(&d.join("config.json"), |v| {
            v["num_hidden_layers"] = (1u64 << 63).into()
        })
    });
    assert_error(
        &run_hi(&m, &["--raw"]),
        "layers `9223372036854775808` is outside 1..=1024",
    );
}

#[test]
fn huge_head_dim_in_config_is_refused() {
    let (_d, m) = tiny_llama(|d| {
        edit_json(&d.join("config.json"), |v| {
            v["head_dim"] = (1u64 << 31).into()
        })
    });
    assert_error(&run_hi(&m, &["--raw"]), "head_dim `2147483648`");
}

#[test]
fn huge_block_count_in_gguf_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    gguf(&p, &[("llama.block_count", Value::U64(1 << 40))]);
    assert_error(&run_hi(&p, &["--raw"]), "layers `1099511627776`");
}

// --- item 4: panics inside dependencies ------------------------------------------

#[test]
fn tokenizer_decoder_typo_is_one_line() {
    let (_d, m) = tiny_llama(|d| {
        let p = d.join("tokenizer.json");
        let text = std::fs::read_to_string(&p).unwrap();
        // One character: `true` → `tru` inside "decoder".
        let at = text.find("\"decoder\"").unwrap();
        let rel = text[at..].find("true").unwrap();
        let mut bad = text.clone();
        bad.replace_range(at + rel..at + rel + 4, "tru");
        std::fs::write(&p, bad).unwrap();
    });
    assert_error(&run_hi(&m, &["--raw"]), "tokenizer");
}

#[test]
fn gguf_alignment_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    gguf(&p, &[("general.alignment", Value::U32(0))]);
    assert_error(&run_hi(&p, &["--raw"]), "`general.alignment` is `0`");
}

// --- item 5: GGUF offset checks ---------------------------------------------------

#[test]
fn gguf_offsets_overflowing_misaligned_or_odd_alignment() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    gguf(&p, &[]);
    let good = std::fs::read(&p).unwrap();
    let at = tensor_offset_field(&good);
    let patch = |off: u64| {
        let mut b = good.clone();
        b[at..at + 8].copy_from_slice(&off.to_le_bytes());
        std::fs::write(&p, b).unwrap();
    };
    patch(u64::MAX - 31);
    assert_error(&run_hi(&p, &["--raw"]), "offsets are corrupt");
    patch(4);
    assert_error(
        &run_hi(&p, &["--raw"]),
        "not a multiple of the alignment 32",
    );
    gguf(&p, &[("general.alignment", Value::U32(24))]);
    assert_error(&run_hi(&p, &["--raw"]), "must be a power of two");
}

// --- item 7: messages ---------------------------------------------------------------

/// The error `GgufFile::open` gives for a `gguf_header` fuzz corpus seed.
fn gguf_seed_error(seed: &str) -> String {
    let input = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus/gguf_header")
        .join(seed);
    lensmap::model::GgufFile::open(&input)
        .err()
        .expect("refused")
        .to_string()
}

/// Found by the `gguf_header` fuzz campaign: a tensor with dimensions
/// `[2, 0, 2^63, 2^63]` has 0 elements, so the old check passed it, but
/// candle multiplies the dimensions in reverse and overflowed (a panic with
/// overflow checks, a wrapped product without). The input is kept as a
/// corpus seed.
#[test]
fn gguf_zero_sized_tensor_with_huge_dims_is_refused() {
    let err = gguf_seed_error("regression-zero-dim-overflow");
    assert!(
        err.contains("tensor `llama.attention.head_count`: element count overflows"),
        "{err}"
    );
}

/// Found by the `gguf_header` fuzz campaign after the fix above: a tensor
/// `[32, 0]` made candle build an f32 slice on an unaligned empty buffer (a
/// panic with debug assertions). A dimension of 0 is refused. Kept as a
/// corpus seed.
#[test]
fn gguf_tensor_with_a_zero_dimension_is_refused() {
    let err = gguf_seed_error("regression-zero-dimension");
    assert!(
        err.contains("tensor `rope_freqs.weight` has a dimension of 0"),
        "{err}"
    );
}

#[test]
fn os_error_printed_once() {
    let m = crate::common::reference_dir().join("tiny/llama");
    let line = assert_error(
        &run_hi(&m, &["--chat-template", "/nonexistent/t.jinja"]),
        "No such file or directory",
    );
    assert_eq!(line.matches("No such file").count(), 1, "{line}");
    assert!(!line.contains("os error"), "{line}");
}

#[test]
fn convert_on_a_directory_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let m = crate::common::reference_dir().join("tiny/llama");
    let out = lensmap(&[
        "convert",
        "--model",
        m.to_str().unwrap(),
        "--out",
        dir.path().join("o").to_str().unwrap(),
    ]);
    assert_error(&out, "is a directory");
}

#[test]
fn gguf_cut_inside_header_says_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    gguf(&p, &[]);
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..100]).unwrap();
    assert_error(&run_hi(&p, &["--raw"]), "header is truncated");
}

#[test]
fn negative_top_k_is_out_of_range() {
    let m = crate::common::reference_dir().join("tiny/llama");
    assert_error(
        &run_hi(&m, &["--top-k", "-1"]),
        "`--top-k` must be between 1 and 100, got `-1`",
    );
}

// --- item 8: loose batch input ---------------------------------------------------

fn batch(prompts: &str, extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.jsonl");
    std::fs::write(&p, prompts).unwrap();
    let m = crate::common::reference_dir().join("tiny/llama");
    let out_dir = dir.path().join("out");
    let mut args = vec![
        "batch",
        "--model",
        m.to_str().unwrap(),
        "--prompts",
        p.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--quiet",
    ];
    args.extend_from_slice(extra);
    lensmap(&args)
}

#[test]
fn batch_unknown_key_is_named() {
    let input = lensmap::batch::input::parse_input(
        "{\"id\": \"a\", \"prompt\": \"Q\", \"anwser\": \" A\"}\n",
    );
    assert!(input.items.is_empty());
    assert!(
        input.errors[0].message.contains("unknown key `anwser`"),
        "{:?}",
        input.errors
    );
}

#[test]
fn batch_byte_order_mark_is_accepted() {
    let input = lensmap::batch::input::parse_input("\u{feff}{\"id\": \"a\", \"prompt\": \"Q\"}\n");
    assert_eq!(input.items.len(), 1, "{:?}", input.errors);
}

#[test]
fn batch_empty_file_is_an_error() {
    assert_error(&batch("", &[]), "holds no prompts");
    assert_error(&batch("\n\n", &[]), "holds no prompts");
}

#[test]
fn batch_shards_count_from_one() {
    assert_error(
        &batch("{\"id\": \"a\", \"prompt\": \"Q\"}\n", &["--shard", "0/3"]),
        "shards count from 1",
    );
    let s: lensmap::batch::input::Shard = "3/3".parse().unwrap();
    assert_eq!((s.index, s.count, s.to_string()), (2, 3, "3/3".to_string()));
    assert!(s.contains(3, 3) && !s.contains(1, 3));
}

// --- item 9: late validation -----------------------------------------------------

#[test]
fn bad_zoom_and_window_fail_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("g.json");
    let m = crate::common::reference_dir().join("tiny/llama");
    let out = run_hi(
        &m,
        &["--raw", "--zoom", "9999", "--json", json.to_str().unwrap()],
    );
    assert_error(&out, "zoom position `9999` is outside the prompt's");
    assert!(!json.exists(), "no JSON written before the check");
    let out = run_hi(
        &m,
        &[
            "--raw",
            "--window",
            "5..100000",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert_error(&out, "window `5..100000`");
    assert!(!json.exists());
}

// --- item 6: serve lets go ---------------------------------------------------------

/// Start `lensmap serve --port 0 EXTRA…` on `model`; the child and its address.
fn spawn_serve(model: &Path, extra: &[&str]) -> (std::process::Child, std::net::SocketAddr) {
    use std::io::BufRead;
    let mut child = lensmap_cmd()
        .args(["serve", "--model", model.to_str().unwrap(), "--port", "0"])
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .trim_start_matches("listening on http://")
        .parse()
        .unwrap_or_else(|_| panic!("no address in {line:?}"));
    (child, addr)
}

/// `GET /api/health` as JSON.
fn health(addr: std::net::SocketAddr) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "GET /api/health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|_| panic!("health: {out}"))
}

/// A client asks for a long run (SmolLM2, a 700-token prompt, 256 greedy
/// tokens: tens of seconds of work) and hangs up once a worker has it. The
/// forward pass stops at the next block: `/api/health` shows the worker
/// free again and the request counted as `cancelled` (a finished run would
/// not count), well within the generous 20 s bound, and the server logs it.
#[test]
fn a_disconnected_client_frees_its_worker_between_blocks() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let started = Instant::now();
    let model = crate::common::model_file("SmolLM2-135M-Instruct.Q4_1.gguf");
    let (mut child, addr) = spawn_serve(&model, &["--workers", "1"]);
    let body = serde_json::json!({
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "prompt": "the capital of Australia is Canberra. ".repeat(80),
        "generate": 256,
    })
    .to_string();
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    write!(
        client,
        "POST /api/lens HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Wait until a worker runs it.
    while health(addr)["running"] != 1 {
        assert!(started.elapsed() < Duration::from_secs(20), "never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ran = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    client.shutdown(std::net::Shutdown::Both).unwrap();
    drop(client);
    let h = loop {
        let h = health(addr);
        if h["running"] == 0 {
            break h;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the worker is still busy {:.1} s after the client left",
            ran.elapsed().as_secs_f64()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let freed = ran.elapsed();
    assert_eq!(h["cancelled"], 1, "{h}");
    let _ = child.kill();
    let _ = child.wait();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(
        log.contains("request cancelled after") && !log.contains("panicked"),
        "{log}"
    );
    eprintln!(
        "worker free {:.2} s after the request started",
        freed.as_secs_f64()
    );
}

/// 200 clients send half a request line and stall. The server still answers
/// a normal request, refuses an oversized `Content-Length` at once, and
/// exits within 2 s of SIGTERM. The whole test is bounded to 20 s.
#[test]
fn slow_loris_clients_do_not_hold_the_server() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::{Duration, Instant};
    let started = Instant::now();
    let m = crate::common::reference_dir().join("tiny/llama");
    let mut child = lensmap_cmd()
        .args([
            "serve",
            "--model",
            m.to_str().unwrap(),
            "--port",
            "0",
            "--workers",
            "1",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line
        .trim()
        .trim_start_matches("listening on http://")
        .parse()
        .unwrap();

    let slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"POST /api/lens HTTP/1.1\r\nHost: local")
                .unwrap();
            s
        })
        .collect();

    let ask = |req: &str| -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    let health = ask(&format!(
        "GET /api/health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    ));
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    // A normal lens request is answered with a whole grid.
    let body = r#"{"prompt": "Hi", "raw": true}"#;
    let lens = ask(&format!(
        "POST /api/lens HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    assert!(lens.starts_with("HTTP/1.1 200"), "{lens}");
    assert!(lens.contains("\"n_rows\":4"), "{lens}");
    // A body declared over the limit: 413 without sending a byte of it.
    let big = ask(&format!(
        "POST /api/lens HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 999999999\r\n\r\n"
    ));
    assert!(big.starts_with("HTTP/1.1 413"), "{big}");
    // A host that only resolves to loopback is still refused.
    let foreign = ask("GET /api/health HTTP/1.1\r\nHost: 127.1.2.3\r\nConnection: close\r\n\r\n");
    assert!(foreign.starts_with("HTTP/1.1 403"), "{foreign}");

    // SIGTERM with 200 half-sent requests open: out within 2 s.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let term = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if term.elapsed() > Duration::from_secs(2) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    drop(slow);
    assert!(status.is_some(), "still running 2 s after SIGTERM");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "bounded to 20 s"
    );
}
