"""The lens's unembedding product at the seed shape, [1395 x 576] @ [576 x 49152],
in numpy/OpenBLAS f32 and (if torch is installed) torch bf16, 2 threads, best of
REPS. Prints one line per library: name, seconds, GFLOP/s. scripts/bench-lens
runs it next to lensmap's own kernels (examples/lens_gemm.rs)."""
import sys
import time

import numpy as np

M, K, N = 1395, 576, 49152
REPS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
FLOP = 2.0 * M * K * N


def best(f):
    f()  # warm-up
    t = float("inf")
    for _ in range(REPS):
        s = time.perf_counter()
        f()
        t = min(t, time.perf_counter() - s)
    return t


def report(name, t):
    print(f"{name:<22} {t:.4f} s  {FLOP / t / 1e9:.0f} GFLOP/s")


rng = np.random.default_rng(0)
a = rng.standard_normal((M, K), dtype=np.float32)
w = rng.standard_normal((N, K), dtype=np.float32)
try:
    from threadpoolctl import threadpool_info, threadpool_limits

    limits = threadpool_limits(2)
    blas = ", ".join(
        f"{i['internal_api']} {i.get('version')} {i.get('architecture')} x{i['num_threads']}"
        for i in threadpool_info()
    )
except ImportError:
    blas = "threadpoolctl not installed: kernel unknown"
print(f"numpy {np.__version__}: {blas}")
report("numpy f32", best(lambda: a @ w.T))

try:
    import torch
except ImportError:
    print("torch bf16             not installed")
    sys.exit(0)
torch.set_num_threads(2)
ta = torch.from_numpy(a).bfloat16()
tw = torch.from_numpy(w).bfloat16()
amx = torch.backends.cpu.get_cpu_capability()
print(f"torch {torch.__version__}: cpu capability {amx}, {torch.get_num_threads()} threads")
with torch.no_grad():
    report("torch bf16", best(lambda: ta @ tw.T))
    tf = torch.from_numpy(w)
    tfa = torch.from_numpy(a)
    report("torch f32", best(lambda: tfa @ tf.T))
