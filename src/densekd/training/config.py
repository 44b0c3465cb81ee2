"""Training arguments of :class:`~densekd.training.trainer.DistillTrainer`.

:class:`DistillConfig` is a :class:`~densekd.training.arguments.DensekdArguments` (a
``transformers.TrainingArguments`` with the defaults and checks every densekd trainer shares) with the
distillation settings added (group size, loss spec, negative sampling, training mode, in-batch
negatives). It is a plain dataclass, so it reads from YAML/CLI through ``HfArgumentParser``; the
``loss`` field also accepts a JSON string on the command line (``--loss '{"kl": {}}'``).

Defaults that differ from ``TrainingArguments`` and why
--------------------------------------------------------
* Those of :class:`~densekd.training.arguments.DensekdArguments` (``remove_unused_columns=False``,
  ``prediction_loss_only=True``, ``logging_steps=10``, ``report_to="none"``, safetensors only).
* ``dataloader_drop_last=True``: with in-batch negatives a short last batch has fewer negatives and a
  different loss scale; dropping it keeps every step (and every rank under DDP) the same size.

Retrieval metrics during training come from :class:`~densekd.training.callbacks.RetrievalEvalCallback`
(its ``metrics`` and ``every_n_steps``). The two fields that once named them here, ``eval_metrics``
and ``eval_retrieval_steps``, were never read; setting either is an error that says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from densekd.training.arguments import DensekdArguments, check_group_sampling
from densekd.training.dataset import NEGATIVE_SAMPLING_MODES

TRAIN_MODES: tuple[str, ...] = ("full", "query_only")
#: fields that were never read (retrieval evaluation is RetrievalEvalCallback's): refused with this advice
DEPRECATED_FIELDS: dict[str, str] = {
    "eval_metrics": "pass metrics=... to densekd.training.callbacks.RetrievalEvalCallback",
    "eval_retrieval_steps": "pass every_n_steps=... to densekd.training.callbacks.RetrievalEvalCallback",
}


def default_loss_spec() -> dict[str, dict[str, Any]]:
    """Listwise KL to the teacher plus 0.1 x InfoNCE (the :func:`densekd.losses.build_loss` format).

    Both use temperature 0.05 on the student because densekd encoders normalise by default, so student
    scores are cosines in ``[-1, 1]``: at temperature 1 the student softmax could never become as peaked
    as a cross-encoder teacher's. The KL's ``T**2`` factor is turned off: it compensates *softening*
    temperatures (``T > 1``) and would shrink this sharpening one's loss 400-fold.
    """
    return {
        "kl": {"weight": 1.0, "student_temperature": 0.05, "scale_by_t2": False},
        "contrastive": {"weight": 0.1, "temperature": 0.05},
    }


@dataclass
class DistillConfig(DensekdArguments):
    """Arguments for distilling a teacher into a dense retriever.

    All ``transformers.TrainingArguments`` fields apply; the extra ones are:

    Attributes
    ----------
    group_size
        Candidates per query ``G``: 1 positive + ``G - 1`` negatives. Groups with fewer negatives are
        padded by repeating (the repeats are masked out of every loss).
    loss
        Loss spec for :func:`densekd.losses.build_loss`: ``{name: {"weight": w, **options}}``. The
        default is KL (teacher scores needed) + 0.1 x contrastive, see :func:`default_loss_spec`.
    negative_sampling
        ``"random"``: seeded per (seed, epoch, index), rotating through all of a group's negatives across
        epochs. ``"top"``: always the first ``G - 1`` negatives in file order (e.g. a ranked list).
    train_mode
        ``"full"``: train both towers (or the shared one). ``"query_only"``: untie the towers, freeze the
        passage tower and the projection, and read passage vectors from a precomputed embedding table
        (no passage forward pass): cheap ablations over many seeds with a fixed index.
    use_in_batch_negatives
        Also score each query against every passage of the (DDP-global) batch, which losses such as
        ``contrastive`` use when present.
    head_learning_rate
        Learning rate of a passage head (``DenseEncoder.passage_head``; its own optimizer group, no weight
        decay). ``None`` = ``learning_rate``. A new head starts at zero and is small beside the tower: the
        tower's fine-tuning rate barely moves it in a few hundred steps.
    eval_metrics, eval_retrieval_steps
        Deprecated and never read: ``None`` is the only accepted value (anything else is an error
        pointing at :class:`~densekd.training.callbacks.RetrievalEvalCallback`).
    """

    group_size: int = field(
        default=8, metadata={"help": "Candidates per query: 1 positive + group_size-1 negatives."})
    # `dict | str | None` (as TrainingArguments' dict fields): HfArgumentParser then reads a JSON string
    loss: dict | str | None = field(
        default_factory=default_loss_spec,
        metadata={"help": "Loss spec for densekd.losses.build_loss as a dict (or JSON string): "
                          "{name: {weight: w, ...options}}. Default (also for None): KL + 0.1 contrastive."})
    negative_sampling: str = field(
        default="random",
        metadata={"help": "How to choose the G-1 negatives: 'random' (seeded, rotating across epochs) "
                          "or 'top' (first G-1 in file order).", "choices": list(NEGATIVE_SAMPLING_MODES)})
    train_mode: str = field(
        default="full",
        metadata={"help": "'full' trains both towers; 'query_only' freezes the passage tower and reads "
                          "passage vectors from a cached embedding table.", "choices": list(TRAIN_MODES)})
    use_in_batch_negatives: bool = field(
        default=True, metadata={"help": "Score queries against all passages of the (global) batch too."})
    head_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the student's passage head, if it has one (own optimizer "
                                        "group, no weight decay); None = learning_rate."})
    eval_metrics: list[str] | None = field(
        default=None, metadata={"help": "Deprecated, never read: use RetrievalEvalCallback(metrics=...)."})
    eval_retrieval_steps: int | None = field(
        default=None, metadata={"help": "Deprecated, never read: use RetrievalEvalCallback(every_n_steps=...)."})

    # ----- TrainingArguments default changed for this use (module docstring says why)
    dataloader_drop_last: bool = field(
        default=True, metadata={"help": "Drop the short last batch (constant in-batch negative count)."})

    # JSON strings given for these fields on the command line are parsed into dicts
    _VALID_DICT_FIELDS = [*TrainingArguments._VALID_DICT_FIELDS, "loss"]

    def validate(self) -> None:
        """Check the distillation fields (called by ``DensekdArguments.__post_init__``)."""
        for name, advice in DEPRECATED_FIELDS.items():
            if getattr(self, name) is not None:
                raise ValueError(f"{name} is deprecated and was never read by DistillTrainer: {advice}")
        check_group_sampling(self, min_group_size=1)
        if self.group_size == 1 and not self.use_in_batch_negatives:
            raise ValueError("group_size=1 has no negatives: set use_in_batch_negatives=True or group_size >= 2")
        if self.train_mode not in TRAIN_MODES:
            raise ValueError(f"train_mode must be one of {TRAIN_MODES}, got {self.train_mode!r}")
        if self.head_learning_rate is not None and not self.head_learning_rate > 0:
            raise ValueError(f"head_learning_rate must be > 0 or None, got {self.head_learning_rate!r}")
        self._validate_loss()

    def _validate_loss(self) -> None:
        from densekd.losses import build_loss  # torch-heavy import only when a config is built

        if self.loss is None:
            self.loss = default_loss_spec()
        if not isinstance(self.loss, dict):
            raise ValueError(f"loss must be a dict spec (or a JSON object string), got {self.loss!r}")
        try:
            build_loss(self.loss)
        except ValueError as err:
            raise ValueError(f"invalid loss spec {self.loss!r}: {err}") from None
