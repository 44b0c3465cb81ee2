"""Deterministic, optionally slow fakes for the kill -9 tests, and the subprocess entry point.

Run as ``python _robust_helpers.py {encode|annotate|index|mine|train} ARGS...`` the module performs one
resumable job with a sleep per unit of work, so the parent test can SIGKILL it mid-way.
"""

from __future__ import annotations

import socket
import sys
import time
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unit(text: str, salt: str = "") -> float:
    return (zlib.crc32(f"{salt}|{text}".encode("utf-8")) % 10_000) / 1000.0 - 5.0


class SlowEncoder:
    """``encode_passages`` -> float32 [N, 4] from a hash of each text; sleeps ``delay`` s per call."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.encoded = 0

    def encode_passages(self, texts, batch_size=64, show_progress=False):
        time.sleep(self.delay)
        self.encoded += len(texts)
        return np.array([[_unit(t, str(k)) for k in range(4)] for t in texts], dtype=np.float32)


class FakeTeacher:
    """``score(pairs)`` -> float32 logits from a hash of (query, passage); sleeps ``delay`` s per call."""

    fingerprint = "fake-teacher/v1"

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.scored = 0

    def score(self, pairs, batch_size=64, show_progress=False):
        time.sleep(self.delay)
        self.scored += len(pairs)
        return np.array([_unit(q + "\t" + p) for q, p in pairs], dtype=np.float32)


def toy_groups(beir: Path):
    """One TrainGroup per train query: its relevant passages vs every other passage."""
    from densekd.data.beir import load_corpus, load_qrels, load_queries
    from densekd.data.types import TrainGroup

    corpus, queries = load_corpus(beir / "corpus.jsonl"), load_queries(beir / "queries.jsonl")
    qrels = load_qrels(beir / "qrels" / "train.tsv")
    groups = [TrainGroup(q, sorted(p for p, r in rel.items() if r > 0), sorted(p for p in corpus if p not in rel))
              for q, rel in sorted(qrels.items())]
    return groups, queries, corpus


def run_encode(beir: Path, out: Path, delay: float) -> SlowEncoder:
    from densekd.data.beir import load_corpus
    from densekd.index.encode import encode_corpus

    encoder = SlowEncoder(delay)
    encode_corpus(encoder, load_corpus(beir / "corpus.jsonl"), out, batch_size=2, chunk_size=2,
                  show_progress=False, fingerprint="slow-fake")
    return encoder


def run_annotate(beir: Path, out: Path, delay: float) -> FakeTeacher:
    from densekd.teachers.annotate import annotate

    groups, queries, corpus = toy_groups(beir)
    teacher = FakeTeacher(delay)
    annotate(groups, queries, corpus, teacher, out, batch_size=4, flush_every=1, show_progress=False)
    return teacher


def run_index(store_dir: Path, out: Path, delay: float) -> None:
    """Build a Flat FAISS index from an encoded store chunk by chunk (``delay`` s per chunk) and save it.

    Each added chunk touches ``<out>.added-<n>`` so the parent knows the build is under way."""
    from densekd.index.encode import EmbeddingStore
    from densekd.index.faiss_index import FaissIndex

    add = FaissIndex.add

    def slow_add(self, ids, x):
        add(self, ids, x)
        Path(f"{out}.added-{len(self)}").touch()
        time.sleep(delay)

    FaissIndex.add = slow_add
    EmbeddingStore.load(store_dir).to_faiss("Flat", show_progress=False).save(out)


def run_mine_slowly(config: str) -> int:
    """``densekd mine CONFIG`` whose groups.jsonl write is torn: first line, then a long sleep."""
    import densekd.pipeline.steps as steps
    from densekd.cli.main import main

    def torn_write_jsonl(path, rows):
        rows = iter(rows)
        with open(path, "w", encoding="utf-8") as f:  # deliberately not atomic
            import json

            f.write(json.dumps(next(rows)) + "\n")
            f.flush()
        time.sleep(60)

    steps.write_jsonl = torn_write_jsonl
    return main(["mine", config])


def run_stage_slowly(stage: str, config: str, delay: float) -> int:
    """``densekd STAGE CONFIG`` with a ``delay`` s sleep before every optimizer step (teacher and student
    training): slow enough to be killed after a checkpoint, with the same arithmetic as a normal run."""
    from transformers import Trainer

    from densekd.cli.main import main

    step = Trainer.training_step

    def slow_step(self, *args, **kwargs):
        time.sleep(delay)
        return step(self, *args, **kwargs)

    Trainer.training_step = slow_step
    return main([stage, config])


if __name__ == "__main__":
    job, *rest = sys.argv[1:]
    if job == "encode":
        run_encode(Path(rest[0]), Path(rest[1]), float(rest[2]))
    elif job == "annotate":
        run_annotate(Path(rest[0]), Path(rest[1]), float(rest[2]))
    elif job == "index":
        run_index(Path(rest[0]), Path(rest[1]), float(rest[2]))
    elif job == "mine":
        sys.exit(run_mine_slowly(rest[0]))
    elif job == "train":
        sys.exit(run_stage_slowly(rest[0], rest[1], float(rest[2])))
    else:
        raise SystemExit(f"unknown job {job!r}")
