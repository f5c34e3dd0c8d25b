//! Writes a random-weight GGUF file with a real model's shapes, for
//! benchmarks (issue #9): its outputs mean nothing, its memory and time are
//! real. Deterministic: the same arguments give the same bytes.
//!
//!     cargo run --release --example synth_gguf -- --shape llama-3.1-8b --quant q4_k --out /work/synth/llama-3.1-8b.Q4_K_M.gguf
//!
//! Shapes: llama-3.2-1b, llama-3.1-8b, llama-3.1-70b, tiny. Quantisations:
//! q8_0, q4_0, q4_k (llama.cpp's Q4_K_M mix). The tokenizer is SmolLM2's,
//! padded to the shape's vocabulary, with Llama 3's special tokens and chat
//! template. Streams to disk: memory stays at a few chunks of 4 MB.
//! Sizes and times on 2 cores: 1B Q8_0 1.4 GB, 8B Q4_K 4.9 GB, 70B Q4_0
//! about 40 GB; roughly the disk's write rate.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use lensmap::model::GgufFile;
use lensmap::synth::{llama_plan, padded_tokenizer, write_gguf, Quant, Shape};

#[derive(Parser)]
struct Args {
    /// Model shape: llama-3.2-1b, llama-3.1-8b, llama-3.1-70b or tiny.
    #[arg(long)]
    shape: String,
    /// Quantisation mix: q8_0, q4_0 or q4_k.
    #[arg(long)]
    quant: Quant,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    /// GGUF file whose tokenizer to pad (SmolLM2's by default).
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    tokenizer: PathBuf,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let shape = Shape::named(&args.shape)?;
    let source = GgufFile::open(&args.tokenizer)?;
    let plan = llama_plan(
        &shape,
        args.quant,
        padded_tokenizer(&source.content, shape.vocab)?,
    );
    let total = plan.file_bytes();
    eprintln!(
        "{}: {:.2} B parameters, {:?}, {} tensors, {:.2} GB -> `{}`",
        shape.name,
        shape.params() as f64 / 1e9,
        args.quant,
        plan.tensors.len(),
        total as f64 / 1e9,
        args.out.display()
    );
    let start = Instant::now();
    let mut last = 0.0;
    write_gguf(&plan, &args.out, |done, total| {
        let t = start.elapsed().as_secs_f64();
        if t - last > 5.0 || done == total {
            last = t;
            eprintln!(
                "  {:5.1}%  {:.2} GB  {:.0} MB/s",
                100.0 * done as f64 / total as f64,
                done as f64 / 1e9,
                done as f64 / 1e6 / t
            );
        }
    })?;
    eprintln!(
        "wrote {:.2} GB in {:.1} s",
        total as f64 / 1e9,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
