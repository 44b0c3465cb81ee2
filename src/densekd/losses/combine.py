"""Weighted sums of losses, and building them from config dictionaries.

Units: the components are whatever the wrapped losses return (scalars of raw-score losses); the sum is
what the optimiser sees. A config such as::

    loss:
      kl: {weight: 1.0, student_temperature: 1.0}
      contrastive: {weight: 0.1, temperature: 0.05}
      hard_ce: {type: contrastive, weight: 0.1, use_in_batch: false}

becomes ``build_loss(config["loss"])``; ``type`` defaults to the entry's name, which lets one loss
class appear twice under different names.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from densekd.losses.contrastive import InfoNCE
from densekd.losses.ernie import ErnieSearchLoss
from densekd.losses.kl import KLDistillation
from densekd.losses.listwise import ListNet, RankNet
from densekd.losses.margin_mse import MarginMSE
from densekd.losses.margin_ranking import MarginRanking
from densekd.losses.mse import ScoreMSE
from densekd.losses.batch import ScoreBatch

#: Config name -> loss class for :func:`build_loss`; names match each single-component loss's component
#: name. Multi-head losses (``score_heads``, e.g. ``ernie``) report several components, ``ernie/<part>``.
LOSS_REGISTRY: dict[str, type[nn.Module]] = {
    "contrastive": InfoNCE,
    "kl": KLDistillation,
    "margin_mse": MarginMSE,
    "margin_ranking": MarginRanking,
    "mse": ScoreMSE,
    "listnet": ListNet,
    "ranknet": RankNet,
    "ernie": ErnieSearchLoss,
}

TOTAL_KEY = "loss"


class WeightedSum(nn.Module):
    """Sum of weighted losses that reports every weighted component and the total.

    Parameters
    ----------
    losses
        ``name -> (loss module, weight)``. Each name is the logging key of that loss: a loss returning
        a single component is reported as ``name``; one returning several as ``"name/component"``.
        Names must be non-empty, contain no ``"."`` and not be ``"loss"``; weights finite and
        ``>= 0``.

    ``forward(scores)`` returns every component already multiplied by its weight, plus ``"loss"``:
    their sum, the value to backpropagate (a trainer that sums components itself must skip
    ``"loss"``).

    Examples
    --------
    >>> loss = WeightedSum({"kl": (KLDistillation(), 1.0), "ce": (InfoNCE(temperature=1.0), 0.5)})
    >>> out = loss(ScoreBatch(student=torch.zeros(1, 2), teacher=torch.zeros(1, 2)))
    >>> sorted(out), round(out["loss"].item(), 4)
    (['ce', 'kl', 'loss'], 0.3466)
    """

    def __init__(self, losses: Mapping[str, tuple[nn.Module, float]]) -> None:
        super().__init__()
        if not losses:
            raise ValueError("WeightedSum needs at least one loss")
        modules: dict[str, nn.Module] = {}
        self.weights: dict[str, float] = {}
        for name, entry in losses.items():
            if not isinstance(name, str) or not name or "." in name or name == TOTAL_KEY:
                raise ValueError(
                    f"bad loss name {name!r}: use a non-empty name without '.', not {TOTAL_KEY!r}"
                )
            if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], nn.Module)):
                raise ValueError(f"loss {name!r}: expected (nn.Module, weight), got {entry!r}")
            module, weight = entry
            weight = float(weight)
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"loss {name!r}: weight must be finite and >= 0, got {weight}")
            modules[name] = module
            self.weights[name] = weight
        try:
            self.losses = nn.ModuleDict(modules)
        except KeyError as err:  # e.g. a name that shadows an nn.Module attribute ("training")
            raise ValueError(f"bad loss name: {err}") from None

    @property
    def needs_labels(self) -> bool:
        """Some term with a weight above 0 takes candidate 0 as a labelled positive (its ``needs_labels``):
        then the loss cannot learn from label-free groups (:class:`~densekd.data.types.TrainGroup`)."""
        return any(getattr(loss, "needs_labels", False) and self.weights[name] > 0
                   for name, loss in self.losses.items())

    def forward(self, scores: ScoreBatch) -> dict[str, Tensor]:
        """Weighted components (scalars) and their total under ``"loss"``.

        A term of weight 0 is off: it is not computed (nor logged), so a label-needing term switched off
        by its weight cannot refuse the label-free groups that :attr:`needs_labels` lets through.
        """
        out: dict[str, Tensor] = {}
        live = {name: loss for name, loss in self.losses.items() if self.weights[name] > 0}
        if not live:
            raise ValueError(f"every loss term has weight 0: nothing to train ({sorted(self.weights)})")
        for name, loss in live.items():
            components = loss(scores)
            for component, value in components.items():
                key = name if len(components) == 1 else f"{name}/{component}"
                if key in out or key == TOTAL_KEY:
                    raise ValueError(f"duplicate loss component name {key!r}")
                out[key] = value * self.weights[name]
        out[TOTAL_KEY] = torch.stack(list(out.values())).sum()
        return out

    def extra_repr(self) -> str:
        return f"weights={self.weights}"


def loss_kinds(spec: Mapping[str, Mapping[str, Any] | None], live_only: bool = False) -> set[str]:
    """The loss types a config spec names: each entry's ``type``, else its key (as :func:`build_loss` reads
    it); ``live_only``: only the terms :class:`WeightedSum` computes (weight > 0).

    Examples
    --------
    >>> sorted(loss_kinds({"kl": {"weight": 0}, "hard_ce": {"type": "contrastive"}}))
    ['contrastive', 'kl']
    >>> loss_kinds({"kl": {"weight": 0}, "hard_ce": {"type": "contrastive"}}, live_only=True)
    {'contrastive'}
    """
    return {(options or {}).get("type", name) for name, options in spec.items()
            if not live_only or float((options or {}).get("weight", 1.0)) > 0}


def build_loss(spec: Mapping[str, Mapping[str, Any] | None]) -> WeightedSum:
    """Build a :class:`WeightedSum` from a config mapping.

    Parameters
    ----------
    spec
        ``name -> options``. Options: ``weight`` (default 1.0), ``type`` (a :data:`LOSS_REGISTRY`
        name; default ``name``) and the loss class's constructor arguments. ``None`` options (a bare
        ``kl:`` in YAML) mean all defaults.

    Returns
    -------
    WeightedSum

    Raises
    ------
    ValueError
        Empty spec, unknown loss type, unknown option (the message names the key) or bad weight.

    Examples
    --------
    >>> build_loss({"kl": {"weight": 1.0, "student_temperature": 2.0}, "contrastive": {"weight": 0.1}})
    WeightedSum(
      weights={'kl': 1.0, 'contrastive': 0.1}
      (losses): ModuleDict(
        (kl): KLDistillation(student_temperature=2.0, teacher_temperature=1.0, scale_by_t2=True, use_in_batch=False)
        (contrastive): InfoNCE(temperature=0.05, use_in_batch=True)
      )
    )
    """
    if not spec:
        raise ValueError(f"empty loss spec; name at least one of {sorted(LOSS_REGISTRY)}")
    parts: dict[str, tuple[nn.Module, float]] = {}
    for name, options in spec.items():
        if options is not None and not isinstance(options, Mapping):
            raise ValueError(f"loss {name!r}: options must be a mapping, got {options!r}")
        options = dict(options or {})
        kind = options.pop("type", name)
        cls = LOSS_REGISTRY.get(kind)
        if cls is None:
            raise ValueError(f"unknown loss {kind!r} (entry {name!r}); known: {sorted(LOSS_REGISTRY)}")
        weight = options.pop("weight", 1.0)
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"loss {name!r}: 'weight' must be a number, got {weight!r}") from None
        # named parameters only: a class without __init__ shows nn.Module's (*args, **kwargs)
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        allowed = [p.name for p in inspect.signature(cls).parameters.values() if p.kind in named]
        unknown = [key for key in options if key not in allowed]
        if unknown:
            raise ValueError(
                f"loss {name!r}: unknown option {unknown[0]!r} for {cls.__name__}; "
                f"allowed: {['weight', 'type', *allowed]}"
            )
        parts[name] = (cls(**options), weight)
    return WeightedSum(parts)
