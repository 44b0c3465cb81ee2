"""Configuration of the reader -> retriever loop (``method: fidkd``; :mod:`densekd.pipeline.fidkd`).

One YAML file, read by :func:`densekd.cli.config.load_config` like :class:`~densekd.pipeline.config.PipelineConfig`
(unknown keys and wrong types are errors naming the file and key; ``--set section.key=value``
overrides). ``densekd run`` picks this schema when the file (or a ``--set``) says ``method: fidkd``
(:mod:`densekd.pipeline.methods`).

No passage labels: the training questions are every query *with answers* outside the evaluation
split, and only their ``answers`` supervise anything. ``qrels/<eval_split>.tsv`` is read for its
question ids only (answer recall needs no passage labels either); no other qrels file is opened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIDKD_METHOD = "fidkd"


@dataclass
class QADataSection:
    """The QA set (BEIR layout with ``answers`` in ``queries.jsonl``).

    Attributes
    ----------
    root
        Folder with ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<eval_split>.tsv``.
    eval_split
        Split whose question ids are evaluated (every reported metric is on it).
    max_train_queries
        Train on a seeded random sample of N training questions (``null`` = all). Random rather than
        the first N: SQuAD questions come grouped by article, and the first N cover a few articles only.
    max_eval_queries
        Evaluate on a seeded random sample of N evaluation questions (``null`` = all).
    seed
        Seed of both samples.
    """

    root: str = "../shared/data/squad-open"
    eval_split: str = "dev"
    max_train_queries: int | None = None
    max_eval_queries: int | None = None
    seed: int = 0


#: Where the next iteration's training passages come from (``retrieval.candidates``)
CANDIDATES = ("dense", "hybrid")


@dataclass
class RetrievalSection:
    """What each retriever (BM25, then each iteration's dense model) hands on.

    Attributes
    ----------
    k
        Passages per question (>= 2): the reader reads the top ``k``, the teacher scores those ``k`` and the
        retriever's loss is over the same ``k`` (group size).
    eval_depth
        Ranking depth on the evaluation questions (at least 20 for ``answer_recall@20``).
    factory
        FAISS index factory of the dense retrievers (``"Flat"`` = exact search).
    candidates
        The passages the next iteration's readers read and score: ``"dense"`` = the new retriever's top
        ``k`` (the paper's loop); ``"hybrid"`` = BM25's and the new retriever's top ``k`` fused by
        reciprocal rank, top ``k`` kept (lexical and semantic near-misses together; on squad-open
        after iteration 1 an answer is in the top 5 for 0.971 of the training questions, vs 0.946
        BM25, 0.921 dense). Evaluation always ranks with the retriever alone.
    """

    k: int = 10
    eval_depth: int = 20
    factory: str = "Flat"
    candidates: str = "dense"


@dataclass
class ReaderSection:
    """The reader trained at each iteration (:mod:`densekd.pipeline.readers`).

    Attributes
    ----------
    kind
        ``"fid"``: generative Fusion-in-Decoder reader (:mod:`densekd.encoders.reader`), scored by its
        cross-attention; ``"span"``: extractive pointer reader (:mod:`densekd.encoders.span_reader`),
        scored by the pointer mass each passage receives, trainable on CPU from MiniLM.
    cross_fit
        Train two readers on two folds of the training questions (split by their BM25 top-1 passage's
        title) and let each score the other fold, so no label comes from a question its reader saw.
        Doubles the reader trainings, each on half the questions.
    model
        Start checkpoint: any seq2seq checkpoint or an encoder-only one warm-started as BERT2BERT
        (``null`` = bundled all-MiniLM-L6-v2).
    passage_max_length, answer_max_length, decoder_layers, freeze_encoder
        :class:`~densekd.encoders.reader.FiDReaderConfig` fields (``n_passages`` is ``retrieval.k``);
        the span reader reads ``passage_max_length`` tokens per question + passage pair.
    frozen_layers, max_answer_tokens, loss_mode, select_weight
        Span reader only (:class:`~densekd.encoders.span_reader.SpanReaderConfig`): lower layers kept
        frozen (states cached once), longest answer span, ``marginal`` or ``hard_em`` pointer loss,
        weight of the passage-selection loss (0 = pointer only).
    continue_training
        Iteration ``n > 1`` starts from iteration ``n - 1``'s reader (``false``: from ``model`` again,
        as the paper retrains its reader; continuing is far cheaper on CPU).
    epochs, max_steps, batch_size, gradient_accumulation_steps, learning_rate, warmup_ratio, seed
        Training settings (``batch_size`` counts questions, each reading ``k`` passages).
    save_steps
        Resumable checkpoint every N optimizer steps (``0`` = none); not part of the cache key.
    eval_max_queries
        Reader metrics (EM/F1, ``top_attention_has_answer``) on a seeded sample of N evaluation
        questions (``null`` = all); answer recall always covers all of them. Reading costs a few CPU
        seconds per question, retrieval milliseconds.
    eval_batch_size, num_beams
        Answer generation on the evaluation questions.
    """

    kind: str = "fid"
    cross_fit: bool = False
    model: str | None = None
    passage_max_length: int = 192
    answer_max_length: int = 24
    frozen_layers: int = 4
    max_answer_tokens: int = 16
    loss_mode: str = "marginal"
    select_weight: float = 0.0
    decoder_layers: int | None = 2
    freeze_encoder: bool = False
    continue_training: bool = True
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 2
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.1
    seed: int = 42
    save_steps: int = 50
    eval_max_queries: int | None = None
    eval_batch_size: int = 8
    num_beams: int = 1

    def to_args(self, n_passages: int, checkpoints: Path) -> Any:
        """The :class:`~densekd.training.reader_config.ReaderConfig` of a reader reading ``n_passages``
        (``retrieval.k``) per question (checkpoints in ``checkpoints``)."""
        from densekd.pipeline.checkpoints import section_training_args
        from densekd.training.reader_config import ReaderConfig

        return ReaderConfig(
            model_name_or_path=self.model, n_passages=n_passages, passage_max_length=self.passage_max_length,
            answer_max_length=self.answer_max_length, decoder_layers=self.decoder_layers,
            freeze_encoder=self.freeze_encoder, gradient_accumulation_steps=self.gradient_accumulation_steps,
            **section_training_args(self, checkpoints))

    def to_span_args(self, n_passages: int, checkpoints: Path) -> Any:
        """The :class:`~densekd.training.span_reader_config.SpanReaderArgs` of a span reader reading ``n_passages``."""
        from densekd.pipeline.checkpoints import section_training_args
        from densekd.training.span_reader_config import SpanReaderArgs

        return SpanReaderArgs(
            model_name_or_path=self.model, n_passages=n_passages, max_length=self.passage_max_length,
            frozen_layers=self.frozen_layers, max_answer_tokens=self.max_answer_tokens, loss_mode=self.loss_mode,
            select_weight=self.select_weight,
            gradient_accumulation_steps=self.gradient_accumulation_steps, **section_training_args(self, checkpoints))


@dataclass
class ReaderTeacherSection:
    """How the trained reader scores passages (:class:`densekd.teachers.fid.FiDTeacher`).

    Attributes
    ----------
    scoring
        Span reader: ``mass`` (logsumexp of a passage's start logits: softmax over passages = the
        pointer's mass per passage), ``span`` (best span's start + end logit) or ``select`` (the
        passage-selection logit; needs ``reader.select_weight > 0``). FiD reader: a
        :data:`densekd.teachers.fid.PRESETS` name: ``fid-kd`` (the paper: pre-softmax attention of
        the first decoded token, mean over layers, heads and tokens), ``attention-all``,
        ``attention-max``, ``attention-post``, ``adist`` or ``pdist``. Scorings that condition on the
        answer use the gold answer for training questions and the reader's own answer on the
        evaluation questions.
    normalize
        How the raw scores become the retriever's teacher logits: ``"none"`` (as they are, the paper)
        or ``"zscore"`` (per question, over its ``k`` passages: mean 0, std 1). Raw pre-softmax
        attention of a small, briefly trained reader can lie within a few hundredths of each other,
        so ``softmax(raw)`` is nearly uniform; z-scores make the target's sharpness a setting
        (the loss's ``teacher_temperature``) instead of an accident of the reader's scale. Applied
        when the retriever trains: ``scores/groups.jsonl`` keeps the raw scores.
    """

    scoring: str = "fid-kd"
    normalize: str = "none"


def default_retriever_loss() -> dict[str, Any]:
    """KL(softmax(reader scores) || softmax(retriever cosines / 0.05)); no ``T**2`` factor (see ``DistillConfig``)."""
    return {"kl": {"weight": 1.0, "student_temperature": 0.05, "scale_by_t2": False}}


@dataclass
class RetrieverSection:
    """The dense retriever distilled from the reader at each iteration.

    Attributes
    ----------
    model
        Start checkpoint (``null`` = bundled all-MiniLM-L6-v2).
    train_mode
        ``"query_only"`` (the passage tower stays the start model's, its corpus vectors are encoded
        once and reused by every iteration) or ``"full"`` (both towers train; the corpus is re-encoded
        after every iteration).
    continue_training
        Iteration ``n > 1`` starts from iteration ``n - 1``'s retriever (``false``: from ``model``).
    loss
        :func:`densekd.losses.build_loss` spec over the ``k`` passages, e.g. ``{kl: {...}}`` (the
        paper's choice), ``{mse: {}}`` or ``{margin_ranking: {margin: 0.1}}``. The reader's groups
        are label-free (no passage is a labelled positive), so a label-based term (``contrastive``) is
        refused.
    group_size
        Candidates per question in the retriever's loss: the reader's favourite first, then the other
        scored passages in retrieval order (``null`` = all ``retrieval.k``). ``2`` is DPR's recipe (one
        positive, one hard negative, in-batch negatives): in ``full`` mode the passage forward and
        backward pass dominates the cost, which grows linearly with it.
    batch_size, epochs, max_steps, learning_rate, warmup_ratio, seed, logging_steps
        Training settings (``batch_size`` = questions per step).
    query_max_length, passage_max_length
        Truncation lengths of the retriever.
    save_steps
        Resumable checkpoint every N optimizer steps (``0`` = none); not part of the cache key.
    """

    model: str | None = None
    train_mode: str = "query_only"
    continue_training: bool = True
    loss: dict[str, Any] = field(default_factory=default_retriever_loss)
    group_size: int | None = None
    batch_size: int = 16
    epochs: float = 2.0
    max_steps: int = -1
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    seed: int = 42
    logging_steps: int = 5
    query_max_length: int = 64
    passage_max_length: int = 192
    save_steps: int = 50

    def to_args(self, group_size: int, n_groups: int, checkpoints: Path) -> Any:
        """The :class:`~densekd.training.config.DistillConfig` of distilling ``n_groups`` groups of
        ``group_size`` (``retrieval.k``) scored passages (checkpoints in ``checkpoints``).

        Every group is one question's ``k`` passages, all scored: ``negative_sampling="top"`` keeps them
        all, in stored order; the batch never exceeds ``n_groups`` (``drop_last`` would leave no step).
        """
        from densekd.pipeline.checkpoints import section_training_args
        from densekd.training.config import DistillConfig

        return DistillConfig(group_size=group_size, loss=self.loss, negative_sampling="top",
                             train_mode=self.train_mode, logging_steps=self.logging_steps,
                             **section_training_args(self, checkpoints,
                                                     per_device_train_batch_size=min(self.batch_size, n_groups)))


@dataclass
class FidKDConfig:
    """A whole reader -> retriever run: BM25 -> (reader -> scores -> retriever -> retrieve) x iterations.

    Attributes
    ----------
    method
        Must be ``fidkd`` (selects this schema in ``densekd run``).
    name
        Run name (report title).
    output_dir
        Where ``iter_<n>/`` artefacts, ``metrics.json`` and ``report.md`` go.
    cache_dir
        Shared cache of corpus embeddings (keyed by model, data and length).
    encode_batch_size
        Passages per forward pass when encoding the corpus.
    iterations
        Reader -> retriever rounds after BM25.
    """

    method: str = FIDKD_METHOD
    name: str = "fidkd"
    output_dir: str = "runs/fidkd"
    cache_dir: str = "cache"
    encode_batch_size: int = 32
    iterations: int = 2
    data: QADataSection = field(default_factory=QADataSection)
    retrieval: RetrievalSection = field(default_factory=RetrievalSection)
    reader: ReaderSection = field(default_factory=ReaderSection)
    teacher: ReaderTeacherSection = field(default_factory=ReaderTeacherSection)
    retriever: RetrieverSection = field(default_factory=RetrieverSection)

    def __post_init__(self) -> None:
        # imports here: building a config for --help must not pull torch in
        from densekd.encoders.span_reader import SCORINGS as SPAN_SCORINGS
        from densekd.losses import build_loss
        from densekd.losses.span import SPAN_MODES
        from densekd.pipeline.validate import check_numbers
        from densekd.teachers.fid import PRESETS
        from densekd.training.config import TRAIN_MODES

        if self.method != FIDKD_METHOD:
            raise ValueError(f"method must be {FIDKD_METHOD!r} for this schema, got {self.method!r}")
        check_numbers(self)  # every number finite and in range, errors naming the key
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        r = self.retrieval
        # k = 1 would leave the reader nothing to choose between: its scores over one passage are a
        # distribution of one, and the retriever's KL over it is 0 (a "distilled" start model)
        if r.k < 2 or r.eval_depth < max(20, r.k):
            raise ValueError(f"retrieval.k must be >= 2 and retrieval.eval_depth >= max(20, k) "
                             f"(answer_recall@20), got k={r.k}, eval_depth={r.eval_depth}")
        if r.candidates not in CANDIDATES:
            raise ValueError(f"retrieval.candidates must be one of {CANDIDATES}, got {r.candidates!r}")
        if self.teacher.normalize not in ("none", "zscore"):
            raise ValueError(f"teacher.normalize must be 'none' or 'zscore', got {self.teacher.normalize!r}")
        if self.retriever.group_size is not None and not 2 <= self.retriever.group_size <= r.k:
            raise ValueError(f"retriever.group_size must be null or in [2, retrieval.k={r.k}], "
                             f"got {self.retriever.group_size}")
        if self.reader.kind not in ("fid", "span"):
            raise ValueError(f"reader.kind must be 'fid' or 'span', got {self.reader.kind!r}")
        scorings = sorted(PRESETS) if self.reader.kind == "fid" else list(SPAN_SCORINGS)
        if self.teacher.scoring not in scorings:
            raise ValueError(f"teacher.scoring must be one of {scorings} for reader.kind {self.reader.kind!r}, "
                             f"got {self.teacher.scoring!r}")
        if self.teacher.scoring == "select" and not self.reader.select_weight:
            raise ValueError("teacher.scoring 'select' needs reader.select_weight > 0 (an untrained selection head)")
        if self.reader.loss_mode not in SPAN_MODES:
            raise ValueError(f"reader.loss_mode must be one of {SPAN_MODES}, got {self.reader.loss_mode!r}")
        if self.retriever.train_mode not in TRAIN_MODES:
            raise ValueError(f"retriever.train_mode must be one of {TRAIN_MODES}, got {self.retriever.train_mode!r}")
        for name, value in (("data.max_train_queries", self.data.max_train_queries),
                            ("data.max_eval_queries", self.data.max_eval_queries),
                            ("reader.eval_max_queries", self.reader.eval_max_queries)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or null, got {value}")
        try:
            loss = build_loss(self.retriever.loss)
        except ValueError as err:
            raise ValueError(f"retriever.loss: {err}") from None
        if loss.needs_labels:  # the reader's groups are label-free: no candidate is a labelled positive
            raise ValueError(f"retriever.loss: {self.retriever.loss} has a label-based term (contrastive); the "
                             "reader's scores carry no passage label: use kl, mse, margin_mse, margin_ranking, "
                             "listnet or ranknet")
