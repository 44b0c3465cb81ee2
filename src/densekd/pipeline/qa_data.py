"""The data of a reader -> retriever run (:mod:`densekd.pipeline.fidkd`): corpus, questions, and a
label-free split into training and evaluation questions (cache roots and timing log: the shared
:class:`~densekd.pipeline.cache.StepLog`).

* Evaluation questions: the question ids of ``qrels/<eval_split>.tsv`` (its passage column is unused;
  every one needs ``answers``).
* Training questions: every *other* query with ``answers``. No training qrels file is opened, so the
  retriever can only learn from answers, through the reader.
* Both optionally sampled (``data.max_train_queries`` / ``max_eval_queries``), seeded, file order kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from densekd.data.beir import load_corpus, load_qrels, load_queries
from densekd.data.io import DataFormatError
from densekd.data.types import Corpus, Passage, Queries, Run, top_k
from densekd.pipeline.cache import StepLog, file_digest
from densekd.pipeline.fidkd_config import FidKDConfig


@dataclass
class QAContext(StepLog):
    """Config, data and (:class:`StepLog`) the cache roots and timing log shared by the steps."""

    cfg: FidKDConfig
    corpus: Corpus
    queries: Queries
    train_qids: list[str]
    eval_qids: list[str]
    data_key: str
    corpus_key: str = ""  # the corpus file alone: what corpus encodings depend on (shared with densekd run)
    timings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def passages(self, run: Run, qid: str) -> list[Passage]:
        """The top ``k`` passages of ``qid`` in ``run`` (fewer when the retriever found fewer)."""
        return [self.corpus[pid] for pid, _ in top_k(run.get(qid) or {}, self.cfg.retrieval.k)]


def sample_ids(ids: list[str], n: int | None, seed: int) -> list[str]:
    """A seeded random sample of ``n`` ids in their original order (all of them when ``n`` is None)."""
    if n is None or n >= len(ids):
        return ids
    keep = np.sort(np.random.default_rng(seed).choice(len(ids), size=n, replace=False))
    return [ids[i] for i in keep]


def load_qa_context(cfg: FidKDConfig) -> QAContext:
    """Load the corpus and questions; split them into training and evaluation questions, label-free.

    Evaluation questions: the ids of ``qrels/<eval_split>.tsv`` (its passage column is unused).
    Training questions: every other query that has answers. Both are optionally sampled
    (``data.max_*_queries``, seeded).
    """
    d = cfg.data
    root = Path(d.root)
    files = [root / "corpus.jsonl", root / "queries.jsonl", root / "qrels" / f"{d.eval_split}.tsv"]
    corpus, queries = load_corpus(files[0]), load_queries(files[1])
    eval_qids = list(load_qrels(files[2], corpus=corpus, queries=queries))
    no_answer = [qid for qid in eval_qids if not queries[qid].answers]
    if no_answer:
        raise DataFormatError(files[1], f"{len(no_answer)} {d.eval_split} questions have no 'answers' (e.g. "
                                        f"{no_answer[0]!r}): reader -> retriever distillation needs a QA set")
    held_out = set(eval_qids)
    train_qids = [qid for qid, q in queries.items() if q.answers and qid not in held_out]
    if not train_qids:
        raise DataFormatError(files[1], f"no training question: fidkd trains on the queries with 'answers' "
                                        f"outside the {d.eval_split} split")
    return QAContext(cfg, corpus, queries, sample_ids(train_qids, d.max_train_queries, d.seed),
                     sample_ids(eval_qids, d.max_eval_queries, d.seed), data_key=file_digest(*files),
                     corpus_key=file_digest(files[0]))
