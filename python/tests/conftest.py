"""Shared fixtures: the repository, the models, the `lensmap` binary, one loaded model."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SMOLLM2 = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
REFERENCE = REPO.parent / "shared" / "reference"
QUESTION = "What is the capital of Australia?"
# The seed case of the README and the CLI reference tests.
SEED = dict(dummy=8, generate=8, answer=" Canberra")
SEED_FLAGS = ["--dummy", "8", "--generate", "8", "--answer", " Canberra"]


def lensmap_bin() -> Path:
    """`$LENSMAP_BIN`, else the release build (`scripts/test` builds it first)."""
    p = Path(os.environ.get("LENSMAP_BIN", REPO / "target" / "release" / "lensmap"))
    assert p.exists(), f"{p} not found: run `cargo build --release` first"
    return p


def run_cli(*args, check=True) -> subprocess.CompletedProcess:
    """Run the `lensmap` binary; fails the test on a non-zero exit when `check`."""
    res = subprocess.run([str(lensmap_bin()), *map(str, args)], capture_output=True, text=True)
    if check:
        assert res.returncode == 0, f"lensmap {args} failed: {res.stderr}"
    return res


def reference(name: str) -> dict:
    """HF transformers' numbers, `../shared/reference/NAME` (as the Rust tests read them)."""
    return json.loads((REFERENCE / name).read_text())


@pytest.fixture(scope="session")
def model():
    import lensmap

    return lensmap.Model(str(SMOLLM2))


@pytest.fixture(scope="session")
def model_f32():
    """SmolLM2 with every weight dequantised to f32, as the references were made."""
    import lensmap

    return lensmap.Model(str(SMOLLM2), precision="f32")


@pytest.fixture(scope="session")
def seed(model):
    """The seed case through `Model.lens`."""
    return model.lens(QUESTION, **SEED)
