//! The CPU's f32 fused-multiply-add peak, measured: every thread runs
//! independent chains of AVX-512 (else AVX2) FMAs on registers only, so
//! nothing but the FMA units limits it. `scripts/bench-big` prints it beside
//! numpy's gemm rate and llama.cpp's prefill, so a ratio against llama.cpp
//! can be read against what exact f32 arithmetic could reach at best.
//!
//! `cargo run --release --example fma_peak [threads]` (default: all cores).

use std::time::Instant;

/// FMAs per chain step: 12 independent accumulators hide the FMA latency
/// (4 cycles) on two pipes.
const CHAINS: usize = 12;
const STEPS: usize = 200_000_000 / CHAINS;

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let Some((lanes, name)) = isa() else {
        println!("fma peak: no AVX2/AVX-512 FMA on this CPU");
        return;
    };
    // Best of 3, each a fixed amount of work per thread.
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t0 = Instant::now();
        let sums: Vec<f32> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|i| s.spawn(move || run(i as f32)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        best = best.min(t0.elapsed().as_secs_f64());
        assert!(sums.iter().all(|v| v.is_finite()));
    }
    let flop = (threads * STEPS * CHAINS * lanes * 2) as f64;
    println!(
        "fma peak ({name}, {threads} threads): {:.0} GFLOP/s f32",
        flop / best / 1e9
    );
}

/// Lanes per vector and the ISA's name, if the CPU has an FMA unit we drive.
fn isa() -> Option<(usize, &'static str)> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Some((16, "avx512"));
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Some((8, "avx2"));
        }
    }
    None
}

fn run(seed: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `isa()` found the feature on this CPU before any thread ran.
        unsafe {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return x86::chains512(seed);
            }
            return x86::chains256(seed);
        }
    }
    #[allow(unreachable_code)]
    seed
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{CHAINS, STEPS};
    use std::arch::x86_64::*;

    macro_rules! chains {
        ($name:ident, $feat:literal, $set1:ident, $fmadd:ident, $add:ident, $reduce:expr) => {
            #[target_feature(enable = $feat)]
            pub unsafe fn $name(seed: f32) -> f32 {
                let (a, b) = ($set1(0.999_999), $set1(1e-7));
                let mut acc = [$set1(seed); CHAINS];
                for _ in 0..STEPS {
                    for x in acc.iter_mut() {
                        *x = $fmadd(*x, a, b);
                    }
                }
                let mut s = acc[0];
                for x in &acc[1..] {
                    s = $add(s, *x);
                }
                $reduce(s)
            }
        };
    }
    chains!(
        chains512,
        "avx512f",
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps,
        |s| _mm512_reduce_add_ps(s)
    );
    chains!(
        chains256,
        "avx2,fma",
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps,
        |s: __m256| {
            let mut v = [0f32; 8];
            _mm256_storeu_ps(v.as_mut_ptr(), s);
            v.iter().sum()
        }
    );
}
