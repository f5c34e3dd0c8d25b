//! The at-rest path is really at rest: SmolLM2 (135M parameters, 540 MB as
//! f32) run with `--max-memory 64M` peaks below the size of its f32 weights.
//! A memory assertion, not a timing one. Alone in its binary because it reads
//! the peak RSS of this process's children (`getrusage(RUSAGE_CHILDREN)`),
//! which other tests' children would share.
//! Guards "Real-size models on a laptop: weights stay at rest, 8B in 5.5 GB,
//! 70B on a 24 GB machine".

mod common;

use common::*;

#[test]
fn smollm2_max_memory_64m_peaks_below_its_f32_weights() {
    let (json, stdout) = run_seed("SmolLM2-135M-Instruct.Q4_1.gguf", &["--max-memory", "64M"]);
    assert_eq!(json["model"]["precision"], "rest");
    assert!(stdout.contains(", rest)"), "{stdout}");
    // SAFETY: getrusage fills one struct we own.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_CHILDREN, &mut u), 0);
        u
    };
    let peak = usage.ru_maxrss as u64 * 1024;
    eprintln!("peak RSS at rest: {} MB", peak >> 20);
    // `--precision quant` holds the weights the same way; the peak over both
    // children is checked below.
    let (json, _) = run_seed(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        &["--max-memory", "64M", "--precision", "quant"],
    );
    assert_eq!(json["model"]["precision"], "quant");
    // SAFETY: as above.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_CHILDREN, &mut u), 0);
        u
    };
    let peak = usage.ru_maxrss as u64 * 1024;
    eprintln!("peak RSS at rest and at quant: {} MB", peak >> 20);
    // f32 weights: 134.5M parameters x 4 bytes = 538 MB. Measured ~160 MB.
    assert!(peak < 540_000_000, "peak RSS {peak} bytes");
}
