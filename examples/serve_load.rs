//! Load benchmark for `lensmap serve`: start the server binary on an
//! ephemeral loopback port, send a bounded load of seed requests from a few
//! concurrent clients, and report throughput, latency percentiles and the
//! server's resident memory before and after.
//!
//! ```text
//! cargo build --release && cargo run --release --example serve_load -- \
//!     [--bin target/release/lensmap] [--model models/SmolLM2-135M-Instruct.Q4_1.gguf] \
//!     [--requests 200] [--clients 8] [--workers 2] [--queue 16]
//! ```
//!
//! Every request is the seed prompt ("What is the capital of Australia?",
//! dummy 8, generate 8); every answer must be `200` with the same bytes as the
//! first. No timing is asserted: this prints numbers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Opts {
    bin: String,
    model: String,
    requests: usize,
    clients: usize,
    workers: usize,
    queue: usize,
}

fn parse_args() -> Opts {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut o = Opts {
        bin: format!("{root}/target/release/lensmap"),
        model: format!("{root}/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        requests: 200,
        clients: 8,
        workers: 2,
        queue: 16,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let val = || {
            args.get(i + 1)
                .cloned()
                .unwrap_or_else(|| panic!("`{}` needs a value", args[i]))
        };
        let num =
            |s: String| -> usize { s.parse().unwrap_or_else(|_| panic!("not a number: {s}")) };
        match args[i].as_str() {
            "--bin" => o.bin = val(),
            "--model" => o.model = val(),
            "--requests" => o.requests = num(val()),
            "--clients" => o.clients = num(val()),
            "--workers" => o.workers = num(val()),
            "--queue" => o.queue = num(val()),
            "-h" | "--help" => {
                println!("serve_load [--bin PATH] [--model GGUF] [--requests N] [--clients N] [--workers N] [--queue N]");
                std::process::exit(0);
            }
            other => panic!("unknown argument `{other}`"),
        }
        i += 2;
    }
    o
}

/// `VmRSS` and `VmHWM` (peak) of a process, in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// One POST over a fresh connection; returns (status, body).
fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).ok();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP head");
    let status = std::str::from_utf8(&raw[9..12]).unwrap().parse().unwrap();
    (status, raw[split + 4..].to_vec())
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let o = parse_args();
    let mut child = Command::new(&o.bin)
        .args(["serve", "--model", &o.model, "--port", "0"])
        .args([
            "--workers",
            &o.workers.to_string(),
            "--queue",
            &o.queue.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", o.bin));
    let stdout = child.stdout.take().unwrap();
    let server = KillOnDrop(child);
    let pid = server.0.id();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected server output `{line}`"))
        .parse()
        .unwrap();

    let body = serde_json::json!({
        "prompt": "What is the capital of Australia?", "dummy": 8, "generate": 8
    })
    .to_string();
    let (rss_before, _) = rss_mib(pid);

    let next = Arc::new(AtomicUsize::new(0));
    let results: Arc<Mutex<Vec<(Duration, u16, usize)>>> = Arc::new(Mutex::new(Vec::new()));
    let reference: Arc<Mutex<Option<Vec<u8>>>> = Arc::new(Mutex::new(None));
    let mismatched = Arc::new(AtomicUsize::new(0));
    let clock = Instant::now();
    let threads: Vec<_> = (0..o.clients)
        .map(|_| {
            let (next, results, reference, mismatched, body) = (
                Arc::clone(&next),
                Arc::clone(&results),
                Arc::clone(&reference),
                Arc::clone(&mismatched),
                body.clone(),
            );
            let total = o.requests;
            std::thread::spawn(move || {
                while next.fetch_add(1, Ordering::SeqCst) < total {
                    let t = Instant::now();
                    let (status, bytes) = post(addr, "/api/lens", &body);
                    let took = t.elapsed();
                    if status == 200 {
                        let mut r = reference.lock().unwrap();
                        match &*r {
                            None => *r = Some(bytes.clone()),
                            Some(want) if *want != bytes => {
                                mismatched.fetch_add(1, Ordering::SeqCst);
                            }
                            Some(_) => {}
                        }
                    }
                    results.lock().unwrap().push((took, status, bytes.len()));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let wall = clock.elapsed();
    let (rss_after, rss_peak) = rss_mib(pid);

    let results = results.lock().unwrap();
    let ok = results.iter().filter(|r| r.1 == 200).count();
    let mut lat: Vec<Duration> = results.iter().filter(|r| r.1 == 200).map(|r| r.0).collect();
    lat.sort();
    let mean = lat.iter().sum::<Duration>() / lat.len().max(1) as u32;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("lensmap serve load test");
    println!(
        "  server      {} --workers {} --queue {} (pid {pid}, {cpus} CPUs)",
        o.bin, o.workers, o.queue
    );
    println!(
        "  load        {} seed requests from {} concurrent clients on {addr}",
        o.requests, o.clients
    );
    println!(
        "  answers     {ok} x 200, {} other, {} differing from the first ({} bytes each)",
        results.len() - ok,
        mismatched.load(Ordering::SeqCst),
        results.first().map_or(0, |r| r.2)
    );
    println!("  wall        {:.2} s", wall.as_secs_f64());
    println!(
        "  throughput  {:.2} requests/s",
        ok as f64 / wall.as_secs_f64()
    );
    if !lat.is_empty() {
        println!(
            "  latency     p50 {:.0} ms, p99 {:.0} ms, mean {:.0} ms, min {:.0} ms, max {:.0} ms",
            ms(percentile(&lat, 50.0)),
            ms(percentile(&lat, 99.0)),
            ms(mean),
            ms(lat[0]),
            ms(lat[lat.len() - 1])
        );
    }
    println!("  server RSS  {rss_before:.1} MiB before, {rss_after:.1} MiB after (peak {rss_peak:.1} MiB)");
    if ok != o.requests || mismatched.load(Ordering::SeqCst) > 0 {
        std::process::exit(1);
    }
}
