"""Cached passage states as a model reads them: the batch type and the table protocol.

A multi-head student trained ``query_only`` (e.g. :class:`~densekd.encoders.ernie.ErnieSearchModel`)
reads its frozen passages from a table of precomputed last-layer states instead of running the
passage tower. The table itself lives with the other stores
(:class:`densekd.index.token_states.PassageTokenStates`, written by
:func:`~densekd.index.token_states.encode_token_states`); the model only needs what is defined here,
so ``encoders`` never imports ``index``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["CachedPassages", "PassageStateTable"]


class CachedPassages(NamedTuple):
    """A padded batch of cached passages, in place of a tokenised passage batch.

    Attributes
    ----------
    hidden
        ``float[B, L, H]`` last-layer hidden states (zeros at padding).
    input_ids
        ``long[B, L]`` vocabulary ids (0 at padding).
    attention_mask
        ``long[B, L]``: 1 = real token.
    vectors
        ``float[B, D]`` pooled passage vectors.
    """

    hidden: Tensor
    input_ids: Tensor
    attention_mask: Tensor
    vectors: Tensor

    def batch(self) -> dict[str, Tensor]:
        """The ``input_ids`` / ``attention_mask`` dict that :func:`token_mask` reads."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


@runtime_checkable
class PassageStateTable(Protocol):
    """What a model needs from a table of cached passage states (``PassageTokenStates`` has it).

    Attributes
    ----------
    hidden_size
        Hidden-state width ``H``.
    dim
        Pooled vector width ``D``.
    """

    @property
    def hidden_size(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def lookup(self, pids: Sequence[str], device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> CachedPassages:
        """Padded :class:`CachedPassages` of ``pids`` on ``device``, no gradient."""
        ...
