"""Prefill throughput of llama.cpp (llama-cpp-python) on the same GGUF, for
comparison with lensmap's forward pass. Prints one line per length:
`llama.cpp n=N tok/s=X` (best of 3, on THREADS threads: $LLAMACPP_THREADS,
default all cores, as lensmap uses).

    python3 bench/llamacpp_prefill.py MODEL.gguf N [N...]"""
import os
import sys
import time

from llama_cpp import Llama

model, lengths = sys.argv[1], [int(n) for n in sys.argv[2:]]
threads = int(os.environ.get("LLAMACPP_THREADS", os.cpu_count()))
llm = Llama(model_path=model, n_ctx=max(lengths) + 16, n_threads=threads, n_threads_batch=threads,
            n_batch=max(lengths), n_ubatch=512, logits_all=False, verbose=False)
for n in lengths:
    # The same ids lensmap's stage_times example uses.
    ids = [1 + (i * 7919) % 4000 for i in range(n)]
    best = float("inf")
    for _ in range(3):
        llm.reset()
        llm._ctx.memory_clear(True) if hasattr(llm._ctx, "memory_clear") else None
        t = time.perf_counter()
        llm.eval(ids)
        best = min(best, time.perf_counter() - t)
    print(f"llama.cpp n={n} tok/s={n / best:.0f} ({best:.3f}s, {threads} threads)")
