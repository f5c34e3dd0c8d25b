#!/usr/bin/env python3
"""The seed case through `lensmap.Model.lens` in a warm process, against
`lensmap run` after load, and (when a Python with torch + tuned-lens +
transformers is given) against tuned-lens's `PredictionTrajectory.from_lens_and_model`
with a logit lens on the same model and prompt, in the same run.

    python3 bench/python_lens.py [--runs 10] [--tuned-lens-python /path/to/venv/bin/python]

Needs `pip install ./python` and `cargo build --release`. Prints a table and
the CPU model. The tuned-lens side loads the same weights (dequantised by
`lensmap convert`) into transformers in f32 and times only the trajectory.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
BIN = REPO / "target" / "release" / "lensmap"
QUESTION = "What is the capital of Australia?"

# Runs inside the tuned-lens Python: load the converted HF directory, build a
# logit lens, time PredictionTrajectory over the same input ids.
TUNED_LENS_SCRIPT = r"""
import json, sys, time, statistics, torch
from transformers import AutoModelForCausalLM
from tuned_lens.nn.lenses import LogitLens
from tuned_lens.plotting import PredictionTrajectory
hf_dir, ids, runs = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(2)
t = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
load = time.perf_counter() - t
lens = LogitLens.from_model(model)
times = []
for _ in range(runs + 1):
    t = time.perf_counter()
    with torch.no_grad():
        traj = PredictionTrajectory.from_lens_and_model(lens, model, input_ids=ids)
        ent = traj.entropy()
    times.append(time.perf_counter() - t)
print(json.dumps({"load": load, "times": times[1:], "shape": list(traj.log_probs.shape),
                  "versions": {"torch": torch.__version__}}))
"""


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def cli_after_load(runs: int) -> list[float]:
    """`lensmap run --timings`: prompt + forward + generate + lens (load excluded)."""
    out = []
    for _ in range(runs + 1):
        res = subprocess.run(
            [str(BIN), "run", "--model", str(MODEL), "--prompt", QUESTION, "--dummy", "8", "--quiet", "--timings"],
            capture_output=True, text=True, check=True,
        )
        t = dict(re.findall(r"(\w+) ([0-9.]+)s", res.stderr))
        out.append(sum(float(t[k]) for k in ("prompt", "forward", "lens", "generate")))
    return out[1:]


def python_warm(runs: int) -> tuple[list[float], list[int]]:
    import lensmap

    m = lensmap.Model(str(MODEL))
    r = m.lens(QUESTION, dummy=8)  # warm-up
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        r = m.lens(QUESTION, dummy=8)
        out.append(time.perf_counter() - t)
    return out, [t[0] for t in r.tokens]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--tuned-lens-python", default=None, help="a Python with torch, transformers and tuned-lens")
    a = p.parse_args()
    print(f"cpu: {cpu_model()}; seed case: SmolLM2-135M Q4_1, 45 positions (--dummy 8), 31 rows, top-5")
    cli = cli_after_load(a.runs)
    py, ids = python_warm(a.runs)
    rows = [("lensmap run, after load (--timings)", cli), ("lensmap.Model.lens, warm process", py)]
    if a.tuned_lens_python:
        with tempfile.TemporaryDirectory() as d:
            subprocess.run([str(BIN), "convert", "--model", str(MODEL), "--out", d], check=True, capture_output=True)
            res = subprocess.run([a.tuned_lens_python, "-c", TUNED_LENS_SCRIPT, d, json.dumps(ids), str(a.runs)],
                                 capture_output=True, text=True)
            if res.returncode != 0:
                print("tuned-lens run failed:", res.stderr[-2000:], file=sys.stderr)
            else:
                tl = json.loads(res.stdout.strip().splitlines()[-1])
                rows.append((f"tuned-lens PredictionTrajectory (LogitLens, torch {tl['versions']['torch']})", tl["times"]))
    base = statistics.median(cli)
    print(f"{'what':<62} {'median':>9} {'best':>9} {'ratio':>7}")
    for name, ts in rows:
        med = statistics.median(ts)
        print(f"{name:<62} {med*1e3:8.1f}ms {min(ts)*1e3:8.1f}ms {med/base:6.2f}x")


if __name__ == "__main__":
    main()
