//! The forward pass is the same computation however the sequence is fed:
//! all at once, or a prefix then one token at a time through the KV cache
//! (as generation does). This exercises attention with queries that start
//! past 0, inside sliding windows (tiny mistral: W = 8, gemma3: W = 6). On
//! a CPU with AVX2 or AVX-512 the two agree bit for bit.

use candle_core::Tensor;
use lensmap::model::{Checkpoint, KvCache, Precision};

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn incremental_decoding_matches_full_forward() {
    for name in ["llama", "mistral", "gemma3", "gpt2", "qwen3", "phi3"] {
        let dir = crate::common::reference_dir().join("tiny").join(name);
        let model = Checkpoint::open(&dir)
            .and_then(|c| c.load(Precision::F32))
            .unwrap();
        let reference = crate::common::reference(&format!("tiny/{name}/reference.json"));
        let ids = crate::common::ids(&reference["input_ids"]);
        let full = model.forward(&ids, &mut KvCache::default(), None).unwrap();

        // A prefix, chunks of 7 (several queries past 0, straddling window
        // edges), then single tokens as in generation.
        let mut cache = KvCache::default();
        let mut rows = Vec::new();
        let mut at = 0;
        for size in [5, 7, 7, 7].into_iter().chain(std::iter::repeat(1)) {
            if at == ids.len() {
                break;
            }
            let end = (at + size).min(ids.len());
            rows.push(model.forward(&ids[at..end], &mut cache, None).unwrap());
            at = end;
        }
        assert_eq!(cache.len(), ids.len());
        let stepped = Tensor::cat(&rows, 0).unwrap();
        let d = max_abs(&full, &stepped);
        eprintln!("{name}: {} positions, max |Δ hidden| {d:.2e}", ids.len());
        if lensmap::kernels::f32dot::Isa::detect().is_some() {
            // With the f32 kernels (`f32dot` for projections, `f32outer`
            // for attention) every sum runs in an order that depends on
            // positions alone, so the two ways of feeding the sequence
            // agree bit for bit.
            assert_eq!(d, 0.0, "{name}: incremental decoding differs by {d}");
        } else {
            // gemm's order depends on the shapes: rounding, not a wrong
            // window, far below what dropping the window does to these
            // models (logits move by 13–17).
            assert!(d < 1e-3, "{name}: incremental decoding differs by {d}");
        }
    }
}

/// The same at `--precision quant` on SmolLM2's GGUF (Q4_1 projections in
/// 8-bit integers): each output's arithmetic is fixed by the weights'
/// blocks alone, so a prefix, chunks and single tokens give the whole
/// pass's bits, with any vector unit.
#[test]
fn incremental_decoding_matches_full_forward_quant() {
    let model = Checkpoint::open(crate::common::model_file("SmolLM2-135M-Instruct.Q4_1.gguf"))
        .and_then(|c| c.load(Precision::Quant))
        .unwrap();
    assert_eq!(model.precision, Precision::Quant);
    let ids: Vec<u32> = (0..40u32).map(|i| (i * 7919 + 13) % 49_152).collect();
    let full = model.forward(&ids, &mut KvCache::default(), None).unwrap();
    let mut cache = KvCache::default();
    let mut rows = Vec::new();
    let mut at = 0;
    for size in [5, 7, 9].into_iter().chain(std::iter::repeat(1)) {
        if at == ids.len() {
            break;
        }
        let end = (at + size).min(ids.len());
        rows.push(model.forward(&ids[at..end], &mut cache, None).unwrap());
        at = end;
    }
    let d = max_abs(&full, &Tensor::cat(&rows, 0).unwrap());
    if lensmap::kernels::f32dot::Isa::detect().is_some() {
        assert_eq!(d, 0.0, "quant: incremental decoding differs by {d}");
    } else {
        assert!(d < 1e-3, "quant: incremental decoding differs by {d}");
    }
}
