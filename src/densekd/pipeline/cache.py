"""Content-addressed cache for the pipeline's one-time costs.

A step's output lives in ``<cache_dir>/<step>/<key>/`` where ``key`` is a short sha256 of everything the
output depends on: the data files' bytes, the model's fingerprint and the step's settings (and the keys
of the steps it consumes). A ``DONE.json`` marker, written last and atomically, says the folder is
complete; a folder without it (an interrupted run) is cleared and recomputed, so a half-written output is
never taken as finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from densekd.data import hashing
from densekd.data.io import write_json
from densekd.data.types import Corpus

MARKER = "DONE.json"

log = logging.getLogger("densekd.pipeline")


def _canonical(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _canonical(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def cache_key(*parts: Any, length: int = 16) -> str:
    """Stable short hash of JSON-able ``parts`` (dataclasses and paths allowed).

    Examples
    --------
    >>> cache_key({"b": 1, "a": 2}) == cache_key({"a": 2, "b": 1})
    True
    """
    blob = json.dumps(_canonical(list(parts)), sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def file_digest(*paths: str | Path, length: int = 16) -> str:
    """sha256 over the bytes of ``paths`` (:func:`densekd.data.hashing.file_digest`), 16 hex by default."""
    return hashing.file_digest(*paths, length=length)


def model_ref(model: str | Path | None) -> Any:
    """What a start model contributes to a cache key.

    ``None`` (the bundled all-MiniLM-L6-v2, pinned by its package) stays ``None``, so default configs keep
    their keys; a local folder is its path *and* a digest of its top-level files (weights, config,
    tokenizer), so a folder retrained in place invalidates everything trained from it; any other string
    (a hub id, resolved offline) stays as given.

    Examples
    --------
    >>> model_ref(None) is None, model_ref("sentence-transformers/all-MiniLM-L6-v2")
    (True, 'sentence-transformers/all-MiniLM-L6-v2')
    """
    if model is None:
        return None
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return str(model)
    return {"path": str(model), "digest": file_digest(*sorted(f for f in folder.iterdir() if f.is_file()))}


def is_done(folder: Path) -> bool:
    """Whether ``folder`` holds a completed step output."""
    return (folder / MARKER).is_file()


def read_marker(folder: Path) -> dict[str, Any]:
    """The marker of a completed step: ``{"summary": ..., "meta": ..., "key": ...}``."""
    return json.loads((folder / MARKER).read_text(encoding="utf-8"))


def cached_step(folder: Path, compute: Callable[[Path], dict[str, Any] | None],
                meta: dict[str, Any] | None = None, key: str | None = None) -> tuple[dict[str, Any], bool]:
    """Run ``compute(folder)`` unless ``folder`` is already complete.

    Parameters
    ----------
    folder
        The step's output folder (``<cache>/<step>/<key>``).
    compute
        Writes its outputs into the folder and returns a JSON-able summary (or ``None``).
    meta
        Settings recorded in the marker for humans.
    key
        For folders whose path does not contain the cache key (e.g. a run's student folder): the
        output is reused only when the marker records this same key.

    Returns
    -------
    (summary, reused)
        The summary stored in the marker, and ``True`` when nothing was recomputed.
    """
    if is_done(folder):
        marker = read_marker(folder)
        if key is None or marker.get("key") == key:
            return marker["summary"], True
    if folder.exists():  # leftovers of an interrupted run: never trust them
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    summary = compute(folder) or {}
    write_json(folder / MARKER, {"summary": summary, "meta": meta or {}, "key": key})
    return summary, False


class StepLog:
    """What every pipeline context shares: its cache and output roots, and the timing log of its steps.

    A mixin for the contexts' dataclasses (``densekd run``'s :class:`~densekd.pipeline.steps.Context`, the
    reader -> retriever ``QAContext``), which give it these fields; a step written against it (BM25
    search, corpus encoding) serves both pipelines.
    """

    cfg: Any                                # cache_dir, output_dir, encode_batch_size
    corpus: Corpus
    corpus_key: str                         # digest of the corpus file alone: what corpus encodings depend on
    timings: dict[str, dict[str, Any]]

    @property
    def cache(self) -> Path:
        return Path(self.cfg.cache_dir).expanduser()

    @property
    def out(self) -> Path:
        return Path(self.cfg.output_dir)

    def record(self, step: str, start: float, reused: bool) -> None:
        """Note a step's wall time since ``start`` (``time.perf_counter()``) and whether its output was reused."""
        self.timings[step] = {"seconds": round(time.perf_counter() - start, 1), "cached": reused}
        log.info("step %-18s %s in %.1fs", step, "reused" if reused else "done", self.timings[step]["seconds"])

    def step(self, name: str, folder: Path, compute: Callable[[Path], dict[str, Any] | None], key: str | None = None,
             meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """:func:`cached_step` (same ``folder``, ``compute``, ``meta``, ``key``) timed under ``name``; its summary."""
        start = time.perf_counter()
        summary, reused = cached_step(folder, compute, meta, key=key)
        self.record(name, start, reused)
        return summary
