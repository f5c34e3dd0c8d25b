"""lensmap: the logit lens for local language models, from Python.

The same Rust engine as the ``lensmap`` command line, loaded in-process::

    import lensmap
    m = lensmap.Model("models/SmolLM2-135M-Instruct.Q4_1.gguf")
    r = m.lens("What is the capital of Australia?", dummy=8, generate=8, answer=" Canberra")
    r.entropy            # numpy float32 [rows, positions]
    r.to_pandas()        # one row per cell, the columns of `lensmap batch`'s cells.parquet
    r                    # in Jupyter: the interactive figure

Errors raise :class:`LensmapError` with the message ``lensmap`` prints and its
hint in ``.hint``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from ._lensmap import LensmapError, Model, Result, __version__, load
from ._lensmap import _figure

__all__ = ["Model", "Result", "LensmapError", "load", "figure", "__version__"]


def figure(
    entropy,
    top_tokens,
    tokens: Sequence[str],
    kinds: Optional[Sequence[str]] = None,
    *,
    top_probs=None,
    top_ids=None,
    kl_to_final=None,
    model: str = "",
    vocab_size: int = 0,
    stat: Optional[str] = None,
    window: Optional[Tuple[int, int]] = None,
    zoom: Optional[int] = None,
    title: Optional[str] = None,
) -> Result:
    """lensmap's figure from arrays computed elsewhere (say, your own PyTorch lens).

    entropy: ``[rows, positions]`` nats (row 0 the embeddings, the last the output).
    top_tokens: ``[rows, positions, k]`` token texts, most probable first.
    tokens: the input token texts; kinds: ``"text"``, ``"template"`` or
    ``"dummy"`` for each (default all ``"text"``).
    top_probs: ``[rows, positions, k]`` probabilities (default 0, shown as such
    in tooltips); top_ids: ``[rows, positions, k]`` token ids (default: one id
    per distinct text); kl_to_final: ``[rows, positions]`` (default 0).
    model: the model's name for the subtitle; vocab_size: its vocabulary
    (the entropy colour bar marks ln|V| when given). stat, window, zoom, title: as
    in :meth:`Model.lens`.

    Returns a :class:`Result`: ``.svg()``, ``.save(...)``, inline in Jupyter.
    """
    e = np.asarray(entropy, dtype=np.float64)
    if e.ndim != 2:
        raise LensmapError(f"`entropy` must be [rows, positions], got shape {e.shape}")
    t = np.asarray(top_tokens, dtype=object)
    if t.ndim != 3 or t.shape[:2] != e.shape:
        raise LensmapError(
            f"`top_tokens` must be [rows, positions, k] with rows, positions {e.shape}, got shape {t.shape}"
        )
    tokens = [str(x) for x in tokens]
    if len(tokens) != e.shape[1]:
        raise LensmapError(f"`tokens` has {len(tokens)} entries for {e.shape[1]} positions")
    kinds = ["text"] * len(tokens) if kinds is None else [str(k) for k in kinds]
    if len(kinds) != len(tokens):
        raise LensmapError(f"`kinds` has {len(kinds)} entries for {len(tokens)} tokens")
    p = np.zeros(t.shape) if top_probs is None else np.asarray(top_probs, dtype=np.float64)
    if top_ids is None:
        ids: dict = {}
        i = np.array([ids.setdefault(str(x), len(ids)) for x in t.ravel()], dtype=np.uint32)
        i = i.reshape(t.shape)
    else:
        i = np.asarray(top_ids, dtype=np.uint32)
    kl = np.zeros(e.shape) if kl_to_final is None else np.asarray(kl_to_final, dtype=np.float64)
    for name, a, shape in (("top_probs", p, t.shape), ("top_ids", i, t.shape), ("kl_to_final", kl, e.shape)):
        if a.shape != shape:
            raise LensmapError(f"`{name}` must have shape {shape}, got {a.shape}")
    return _figure(
        e.tolist(),
        [[[str(x) for x in cell] for cell in row] for row in t],
        tokens,
        kinds,
        p.tolist(),
        i.tolist(),
        kl.tolist(),
        model,
        int(vocab_size),
        stat,
        None if window is None else tuple(int(x) for x in window),
        zoom,
        title,
    )
