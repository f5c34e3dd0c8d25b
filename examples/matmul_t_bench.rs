//! Time the at-rest matmul `StoredMatrix::matmul_t` (`x [t, k] · Wᵀ`, W
//! decoded panel by panel from the mapped file) on real shapes from the
//! synthetic GGUF files, next to the same panel loop on an f32 copy of the
//! decoded matrix (no decode: the ceiling of this loop), candle's f32 matmul
//! of the same matrix (the `gemm` crate, all threads), and the decode alone.
//! Prints GFLOP/s (best of REPS) per matrix and t.
//!
//!     RAYON_NUM_THREADS=2 cargo run --release --example matmul_t_bench -- \
//!         [FILE:TENSOR ...] [--t 45,256] [--reps 5] [--rest-only]
//!
//! Defaults: `blk.0.{attn_q,ffn_gate,ffn_down}` of
//! /work/synth/llama-3.1-8b.Q4_K_M.gguf and /work/synth/llama-3.2-1b.Q8_0.gguf.
#[path = "util/timing.rs"]
mod timing;

use std::path::Path;

use candle_core::{Device, Tensor};
use lensmap::model::{GgufFile, StoredMatrix, WeightSource};
use rayon::prelude::*;

fn main() -> lensmap::Result<()> {
    lensmap::tune_process();
    let mut specs = Vec::new();
    let mut ts = vec![45usize, 256];
    let mut reps = 5usize;
    let mut rest_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--t" => {
                ts = args
                    .next()
                    .expect("--t N,N")
                    .split(',')
                    .map(|s| s.parse().expect("number"))
                    .collect()
            }
            "--rest-only" => rest_only = true,
            "--reps" => reps = args.next().expect("--reps N").parse().expect("number"),
            _ => specs.push(a),
        }
    }
    if specs.is_empty() {
        for f in [
            "/work/synth/llama-3.1-8b.Q4_K_M.gguf",
            "/work/synth/llama-3.2-1b.Q8_0.gguf",
        ] {
            for m in ["attn_q", "ffn_gate", "ffn_down"] {
                specs.push(format!("{f}:blk.0.{m}.weight"));
            }
        }
    }
    println!(
        "threads: {}; best of {reps}; GFLOP/s = 2·t·n·k / s",
        rayon::current_num_threads()
    );
    println!("| file | tensor | type | n × k | t | at rest | f32 copy (same loop) | candle f32 | rest / copy | decode G weights/s |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let time = |f: &mut dyn FnMut()| timing::best_of(reps, f);
    for spec in &specs {
        let (file, name) = spec.rsplit_once(':').expect("FILE:TENSOR");
        let g = GgufFile::open(Path::new(file))?;
        let m = g.stored(name)?.expect("a matrix stored in place");
        let (n, k) = m.dims();
        let dtype = format!("{m:?}");
        let dtype = dtype
            .trim_start_matches("StoredMatrix(")
            .split(',')
            .next()
            .unwrap_or("?")
            .to_string();
        // The decoded matrix, once, for the f32 references.
        let mut w = vec![0f32; n * k];
        w.par_chunks_mut(k * 64)
            .enumerate()
            .for_each(|(i, c)| m.rows_f32(i * 64, i * 64 + c.len() / k, c).unwrap());
        let decode = time(&mut || {
            w.par_chunks_mut(k * 64).enumerate().for_each(|(i, c)| {
                m.rows_f32(i * 64, i * 64 + c.len() / k, c).unwrap();
            })
        });
        let wt = Tensor::from_vec(w, (n, k), &Device::Cpu)?;
        let copy = StoredMatrix::copied(&wt)?;
        for &t in &ts {
            let noise = |i: usize| ((i.wrapping_mul(2_654_435_761) % 1000) as f32 - 500.0) * 1e-3;
            let x = Tensor::from_vec(
                (0..t * k).map(noise).collect::<Vec<_>>(),
                (t, k),
                &Device::Cpu,
            )?;
            let flop = 2.0 * (t * n * k) as f64;
            let rest = time(&mut || {
                std::hint::black_box(m.matmul_t(&x).unwrap());
            });
            if rest_only {
                // Also per CPU-second of the process (less sensitive to a
                // shared machine's time slicing than wall time).
                let cpu = (0..reps)
                    .map(|_| {
                        let c = cpu_seconds();
                        std::hint::black_box(m.matmul_t(&x).unwrap());
                        cpu_seconds() - c
                    })
                    .fold(f64::INFINITY, f64::min);
                println!(
                    "| {name} | {t} | {:.1} | {:.1} |",
                    flop / rest / 1e9,
                    flop / cpu / 1e9
                );
                continue;
            }
            let copied = time(&mut || {
                std::hint::black_box(copy.matmul_t(&x).unwrap());
            });
            let wtt = wt.t()?;
            let cand = time(&mut || {
                std::hint::black_box(x.matmul(&wtt).unwrap());
            });
            // Same numbers: at rest and the copy must agree to rounding.
            let a = m.matmul_t(&x)?.flatten_all()?.to_vec1::<f32>()?;
            let b = copy.matmul_t(&x)?.flatten_all()?.to_vec1::<f32>()?;
            let c = x.matmul(&wtt)?.flatten_all()?.to_vec1::<f32>()?;
            let scale = c.iter().fold(0f32, |s, v| s.max(v.abs()));
            let diff = a
                .iter()
                .zip(&c)
                .chain(b.iter().zip(&c))
                .fold(0f32, |s, (p, q)| s.max((p - q).abs()));
            assert!(
                diff <= 1e-4 * scale,
                "{name} t={t}: max |Δ| {diff} of {scale}"
            );
            let gf = |s: f64| flop / s / 1e9;
            println!(
                "| {} | {name} | {dtype} | {n} × {k} | {t} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} |",
                Path::new(file).file_name().unwrap().to_string_lossy(),
                gf(rest),
                gf(copied),
                gf(cand),
                copied / rest,
                (n * k) as f64 / decode / 1e9,
            );
        }
    }
    Ok(())
}

/// CPU seconds this process has used (all threads).
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
