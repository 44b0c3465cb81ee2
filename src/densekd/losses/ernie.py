"""ERNIE-Search loss: two contrastive heads, self on-the-fly distillation and cascade distillation.

Lu et al., 2022, "ERNIE-Search: Bridging Cross-Encoder with Dual-Encoder via Self On-the-fly
Distillation for Dense Passage Retrieval". One shared encoder yields two students in one forward pass
(:class:`densekd.encoders.ernie.ErnieSearchModel`): the dual-encoder (dense) head and a ColBERT
late-interaction head. The late-interaction head sees token-level matches the pooled vector loses, so
it is the closer-to-cross-encoder teacher of the dense head, trained in the same step ("on the fly");
an offline cross-encoder in turn teaches the late-interaction head ("cascade").

Data contract
-------------
Input: a :class:`~densekd.losses.batch.ScoreBatch` whose own scores are the **dense** head
(``student[B, G]`` pooled-vector dot products, optional ``in_batch``) and whose ``heads["colbert"]``
scores the same ``[B, G]`` candidates by MaxSim (its own optional ``in_batch``). ``teacher[B, G]`` holds
raw cross-encoder logits (the offline ``teacher_scores`` column) and is needed only when a
cross-encoder term has a weight above 0. All inputs are raw scores.

Output components, each **already multiplied by its weight** (so that their sum is the ERNIE-Search
loss; a term with weight 0 is neither computed nor reported)::

    contrastive_dense    InfoNCE of the dense head                       (temperature Td)
    contrastive_colbert  InfoNCE of the late-interaction head            (temperature Tc)
    kl_colbert_to_dense  KL(softmax(colbert/Tc) || softmax(dense/Td))    self on-the-fly distillation
    kl_ce_to_colbert     KL(softmax(teacher/Tt) || softmax(colbert/Tc))  cascade, first stage
    kl_ce_to_dense       KL(softmax(teacher/Tt) || softmax(dense/Td))    optional direct term
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from densekd.losses._common import check_teacher, check_temperature
from densekd.losses.contrastive import info_nce_loss
from densekd.losses.kl import kl_distillation_loss
from densekd.losses.batch import ScoreBatch

COLBERT_HEAD = "colbert"


@dataclass(frozen=True)
class ErnieLossSettings:
    """Weights, temperatures and knobs of :func:`ernie_search_loss` (the defaults are documented here).

    Attributes
    ----------
    dense_contrastive_weight, colbert_contrastive_weight
        Weights of each head's InfoNCE (default 1.0 each). Chosen on SciFact dev (query_only, seed 0,
        ``bench/ernie_scifact.py``): at 0.1, as in densekd's plain KD recipe, the KL terms dominate and
        the cascade's dense head reached nDCG@10 0.647; at 1.0, 0.696-0.701. SciFact's cross-encoder
        teacher is weak on its own training groups (it ranks a negative above the positive in >10% of
        them), so the labels must keep their full weight.
    colbert_to_dense_weight
        Self on-the-fly distillation, late interaction -> dense (default 1.0).
    ce_to_colbert_weight
        Cascade, cross-encoder -> late interaction (default 1.0; 0 = no teacher scores needed).
    ce_to_dense_weight
        Direct cross-encoder -> dense term (default 0.0: off, the cascade routes the teacher through
        the late-interaction head).
    dense_temperature
        ``Td`` (default 0.05): dense scores are cosines in ``[-1, 1]``, far flatter than a
        cross-encoder's logits, so they are sharpened before every softmax they enter.
    colbert_temperature
        ``Tc`` (default 1.0): MaxSim sums one cosine per query token, so scores already span
        ``[-Lq, Lq]``, a logit scale (ColBERTv2 distils at temperature 1). On SciFact dev 2.0 lowered the
        cascade's dense head (0.695 vs 0.701) and its ColBERT head (0.710 vs 0.737).
    teacher_temperature
        ``Tt`` for the raw cross-encoder logits (default 2.0): a softened teacher suits the cascade
        (SciFact dev, dense head 0.701 at 2.0 vs 0.696 at 1.0; ColBERT head 0.737 vs 0.733). A direct
        cross-encoder -> dense term prefers 1.0 there (0.705 vs 0.685 at 2.0).
    detach_colbert
        Treat the late-interaction scores as a fixed target in ``kl_colbert_to_dense`` (default
        ``True``, standard distillation). ``False`` also pulls the late-interaction head toward the dense
        one through the shared encoder (mutual learning); its own terms still anchor it.
    use_in_batch
        Contrastive terms use a head's in-batch scores when the batch carries them (default ``True``).
    scale_by_t2
        Multiply each KL by its student temperature squared (default ``False``; see
        :func:`densekd.training.config.default_loss_spec` for why sharpening temperatures skip it).

    Notes
    -----
    With these defaults (SciFact dev, ``query_only``, 3 seeds, ``bench/results/ernie_scifact.md``) the
    cascade's dense head reaches nDCG@10 0.704 +- 0.006: the same as a direct cross-encoder -> dense KL
    (0.704 +- 0.002) and below the dense head trained contrastively alone (0.715 +- 0.001), while its
    ColBERT head re-ranks the dense top-100 to 0.732 +- 0.004. SciFact's cross-encoder teacher is the
    limit there (0.700 re-ranking BM25's top 30); the defaults are the best of the settings tried.
    """

    dense_contrastive_weight: float = 1.0
    colbert_contrastive_weight: float = 1.0
    colbert_to_dense_weight: float = 1.0
    ce_to_colbert_weight: float = 1.0
    ce_to_dense_weight: float = 0.0
    dense_temperature: float = 0.05
    colbert_temperature: float = 1.0
    teacher_temperature: float = 2.0
    detach_colbert: bool = True
    use_in_batch: bool = True
    scale_by_t2: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_weight") and not (float(value) >= 0 and float(value) != float("inf")):
                raise ValueError(f"{f.name} must be finite and >= 0, got {value}")
            if f.name.endswith("_temperature"):
                check_temperature(value, f.name)


_DEFAULT = ErnieLossSettings()


def _contrastive(scores: ScoreBatch, temperature: float, use_in_batch: bool) -> Tensor:
    """InfoNCE over a head's in-batch matrix when present (and wanted), else over its own group; a query's
    own unlabelled candidates (ADAM dark examples) are not its negatives."""
    group_mask, in_batch_mask = scores.contrastive_masks()
    if use_in_batch and scores.in_batch is not None:
        logits, targets, mask = scores.in_batch, scores.positive_columns(), in_batch_mask
    else:
        logits, mask = scores.student, group_mask
        targets = torch.zeros(scores.batch_size, dtype=torch.long, device=logits.device)
    return info_nce_loss(logits, targets, temperature=temperature, mask=mask, weights=scores.weights)


def ernie_search_loss(dense: ScoreBatch, colbert: ScoreBatch,
                      settings: ErnieLossSettings = _DEFAULT) -> dict[str, Tensor]:
    """The weighted ERNIE-Search components (module docstring) for one batch.

    Parameters
    ----------
    dense
        Dense-head scores ``student[B, G]`` (optional ``in_batch[B, N]``); its ``mask[B, G]``,
        ``weights[B]`` and ``teacher[B, G]`` apply to every term.
    colbert
        Late-interaction scores ``student[B, G]`` of the same candidates (optional ``in_batch``).
    settings
        Weights, temperatures and knobs.

    Returns
    -------
    dict[str, Tensor]
        Weighted scalar components (terms with weight 0 omitted); their sum is the loss.

    Examples
    --------
    >>> d, c = torch.tensor([[0.9, 0.1]]), torch.tensor([[5.0, 1.0]])
    >>> out = ernie_search_loss(ScoreBatch(student=d), ScoreBatch(student=c),
    ...                         ErnieLossSettings(ce_to_colbert_weight=0.0))
    >>> sorted(out)
    ['contrastive_colbert', 'contrastive_dense', 'kl_colbert_to_dense']
    """
    s = settings
    if colbert.student.shape != dense.student.shape:
        raise ValueError(f"colbert scores {tuple(colbert.student.shape)} and dense scores "
                         f"{tuple(dense.student.shape)} must cover the same [B, G] candidates")
    common = {"mask": dense.mask, "weights": dense.weights, "scale_by_t2": s.scale_by_t2}
    terms: dict[str, tuple[float, Callable[[], Tensor]]] = {
        "contrastive_dense": (s.dense_contrastive_weight,
                              lambda: _contrastive(dense, s.dense_temperature, s.use_in_batch)),
        "contrastive_colbert": (s.colbert_contrastive_weight,
                                lambda: _contrastive(colbert, s.colbert_temperature, s.use_in_batch)),
        # self on-the-fly distillation: both sides come from the same forward pass
        "kl_colbert_to_dense": (s.colbert_to_dense_weight, lambda: kl_distillation_loss(
            dense.student, colbert.student, student_temperature=s.dense_temperature,
            teacher_temperature=s.colbert_temperature, detach_teacher=s.detach_colbert, **common)),
        "kl_ce_to_colbert": (s.ce_to_colbert_weight, lambda: kl_distillation_loss(
            colbert.student, _teacher(dense, "ce_to_colbert_weight"), student_temperature=s.colbert_temperature,
            teacher_temperature=s.teacher_temperature, **common)),
        "kl_ce_to_dense": (s.ce_to_dense_weight, lambda: kl_distillation_loss(
            dense.student, _teacher(dense, "ce_to_dense_weight"), student_temperature=s.dense_temperature,
            teacher_temperature=s.teacher_temperature, **common)),
    }
    out = {name: fn() * weight for name, (weight, fn) in terms.items() if weight > 0}
    if not out:
        raise ValueError("every ErnieSearchLoss weight is 0: nothing to train")
    return out


def _teacher(dense: ScoreBatch, weight_name: str) -> Tensor:
    try:
        return check_teacher(dense.teacher, dense.student, "ErnieSearchLoss")
    except ValueError as err:
        raise ValueError(f"{err}; or set {weight_name}=0 (self on-the-fly distillation alone)") from None


class ErnieSearchLoss(nn.Module):
    """ERNIE-Search's cascade loss over the dense and the ``"colbert"`` heads (module docstring).

    Parameters are the fields of :class:`ErnieLossSettings`, with the same defaults; ``forward`` returns
    the weighted components of :func:`ernie_search_loss`. In a :func:`~densekd.losses.build_loss` spec
    (``loss: {ernie: {ce_to_dense_weight: 0.5}}``) the components are logged as ``ernie/<name>``.

    Examples
    --------
    >>> loss = ErnieSearchLoss(ce_to_colbert_weight=0.0)
    >>> batch = ScoreBatch(student=torch.zeros(1, 2), heads={"colbert": ScoreBatch(student=torch.zeros(1, 2))})
    >>> sorted(loss(batch))
    ['contrastive_colbert', 'contrastive_dense', 'kl_colbert_to_dense']
    """

    #: extra score heads the student must provide (checked by DistillTrainer before training)
    score_heads: tuple[str, ...] = (COLBERT_HEAD,)

    def __init__(
        self,
        dense_contrastive_weight: float = _DEFAULT.dense_contrastive_weight,
        colbert_contrastive_weight: float = _DEFAULT.colbert_contrastive_weight,
        colbert_to_dense_weight: float = _DEFAULT.colbert_to_dense_weight,
        ce_to_colbert_weight: float = _DEFAULT.ce_to_colbert_weight,
        ce_to_dense_weight: float = _DEFAULT.ce_to_dense_weight,
        dense_temperature: float = _DEFAULT.dense_temperature,
        colbert_temperature: float = _DEFAULT.colbert_temperature,
        teacher_temperature: float = _DEFAULT.teacher_temperature,
        detach_colbert: bool = _DEFAULT.detach_colbert,
        use_in_batch: bool = _DEFAULT.use_in_batch,
        scale_by_t2: bool = _DEFAULT.scale_by_t2,
    ) -> None:
        super().__init__()
        self.settings = ErnieLossSettings(
            dense_contrastive_weight=float(dense_contrastive_weight),
            colbert_contrastive_weight=float(colbert_contrastive_weight),
            colbert_to_dense_weight=float(colbert_to_dense_weight),
            ce_to_colbert_weight=float(ce_to_colbert_weight), ce_to_dense_weight=float(ce_to_dense_weight),
            dense_temperature=float(dense_temperature), colbert_temperature=float(colbert_temperature),
            teacher_temperature=float(teacher_temperature), detach_colbert=bool(detach_colbert),
            use_in_batch=bool(use_in_batch), scale_by_t2=bool(scale_by_t2))
        if not any(getattr(self.settings, f.name) for f in dataclasses.fields(ErnieLossSettings)
                   if f.name.endswith("_weight")):
            raise ValueError("every ErnieSearchLoss weight is 0: nothing to train")

    @property
    def needs_labels(self) -> bool:
        """A contrastive term is on: candidate 0 must be a labelled positive (no label-free groups)."""
        return self.settings.dense_contrastive_weight > 0 or self.settings.colbert_contrastive_weight > 0

    def forward(self, scores: ScoreBatch) -> dict[str, Tensor]:
        """Weighted components; ``scores`` is the dense head and ``scores.heads["colbert"]`` the other."""
        return ernie_search_loss(scores, scores.head(COLBERT_HEAD), self.settings)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(self.settings).items())
