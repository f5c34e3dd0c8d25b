#!/usr/bin/env python3
"""lensmap over a JSONL of prompts with Ray Data: one ``lensmap.Model`` per actor.

Writes Parquet with the columns of ``lensmap batch``'s ``cells.parquet`` (one
row per prompt × lens row × position); the rows of each prompt are those
``lensmap batch`` writes for it, computed by the same engine code
(``Model.batch_cells``).

    python examples/ray_batch.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --prompts data/prompts.jsonl --out results/ray --actors 2

On a laptop this starts a local Ray instance. On a cluster, run it on the
head node (or submit it with ``ray job submit -- python examples/ray_batch.py
...``) with ``--address auto``: every worker node needs the ``lensmap`` wheel
installed and the model at the same path (a shared filesystem, or copy it
first); ``--out`` must be a path every node can write (shared storage, or an
``s3://`` URI Ray can write to). ``--actors`` sets how many models run at
once; each reserves ``--cpus-per-actor`` CPUs, and Ray Data needs a CPU left
for its read and write tasks, else the pipeline waits forever (on 2 cores:
``--actors 2 --cpus-per-actor 0.5``).
"""

from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional

import pyarrow as pa
import ray

import lensmap

# The per-prompt options of `lensmap batch` the actors pass on (None keeps
# batch's own default).
BATCH_OPTIONS = ("system", "dummy", "dummy_text", "top_k", "generate", "answer_skip")


class LensActor:
    """One model per actor, loaded once; every batch of rows goes through it."""

    def __init__(self, model: str, precision: str, options: Dict[str, Any]):
        self.model = lensmap.Model(model, precision=precision)
        self.options = options

    def __call__(self, batch: pa.Table) -> pa.Table:
        items: List[Dict[str, Any]] = []
        for row in batch.to_pylist():
            # Ray fills columns a line lacks with None; batch's input has no such keys.
            items.append({k: v for k, v in row.items() if v is not None})
        return self.model.batch_cells(items, **self.options)


def run(
    model: str,
    prompts: str,
    out: str,
    actors: int = 2,
    cpus_per_actor: float = 1,
    precision: str = "auto",
    address: Optional[str] = None,
    num_cpus: Optional[int] = None,
    **options: Any,
) -> None:
    """Run the lens over `prompts` (JSONL) and write Parquet files to `out`."""
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=num_cpus)
    options = {k: v for k, v in options.items() if k in BATCH_OPTIONS and v is not None}
    ds = ray.data.read_json(prompts)
    cells = ds.map_batches(
        LensActor,
        fn_constructor_args=(model, precision, options),
        batch_format="pyarrow",
        batch_size=4,
        concurrency=actors,
        num_cpus=cpus_per_actor,
    )
    cells.write_parquet(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", required=True, help="JSONL: {id, prompt, system?, answer?, alts?}")
    p.add_argument("--out", required=True, help="a directory (or URI) for the Parquet files")
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--cpus-per-actor", type=float, default=1)
    p.add_argument("--precision", default="auto")
    p.add_argument("--address", default=None, help="a Ray cluster (`auto`); default: a local instance")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local instance")
    for opt in ("dummy", "top_k", "generate", "answer_skip"):
        p.add_argument("--" + opt.replace("_", "-"), type=int, default=None)
    p.add_argument("--system", default=None)
    p.add_argument("--dummy-text", default=None)
    a = p.parse_args()
    run(**vars(a))


if __name__ == "__main__":
    main()
