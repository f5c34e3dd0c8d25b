//! Time the lens's unembedding product alone at the seed shape
//! `[1395 × 576] @ [576 × 49152]` (31 rows × 45 positions through
//! SmolLM2's head), on random data, for the f32 path (candle → `gemm`, as
//! `Model::unembed` calls it) and the bf16 kernel. Prints best-of-N seconds
//! and GFLOP/s, one line each; `scripts/bench-lens` runs it.
//!
//! `cargo run --release --example lens_gemm -- [M K N] [REPS]`
#[path = "util/timing.rs"]
mod timing;

use std::time::Instant;

use candle_core::{Device, Tensor};
use lensmap::kernels::bf16::{Bf16Head, Bf16Kernel};

fn main() -> lensmap::Result<()> {
    lensmap::tune_allocator();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("numbers"))
        .collect();
    let (m, k, n) = match args[..] {
        [m, k, n, ..] => (m, k, n),
        _ => (1395, 576, 49152),
    };
    let reps = args.get(3).copied().unwrap_or(5);
    let flop = 2.0 * (m * k * n) as f64;
    let noise = |i: usize| ((i.wrapping_mul(2_654_435_761) % 1000) as f32 - 500.0) * 1e-3;
    let a: Vec<f32> = (0..m * k).map(noise).collect();
    let b: Vec<f32> = (0..n * k).map(|i| noise(i + 17)).collect();
    let report = |name: &str, best: f64| {
        println!("{name:<22} {best:.4} s  {:.0} GFLOP/s", flop / best / 1e9)
    };
    let time = |f: &mut dyn FnMut()| timing::best_of(reps, f);

    let at = Tensor::from_vec(a.clone(), (m, k), &Device::Cpu)?;
    let bt = Tensor::from_vec(b.clone(), (n, k), &Device::Cpu)?;
    let f32_best = time(&mut || {
        let c = at.matmul(&bt.t().unwrap()).unwrap();
        std::hint::black_box(c);
    });
    report("lensmap f32", f32_best);

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
