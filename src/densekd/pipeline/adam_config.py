"""ADAM's sections of the ``densekd run`` configuration (``student.dark_examples``, ``student.self_paced``).

Each mirrors a library config (:class:`~densekd.mining.dark_examples.DarkExampleConfig`,
:class:`~densekd.training.self_paced.SelfPacedConfig`) plus the switches that steer the pipeline; a bad
value is a config error when the file is read, not after teacher training. Re-exported by
:mod:`densekd.pipeline.config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class DarkExamplesSection:
    """ADAM dark examples added to every training group and scored by the teacher (default off).

    The fields other than ``enabled`` and ``in_every_group`` are those of
    :class:`densekd.mining.dark_examples.DarkExampleConfig` (see it for the full documentation); the
    defaults are the same.

    Attributes
    ----------
    enabled
        Build dark examples (``false`` = plain mined groups).
    in_every_group
        ``true``: every training item lists all its dark examples *next to* its ``group_size - 1``
        sampled hard negatives (the ADAM candidate list {positive, hard negatives, dark examples});
        ``false``: dark examples join the negative pool and are sampled like mined negatives.
    n_mixup, n_masked
        Mix-up (hard negative + positive spans) and masked-positive examples per query.
    mix_fraction, mix_mode, span_length
        Share of a mix-up's word pieces taken from the positive, ``"replace"`` or ``"insert"``, and the
        length of the moved spans.
    mask_fraction, mask_mode
        Share of a positive's word pieces masked (``"mask"``) or deleted (``"delete"``).
    max_tokens
        Passages are cut to this many word pieces before editing (``null`` = no cut).
    seed
        Seed of the random edits (per query and example, independent of order).
    """

    enabled: bool = False
    in_every_group: bool = True
    n_mixup: int = 2
    n_masked: int = 2
    mix_fraction: float = 0.3
    mix_mode: str = "replace"
    span_length: int = 8
    mask_fraction: float = 0.3
    mask_mode: str = "mask"
    max_tokens: int | None = 200
    seed: int = 0

    def __post_init__(self) -> None:
        if self.enabled:
            self.to_config()  # a bad value is a config error now, not after teacher training

    def to_config(self) -> Any:
        """The :class:`~densekd.mining.dark_examples.DarkExampleConfig` of these settings."""
        from densekd.mining.dark_examples import DarkExampleConfig

        return DarkExampleConfig(**{k: v for k, v in self.__dict__.items() if k not in SECTION_ONLY})

    @property
    def extra_per_group(self) -> int:
        """Dark examples appended to every training item (``TrainGroupDataset(extra_per_group=...)``)."""
        return self.n_mixup + self.n_masked if self.enabled and self.in_every_group else 0


#: DarkExamplesSection fields that steer the pipeline, not the generator
SECTION_ONLY = ("enabled", "in_every_group")


@dataclass
class SelfPacedSection:
    """ADAM self-paced distillation: train on the teacher's most confident instances first (default off).

    The fields other than ``enabled`` are those of :class:`densekd.training.self_paced.SelfPacedConfig`
    (see it for the full documentation); the defaults are the same. Epochs are the schedule's unit, so
    use ``student.epochs > 1`` (in ``select`` mode an epoch keeps its length: kept instances repeat).

    Attributes
    ----------
    enabled
        Use self-paced selection (``false`` = every instance, every epoch).
    measure
        Instance quality: ``"pos_prob"`` (teacher probability of the positive) or ``"margin"``.
    schedule, start_fraction, end_fraction, warm_epochs
        Kept share per epoch: ``"linear"`` from ``start_fraction`` to ``end_fraction`` over
        ``warm_epochs``, ``"step"`` (switch at ``warm_epochs``) or ``"none"`` (``end_fraction``).
    mode
        ``"select"`` (draw only kept instances) or ``"weight"`` (0/1 loss weights).
    temperature
        Softmax temperature of ``"pos_prob"``.
    """

    enabled: bool = False
    measure: str = "pos_prob"
    schedule: str = "linear"
    start_fraction: float = 0.5
    end_fraction: float = 1.0
    warm_epochs: int = 2
    mode: str = "select"
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.enabled:
            self.to_config()

    def to_config(self) -> Any:
        """The :class:`~densekd.training.self_paced.SelfPacedConfig` of these settings."""
        from densekd.training.self_paced import SelfPacedConfig

        return SelfPacedConfig(**{k: v for k, v in self.__dict__.items() if k != "enabled"})
