"""Configuration of ``densekd run``: one YAML file, one dataclass per pipeline stage.

Every field is documented here and can be overridden on the command line with
``--set section.field=value``. Unknown keys are an error (see :mod:`densekd.cli.config`).
Paths in the YAML file are resolved relative to the current working directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from densekd.pipeline.adam_config import DarkExamplesSection, SelfPacedSection

__all__ = ["DataSection", "MiningSection", "LabelDenseSection", "TeacherSection", "DarkExamplesSection",
           "SelfPacedSection", "StudentSection", "PipelineConfig"]


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
    pseudo_queries
        Add N self-supervised training queries, one sentence of a corpus passage each, with that
        passage as positive (:mod:`densekd.mining.pseudo_queries`; ``0`` = none). The teacher scores
        them like any query; labels-only teacher members never train on them.
    pseudo_seed
        Seed of the passage and sentence choice.
    """

    root: str = "../shared/data/scifact"
    train_split: str = "train"
    eval_split: str = "dev"
    max_train_queries: int | None = None
    pseudo_queries: int = 0
    pseudo_seed: int = 0


RETRIEVALS = ("bm25", "bm25+dense", "bm25+label_dense")


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
    retrieval
        Rank ranges refer to BM25's list (``"bm25"``), or to BM25's top ``depth`` fused by reciprocal rank
        with the zero-shot student's (``"bm25+dense"``; the teacher re-ranks the same union on dev) or with
        the teacher's labels-only members' (``"bm25+label_dense"``, out of fold on training queries; the
        members train on ``bm25+dense`` groups first). SciFact dev: the teacher re-ranks 0.819 -> 0.833.
    seed
        Seed of ``random`` sampling: the mining's, not the student's (every student seed, same groups).
    """

    depth: int = 100
    n_negatives: int = 15
    rank_range: list[int] = field(default_factory=lambda: [0, 50])
    sampling: str = "random"
    retrieval: str = "bm25"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.retrieval not in RETRIEVALS:
            raise ValueError(f"mining.retrieval must be one of {', '.join(RETRIEVALS)}, got {self.retrieval!r}")


@dataclass
class LabelDenseSection:
    """The labels-only dense members of the teacher (signal ``label_dense``; :mod:`densekd.pipeline.label_dense`).

    Query-side-only retrievers trained by InfoNCE on the training labels, cross-fitted: each fold of
    the training queries is scored by members that never saw it, so the signal distilled on a training
    query has the quality the teacher has on unseen queries. Trained only when
    ``teacher.fusion.label_dense > 0``.

    Attributes
    ----------
    folds
        Cross-fitting folds (>= 2); queries go to folds by a hash of their id.
    fold_seed
        Seed of that hash.
    seeds
        One member per seed and fold, plus one per seed on all training queries; scores are averaged
        over seeds. ``folds x len(seeds) + len(seeds)`` members in all (SciFact: ~1 min per fold member,
        ~2 min per full one on 2 CPU cores).
    epochs, learning_rate, temperature
        Member training: epochs over the (sub)set, learning rate, InfoNCE temperature.
    passage_max_length
        Tokens of each passage the members' frozen corpus vectors read (``null`` = the student's): the
        teacher may read more than its student (one more cached corpus encoding; ADAM dark examples too).
    group_size
        Candidates per query in a member's training step (``null`` = the student's): a recipe with smaller
        student groups (ERNIE-Search) keeps the members, and cache, of the recipe whose teacher it shares.
    """

    folds: int = 2
    fold_seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [0])
    epochs: float = 8.0
    learning_rate: float = 5e-5
    temperature: float = 0.05
    passage_max_length: int | None = None
    group_size: int | None = None


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
        The teacher signal: weights of per-query z-normalised scores of ``cross_encoder``, ``bm25``,
        ``dense`` (the zero-shot student) and ``label_dense`` (cross-fitted labels-only retrievers,
        ``label_dense`` section) summed into one logit per candidate (:mod:`densekd.teachers.fusion`).
        ``{cross_encoder: 1.0}`` = the cross-encoder alone; a fusion without ``cross_encoder`` trains
        no cross-encoder.
    label_dense
        Settings of the ``label_dense`` members (:class:`LabelDenseSection`).
    positive_margin
        When set, each training group's judged positives are lifted to at least this much above the
        group's best negative in the fused signal (labels win where the teacher disagrees with them;
        the negatives keep the teacher's order). ``null`` = the teacher's scores as they are.
    save_steps
        Write a resumable checkpoint every N optimizer steps (``0`` = none): a killed teacher training
        resumes from the last one when the same command is rerun, and ends with the same weights.
        Not part of the cache key (it does not change the trained model).
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
    save_steps: int = 50
    label_dense: LabelDenseSection = field(default_factory=LabelDenseSection)
    positive_margin: float | None = None

    @property
    def uses(self) -> set[str]:
        """The signals with a positive fusion weight."""
        return {name for name, w in self.fusion.items() if w > 0}

    def to_args(self, checkpoints: Path) -> Any:
        """The :class:`~densekd.training.teacher_config.TeacherConfig` of teacher training (checkpoints there)."""
        from densekd.pipeline.checkpoints import section_training_args
        from densekd.training.teacher_config import TeacherConfig

        return TeacherConfig(group_size=self.group_size, max_length=self.max_length, loss=self.loss,
                             **section_training_args(self, checkpoints))


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
    architecture
        ``"dense"`` (a :class:`~densekd.encoders.dense.DenseEncoder`) or ``"ernie"`` (ERNIE-Search: one shared tower
        with a dense and a ColBERT head, :class:`~densekd.encoders.ernie.ErnieSearchModel`; use the ``ernie``
        loss). Either way the dense head is what gets indexed and evaluated. With ``train_mode: query_only`` an
        ERNIE student reads the frozen passage side's token states from a cache
        (:func:`densekd.pipeline.steps.passage_token_states`) and trains the query side and the ColBERT projection.
    colbert_dim
        Size of the ColBERT token projection (``architecture: ernie`` only).
    passage_head
        ``null`` or ``"gated"``: give the passage side a trainable head over the tower's last-layer token
        states (:mod:`densekd.encoders.passage_head`: a gated mean of the states, linearly mapped and added
        to the passage vector; zero at the start). With ``train_mode: query_only`` the tower stays frozen and
        the head trains on cached token states (dark examples' states cached beside the corpus's), so a
        ``query_only`` student can learn passage-side signal its teacher has (on SciFact, the BM25 term).
        With ``architecture: ernie`` it corrects the dense head's passage vectors (the ColBERT head reads
        the states as before).
    head_learning_rate
        Learning rate of the passage head (``passage_head`` only; its own optimizer group).
    dark_examples
        ADAM dark examples (:class:`DarkExamplesSection`; off by default). Every teacher member scores
        them like any candidate: the cross-encoder in the annotate step, BM25 with the corpus
        statistics, the dense members from their frozen vectors (encoded once and cached).
    self_paced
        ADAM self-paced distillation (:class:`SelfPacedSection`; off by default).
    save_steps
        Write a resumable checkpoint every N optimizer steps (``0`` = none): a killed distillation
        resumes from the last one when the same command is rerun, and ends with the same weights.
        Not part of the cache key (it does not change the trained model).
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
    architecture: str = "dense"
    colbert_dim: int = 128
    passage_head: str | None = None
    head_learning_rate: float = 1e-3
    dark_examples: DarkExamplesSection = field(default_factory=DarkExamplesSection)
    self_paced: SelfPacedSection = field(default_factory=SelfPacedSection)
    save_steps: int = 50

    def to_args(self, checkpoints: Path) -> Any:
        """The :class:`~densekd.training.config.DistillConfig` of the student's training (checkpoints there)."""
        from densekd.pipeline.checkpoints import section_training_args
        from densekd.training.config import DistillConfig

        return DistillConfig(group_size=self.group_size, loss=self.loss, train_mode=self.train_mode,
                             logging_steps=self.logging_steps, head_learning_rate=self.head_learning_rate
                             if self.passage_head is not None else None, **section_training_args(self, checkpoints))


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
    method
        ``distill`` (this pipeline). ``densekd run`` reads a file saying ``method: fidkd`` with
        :class:`~densekd.pipeline.fidkd_config.FidKDConfig` instead (:mod:`densekd.pipeline.methods`).
    """

    name: str = "densekd"
    output_dir: str = "runs/densekd"
    cache_dir: str = "cache"
    encode_batch_size: int = 32
    method: str = "distill"
    data: DataSection = field(default_factory=DataSection)
    mining: MiningSection = field(default_factory=MiningSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    student: StudentSection = field(default_factory=StudentSection)

    def __post_init__(self) -> None:
        from densekd.pipeline.validate import check_numbers

        check_numbers(self)  # every number finite and in range, errors naming the key
        if self.method != "distill":
            raise ValueError(f"method must be 'distill' for this schema, got {self.method!r} "
                             "(densekd.pipeline.methods picks the schema of each method)")
        if self.student.architecture not in ("dense", "ernie"):
            raise ValueError(f"student.architecture must be 'dense' or 'ernie', got {self.student.architecture!r}")
        check_passage_head(self.student)


def check_passage_head(s: StudentSection) -> None:
    """``student.passage_head``: a known kind (or null)."""
    from densekd.encoders.passage_head import PASSAGE_HEADS

    if s.passage_head is None:
        return
    if s.passage_head not in PASSAGE_HEADS:
        raise ValueError(f"student.passage_head must be one of {PASSAGE_HEADS} or null, got {s.passage_head!r}")
