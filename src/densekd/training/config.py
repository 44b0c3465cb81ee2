"""Training arguments of :class:`~densekd.training.trainer.DistillTrainer`.

:class:`DistillConfig` is a ``transformers.TrainingArguments`` with the distillation settings added
(group size, loss spec, negative sampling, training mode, in-batch negatives, dev-evaluation
settings). It is a plain dataclass, so it reads from YAML/CLI through ``HfArgumentParser``; the
``loss`` field also accepts a JSON string on the command line (``--loss '{"kl": {}}'``).

Defaults that differ from ``TrainingArguments`` and why
--------------------------------------------------------
* ``remove_unused_columns=False``: items are dicts of texts and ids, not model-forward kwargs; the HF
  column filter would drop them before the collator sees them.
* ``dataloader_drop_last=True``: with in-batch negatives a short last batch has fewer negatives and a
  different loss scale; dropping it keeps every step (and every rank under DDP) the same size.
* ``prediction_loss_only=True``: ``Trainer.evaluate`` on training groups reports ``eval_loss`` only;
  retrieval metrics come from :class:`~densekd.training.callbacks.RetrievalEvalCallback`.
* ``logging_steps=10``, ``report_to="none"``: short runs log often; nothing is sent anywhere unless asked.
* Weights are always safetensors: transformers 5 removed ``save_safetensors`` and
  :meth:`DenseEncoder.save_pretrained <densekd.encoders.dense.DenseEncoder.save_pretrained>` writes
  safetensors only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments

NEGATIVE_SAMPLING_MODES: tuple[str, ...] = ("random", "top")
TRAIN_MODES: tuple[str, ...] = ("full", "query_only")


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
class DistillConfig(TrainingArguments):
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
    eval_metrics
        Metrics for :class:`~densekd.training.callbacks.RetrievalEvalCallback` (``densekd.eval`` names).
    eval_retrieval_steps
        Run the retrieval evaluation every this many optimizer steps; ``0`` = never.
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
    eval_metrics: list[str] = field(
        default_factory=lambda: ["ndcg@10", "recall@100"],
        metadata={"help": "Metrics of the retrieval evaluation during training (densekd.eval names)."})
    eval_retrieval_steps: int = field(
        default=0, metadata={"help": "Evaluate retrieval every N optimizer steps (0 = never)."})

    # ----- TrainingArguments defaults changed for this use (module docstring says why)
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: items are texts/ids, not forward kwargs."})
    dataloader_drop_last: bool = field(
        default=True, metadata={"help": "Drop the short last batch (constant in-batch negative count)."})
    prediction_loss_only: bool = field(
        default=True, metadata={"help": "Trainer.evaluate reports the loss only."})
    logging_steps: float = field(default=10, metadata={"help": "Log every X optimizer steps."})
    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "Integrations to report to ('none' = none)."})

    # JSON strings given for these fields on the command line are parsed into dicts
    _VALID_DICT_FIELDS = [*TrainingArguments._VALID_DICT_FIELDS, "loss"]

    def __post_init__(self) -> None:
        super().__post_init__()
        # pinned host memory only helps copies to an accelerator; on CPU torch warns on every epoch
        self.dataloader_pin_memory = self.dataloader_pin_memory and torch.cuda.is_available()
        self._validate()

    def _validate(self) -> None:
        if not isinstance(self.group_size, int) or isinstance(self.group_size, bool) or self.group_size < 1:
            raise ValueError(f"group_size must be an integer >= 1 (1 positive + negatives), got {self.group_size!r}")
        if self.group_size == 1 and not self.use_in_batch_negatives:
            raise ValueError("group_size=1 has no negatives: set use_in_batch_negatives=True or group_size >= 2")
        if self.negative_sampling not in NEGATIVE_SAMPLING_MODES:
            raise ValueError(f"negative_sampling must be one of {NEGATIVE_SAMPLING_MODES}, "
                             f"got {self.negative_sampling!r}")
        if self.train_mode not in TRAIN_MODES:
            raise ValueError(f"train_mode must be one of {TRAIN_MODES}, got {self.train_mode!r}")
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns must be False: DistillTrainer items are texts and ids, "
                             "which the HF column filter would drop")
        if self.dataloader_persistent_workers and self.dataloader_num_workers > 0:
            # persistent workers keep the dataset copy of epoch 0, so set_epoch would never reach them
            raise ValueError("dataloader_persistent_workers=True would freeze negative sampling at epoch 0 "
                             "(workers keep their dataset copy); leave it False")
        if not isinstance(self.eval_retrieval_steps, int) or self.eval_retrieval_steps < 0:
            raise ValueError(f"eval_retrieval_steps must be an integer >= 0, got {self.eval_retrieval_steps!r}")
        self._validate_loss()
        self._validate_eval_metrics()

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

    def _validate_eval_metrics(self) -> None:
        from densekd.eval.metrics import check_metrics

        self.eval_metrics = list(self.eval_metrics)
        try:
            check_metrics(self.eval_metrics)
        except ValueError as err:
            raise ValueError(f"invalid eval_metrics {self.eval_metrics!r}: {err}") from None
