"""`lensmap` from Python against HF transformers' numbers and against the CLI."""

from __future__ import annotations

import _thread
import json
import threading

import numpy as np
import pandas as pd
import pytest

import lensmap
from conftest import QUESTION, REFERENCE, SEED, SEED_FLAGS, SMOLLM2, reference, run_cli

# The CLI reference test's relative tolerance on probabilities in f32
# (tests/cli_reference.rs, PROB_REL_F32).
PROB_REL_F32 = 2e-4
# The bf16 lens's bounds on SmolLM2 (tests/engine_reference.rs, BF16_SMOLLM2):
# max |Δentropy| nats, min share of equal top-1, max |Δ ln p(" Canberra")|.
BF16_SMOLLM2 = (0.06, 0.995, 0.2)
LENS_A = REFERENCE / "tuned" / "smollm2_lensA"


def test_f32_matches_hf_reference(model_f32):
    ref = reference("smollm2_filler.json")
    r = model_f32.lens(QUESTION, **SEED)
    assert [t[0] for t in r.tokens] == ref["input_ids"]
    assert r.answer_ids == ref["greedy"]["manual_greedy_ids"]
    assert r.answer == ref["greedy"]["manual_greedy_text"]

    assert r.entropy.dtype == np.float32
    want_h = np.array(ref["entropy"])
    assert r.entropy.shape == want_h.shape == (31, 45)
    dh = np.abs(r.entropy.astype(np.float64) - want_h)
    print(f"max |Δentropy| {dh.max():.2e} nats")
    assert dh.max() <= 5e-5

    top1 = r.top_ids[:, :, 0]
    ref_p = np.array(ref["top5_probs"])
    clear = ref_p[:, :, 0] - ref_p[:, :, 1] > 1e-3
    ref_top1 = np.array(ref["top5_ids"])[:, :, 0]
    assert (top1 == ref_top1)[clear].all(), "top-1 differs where the reference gap > 1e-3"

    want_p = np.array(ref["tracked"][" Canberra"]["prob"])
    rel = np.abs(r.answer_prob.astype(np.float64) - want_p) / np.maximum(want_p, 1e-30)
    print(f"answer_prob worst relative error {rel.max():.1e}")
    assert rel.max() <= PROB_REL_F32
    want_rank = np.array(ref["tracked"][" Canberra"]["rank"])
    assert r.answer_rank.dtype == np.uint32
    # In f32 a near-tie may flip one place (as in the CLI test).
    near = want_rank <= 1000
    assert np.abs(r.answer_rank.astype(np.int64) - want_rank)[near].max() <= 1


def test_arrays_agree_with_the_json(seed):
    g = json.loads(seed.to_json())
    n_rows, n = g["n_rows"], len(g["tokens"])
    assert seed.entropy.shape == seed.kl_to_final.shape == (n_rows, n)
    assert seed.top_ids.shape == seed.top_probs.shape == seed.top_tokens.shape == (n_rows, n, 5)
    np.testing.assert_array_equal(seed.entropy, np.array(g["entropy"], dtype=np.float32))
    np.testing.assert_array_equal(seed.kl_to_final, np.array(g["kl_to_final"], dtype=np.float32))
    assert seed.top_tokens[30][37][0] == g["topk"][30][37][0]["text"]
    assert seed.top_ids[30][37][1] == g["topk"][30][37][1]["id"]
    assert seed.top_probs[30][37][2] == np.float32(g["topk"][30][37][2]["prob"])
    answer = next(t for t in g["tracked"] if t["role"] == "answer")
    assert seed.answer_rank[12][40] == answer["cells"][12][40]["rank"]
    assert seed.tokens[-1] == (30, ".", "dummy")
    assert seed.rehearsal == g["rehearsal"]
    assert seed.model["n_layers"] == 30 and seed.n_rows == 31


def test_to_pandas_equals_batch_cells_parquet(seed, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "australia", "prompt": QUESTION, "answer": " Canberra"}) + "\n")
    run_cli("batch", "--model", SMOLLM2, "--prompts", prompts, "--out", tmp_path / "out",
            "--dummy", "8", "--generate", "8", "--quiet")
    want = pd.read_parquet(tmp_path / "out" / "cells.parquet")
    got = seed.to_pandas(id="australia")
    assert list(got.columns) == list(want.columns)
    assert len(got) == 31 * 45
    pd.testing.assert_frame_equal(got, want)
    assert seed.to_polars(id="australia").shape == want.shape


def test_model_batch_runs_lensmap_batch(model, tmp_path):
    items = [{"id": "australia", "prompt": QUESTION, "answer": " Canberra"}]
    summary = model.batch(items, tmp_path / "py", dummy=8, generate=8)
    assert summary["done"] == 1 and summary["failed"] == 0
    assert summary["settings"]["generate"] == 8 and summary["settings"]["top_k"] == 5
    run_cli("batch", "--model", SMOLLM2, "--prompts", tmp_path / "py" / "input" / "prompts.jsonl",
            "--out", tmp_path / "cli", "--dummy", "8", "--generate", "8", "--quiet")
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "py" / "cells.parquet"),
        pd.read_parquet(tmp_path / "cli" / "cells.parquet"),
    )
    cells = model.batch_cells(items, dummy=8, generate=8)
    pd.testing.assert_frame_equal(cells.to_pandas(), pd.read_parquet(tmp_path / "cli" / "cells.parquet"))
    with pytest.raises(lensmap.LensmapError, match="shard"):
        model.batch(items, tmp_path / "bad", shard="3/2")
    # The shared keyword lists refuse what they do not know, as Python does.
    with pytest.raises(TypeError, match="batch_cells\\(\\) got an unexpected keyword argument 'dumy'"):
        model.batch_cells(items, dumy=8)
    with pytest.raises(TypeError, match="`dummy`"):
        model.batch_cells(items, dummy="8")


def test_load_of_cli_json_equals_in_process(seed, tmp_path):
    out = tmp_path / "seed.json"
    run_cli("run", "--model", SMOLLM2, "--prompt", QUESTION, *SEED_FLAGS, "--json", out, "--quiet")
    loaded = lensmap.load(out)
    assert json.loads(loaded.to_json()) == json.loads(seed.to_json())
    np.testing.assert_array_equal(loaded.entropy, seed.entropy)
    np.testing.assert_array_equal(loaded.answer_prob, seed.answer_prob)
    # save() writes what the CLI writes.
    seed.save(tmp_path / "py", formats=["json", "svg"])
    assert (tmp_path / "py.svg").read_text() == seed.svg()
    assert seed.svg(stat="kl", zoom=20) != seed.svg()
    view = {"stat": "kl", "zoom": 20}
    assert seed.svg(**view) == seed.svg(stat="kl", zoom=20) and view == {"stat": "kl", "zoom": 20}
    with pytest.raises(TypeError, match="svg\\(\\) got an unexpected keyword argument 'zom'"):
        seed.svg(zom=20)
    # (`--json` leaves out the final newline that `--out` writes.)
    assert (tmp_path / "py.json").read_text() == out.read_text() + "\n"


def test_bad_model_path_raises_the_cli_message(tmp_path):
    missing = tmp_path / "no-such-model.gguf"
    res = run_cli("run", "--model", missing, "--prompt", "hi", check=False)
    assert res.returncode == 3  # a missing resource (README, "Exit codes")
    lines = [l for l in res.stderr.splitlines() if l]
    assert lines[0].startswith("error: ") and lines[1].startswith("hint: ")
    with pytest.raises(lensmap.LensmapError) as e:
        lensmap.Model(str(missing))
    assert str(e.value) == lines[0][len("error: "):]
    assert e.value.hint == lines[1][len("hint: "):]


def test_bad_options_raise(model):
    with pytest.raises(lensmap.LensmapError, match="between 1 and 100"):
        model.lens("hi", top_k=0)
    with pytest.raises(lensmap.LensmapError, match="answer_skip"):
        model.lens("hi", answer=" Canberra", answer_skip=1, generate=2)
    with pytest.raises(lensmap.LensmapError, match="precision"):
        lensmap.Model(str(SMOLLM2), precision="f16")
    with pytest.raises(lensmap.LensmapError, match="not a lensmap JSON file"):
        lensmap.load(SMOLLM2.parent.parent / "README.md")


def test_figure_from_arrays_writes_the_cli_svg(tmp_path):
    base = tmp_path / "cli"
    # No --generate: arrays from elsewhere carry no greedy answer for the subtitle.
    run_cli("run", "--model", SMOLLM2, "--prompt", QUESTION, "--dummy", "8",
            "--out", base, "--format", "json,svg", "--quiet")
    g = json.loads((tmp_path / "cli.json").read_text())
    cell = lambda key: [[[t[key] for t in c] for c in row] for row in g["topk"]]  # noqa: E731
    fig = lensmap.figure(
        entropy=np.array(g["entropy"]),
        top_tokens=cell("text"),
        tokens=[t["text"] for t in g["tokens"]],
        kinds=[t["kind"] for t in g["tokens"]],
        top_probs=cell("prob"),
        top_ids=cell("id"),
        kl_to_final=g["kl_to_final"],
        model=g["model"]["file"],
        vocab_size=g["model"]["vocab_size"],
    )
    assert fig.svg() == (tmp_path / "cli.svg").read_text()
    with pytest.raises(lensmap.LensmapError, match="tokens"):
        lensmap.figure(entropy=np.zeros((3, 4)), top_tokens=np.full((3, 4, 1), "a"), tokens=["a"])


def test_help_shows_the_parameters():
    sig = lensmap.Model.lens.__text_signature__
    for p in ("dummy", "answer_skip", "answer_alt", "chat_template" if False else "top_k", "window"):
        assert p in sig, sig
    assert "Run the logit lens" in lensmap.Model.lens.__doc__


def test_ctrl_c_stops_a_run(model):
    """KeyboardInterrupt arrives between layers: the GIL is free while it runs."""
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            # ~2000 tokens: seconds of forward pass, so the interrupt lands inside it.
            model.lens(QUESTION, dummy=2000)
    finally:
        timer.cancel()
    # The model still answers afterwards.
    assert model.lens(QUESTION).n_rows == 31


def test_tuned_lens_matches_tuned_lens_reference(model_f32):
    """`lens="tuned:DIR"` reads lens A as tuned-lens does (tests/tuned_lens.rs's bound)."""
    ref = reference("tuned/smollm2_filler_tuned.json")
    r = model_f32.lens(QUESTION, dummy=8, lens=f"tuned:{LENS_A}")
    assert [t[0] for t in r.tokens] == ref["input_ids"]
    g = json.loads(r.to_json())
    assert g["lens"]["kind"] == "tuned" and g["lens"]["config"] == ref["lens_config"]
    dh = np.abs(r.entropy.astype(np.float64) - np.array(ref["entropy"]))
    print(f"tuned lens: max |Δentropy| {dh.max():.2e} nats")
    assert dh.max() <= 1e-4
    # Both lenses side by side: the first grid is the logit lens, unchanged.
    both = model_f32.lens(QUESTION, dummy=8, lens=f"logit,tuned:{LENS_A}")
    np.testing.assert_array_equal(both.entropy, model_f32.lens(QUESTION, dummy=8).entropy)
    more = json.loads(both.to_json())["more_lenses"]
    assert len(more) == 1
    np.testing.assert_array_equal(np.array(more[0]["entropy"], dtype=np.float32), r.entropy)


def test_bf16_lens_within_the_engine_bounds(model_f32):
    ref = reference("smollm2_filler.json")
    r = model_f32.lens(QUESTION, **SEED, lens_precision="bf16")
    assert r.model["lens_precision"] == "bf16"
    max_h = np.abs(r.entropy.astype(np.float64) - np.array(ref["entropy"])).max()
    ref_top1 = np.array(ref["top5_ids"])[:, :, 0]
    agree = (r.top_ids[:, :, 0] == ref_top1).mean()
    ln = lambda p: np.log(np.maximum(np.asarray(p, dtype=np.float64), 1e-30))  # noqa: E731
    max_logp = np.abs(ln(r.answer_prob) - ln(ref["tracked"][" Canberra"]["prob"])).max()
    print(f"bf16 lens: max |Δentropy| {max_h:.3f}, top-1 {agree:.4f}, max |Δ ln p| {max_logp:.3f}")
    assert max_h <= BF16_SMOLLM2[0]
    assert agree >= BF16_SMOLLM2[1]
    assert max_logp <= BF16_SMOLLM2[2]
    assert max_h > 0, "bf16 gave the f32 numbers: the option did not reach the engine"


def test_positions_tail_is_the_full_run_there(model, seed):
    tail = model.lens(QUESTION, **SEED, positions="tail")
    kinds = [k for _, _, k in seed.tokens]
    start = max(i for i, k in enumerate(kinds) if k == "text") + 1
    assert (start, len(kinds)) == (31, 45)
    for name in ("entropy", "kl_to_final", "answer_prob", "answer_rank", "top_ids", "top_probs"):
        t, f = getattr(tail, name), getattr(seed, name)
        assert t.shape == f.shape, name
        np.testing.assert_array_equal(t[:, start:], f[:, start:], err_msg=name)
    assert np.isnan(tail.entropy[:, :start]).all()
    assert tail.rehearsal == seed.rehearsal
    window = model.lens(QUESTION, **SEED, positions="40..42")
    np.testing.assert_array_equal(window.entropy[:, 40:42], seed.entropy[:, 40:42])
    assert np.isnan(window.entropy[:, :40]).all() and np.isnan(window.entropy[:, 42:]).all()


def test_bad_lens_options_raise_the_cli_message(model):
    with pytest.raises(lensmap.LensmapError, match="a lens is `logit`, `tuned:DIR`"):
        model.lens("hi", lens="linear")
    with pytest.raises(lensmap.LensmapError, match="lens-precision"):
        model.lens("hi", lens_precision="f16")
    with pytest.raises(lensmap.LensmapError, match="expected `all`, `tail` or A..B"):
        model.lens("hi", positions="5")


def test_stubs_match_the_extension():
    """Every method of `_lensmap.pyi` has the extension's parameters, in order."""
    import ast
    import inspect
    from pathlib import Path

    from lensmap import _lensmap

    stub = ast.parse((Path(lensmap.__file__).parent / "_lensmap.pyi").read_text())
    checked = 0
    for node in ast.walk(stub):
        if not isinstance(node, ast.ClassDef):
            continue
        if any(getattr(b, "id", None) == "TypedDict" for b in node.bases):
            continue  # a keyword list for type checkers (`**options`), not in the extension
        runtime_cls = getattr(_lensmap, node.name)
        for fn in node.body:
            if not isinstance(fn, ast.FunctionDef) or fn.name.startswith("__"):
                continue
            runtime = getattr(runtime_cls, fn.name)
            if isinstance(runtime, property) or type(runtime).__name__ == "getset_descriptor":
                continue
            a = fn.args
            want = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs][1:]  # drop self
            want += [a.kwarg.arg] if a.kwarg else []  # **options / **view
            got = [p for p in inspect.signature(runtime).parameters][1:]
            assert got == want, f"{node.name}.{fn.name}: extension {got}, stub {want}"
            checked += 1
    # The extension's public methods all have a stub.
    for cls in (_lensmap.Model, _lensmap.Result):
        stubbed = {
            fn.name
            for c in ast.walk(stub) if isinstance(c, ast.ClassDef) and c.name == cls.__name__
            for fn in c.body if isinstance(fn, ast.FunctionDef)
        }
        public = {n for n in dir(cls) if not n.startswith("__")}
        assert public <= stubbed, f"{cls.__name__}: no stub for {sorted(public - stubbed)}"
    assert checked >= 8
