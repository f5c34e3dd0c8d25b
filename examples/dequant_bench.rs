//! Dequantisation throughput per type and kernel, against candle's scalar
//! `to_float` measured in the same run (the `portable` column).
//!
//!     cargo run --release --example dequant_bench [-- MB]
//!
//! Decodes a weight of about 64 M weights (or `MB` megabytes of input) one
//! panel of 64 rows × 4096 at a time into one reused f32 buffer, as an at-rest
//! matmul does, single-threaded. Prints G weights/s (best of 5).
//! Takes about 20 s.

use std::time::Instant;

use lensmap::model::dequant::{dequantize_blocks_with, Kernel, TYPES};
use lensmap::synth::{fill_random_blocks, Rng};

fn main() {
    let weights: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse::<usize>().ok())
        .map_or(64 << 20, |mb| mb << 20);
    let row_len = 4096;
    let panel = 64 * row_len;
    let kernels = Kernel::available();
    println!(
        "CPU: {}; {} M weights per pass, panels of {} rows × {row_len}, 1 thread",
        cpu_model(),
        weights >> 20,
        panel / row_len
    );
    print!("| type | bytes/weight |");
    for k in kernels {
        print!(" {} G/s |", k.name());
    }
    println!(" best / candle |");
    println!("|---|---|{}---|", "---|".repeat(kernels.len()));
    let mut rng = Rng::new(1);
    let mut out = vec![0f32; panel];
    for dtype in TYPES {
        let panel_bytes = panel / dtype.block_size() * dtype.type_size();
        let n_panels = (weights / panel).max(1);
        let mut src = vec![0u8; n_panels * panel_bytes];
        fill_random_blocks(dtype, &mut src, 0.02, &mut rng);
        let mut rates = Vec::new();
        for &kernel in kernels {
            let mut best = f64::INFINITY;
            for _ in 0..5 {
                let t = Instant::now();
                for p in src.chunks_exact(panel_bytes) {
                    dequantize_blocks_with(kernel, dtype, p, &mut out).expect("decode");
                }
                std::hint::black_box(&out);
                best = best.min(t.elapsed().as_secs_f64());
            }
            rates.push((n_panels * panel) as f64 / best / 1e9);
        }
        print!(
            "| {dtype:?} | {:.3} |",
            dtype.type_size() as f64 / dtype.block_size() as f64
        );
        for r in &rates {
            print!(" {r:.2} |");
        }
        let best = rates.iter().cloned().fold(0.0, f64::max);
        println!(" {:.1}× |", best / rates[0]);
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
