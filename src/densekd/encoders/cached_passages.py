"""Cached passage states as a model reads them: the batch type and the table protocol.

A multi-head student trained ``query_only`` (e.g. :class:`~densekd.encoders.ernie.ErnieSearchModel`)
reads its frozen passages from a table of precomputed last-layer states instead of running the
passage tower. The table itself lives with the other stores
(:class:`densekd.index.token_states.PassageTokenStates`, written by
:func:`~densekd.index.token_states.encode_token_states`); the model only needs what is defined here,
so ``encoders`` never imports ``index``. :class:`StackedStateTable` reads several tables as one: the
corpus's states plus those of texts outside it (ADAM dark examples), each cached on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["CachedPassages", "PassageStateTable", "StackedStateTable", "check_state_table"]


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


class StackedStateTable:
    """Several :class:`PassageStateTable` s read as one: each id from the first table that holds it.

    A ``query_only`` student with ADAM dark examples reads the corpus's cached states and the dark
    texts' (encoded once by the same frozen model, cached apart so the corpus cache never changes).

    Parameters
    ----------
    tables
        Tables with equal ``hidden_size`` and ``dim``, each with ``ids`` (its passage ids).
    """

    def __init__(self, tables: Sequence[PassageStateTable]):
        if not tables:
            raise ValueError("StackedStateTable needs at least one table")
        widths = {(t.hidden_size, t.dim) for t in tables}
        if len(widths) != 1:
            raise ValueError(f"stacked token-state tables disagree on (hidden size, dim): {sorted(widths)}")
        self.tables = list(tables)
        self.owner: dict[str, int] = {}
        for i, table in enumerate(self.tables):
            for pid in table.ids:  # type: ignore[attr-defined]
                self.owner.setdefault(pid, i)
        self.ids = list(self.owner)

    @property
    def hidden_size(self) -> int:
        """Hidden-state width ``H``."""
        return self.tables[0].hidden_size

    @property
    def dim(self) -> int:
        """Pooled vector width ``D``."""
        return self.tables[0].dim

    def lookup(self, pids: Sequence[str], device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> CachedPassages:
        """Padded :class:`CachedPassages` of ``pids`` in their order (``L`` = their longest); an unknown id
        raises ``KeyError`` naming it."""
        if not pids:
            return self.tables[0].lookup([], device=device, dtype=dtype)
        try:
            owners = [self.owner[pid] for pid in pids]
        except KeyError as err:
            raise KeyError(f"passage {err.args[0]!r} is in none of the stacked token-state tables") from None
        parts = []
        for i, table in enumerate(self.tables):
            rows = [j for j, o in enumerate(owners) if o == i]
            if rows:
                parts.append((rows, table.lookup([pids[j] for j in rows], device=device, dtype=dtype)))
        width = max(part.hidden.shape[1] for _, part in parts)
        first = parts[0][1]
        hidden = first.hidden.new_zeros(len(pids), width, self.hidden_size)
        ids = first.input_ids.new_zeros(len(pids), width)
        mask = first.attention_mask.new_zeros(len(pids), width)
        vectors = first.vectors.new_zeros(len(pids), self.dim)
        for rows, part in parts:  # each part is padded to its own longest: copy into the common width
            at = torch.as_tensor(rows, device=hidden.device)
            n = part.hidden.shape[1]
            hidden[at, :n], ids[at, :n], mask[at, :n] = part.hidden, part.input_ids, part.attention_mask
            vectors[at] = part.vectors
        return CachedPassages(hidden, ids, mask, vectors)
