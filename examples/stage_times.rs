//! Time each engine stage on a model and a list of ids (default: the seed
//! case's ids from the reference). `cargo run --release --example stage_times -- MODEL [N_TOKENS]`
use std::time::Instant;

use lensmap::lens::{apply_lens, LensQuery};
use lensmap::model::{Checkpoint, KvCache, Model, Precision, ResidualTrace};

fn main() -> lensmap::Result<()> {
    lensmap::tune_process();
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(45);
    let precision: Precision = args
        .get(3)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or_default();
    let t = Instant::now();
    let model = Checkpoint::open(path)?.load(precision)?;
    let load = t.elapsed();
    let ids: Vec<u32> = (0..n as u32).map(|i| 1 + (i * 7919) % 4000).collect();
    let mut trace = ResidualTrace::default();
    model.forward(&ids, &mut KvCache::default(), Some(&mut trace))?;
    // Best of three: the first call also warms caches and thread pools.
    let mut fwd = std::time::Duration::MAX;
    for _ in 0..std::env::var("REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
    {
        let t = Instant::now();
        trace = ResidualTrace::default();
        model.forward(&ids, &mut KvCache::default(), Some(&mut trace))?;
        fwd = fwd.min(t.elapsed());
    }
    if std::env::var("NO_LENS").is_ok() {
        println!(
            "{path} n={n}: forward {:.3}s ({:.0} tok/s)",
            fwd.as_secs_f64(),
            n as f64 / fwd.as_secs_f64()
        );
        return Ok(());
    }
    let t = Instant::now();
    // The lens alone, on the last timed forward pass's trace (so not
    // `lens_of_ids`, which would time both).
    let grid = apply_lens(&model, &trace, &ids, &LensQuery::top(5))?;
    let lens = t.elapsed();
    if std::env::var("SPLIT").is_ok() {
        split(&model, &trace)?;
    }
    println!(
        "{path} n={n} precision={precision:?}: load {:.3}s forward {:.3}s ({:.0} tok/s) lens {:.3}s ({} cells)",
        load.as_secs_f64(),
        fwd.as_secs_f64(),
        n as f64 / fwd.as_secs_f64(),
        lens.as_secs_f64(),
        grid.len() * grid[0].len()
    );
    Ok(())
}

#[allow(dead_code)]
fn split(model: &Model, trace: &ResidualTrace) -> lensmap::Result<()> {
    use lensmap::stats::{cell_stats, CellQuery};
    let h = candle_core::Tensor::cat(&trace.rows[0..7], 0)?;
    let t = Instant::now();
    let logits = model.unembed(&h)?;
    let mm = t.elapsed();
    let v = logits.flatten_all()?.to_vec1::<f32>()?;
    let vocab = model.cfg.sizes.vocab_size;
    let t = Instant::now();
    let mut acc = 0.0;
    for z in v.chunks(vocab) {
        acc += cell_stats(
            z,
            &CellQuery {
                k: 5,
                final_dist: None,
                next_id: Some(5),
                tracked: &[],
            },
        )
        .entropy;
    }
    let st = t.elapsed();
    println!(
        "{} cells: unembed {:.3}s, stats (1 thread) {:.3}s [{acc:.1}]",
        v.len() / vocab,
        mm.as_secs_f64(),
        st.as_secs_f64()
    );
    Ok(())
}
