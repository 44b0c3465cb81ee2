"""The frozen passage side of ``query_only`` students, cached like every step (:mod:`densekd.pipeline.steps`).

A ``query_only`` student never runs its passage tower: it reads what the frozen start model computed once.

* :func:`query_only_table`: passage vectors (the corpus store, plus ADAM dark examples' vectors encoded
  once, ``extra_embeddings/<key>/``) for plain students;
* :func:`passage_token_states`: the corpus's last-layer token states (``token_states/<key>/``) for students
  that read tokens: a passage head, ERNIE-Search's ColBERT head;
* :func:`query_only_states`: those plus the dark examples' states (``extra_token_states/<key>/``), stacked.

``ctx`` is the run's :class:`~densekd.pipeline.steps.Context` (a :class:`StepLog` with ``cfg`` and
``corpus_key``); the corpus caches never change when dark examples are added.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from densekd.data.io import DataFormatError, write_json
from densekd.data.types import TrainGroup
from densekd.pipeline.cache import StepLog, cache_key

__all__ = ["passage_token_states", "query_only_states", "query_only_table"]


def query_only_table(ctx: StepLog, groups: list[TrainGroup], store: Any, model_path: str | None,
                     max_length: int) -> Any:
    """The frozen passage vectors a ``query_only`` student reads: the corpus store plus the groups'
    extra passages (ADAM dark examples), encoded once by the same frozen model and cached.

    Returns ``store`` itself when no group has extra passages, else a
    :class:`~densekd.training.trainer.PassageEmbeddingTable` over ``[corpus rows; extra rows]``.
    """
    import numpy as np

    from densekd.encoders.dense import DenseEncoder, resolve_model_path
    from densekd.training.trainer import PassageEmbeddingTable

    extra = _extra_texts(groups)
    if not extra:
        return store
    ids = sorted(extra)
    key = cache_key("extra-vectors-v1", store.fingerprint, max_length, [[i, extra[i]] for i in ids])
    folder = ctx.cache / "extra_embeddings" / key

    def compute(out: Path) -> dict[str, Any]:
        encoder = DenseEncoder.from_pretrained(resolve_model_path(model_path), passage_max_length=max_length)
        vectors = encoder.encode_passages([extra[i] for i in ids], batch_size=ctx.cfg.encode_batch_size,
                                          show_progress=True)
        np.save(out / "vectors.npy", np.asarray(vectors, dtype=np.float32))
        write_json(out / "ids.json", ids)
        return {"n": len(ids)}

    ctx.step("encode:extra", folder, compute, meta={"model": str(model_path), "max_length": max_length})
    vectors = np.load(folder / "vectors.npy")  # plain float array: allow_pickle stays off
    if vectors.shape != (len(ids), store.dim):
        raise DataFormatError(folder / "vectors.npy", f"shape {vectors.shape}, expected ({len(ids)}, {store.dim})")
    rows = {pid: i for i, pid in enumerate(store.ids)}
    rows.update({pid: len(store.ids) + i for i, pid in enumerate(ids)})
    return PassageEmbeddingTable(rows, np.concatenate([np.asarray(store.embeddings, dtype=np.float32), vectors]))


def _extra_texts(groups: list[TrainGroup]) -> dict[str, str]:
    """``id -> text`` of the groups' candidates outside the corpus (ADAM dark examples)."""
    return {pid: text for g in groups for pid, text in (g.extra_passages or {}).items()}


def query_only_states(ctx: StepLog, groups: list[TrainGroup], states: Any, model_path: str | None,
                      max_length: int) -> Any:
    """The token states a ``query_only`` student with a passage head (or ERNIE-Search heads) reads: the
    corpus's ``states`` plus the groups' extra passages (ADAM dark examples), encoded once by the same
    frozen model and cached apart (key: the corpus states' fingerprint + the texts), as
    :func:`query_only_table` does for vectors. Returns ``states`` itself when no group has extra passages.
    """
    from densekd.data.types import Passage
    from densekd.encoders.cached_passages import StackedStateTable
    from densekd.encoders.dense import DenseEncoder, resolve_model_path
    from densekd.index.token_states import encode_token_states

    extra = _extra_texts(groups)
    if not extra:
        return states
    ids = sorted(extra)
    dtype = str(states.hidden.dtype)
    key = cache_key("extra-token-states-v1", states.manifest.get("fingerprint"), max_length, dtype,
                    [[i, extra[i]] for i in ids])
    start = time.perf_counter()
    folder = ctx.cache / "extra_token_states" / key
    reused = (folder / "manifest.json").is_file()
    encoder = DenseEncoder.from_pretrained(resolve_model_path(model_path), passage_max_length=max_length)
    dark = encode_token_states(encoder, [Passage(i, extra[i]) for i in ids], folder,
                               batch_size=ctx.cfg.encode_batch_size, dtype=dtype, fingerprint=key)
    ctx.record("token-states:extra", start, reused)
    return StackedStateTable([states, dark])


def passage_token_states(ctx: StepLog, model_path: str | None, max_length: int, tag: str,
                         dtype: str = "float16") -> Any:
    """Frozen passage token states of a model for ``query_only`` ERNIE-Search students (cached).

    Returns a :class:`~densekd.index.token_states.PassageTokenStates` over the corpus: last-layer
    hidden states (``dtype``, ragged, memory-mapped), token ids and pooled vectors of one pass of the
    model's passage tower, in ``<cache>/token_states/<key>/`` (key: the loaded encoder's fingerprint + corpus
    file + max length + dtype, never a path, as :func:`corpus_embeddings`). SciFact at length 256 takes
    ~5 min on 2 CPU cores once, ~0.9 GB.
    """
    from densekd.encoders.dense import DenseEncoder, resolve_model_path
    from densekd.index.dense_search import default_fingerprint
    from densekd.index.token_states import encode_token_states

    path = Path(resolve_model_path(model_path))
    start = time.perf_counter()
    encoder = DenseEncoder.from_pretrained(path, passage_max_length=max_length)
    fingerprint = cache_key("token-states-v3", default_fingerprint(encoder), max_length, ctx.corpus_key, dtype)
    folder = ctx.cache / "token_states" / fingerprint
    reused = (folder / "manifest.json").is_file()
    states = encode_token_states(encoder, ctx.corpus, folder, batch_size=ctx.cfg.encode_batch_size, dtype=dtype,
                                 fingerprint=fingerprint)
    ctx.record(f"token-states:{tag}", start, reused)
    return states
