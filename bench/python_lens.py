#!/usr/bin/env python3
"""The seed case (SmolLM2-135M Q4_1, "What is the capital of Australia?" + 8
dummies, every weight in f32) three ways, in one run on one machine:

1. `lensmap run --precision f32 --timings`, the work after load: the CLI's
   own `prompt + forward + lens + generate` stage times (load and output
   excluded), one fresh process per run;
2. `lensmap.Model(..., precision="f32").lens(...)` in a warm process (model
   loaded once, first call discarded), wall time of the call;
3. tuned-lens's `PredictionTrajectory.from_lens_and_model` (+ `.entropy()`)
   on the same weights and input ids, when a Python with torch,
   transformers and tuned-lens is given: transformers loads the same GGUF
   and dequantises it to f32 (`from_pretrained(dir, gguf_file=...)`, as
   `../shared/reference/` was made); wall time of the call, warm.

Each with the logit lens and with tuned lens A (`../shared/reference/tuned/
smollm2_lensA`). Ratios are medians against `lensmap run` with the same lens.

    python3 bench/python_lens.py [--runs 10] [--tuned-lens-python /tmp/tlvenv/bin/python]

Needs `pip install ./python` and `cargo build --release`. Prints the CPU model.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
LENS_A = REPO.parent / "shared" / "reference" / "tuned" / "smollm2_lensA"
BIN = Path(os.environ.get("LENSMAP_BIN", REPO / "target" / "release" / "lensmap"))
QUESTION = "What is the capital of Australia?"
DUMMY = 8

# Runs inside the tuned-lens Python: transformers loads the GGUF (dequantised
# to f32), then each lens is timed over the same input ids.
TUNED_LENS_SCRIPT = r"""
import json, sys, time, importlib.metadata, torch, transformers
from pathlib import Path
from transformers import AutoModelForCausalLM
from tuned_lens.nn.lenses import LogitLens, TunedLens
from tuned_lens.plotting import PredictionTrajectory
gguf, lens_a, ids, runs = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(int(sys.argv[5]))
t = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
load = time.perf_counter() - t
lenses = {"logit": LogitLens.from_model(model),
          "tuned": TunedLens.from_model_and_pretrained(model, lens_resource_id=lens_a).eval()}
out = {"load": load, "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                                  "tuned_lens": importlib.metadata.version("tuned-lens")}}
for name, lens in lenses.items():
    times = []
    for _ in range(runs + 1):
        t = time.perf_counter()
        with torch.no_grad():
            traj = PredictionTrajectory.from_lens_and_model(lens, model, input_ids=ids)
            ent = traj.entropy()
        times.append(time.perf_counter() - t)
    out[name] = {"times": times[1:], "shape": list(traj.log_probs.shape)}
print(json.dumps(out))
"""


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def cli_after_load(runs: int, lens: str) -> list[float]:
    """`lensmap run --timings`: prompt + forward + lens + generate (load and output excluded)."""
    out = []
    for _ in range(runs + 1):
        res = subprocess.run(
            [str(BIN), "run", "--model", str(MODEL), "--precision", "f32", "--prompt", QUESTION,
             "--dummy", str(DUMMY), "--lens", lens, "--quiet", "--timings"],
            capture_output=True, text=True, check=True,
        )
        t = dict(re.findall(r"(\w+) ([0-9.]+)s", res.stderr))
        out.append(sum(float(t[k]) for k in ("prompt", "forward", "lens", "generate")))
    return out[1:]


def python_warm(runs: int, lens: str) -> tuple[list[float], list[int]]:
    import lensmap

    m = lensmap.Model(str(MODEL), precision="f32")
    r = m.lens(QUESTION, dummy=DUMMY, lens=lens)  # warm-up
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        r = m.lens(QUESTION, dummy=DUMMY, lens=lens)
        out.append(time.perf_counter() - t)
    return out, [t[0] for t in r.tokens]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--tuned-lens-python", default=None, help="a Python with torch, transformers and tuned-lens")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (lensmap uses every core)")
    a = p.parse_args()
    print(f"cpu: {cpu_model()} ({os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}); "
          f"seed case: SmolLM2-135M Q4_1 in f32, 45 positions (--dummy {DUMMY}), 31 rows, top-5")
    lenses = {"logit": "logit", "tuned": f"tuned:{LENS_A}"}
    rows: list[tuple[str, str, list[float]]] = []
    ids: list[int] = []
    for name, spec in lenses.items():
        rows.append((name, "lensmap run, after load (--timings)", cli_after_load(a.runs, spec)))
        py, ids = python_warm(a.runs, spec)
        rows.append((name, "lensmap.Model.lens, warm process", py))
    if a.tuned_lens_python:
        res = subprocess.run(
            [a.tuned_lens_python, "-c", TUNED_LENS_SCRIPT, str(MODEL), str(LENS_A), json.dumps(ids),
             str(a.runs), str(a.threads)],
            capture_output=True, text=True,
        )
        if res.returncode != 0:
            print("tuned-lens run failed:", res.stderr[-2000:], file=sys.stderr)
        else:
            tl = json.loads(res.stdout.strip().splitlines()[-1])
            v = tl["versions"]
            label = (f"tuned-lens {v['tuned_lens']} PredictionTrajectory "
                     f"(torch {v['torch']}, {a.threads} threads)")
            for name in lenses:
                rows.append((name, label, tl[name]["times"]))
    print(f"{'lens':<6} {'what':<68} {'median':>9} {'best':>9} {'vs run':>7}")
    for name in lenses:
        base = statistics.median(next(ts for n, _, ts in rows if n == name))
        for n, what, ts in rows:
            if n == name:
                med = statistics.median(ts)
                print(f"{n:<6} {what:<68} {med*1e3:8.1f}ms {min(ts)*1e3:8.1f}ms {med/base:6.2f}x")


if __name__ == "__main__":
    main()
