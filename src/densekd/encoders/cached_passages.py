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

__all__ = ["CachedPassages", "PassageStateTable", "check_state_table"]


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


def check_state_table(table: object, hidden_size: int, dim: int, reader: str) -> PassageStateTable:
    """``table`` as the token-state table of a model with hidden size ``hidden_size`` and vector dim ``dim``.

    ``reader`` names what reads it, for the error. A table of finished vectors (or a folder path: the index
    layer opens those, ``PassageTokenStates.load``) is a ``TypeError``; other widths a ``ValueError``.
    """
    if not isinstance(table, PassageStateTable):
        raise TypeError(f"{reader} reads cached passage token states, not a {type(table).__name__}: pass a "
                        "PassageTokenStates (densekd.index.token_states.encode_token_states of its base model, "
                        "or PassageTokenStates.load(folder))")
    if table.hidden_size != hidden_size or table.dim != dim:
        raise ValueError(f"token states have hidden size {table.hidden_size} / vector dim {table.dim}; "
                         f"this model has {hidden_size} / {dim}")
    return table
