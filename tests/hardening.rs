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

#[test]
fn nan_weight_names_its_tensor() {
    let (_d, m) = tiny_llama(|d| poke_f32(d, "model.layers.1.mlp.up_proj.weight", 7, f32::NAN));
    assert_error(
        &run_hi(&m, &["--raw"]),
        "tensor `model.layers.1.mlp.up_proj.weight` holds a non-finite value",
    );
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
