"""Configuration of ``densekd run``: one YAML file, one dataclass per pipeline stage.

Every field is documented here and can be overridden on the command line with
``--set section.field=value``. Unknown keys are an error (see :mod:`densekd.cli.config`).
Paths in the YAML file are resolved relative to the current working directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class DataSection:
    """Where the data lives.

    Attributes
    ----------
    root
        BEIR-layout folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``).
    train_split, eval_split
        qrels splits used for training and for the reported evaluation (tune on dev only).
    max_train_queries
        Use only the first N training queries (``null`` = all): for quick configurations.
    """

    root: str = "../shared/data/scifact"
    train_split: str = "train"
    eval_split: str = "dev"
    max_train_queries: int | None = None


@dataclass
class MiningSection:
    """Hard-negative mining from BM25 (see :func:`densekd.mining.negatives.mine_negatives`).

    Attributes
    ----------
    depth
        BM25 depth retrieved per training query.
    n_negatives
        Negatives kept per query (candidates the teacher will score).
    rank_range
        ``[lo, hi)`` ranks of the BM25 list negatives are taken from.
    sampling
        ``"top"`` (in rank order) or ``"random"`` (seeded) among the candidates in range.
    """

    depth: int = 100
    n_negatives: int = 15
    rank_range: list[int] = field(default_factory=lambda: [0, 50])
    sampling: str = "random"


@dataclass
class TeacherSection:
    """The cross-encoder teacher: trained here from ``model`` unless ``path`` points at a trained one.

    Attributes
    ----------
    path
        A trained cross-encoder folder to use as is (skips teacher training).
    model
        Checkpoint to start teacher training from (``null`` = bundled all-MiniLM-L6-v2).
    epochs, learning_rate, warmup_ratio, batch_size, group_size, max_length, loss
        Teacher training settings (``loss``: ``"listwise"`` or ``"pointwise"``); ``batch_size`` counts
        queries per step, each with ``group_size`` passages.
    max_steps
        Stop after this many steps (``-1`` = run the epochs).
    seed
        Seed of teacher training (head initialisation, sampling, dropout).
    rerank_depth
        BM25 depth the teacher reranks for its own dev evaluation (below it, BM25's order is kept).
    score_batch_size
        Pairs per forward pass when scoring.
    fusion
        The teacher signal: weights of per-query z-normalised scores of ``cross_encoder``, ``bm25``
        and ``dense`` (the zero-shot student) summed into one logit per candidate
        (:mod:`densekd.teachers.fusion`). ``{cross_encoder: 1.0}`` = the cross-encoder alone.
    """

    path: str | None = None
    model: str | None = None
    epochs: float = 2.0
    max_steps: int = -1
    learning_rate: float = 4e-5
    warmup_ratio: float = 0.1
    batch_size: int = 2
    group_size: int = 8
    max_length: int = 256
    loss: str = "listwise"
    seed: int = 42
    rerank_depth: int = 30
    score_batch_size: int = 64
    fusion: dict[str, float] = field(default_factory=lambda: {"cross_encoder": 1.0})


@dataclass
class StudentSection:
    """The dual-encoder student and its distillation run.

    Attributes
    ----------
    model
        Checkpoint the student starts from (``null`` = bundled all-MiniLM-L6-v2).
    train_mode
        ``"full"`` (fine-tune the shared tower) or ``"query_only"`` (passage tower frozen, passage
        vectors cached once and reused: cheap ablations and many seeds).
    loss
        Loss spec for :func:`densekd.losses.combine.build_loss`, e.g.
        ``{"kl": {"weight": 1.0}, "contrastive": {"weight": 0.1}}``.
    group_size, batch_size, epochs, max_steps, learning_rate, warmup_ratio, seed
        Training settings (``batch_size`` = queries per step).
    query_max_length, passage_max_length
        Truncation lengths of the student.
    eval_steps
        Evaluate on the dev set every N steps during training (``0`` = only at the end).
    logging_steps
        Log the loss and its components every N steps (the report's training curve).
    """

    model: str | None = None
    train_mode: str = "full"
    loss: dict[str, Any] = field(default_factory=lambda: {"kl": {"weight": 1.0}, "contrastive": {"weight": 0.1}})
    group_size: int = 8
    batch_size: int = 16
    epochs: float = 1.0
    max_steps: int = -1
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    seed: int = 42
    query_max_length: int = 64
    passage_max_length: int = 256
    eval_steps: int = 0
    logging_steps: int = 5


@dataclass
class PipelineConfig:
    """A whole ``densekd run``: data -> BM25 + mining -> teacher -> annotate -> student -> eval -> report.

    Attributes
    ----------
    name
        Run name (used in the report title).
    output_dir
        Where this run's student, runs, metrics and report go.
    cache_dir
        Shared cache of one-time costs (BM25 runs, teachers, teacher scores, corpus embeddings),
        keyed by model, data and settings so other runs reuse them.
    encode_batch_size
        Passages per forward pass when encoding the corpus.
    """

    name: str = "densekd"
    output_dir: str = "runs/densekd"
    cache_dir: str = "cache"
    encode_batch_size: int = 32
    data: DataSection = field(default_factory=DataSection)
    mining: MiningSection = field(default_factory=MiningSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    student: StudentSection = field(default_factory=StudentSection)
