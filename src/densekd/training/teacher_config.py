"""Training arguments of :class:`~densekd.training.teacher_trainer.CrossEncoderTrainer`.

:class:`TeacherConfig` is a :class:`~densekd.training.arguments.DensekdArguments` (a
``transformers.TrainingArguments`` with the defaults and checks every densekd trainer shares) with the
cross-encoder (teacher) fine-tuning settings added: loss, group size, truncation length and negative
sampling. It is a plain dataclass, so it reads from YAML/CLI through ``HfArgumentParser``.

Losses (over the raw logits ``s[B, G]`` of 1 positive + ``G - 1`` negatives per query)
--------------------------------------------------------------------------------------
* ``"listwise"``: softmax cross-entropy with the positive as the target class,
  ``-log softmax(s_i)[0]``, averaged over queries ("localized contrastive estimation", Gao, Dai &
  Callan 2021, who found it trains better BERT re-rankers than pointwise BCE): InfoNCE at temperature
  1 over the query's group, :func:`densekd.losses.contrastive.listwise_loss`.
* ``"pointwise"``: binary cross-entropy with logits, label 1 for the positive and 0 for every
  negative, averaged over candidates (the classic monoBERT / sentence-transformers BCE recipe),
  :func:`densekd.losses.pointwise.pointwise_loss`.

Defaults that differ from ``TrainingArguments`` and why
--------------------------------------------------------
* Those of :class:`~densekd.training.arguments.DensekdArguments` (``remove_unused_columns=False``,
  ``prediction_loss_only=True``, ``logging_steps=10``, ``report_to="none"``, safetensors only).
* ``learning_rate=2e-5``, ``warmup_steps=0.1`` (10 % of the steps, linear decay after): the usual
  recipe for BERT-size cross-encoders; 5e-5 with no warm-up often collapses a fresh head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from densekd.training.arguments import DensekdArguments, check_group_sampling
from densekd.training.dataset import NEGATIVE_SAMPLING_MODES

TEACHER_LOSSES: tuple[str, ...] = ("listwise", "pointwise")


@dataclass
class TeacherConfig(DensekdArguments):
    """Arguments for fine-tuning a cross-encoder teacher.

    All ``transformers.TrainingArguments`` fields apply (``per_device_train_batch_size`` counts
    *queries*: a step scores ``batch_size * group_size`` pairs); the extra ones are:

    Attributes
    ----------
    loss
        ``"listwise"`` (softmax CE, positive = class 0) or ``"pointwise"`` (BCE with logits, positive = 1,
        negatives = 0); see the module docstring.
    group_size
        Candidates per query ``G >= 2``: 1 positive + ``G - 1`` negatives. Groups with fewer negatives
        are padded by repeating, and repeats are masked out of the loss.
    max_length
        Truncation length in tokens of the joint ``query + passage`` input.
    negative_sampling
        ``"random"``: seeded per (seed, epoch, index), rotating through all of a group's negatives across
        epochs. ``"top"``: always the first ``G - 1`` negatives in file order (e.g. a ranked list).

    Examples
    --------
    >>> cfg = TeacherConfig(output_dir="/tmp/teacher", loss="pointwise", group_size=4)   # doctest: +SKIP
    """

    loss: str = field(
        default="listwise",
        metadata={"help": "Training loss: 'listwise' (softmax CE over 1 positive + G-1 negatives) or "
                          "'pointwise' (BCE with logits, positive=1, negatives=0).", "choices": list(TEACHER_LOSSES)})
    group_size: int = field(
        default=8, metadata={"help": "Candidates per query: 1 positive + group_size-1 negatives (>= 2)."})
    max_length: int = field(
        default=256, metadata={"help": "Truncation length in tokens of the joint query + passage input."})
    negative_sampling: str = field(
        default="random",
        metadata={"help": "How to choose the G-1 negatives: 'random' (seeded, rotating across epochs) "
                          "or 'top' (first G-1 in file order).", "choices": list(NEGATIVE_SAMPLING_MODES)})

    # ----- TrainingArguments defaults changed for this use (module docstring says why)
    learning_rate: float = field(default=2e-5, metadata={"help": "Peak learning rate (AdamW)."})
    warmup_steps: float = field(
        default=0.1, metadata={"help": "Linear warm-up: steps (>= 1) or a ratio of all steps (< 1)."})

    def validate(self) -> None:
        """Check the teacher fields (called by ``DensekdArguments.__post_init__``)."""
        if self.loss not in TEACHER_LOSSES:
            raise ValueError(f"loss must be one of {TEACHER_LOSSES}, got {self.loss!r}")
        check_group_sampling(self, min_group_size=2)
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2, got {self.max_length!r}")
