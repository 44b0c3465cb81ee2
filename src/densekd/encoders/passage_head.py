"""A trainable passage-side head over the passage tower's last-layer token states.

Why it exists
-------------
A ``query_only`` student trains its query tower against frozen passage vectors: the mean-pooled
states of the base model. Whatever its teacher knows about passage *text* that those vectors do not
already encode (SciFact: the teacher's BM25 term rewards exact matches on rare words, which a mean
over 256 tokens dilutes) the student can never learn, however long it trains. The gated residual head
gives the passage side a little capacity at almost no cost: a per-token gate picks which tokens
matter, and a linear map adds their gated mean to the frozen vector,

    p = normalize(base + U . (sum_t m_t sigmoid(w . h_t + b) h_t / sum_t m_t))

where ``base`` is the encoder's usual passage vector (pooled, projected, normalised), ``h[L, H]`` the
last-layer states, ``m`` the attention mask. ``U`` starts at zero, so an untrained head is exactly the
base encoder. The head reads the same states the tower computes anyway, so training needs no passage
forward pass: the states are cached once (:mod:`densekd.index.token_states`) and a step costs a gate
and a weighted sum per token. ``U`` is applied after pooling (``U`` is linear, so ``mean(U h) = U mean(h)``):
``H x D`` work per passage, not per token.

Data contract
-------------
``GatedResidualHead(hidden[B, L, H], attention_mask[B, L], base[B, D]) -> float[B, D]`` (normalised
when ``normalize``). On disk: ``passage_head.safetensors`` (``gate.weight[1, H]``, ``gate.bias[1]``,
``up.weight[D, H]``) beside the :class:`~densekd.encoders.dense.DenseEncoderConfig` that names the kind.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

PASSAGE_HEAD_NAME = "passage_head.safetensors"
#: head kinds ``DenseEncoderConfig.passage_head`` accepts (``None`` = no head)
PASSAGE_HEADS = ("gated",)


class GatedResidualHead(nn.Module):
    """Gated mean of token states, linearly mapped and added to the base passage vector.

    Parameters
    ----------
    hidden_size
        Width ``H`` of the token states.
    dim
        Width ``D`` of the passage vector.
    """

    def __init__(self, hidden_size: int, dim: int):
        super().__init__()
        self.gate = nn.Linear(hidden_size, 1)
        self.up = nn.Linear(hidden_size, dim, bias=False)
        # zero map: an untrained head returns the base vector unchanged (gate at 0.5 everywhere)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        nn.init.zeros_(self.up.weight)

    def forward(self, hidden: Tensor, attention_mask: Tensor, base: Tensor, normalize: bool = True) -> Tensor:
        """Passage vectors ``[B, D]`` from ``hidden[B, L, H]``, ``attention_mask[B, L]`` and ``base[B, D]``."""
        mask = attention_mask.to(hidden.dtype)                                  # [B, L]
        gate = torch.sigmoid(self.gate(hidden)).squeeze(-1) * mask              # [B, L]
        pooled = (gate.unsqueeze(-1) * hidden).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)  # [B, H]
        out = base + self.up(pooled)                                            # [B, D]
        return nn.functional.normalize(out, p=2, dim=-1) if normalize else out

    def save(self, folder: Path) -> None:
        """Write ``passage_head.safetensors`` into ``folder``."""
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(folder / PASSAGE_HEAD_NAME))


def build_passage_head(kind: str | None, hidden_size: int, dim: int, folder: Path | None = None) -> GatedResidualHead | None:
    """The head ``kind`` names (``None`` -> no head), with the weights saved in ``folder`` when it has them.

    A folder whose config names a head but holds no weights file is refused: loading it with a fresh
    (zero) head would silently give the base model's vectors.
    """
    if kind is None:  # kind is a validated DenseEncoderConfig.passage_head
        return None
    head = GatedResidualHead(hidden_size, dim)
    if folder is not None:
        path = folder / PASSAGE_HEAD_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: the config names passage_head={kind!r} but {PASSAGE_HEAD_NAME} is missing")
        head.load_state_dict(load_file(str(path)))
    return head
