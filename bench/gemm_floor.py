"""The paper floor of a lensmap seed run: forward and lens FLOPs at the f32
gemm rate numpy (OpenBLAS) reaches on this machine, for the model's own
shapes. Prints one JSON line.

    python3 bench/gemm_floor.py D_MODEL N_LAYERS N_HEADS N_KV_HEADS HEAD_DIM FFN VOCAB [T]

T is the number of positions (45 for the seed case). The forward pass is
7 matmuls per block with T rows; the lens reads the head at every row:
(n_layers + 1) x T rows against the whole vocabulary, timed on a vocabulary
panel of 16384 columns (the full f32 head of a 128k vocabulary is 4 GB)."""
import json
import os
import sys
import time

import numpy as np

d, L, H, KV, hd, ffn, V = (int(x) for x in sys.argv[1:8])
T = int(sys.argv[8]) if len(sys.argv) > 8 else 45


def rate(m, k, n, reps=3):
    """GFLOP/s of [m x k] @ [k x n] in f32, best of `reps`."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best / 1e9


# Forward: per block q, k, v, o, gate, up, down at T rows.
per_block = [(d, H * hd), (d, KV * hd), (d, KV * hd), (H * hd, d), (d, ffn), (d, ffn), (ffn, d)]
fwd_flops = 2 * T * L * sum(k * n for k, n in per_block)
fwd_rates = {f"{k}x{n}": rate(T, k, n) for k, n in sorted(set(per_block))}
fwd_time = L * sum(2 * T * k * n / (fwd_rates[f"{k}x{n}"] * 1e9) for k, n in per_block)
rows = (L + 1) * T
panel = min(V, 16384)
lens_rate = rate(rows, d, panel)
lens_flops = 2 * rows * d * V
lens_time = lens_flops / (lens_rate * 1e9)
ref_rate = rate(1395, 576, 16384)  # SmolLM2's lens shape, for comparison across machines
print(json.dumps({
    "threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
    "numpy": np.__version__,
    "forward_tflop": round(fwd_flops / 1e12, 4),
    "lens_tflop": round(lens_flops / 1e12, 4),
    "forward_gflops_rate": {k: round(v, 1) for k, v in fwd_rates.items()},
    "lens_gflops_rate": round(lens_rate, 1),
    "smollm2_lens_gflops_rate": round(ref_rate, 1),
    "floor_s": round(fwd_time + lens_time, 3),
}))
