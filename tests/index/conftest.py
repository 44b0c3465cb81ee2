"""Fixtures for the index tests: a deterministic fake encoder and the toy corpus as records."""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest

from densekd.data.types import Corpus, Passage, Queries, Qrels, Query

DIM = 16


class HashingEncoder:
    """Bag-of-words hashed into ``DIM`` buckets, L2-normalised: cheap, deterministic, meaningful.

    ``fail_after`` makes ``encode_passages`` raise on the call after that many successful ones, to
    simulate a killed encoding run; ``passage_calls`` counts successful calls.
    """

    def __init__(self, dim: int = DIM, fail_after: int | None = None, salt: str = ""):
        self.dim, self.fail_after, self.salt = dim, fail_after, salt
        self.passage_calls = 0
        self.query_calls = 0

    def _embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for tok in re.findall(r"\w+", text.lower()):
                # crc32, not hash(): Python's str hash changes from process to process.
                out[row, zlib.crc32((self.salt + tok).encode()) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-6)

    def encode_passages(self, texts: list[str], batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        if self.fail_after is not None and self.passage_calls >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.passage_calls += 1
        return self._embed(texts)

    def encode_queries(self, texts: list[str], batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        self.query_calls += 1
        return self._embed(texts)


def _read_toy(root: Path) -> tuple[Corpus, Queries, Qrels]:
    """Read the toy BEIR folder (densekd.data.beir when available, else a tiny local reader)."""
    try:
        from densekd.data.beir import load_beir
    except ImportError:
        load_beir = None
    if load_beir is not None:
        data = load_beir(root, "dev")
        return data.corpus, data.queries, data.qrels
    corpus, queries, qrels = {}, {}, {}
    for line in (root / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        corpus[row["_id"]] = Passage(row["_id"], row["text"], row.get("title", ""))
    for line in (root / "queries.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        queries[row["_id"]] = Query(row["_id"], row["text"], row.get("answers"))
    for line in (root / "qrels" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        qid, pid, rel = line.split("\t")
        qrels.setdefault(qid, {})[pid] = int(rel)
    return corpus, queries, qrels


@pytest.fixture(scope="session")
def toy(toy_beir_dir) -> tuple[Corpus, Queries, Qrels]:
    """``(corpus, queries, qrels)`` of the toy set."""
    return _read_toy(toy_beir_dir)


@pytest.fixture
def make_encoder():
    """Factory for :class:`HashingEncoder` instances."""
    return HashingEncoder


@pytest.fixture(scope="session")
def numbered_corpus() -> list[Passage]:
    """Ten small passages with distinct words, for chunking tests."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    return [Passage(f"p{i}", f"{w} passage number {i}", title=w.title()) for i, w in enumerate(words)]
