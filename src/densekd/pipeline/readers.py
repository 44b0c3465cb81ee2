"""The two readers of the reader -> retriever loop behind one small interface (``reader.kind``).

* ``fid``: the generative Fusion-in-Decoder reader (:mod:`densekd.encoders.reader`); teacher
  :class:`~densekd.teachers.fid.FiDTeacher` (cross-attention presets, ``teacher.scoring``). The
  paper's reader; meant for a pretrained seq2seq checkpoint.
* ``span``: the extractive pointer reader (:mod:`densekd.encoders.span_reader`); teacher
  :class:`~densekd.teachers.span_reader.SpanReaderTeacher` (``mass`` / ``span`` / ``select``). Trainable on CPU
  from the bundled MiniLM (lower layers frozen, their states cached).

Each kind provides ``train(examples, start, args, checkpoints, out) -> summary`` (resumable HF
training into ``out / "model"``), ``teacher(path, scoring) -> Teacher`` (the one teacher contract of
:mod:`densekd.teachers.base`: the loop scores candidate lists through it) and
``read(path, scoring, questions, passages) -> [(answer, scores)]`` (evaluation: the reader's answer
and its passage scores from the same passages).

Cross-fitting (``reader.cross_fit``): the training questions are split into two folds by the title
of their BM25 top-1 passage (a label-free stand-in for the article, so that questions about one
article stay in one fold; :func:`title_folds`); the reader trained on one fold scores the other fold's questions, so no
teacher score comes from a question the reader was trained on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from densekd.pipeline import steps


def title_folds(titles: Sequence[str]) -> dict[str, int]:
    """Fold 0 or 1 of each distinct title: titles ordered by their SHA-256, then dealt alternately.

    Stable across runs and machines, and both folds get a title whenever there are two.
    """
    order = sorted(set(titles), key=lambda t: hashlib.sha256(t.encode("utf-8")).hexdigest())
    return {t: i % 2 for i, t in enumerate(order)}


class FiDKind:
    """Generative FiD reader (module docstring)."""

    name = "fid"

    def train(self, rc: Any, k: int, examples: list, start: str | None, checkpoints: Path, out: Path) -> dict:
        from transformers import set_seed

        from densekd.encoders.reader import FiDReader
        from densekd.training.reader_trainer import ReaderDataset, ReaderTrainer

        args = rc.to_args(k, checkpoints)
        set_seed(rc.seed)  # a warm-started reader draws its new cross-attention from the global RNG
        reader = FiDReader.from_pretrained(start, **args.reader_overrides())
        trainer = ReaderTrainer(reader, args, train_dataset=ReaderDataset(examples, seed=rc.seed))
        summary = steps.train_resumable(trainer, checkpoints, "reader", out)
        reader.save_pretrained(out / "model")
        return summary

    def teacher(self, path: Path, scoring: str) -> Any:
        from densekd.encoders.reader import FiDReader
        from densekd.teachers.fid import FiDTeacher

        return FiDTeacher(FiDReader.from_pretrained(path).eval(), scoring)

    def read(self, path: Path, scoring: str, questions: Sequence[str], passages: Sequence[Sequence[Any]],
             batch_size: int, num_beams: int) -> list[tuple[str, np.ndarray]]:
        teacher = self.teacher(path, scoring)
        out = []
        for i in range(0, len(questions), batch_size):
            qs, ps = list(questions[i:i + batch_size]), list(passages[i:i + batch_size])
            preds = teacher.reader.generate(qs, ps, num_beams=num_beams)
            # answer-conditioned scorings get the reader's own answer: gold answers stay unseen here
            out += [(pred, teacher.score_passages(q, p, pred)) for q, p, pred in zip(qs, ps, preds)]
        return out


class SpanKind:
    """Extractive pointer reader (module docstring)."""

    name = "span"

    def train(self, rc: Any, k: int, examples: list, start: str | None, checkpoints: Path, out: Path) -> dict:
        from densekd.training.span_reader_trainer import build_span_training

        # seeded head, frozen layers' states cached once: the same build as train_span_reader
        trainer, data = build_span_training(examples, rc.to_span_args(k, checkpoints), start=start,
                                            show_progress=True)
        summary = steps.train_resumable(trainer, checkpoints, "reader", out)
        trainer.model.save_pretrained(out / "model")
        return {**summary, "answerable_questions": data.answerable}

    def teacher(self, path: Path, scoring: str) -> Any:
        from densekd.encoders.span_reader import SpanReader
        from densekd.teachers.span_reader import SpanReaderTeacher

        return SpanReaderTeacher(SpanReader.from_pretrained(path).eval(), scoring)

    def read(self, path: Path, scoring: str, questions: Sequence[str], passages: Sequence[Sequence[Any]],
             batch_size: int, num_beams: int) -> list[tuple[str, np.ndarray]]:
        from densekd.encoders.span_reader import SpanReader
        from densekd.teachers.span_reader import read_questions

        reader = SpanReader.from_pretrained(path).eval()
        return [(r.answer, getattr(r, scoring)) for r in read_questions(reader, questions, passages, batch_size)]


KINDS = {"fid": FiDKind(), "span": SpanKind()}
