"""Inputs of the extractive (pointer) reader: ``(question, passage)`` pairs, pointer masks, answer targets.

Data contract
-------------
* Each passage is read with its question as one BERT pair: ``[CLS] question [SEP] title. text [SEP]``,
  truncated from the passage side to ``max_length`` tokens (``truncation="only_second"``).
* ``token_mask``: True only for tokens of the passage **text** (not the question, not the title, no
  special or padding token). The pointer may only choose these, so it cannot key an answer on the
  question's own words (the shortcut of a decoder that sees the question in every passage).
* ``start_targets`` / ``end_targets``: the first / last token of every occurrence of every answer
  string in the kept passage text (case-insensitive, on word boundaries). An occurrence cut by
  truncation is not a target. Without answers both are all False.
* Tensors are ``[B, k, L]`` (``k`` = the most passages of any question, at most ``n_passages``;
  ``L`` = the longest kept pair); ``passage_mask`` ``bool[B, k]`` marks real passages.
  ``offsets[b][i]`` maps passage ``i``'s tokens to character spans of its ``texts[b][i]``
  (``(0, 0)`` outside the text), for decoding answers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from densekd.data.types import Passage

PassageLike = Passage | tuple[str, str] | str


def split_passage(p: PassageLike) -> tuple[str, str]:
    """``(title, text)`` of a :class:`Passage`, a ``(title, text)`` tuple or a bare text."""
    if isinstance(p, Passage):
        return p.title or "", p.text
    if isinstance(p, tuple):
        return p[0] or "", p[1]
    return "", p


def answer_char_spans(text: str, answers: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of every answer occurrence in ``text`` (case-insensitive, whole words).

    Examples
    --------
    >>> answer_char_spans("In 1972 and 19723, 1972.", ["1972"])
    [(3, 7), (19, 23)]
    >>> answer_char_spans("İzmir and Paris", ["paris"])  # "İ".lower() is 2 characters: offsets stay the text's
    [(10, 15)]
    """
    spans: set[tuple[int, int]] = set()
    for answer in answers:
        a = answer.strip()
        if not a:
            continue
        # matched in the text itself, case-insensitively: searching text.lower() would shift every offset
        # after a character whose lower case is longer
        for m in re.finditer(re.escape(a), text, flags=re.IGNORECASE):
            s, e = m.start(), m.end()
            if (s == 0 or not text[s - 1].isalnum()) and (e == len(text) or not text[e].isalnum()):
                spans.add((s, e))
    return sorted(spans)


@dataclass
class SpanInputs:
    """Tokenised question/passage pairs (module docstring). Tensors ``[B, k, L]`` unless noted."""

    input_ids: Tensor
    attention_mask: Tensor
    token_type_ids: Tensor
    token_mask: Tensor
    start_targets: Tensor
    end_targets: Tensor
    passage_mask: Tensor  # bool[B, k]
    offsets: list[list[list[tuple[int, int]]]]
    texts: list[list[str]]

    def model_inputs(self, targets: bool = True) -> dict[str, Tensor]:
        """The tensors :meth:`SpanReader.forward <densekd.encoders.span_reader.SpanReader.forward>` takes
        (``targets=False``: without the answer targets, as when reading: no loss is computed)."""
        inputs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                  "token_type_ids": self.token_type_ids, "token_mask": self.token_mask}
        return {**inputs, "start_targets": self.start_targets, "end_targets": self.end_targets} if targets else inputs


def _targets(offsets: list[tuple[int, int]], text_start: int, spans: list[tuple[int, int]],
             keep: list[bool]) -> tuple[list[int], list[int]]:
    """Token indices of the first/last token of each char span (shifted by ``text_start``), if kept."""
    starts, ends = [], []
    for cs, ce in spans:
        cs, ce = cs + text_start, ce + text_start
        first = next((t for t, (a, b) in enumerate(offsets) if keep[t] and a <= cs < b), None)
        last = next((t for t, (a, b) in enumerate(offsets) if keep[t] and a < ce <= b), None)
        if first is not None and last is not None and last >= first:
            starts.append(first)
            ends.append(last)
    return starts, ends


def tokenize_pairs(tokenizer, questions: Sequence[str], passages: Sequence[Sequence[PassageLike]],
                   answers: Sequence[Sequence[str]] | None, n_passages: int, max_length: int) -> SpanInputs:
    """Tokenise each question with its first ``n_passages`` passages (module docstring).

    Parameters
    ----------
    tokenizer
        A fast HF tokenizer (offsets are needed).
    questions
        ``B`` questions.
    passages
        One list per question; the first ``n_passages`` are read.
    answers
        Gold answer strings per question (targets), or None (scoring / prediction).
    n_passages, max_length
        Passages per question; tokens per pair.
    """
    if len(passages) != len(questions) or (answers is not None and len(answers) != len(questions)):
        raise ValueError("questions, passages and answers must have one entry per question")
    kept = [list(ps)[:n_passages] for ps in passages]
    k = max(1, max(len(ps) for ps in kept))
    firsts, seconds, text_starts, texts, owner = [], [], [], [], []
    for b, (q, ps) in enumerate(zip(questions, kept)):
        for p in ps:
            title, text = split_passage(p)
            prefix = f"{title}. " if title else ""
            firsts.append(q)
            seconds.append(prefix + text)
            text_starts.append(len(prefix))
            texts.append(text)
            owner.append(b)
    enc = tokenizer(firsts, seconds, truncation="only_second", max_length=max_length, padding="longest",
                    return_offsets_mapping=True, return_token_type_ids=True, return_tensors="pt") if firsts else None
    L = enc["input_ids"].shape[1] if enc is not None else 1
    B = len(questions)
    shape = (B, k, L)
    out = {n: torch.zeros(shape, dtype=torch.long) for n in ("input_ids", "attention_mask", "token_type_ids")}
    flags = {n: torch.zeros(shape, dtype=torch.bool) for n in ("token_mask", "start_targets", "end_targets")}
    passage_mask = torch.zeros(B, k, dtype=torch.bool)
    offsets: list[list[list[tuple[int, int]]]] = [[] for _ in range(B)]
    out_texts: list[list[str]] = [[] for _ in range(B)]
    for row, b in enumerate(owner):
        i = len(offsets[b])
        for n, tensor in out.items():
            tensor[b, i] = enc[n][row]
        seq = enc.sequence_ids(row)
        raw = [tuple(o) for o in enc["offset_mapping"][row].tolist()]
        keep = [s == 1 and o[1] > o[0] and o[0] >= text_starts[row] for s, o in zip(seq, raw)]
        flags["token_mask"][b, i] = torch.tensor(keep)
        if answers is not None:
            starts, ends = _targets(raw, text_starts[row], answer_char_spans(texts[row], answers[b]), keep)
            flags["start_targets"][b, i, starts] = True
            flags["end_targets"][b, i, ends] = True
        offsets[b].append([(a - text_starts[row], e - text_starts[row]) if keep[t] else (0, 0)
                           for t, (a, e) in enumerate(raw)])
        out_texts[b].append(texts[row])
        passage_mask[b, i] = True
    return SpanInputs(**out, **flags, passage_mask=passage_mask, offsets=offsets, texts=out_texts)
