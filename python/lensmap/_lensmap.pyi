"""Type stubs of the Rust extension ``lensmap._lensmap`` (see ``python/src/lib.rs``)."""

from os import PathLike
from typing import Any, Dict, List, Optional, Sequence, Tuple, TypedDict, Union

import numpy as np
import numpy.typing as npt
from typing_extensions import Unpack

_Path = Union[str, PathLike]

class BatchOptions(TypedDict, total=False):
    """Keywords of ``Model.batch`` and ``Model.batch_cells``: ``lensmap batch``'s
    flags of the same names (defaults: the CLI's)."""

    system: Optional[str]
    dummy: Optional[int]
    dummy_text: Optional[str]
    top_k: Optional[int]
    generate: Optional[int]
    answer_skip: Optional[int]

class ViewOptions(TypedDict, total=False):
    """Keywords of ``Result.svg``, ``.html`` and ``.save``: the figure's view
    (defaults: the result's own)."""

    stat: Optional[str]
    window: Optional[Tuple[int, int]]
    zoom: Optional[int]
    title: Optional[str]

__version__: str

class LensmapError(Exception):
    """An error from lensmap: the one-line message ``lensmap`` prints; its hint (or None) in ``.hint``."""

    hint: Optional[str]

class Model:
    """A model loaded once, answering lens requests.

    path: anything ``lensmap run --model`` takes (a ``.gguf`` file, an HF
    directory, ``org/name`` in the HF cache). precision: ``auto``, ``f32``, ``rest``,
    ``f64`` or ``quant``. chat_template: a Jinja file to use instead of the
    model's own.
    """

    def __init__(
        self, path: str, precision: str = "auto", chat_template: Optional[_Path] = None
    ) -> None: ...
    def lens(
        self,
        prompt: str,
        *,
        system: Optional[str] = None,
        raw: bool = False,
        dummy: int = 0,
        dummy_text: Optional[str] = None,
        top_k: Optional[int] = None,
        target: Optional[str] = None,
        generate: int = 0,
        answer: Optional[str] = None,
        answer_alt: Sequence[str] = ...,
        answer_skip: int = 0,
        lens: Optional[str] = None,
        lens_precision: Optional[str] = None,
        positions: Optional[str] = None,
        stat: Optional[str] = None,
        window: Optional[Tuple[int, int]] = None,
        zoom: Optional[int] = None,
        title: Optional[str] = None,
    ) -> Result:
        """Run the logit lens on one prompt; the options are those of ``lensmap run``.

        dummy_text defaults to ".", top_k to 5 (the CLI's defaults).
        lens: ``"logit"`` (default), ``"tuned:DIR"`` (a tuned-lens directory)
        or ``"logit,tuned:DIR"`` (both; the second grid goes in the JSON's
        ``more_lenses`` and the figure). lens_precision: ``"f32"`` (exact,
        default) or ``"bf16"``. positions: ``"all"`` (default), ``"tail"``
        (the template's tail and the dummies) or ``"A..B"``; cells outside
        are NaN. These are ``--lens``, ``--lens-precision`` and
        ``--positions`` of ``lensmap run``, parsed by the same code. The GIL
        is released while it runs; Ctrl-C stops it between layers
        (``KeyboardInterrupt``).
        """
    def batch(
        self,
        prompts: Union[_Path, Sequence[Dict[str, Any]]],
        out: _Path,
        *,
        shard: Optional[str] = None,
        csv: bool = False,
        **options: Unpack[BatchOptions],
    ) -> Dict[str, Any]:
        """Run ``lensmap batch`` (same outputs, same defaults); returns ``summary.json``."""
    def batch_cells(
        self, items: Sequence[Dict[str, Any]], **options: Unpack[BatchOptions]
    ) -> Any:
        """The rows ``lensmap batch`` writes to ``cells.parquet`` for these items, as a ``pyarrow.Table``."""
    @property
    def info(self) -> Dict[str, Any]: ...

class Result:
    """One lens result: numpy arrays, tables, and the figure (inline in Jupyter)."""

    @property
    def entropy(self) -> npt.NDArray[np.float32]: ...
    @property
    def kl_to_final(self) -> npt.NDArray[np.float32]: ...
    @property
    def answer_prob(self) -> Optional[npt.NDArray[np.float32]]: ...
    @property
    def answer_rank(self) -> Optional[npt.NDArray[np.uint32]]: ...
    @property
    def top_ids(self) -> npt.NDArray[np.uint32]: ...
    @property
    def top_probs(self) -> npt.NDArray[np.float32]: ...
    @property
    def top_tokens(self) -> npt.NDArray[np.object_]: ...
    @property
    def tokens(self) -> List[Tuple[int, str, str]]: ...
    @property
    def answer(self) -> Optional[str]: ...
    @property
    def answer_ids(self) -> Optional[List[int]]: ...
    @property
    def rehearsal(self) -> Optional[Dict[str, Any]]: ...
    @property
    def n_rows(self) -> int: ...
    @property
    def model(self) -> Dict[str, Any]: ...
    @property
    def prompt_text(self) -> str: ...
    def to_json(self) -> str: ...
    def to_arrow(self, id: str = "prompt") -> Any: ...
    def to_pandas(self, id: str = "prompt") -> Any: ...
    def to_polars(self, id: str = "prompt") -> Any: ...
    def svg(self, **view: Unpack[ViewOptions]) -> str: ...
    def html(self, **view: Unpack[ViewOptions]) -> str: ...
    def save(
        self,
        base: _Path,
        formats: Optional[Sequence[str]] = None,
        **view: Unpack[ViewOptions],
    ) -> List[PathLike]: ...
    def _repr_html_(self) -> str: ...

def load(path: _Path) -> Result:
    """Read a result back from the JSON ``lensmap run --json`` (or ``Result.save``) wrote."""

def _figure(*args: Any) -> Result: ...
