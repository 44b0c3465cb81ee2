"""Batch :class:`~densekd.training.dataset.TrainGroupDataset` items for :class:`DistillTrainer`.

Data contract
-------------
``DistillCollator(tokenize_query, tokenize_passage)(items)`` with ``B`` items of ``G`` candidates returns::

    {"query": dict[str, Tensor],          # tokenize_query(B query texts): input_ids[B, Lq], ...
     "passage": dict[str, Tensor] | None, # tokenize_passage(B*G texts), group-major: row i*G + j is
                                          #   candidate j of query i; None when tokenize_passage is None
     "teacher_scores": Tensor | None,     # float32[B, G] raw teacher logits aligned with pids, or None
     "mask": Tensor,                      # bool[B, G]; False = a repeat of an earlier id in the same group
     "pids": list[list[str]],             # [B][G] candidate ids (query_only mode looks vectors up by these)
     "pid_keys": Tensor,                  # int64[B, G] stable 63-bit hashes of pids (passage_key)
     "positive_keys": Tensor,             # int64[B, P] hashes of each item's labelled positives ("positives";
                                          #   all of them, not just the sampled one), -1 = padding
     "label_mask": Tensor,                # bool[B, G]; only when some candidate has no label: False at
                                          #   synthetic candidates (dark examples) and on the whole row of
                                          #   an item from a label-free group (its candidate 0 is no positive)
     "weights": Tensor}                   # float32[B] instance weights; only when items carry "weight"
                                          #   (e.g. self-paced weight mode), absent otherwise

``mask`` implements the dataset's "pad by repeating" contract: padding repeats ids, and every
repeated id (also a positive that reappears among the negatives, or a duplicated negative in the file)
is excluded from the losses instead of being counted twice. It is always a tensor, never ``None``, so
every DDP rank runs the same collectives when the masks are gathered for in-batch negatives. For the
same reason ``pid_keys`` and ``positive_keys`` are always present: the trainer gathers ``pid_keys`` to
find, for each query, the in-batch columns that repeat one of its positives (false negatives,
:func:`densekd.losses.batch.positive_repeats`). Integer keys, not strings, because only tensors can be
gathered; a keyed hash (never Python's salted ``hash``) gives every rank the same key for an id.

The tokenize functions take a list of texts and return tokenizer output (``padding``/``truncation``
done inside). :class:`TextTokenizer` is a picklable one built from an HF tokenizer, which
dataloader workers started with ``spawn`` need (a bound ``DenseEncoder`` method would pickle the
whole model into each worker).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from densekd.encoders.tokenize import tokenize_texts

TokenizeFn = Callable[[list[str]], Any]


@dataclass
class TextTokenizer:
    """Picklable ``texts -> dict[str, Tensor]`` tokenize function (prefix, truncation, padding).

    Same output as :meth:`DenseEncoder.tokenize_queries / tokenize_passages
    <densekd.encoders.dense.DenseEncoder.tokenize_queries>` for the same prefix and max length.
    """

    tokenizer: Any
    max_length: int
    prefix: str = ""

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return tokenize_texts(self.tokenizer, texts, self.prefix, self.max_length)


def repeat_mask(pids: Sequence[Sequence[str]]) -> torch.Tensor:
    """``bool[B, G]``: ``True`` at the first occurrence of each id within its group.

    Examples
    --------
    >>> repeat_mask([["p", "n1", "n1"], ["p", "p", "n2"]]).tolist()
    [[True, True, False], [True, False, True]]
    """
    rows = []
    for group in pids:
        seen: set[str] = set()
        rows.append([not (pid in seen or seen.add(pid)) for pid in group])
    return torch.tensor(rows, dtype=torch.bool)


def passage_key(pid: str) -> int:
    """A stable non-negative 63-bit key of a passage id (the same on every process and run).

    Examples
    --------
    >>> passage_key("d1") == passage_key("d1") != passage_key("d2")
    True
    """
    return int.from_bytes(hashlib.blake2b(pid.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def positive_keys(positives: Sequence[Sequence[str]]) -> torch.Tensor:
    """``int64[B, P]``: :func:`passage_key` of each item's positives, ``-1`` padded (``P >= 1``).

    Examples
    --------
    >>> keys = positive_keys([["a", "b"], []])
    >>> keys.shape, int(keys[1, 0])
    (torch.Size([2, 2]), -1)
    """
    width = max([1, *(len(p) for p in positives)])
    rows = [[passage_key(pid) for pid in p] + [-1] * (width - len(p)) for p in positives]
    return torch.tensor(rows, dtype=torch.long)


def label_mask(pids: Sequence[Sequence[str]]) -> torch.Tensor:
    """``bool[B, G]``: ``False`` at synthetic candidates (ADAM dark example ids, ``dark:...``), which have no
    label: teacher-based losses score them, InfoNCE does not treat them as the query's negatives.

    Examples
    --------
    >>> label_mask([["p", "n", "dark:mask:q:0"]]).tolist()
    [[True, True, False]]
    """
    from densekd.mining.dark_examples import DARK_PREFIX

    return torch.tensor([[not pid.startswith(DARK_PREFIX) for pid in group] for group in pids], dtype=torch.bool)


class DistillCollator:
    """Tokenise queries and group-major passages; stack teacher scores (module docstring).

    Parameters
    ----------
    tokenize_query
        ``list[str] -> dict[str, Tensor]`` for the ``B`` queries.
    tokenize_passage
        ``list[str] -> dict[str, Tensor]`` for the ``B * G`` passages, or ``None`` in ``query_only``
        mode (the trainer reads passage vectors from its embedding table by ``pids``).
    """

    def __init__(self, tokenize_query: TokenizeFn, tokenize_passage: TokenizeFn | None = None):
        self.tokenize_query = tokenize_query
        self.tokenize_passage = tokenize_passage

    @classmethod
    def from_encoder(cls, encoder: Any, query_only: bool = False) -> DistillCollator:
        """Collator with the prefixes and max lengths of a :class:`~densekd.encoders.dense.DenseEncoder`."""
        cfg = encoder.config
        query = TextTokenizer(encoder.tokenizer, cfg.query_max_length, cfg.query_prefix)
        passage = None if query_only else TextTokenizer(encoder.tokenizer, cfg.passage_max_length, cfg.passage_prefix)
        return cls(query, passage)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        if not items:
            raise ValueError("DistillCollator got an empty batch")
        pids = [list(item["pids"]) for item in items]
        group_size = len(pids[0])
        if any(len(g) != group_size for g in pids):
            raise ValueError(f"all items of a batch need the same group size, got {sorted({len(g) for g in pids})}")
        batch: dict[str, Any] = {
            "query": dict(self.tokenize_query([item["query"] for item in items])),
            "passage": None,
            "teacher_scores": _stack_teacher_scores(items, group_size),
            "mask": repeat_mask(pids),
            "pids": pids,
            "pid_keys": torch.tensor([[passage_key(pid) for pid in group] for group in pids], dtype=torch.long),
            "positive_keys": positive_keys([item.get("positives") or [] for item in items]),
        }
        weights = _stack_weights(items)
        if weights is not None:  # only then: batches without weights carry no "weights" key
            batch["weights"] = weights
        labelled = label_mask(pids)
        for i, item in enumerate(items):
            if item.get("labelled") is False:  # a label-free group: no candidate of the row is labelled
                labelled[i] = False
        if not bool(labelled.all()):  # likewise: only batches with unlabelled candidates carry the key
            batch["label_mask"] = labelled
        if self.tokenize_passage is not None:
            texts = [text for item in items for text in item["passages"]]  # group-major
            if len(texts) != len(items) * group_size:
                raise ValueError("every item needs one passage text per pid")
            batch["passage"] = dict(self.tokenize_passage(texts))
        return batch


def _stack_teacher_scores(items: list[dict[str, Any]], group_size: int) -> torch.Tensor | None:
    """``float32[B, G]`` or ``None``; a batch mixing annotated and unannotated groups is an error."""
    scores = [item.get("teacher_scores") for item in items]
    missing = sum(s is None for s in scores)
    if missing == len(items):
        return None
    if missing:
        raise ValueError(f"{missing} of {len(items)} items in a batch have no teacher scores; annotate every "
                         "training group with the teacher (or none of them)")
    if any(len(s) != group_size for s in scores):
        raise ValueError("teacher_scores must have one value per pid")
    return torch.tensor(scores, dtype=torch.float32)


def _stack_weights(items: list[dict[str, Any]]) -> torch.Tensor | None:
    """``float32[B]`` from the items' ``"weight"``, or ``None`` when no item has one."""
    weights = [item.get("weight") for item in items]
    missing = sum(w is None for w in weights)
    if missing == len(items):
        return None
    if missing:
        raise ValueError(f"{missing} of {len(items)} items in a batch have no 'weight'; weight every item or none")
    return torch.tensor(weights, dtype=torch.float32)
