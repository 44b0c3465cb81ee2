"""InfoNCE: cross-entropy of the positive against in-batch and hard negatives.

Units: inputs are raw student scores (dot products); ``temperature`` divides them before the softmax.
No teacher is involved.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from densekd.losses._common import check_temperature, masked_log_softmax, weighted_mean
from densekd.losses.batch import ScoreBatch


def info_nce_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    temperature: float = 0.05,
    mask: Tensor | None = None,
    weights: Tensor | None = None,
) -> Tensor:
    """Weighted mean of ``-log softmax(logits / temperature)[target]`` over rows.

    Parameters
    ----------
    logits
        ``[B, C]`` raw student scores: a query's group (``C = G``) or the in-batch matrix
        (``C = N``).
    targets
        ``[B]`` long, the column of each row's positive.
    temperature
        Softmax temperature (0.05 suits cosine scores in [-1, 1]).
    mask
        ``[B, C]`` or ``[C]`` bool, ``False`` = padded column (never a negative). A row whose positive
        is padded is dropped.
    weights
        ``[B]`` non-negative instance weights or ``None``.

    Returns
    -------
    Tensor
        Scalar loss.

    Examples
    --------
    >>> import math
    >>> loss = info_nce_loss(torch.tensor([[2.0, 0.0]]), torch.tensor([0]), temperature=1.0)
    >>> round(loss.item(), 6) == round(-math.log(math.exp(2) / (math.exp(2) + 1)), 6)
    True
    """
    log_q = masked_log_softmax(logits.float() / temperature, mask)
    picked = targets[:, None]
    per_row = -log_q.gather(1, picked).squeeze(1)
    valid = None if mask is None else mask.expand_as(log_q).gather(1, picked).squeeze(1)
    return weighted_mean(per_row, weights, valid)


class InfoNCE(nn.Module):
    """Contrastive loss with the positive as target; component ``"contrastive"``.

    Over ``ScoreBatch.in_batch`` (every passage of the possibly gathered batch, including other
    queries' hard negatives) when it is present and ``use_in_batch``; otherwise over the query's own
    group ``ScoreBatch.student``. A query's own unlabelled candidates (``ScoreBatch.label_mask``: ADAM
    dark examples) are not its negatives: a masked copy of the positive is not irrelevant.

    Parameters
    ----------
    temperature
        Divides the scores before the softmax.
    use_in_batch
        Use the in-batch matrix when the batch carries one.
    """

    #: candidate 0 is the target: it must be a labelled positive (no label-free groups)
    needs_labels: bool = True

    def __init__(self, temperature: float = 0.05, use_in_batch: bool = True) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature, "temperature")
        self.use_in_batch = bool(use_in_batch)

    def forward(self, scores: ScoreBatch) -> dict[str, Tensor]:
        """Return ``{"contrastive": scalar}``."""
        group_mask, in_batch_mask = scores.contrastive_masks()  # unlabelled candidates are no negatives
        if self.use_in_batch and scores.in_batch is not None:
            logits, targets, mask = scores.in_batch, scores.positive_columns(), in_batch_mask
        else:
            logits, mask = scores.student, group_mask
            targets = torch.zeros(scores.batch_size, dtype=torch.long, device=logits.device)
        loss = info_nce_loss(
            logits, targets, temperature=self.temperature, mask=mask, weights=scores.weights
        )
        return {"contrastive": loss}

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, use_in_batch={self.use_in_batch}"


def listwise_loss(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Softmax cross-entropy with candidate 0 (the positive) as the target: InfoNCE at temperature 1.

    The cross-encoder teacher's ``"listwise"`` loss ("localized contrastive estimation", Gao, Dai &
    Callan 2021) over its raw logits, mean over queries.

    Parameters
    ----------
    logits
        ``float[B, G]`` raw scores, the positive in column 0.
    mask
        Optional ``bool[B, G]``; False entries (repeated ids) are left out of the softmax. Column 0
        must be True.

    Examples
    --------
    >>> round(float(listwise_loss(torch.tensor([[2.0, 1.0, 0.0]]))), 4)   # log(1 + e^-1 + e^-2)
    0.4076
    """
    targets = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return info_nce_loss(logits, targets, temperature=1.0, mask=mask)
