"""The README's Python example, run as `examples/lensmap.ipynb` under a real
Jupyter kernel; its saved figure opened in headless Chromium; and the Ray example
against `lensmap batch`."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
from nbclient import NotebookClient

from conftest import QUESTION, REPO, SMOLLM2, run_cli

NOTEBOOK = REPO / "examples" / "lensmap.ipynb"

# Run inside the page after LensView drew it: the cells and any script errors.
SELF_TEST = """
<script>
window.addEventListener('load', function () {
  var out = {errors: window.__lvErrors || []};
  out.cells = document.querySelectorAll('rect.lv-cell').length;
  out.rows = new Set(Array.prototype.map.call(document.querySelectorAll('rect.lv-cell'),
    function (c) { return c.getAttribute('data-row'); })).size;
  out.top1 = (document.querySelector('rect.lv-cell[data-row="30"]') || {getAttribute: function () { return null; }})
    .getAttribute('data-top1');
  var pre = document.createElement('pre');
  pre.id = 'selftest';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""
ERROR_HOOK = "<script>window.__lvErrors = []; window.addEventListener('error', function (e) { window.__lvErrors.push(String(e.message)); });</script>"


def readme_python_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("\n## Python") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1).rstrip("\n")


def chromium() -> str:
    """The browser, as tests/common/chromium.rs finds it; missing fails the test."""
    for p in [os.environ.get("CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]:
        if p and Path(p).exists():
            return p
    raise AssertionError("headless Chromium not found; install it with `apt-get install -y chromium`")


def dump_dom(page: Path, profile: Path) -> str:
    """`--dump-dom` with the flags of tests/common/chromium.rs."""
    args = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1",
        "--virtual-time-budget=5000", "--window-size=1400,1000", f"--user-data-dir={profile}",
        "--dump-dom", page.as_uri(),
    ]
    res = subprocess.run(args, capture_output=True, text=True, timeout=120, start_new_session=True)
    assert res.returncode == 0, f"Chromium failed: {res.stderr}"
    return res.stdout


def test_notebook_runs_and_its_saved_figure_draws_in_chromium(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert nb.cells[1].source == readme_python_block(), "the notebook's first code cell is the README's example"
    (tmp_path / "models").symlink_to(REPO / "models")
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert (tmp_path / "figs" / "australia.svg").exists() and (tmp_path / "figs" / "australia.json").exists()
    saved = tmp_path / "executed.ipynb"
    nbformat.write(nb, saved)

    # Reopened from disk: the figure is in the saved output, as HTML.
    nb = nbformat.read(saved, as_version=4)
    outputs = [o for o in nb.cells[1].outputs if o.output_type == "execute_result"]
    assert outputs, nb.cells[1].outputs
    frame = outputs[0]["data"]["text/html"]
    assert frame.startswith('<iframe class="lensmap-figure" srcdoc="')
    page = html.unescape(re.search(r'srcdoc="([^"]*)"', frame).group(1))
    assert "LensView.mount" in page and "http://" not in page.replace("http://www.w3.org", "")
    stdout = "".join(o.get("text", "") for o in nb.cells[1].outputs if o.output_type == "stream")
    assert "(31, 45)" in stdout and "Canberra" in stdout
    table = nb.cells[3].outputs[0]["data"]["text/html"]
    assert "answer_rank" in table or "<table" in table

    test_page = tmp_path / "figure.html"
    test_page.write_text(page.replace("<head>\n", f"<head>\n{ERROR_HOOK}\n", 1).replace("</body>", SELF_TEST + "</body>"))
    dom = dump_dom(test_page, tmp_path / "profile")
    m = re.search(r'<pre id="selftest">(.*?)</pre>', dom, re.S)
    assert m, dom[:2000]
    out = json.loads(html.unescape(m.group(1)))
    assert out["errors"] == []
    # The default window of the seed case: positions 27..45 (18) of 31 rows.
    assert out["rows"] == 31
    assert out["cells"] == 31 * 18
    assert out["top1"]


def test_ray_example_equals_lensmap_batch(tmp_path):
    items = [
        {"id": "australia", "prompt": QUESTION, "answer": " Canberra", "alts": [" Sydney"]},
        {"id": "france", "prompt": "What is the capital of France?"},
        {"id": "japan", "prompt": "What is the capital of Japan?", "answer": " Tokyo"},
    ]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(i) + "\n" for i in items))
    run_cli("batch", "--model", SMOLLM2, "--prompts", prompts, "--out", tmp_path / "batch",
            "--dummy", "4", "--generate", "8", "--answer-skip", "5", "--quiet")
    res = subprocess.run(
        [sys.executable, str(REPO / "examples" / "ray_batch.py"), "--model", str(SMOLLM2), "--prompts", str(prompts),
         "--out", str(tmp_path / "ray"), "--num-cpus", "2", "--actors", "2", "--cpus-per-actor", "0.5",
         "--dummy", "4", "--generate", "8", "--answer-skip", "5"],
        capture_output=True, text=True, timeout=900,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    want = pd.read_parquet(tmp_path / "batch" / "cells.parquet")
    got = pd.read_parquet(tmp_path / "ray")
    assert list(got.columns) == list(want.columns)
    key = ["id", "row", "pos"]
    got = got.sort_values(key).reset_index(drop=True)
    want = want.sort_values(key).reset_index(drop=True)
    assert len(got) == len(want) > 0
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    shutil.rmtree(tmp_path / "ray", ignore_errors=True)
