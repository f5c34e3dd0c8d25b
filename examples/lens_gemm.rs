//! Time the lens's unembedding product alone at the seed shape
//! `[1395 × 576] @ [576 × 49152]` (31 rows × 45 positions through
//! SmolLM2's head), on random data, for the f32 path and the bf16 kernel.
//! The f32 path is the lens's own: an f32 head (`StoredMatrix`, as
//! `--precision f32` holds it) multiplied by `StoredMatrix::matmul_t_into`
//! in the blocks `lens::block_shape` cuts, into one reused buffer. Prints
//! best-of-N seconds and GFLOP/s, one line each; `scripts/bench-lens` runs it.
//!
//! `cargo run --release --example lens_gemm -- [ROWS POSITIONS K N] [REPS]`
#[path = "util/timing.rs"]
mod timing;

use std::time::Instant;

use candle_core::{Device, Tensor};
use lensmap::kernels::bf16::{Bf16Head, Bf16Kernel};
use lensmap::model::StoredMatrix;

fn main() -> lensmap::Result<()> {
    lensmap::tune_process();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("numbers"))
        .collect();
    let (rows, t, k, n) = match args[..] {
        [rows, t, k, n, ..] => (rows, t, k, n),
        _ => (31, 45, 576, 49152),
    };
    let m = rows * t;
    let reps = args.get(4).copied().unwrap_or(5);
    let flop = 2.0 * (m * k * n) as f64;
    let noise = |i: usize| ((i.wrapping_mul(2_654_435_761) % 1000) as f32 - 500.0) * 1e-3;
    let a: Vec<f32> = (0..m * k).map(noise).collect();
    let b: Vec<f32> = (0..n * k).map(|i| noise(i + 17)).collect();
    let report = |name: &str, best: f64| {
        println!("{name:<22} {best:.4} s  {:.0} GFLOP/s", flop / best / 1e9)
    };
    let time = |f: &mut dyn FnMut()| timing::best_of(reps, f);

    // The lens's blocks: per chunk of positions, the rows in even blocks
    // (final row first: its distributions are the KL reference).
    let (chunk, n_blocks) = lensmap::lens::block_shape(n, t, rows);
    let mut blocks = Vec::new();
    for p0 in (0..t).step_by(chunk) {
        let c = chunk.min(t - p0);
        for b in 0..n_blocks {
            blocks.push(lensmap::lens::row_block(rows, n_blocks, b).len() * c);
        }
    }
    let head = StoredMatrix::copied(&Tensor::from_vec(b.clone(), (n, k), &Device::Cpu)?)?;
    let mut logits = Vec::new();
    let f32_best = time(&mut || {
        let mut at = 0;
        for &rows in &blocks {
            head.matmul_t_into(&a[at * k..(at + rows) * k], rows, &mut logits)
                .unwrap();
            at += rows;
        }
        std::hint::black_box(&logits);
    });
    report("lensmap f32", f32_best);
    println!("f32 blocks, rows per matmul as the lens cuts them: {blocks:?}");

    let t = Instant::now();
    let head = Bf16Head::pack(&b, n, k);
    let pack = t.elapsed().as_secs_f64();
    let kernel = Bf16Kernel::detect();
    let mut out = vec![0f32; m * n];
    let bf16_best = time(&mut || head.matmul(&a, m, &mut out, kernel));
    report(&format!("lensmap bf16 ({})", kernel.label()), bf16_best);
    println!("bf16 head packing (once per process): {pack:.4} s");
    Ok(())
}
