"""ADAM dark examples: synthetic candidates of moderate relevance, built in token space.

Tao et al., "Adam: Dense Retrieval Distillation with Adaptive Dark Examples" (arXiv 2212.10192).
Mined hard negatives are often so easy for the teacher that its soft label over
``{positive, negatives}`` is nearly one-hot, which carries little "dark knowledge". ADAM adds
candidates that sit *between* the positive and the negatives and lets the teacher score them:

* **mix-up** ``dark:mix:<qid>:<k>``: a hard negative with spans of a positive mixed in, either
  overwriting negative tokens (``mix_mode="replace"``) or inserted between them (``"insert"``).
  ``mix_fraction`` is the share of the *resulting* example's tokens that come from the positive.
* **masked** ``dark:mask:<qid>:<k>``: a positive with ``mask_fraction`` of its tokens replaced by the
  tokenizer's mask token (``mask_mode="mask"``) or deleted (``"delete"``).

Data contract
-------------
Input: :class:`~densekd.data.types.TrainGroup` s (e.g. from
:func:`~densekd.mining.negatives.mine_negatives`), the :data:`~densekd.data.types.Queries` (only
checked: every qid must be there), the :data:`~densekd.data.types.Corpus` (``Passage.full_text()``,
as the encoders see it) and a Hugging Face tokenizer (``tokenize``, ``convert_tokens_to_string``,
``mask_token``; the student's, whose word pieces the MiniLM teacher shares).

Output: one new group per input group, same order and qids, inputs untouched:

* ``extra_passages``: the input's entries plus ``dark id -> text``;
* ``neg_ids``: the input's negatives followed by the mix-up ids (``k = 0..n_mixup-1``), then the
  masked ids (``k = 0..n_masked-1``);
* ``teacher_scores``: ``None``: the new ids have no score yet. Score them offline with
  :func:`densekd.teachers.annotate.annotate` (which scores ``extra_passages`` like corpus passages,
  cached and resumable) before training.

Token-level details: texts are split into word pieces with ``tokenizer.tokenize`` (so an uncased
tokenizer lower-cases), cut to ``max_tokens`` *before* editing so that every edit lands in the part
the encoders read, edited, and joined back with ``convert_tokens_to_string``. Fractions and the
"tokens changed" counts are exact on the word-piece lists; re-tokenising the text can differ slightly
(a ``##`` piece glued to a foreign word piece re-splits differently). An example that would change
no token (a very short passage) or that has no source (a group without negatives gets no mix-up)
is skipped and counted in :class:`DarkExampleStats`, so groups may get fewer dark examples.

Why dark examples go into ``neg_ids``
-------------------------------------
They are candidates, not positives: the KL term distils the teacher's scores over them (the point).
They are not negatives either: a masked copy of the positive is not irrelevant. The collator marks
their columns unlabelled (``label_mask``, from the ``dark:`` id prefix), so the contrastive (InfoNCE)
term leaves them out of their own query's softmax (other queries still meet them as in-batch
negatives), and ``teacher.positive_margin`` neither lifts the positive above them nor moves them.

Determinism
-----------
Example ``k`` of a kind draws everything from ``random.Random(f"{seed}|{kind}|{qid}|{k}")`` (string
seeds are SHA-512 hashed: stable across runs and machines): it depends on ``(seed, qid, k)`` and
its group only, never on group order or other queries.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from densekd.data.types import Passage, TrainGroup

__all__ = ["DarkExampleConfig", "DarkExampleStats", "add_dark_examples", "add_dark_examples_with_stats",
           "dark_id", "mask_tokens", "mix_tokens"]

logger = logging.getLogger(__name__)

DARK_PREFIX = "dark:"


@dataclass
class DarkExampleConfig:
    """How many dark examples to make per query, and how.

    The paper's exact ratios are not known to us; the defaults are our starting point (tune on dev).

    Attributes
    ----------
    n_mixup, n_masked
        Mix-up examples (each from a hard negative drawn from ``neg_ids``) and masked-positive examples
        (each from a positive drawn from ``pos_ids``) per query; default 2 each.
    mix_fraction
        Share of a mix-up example's tokens taken from the positive, in ``(0, 1)`` (default 0.3: the
        negative still dominates, so the teacher should score it between the two).
    mix_mode
        ``"replace"`` (overwrite negative tokens; length kept) or ``"insert"`` (insert between them;
        longer example). Default ``"replace"``.
    span_length
        Positive tokens are moved in contiguous spans of this many word pieces (the last span may be
        shorter), so that they carry meaning (default 8).
    mask_fraction, mask_mode
        Share of a positive's tokens changed, in ``(0, 1)`` (default 0.3), and how: ``"mask"`` (default;
        ``tokenizer.mask_token``, which the teacher must know: same tokenizer family) or ``"delete"``.
    max_tokens
        Passages are cut to this many word pieces before editing (default 200: the student reads 256
        passage tokens and the cross-encoder 256 for query and passage together, so every edit stays
        visible to both). ``None`` = no cut.
    seed
        Seed of every random choice (module docstring).
    """

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
        if self.n_mixup < 0 or self.n_masked < 0:
            raise ValueError(f"n_mixup and n_masked must be >= 0, got {self.n_mixup}, {self.n_masked}")
        for name in ("mix_fraction", "mask_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        for name, allowed in (("mix_mode", ("replace", "insert")), ("mask_mode", ("mask", "delete"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.span_length < 1:
            raise ValueError(f"span_length must be >= 1, got {self.span_length}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or None, got {self.max_tokens}")


@dataclass
class DarkExampleStats:
    """What :func:`add_dark_examples` made (summed over queries).

    ``groups`` processed; dark examples made (``mixup``, ``masked``); mix-ups not made for want of a
    corpus negative (``mixup_no_negative``); examples not made because they would change no token
    (``skipped_unchanged``); positive tokens in the mix-ups over their length
    (``mixup_tokens_changed / mixup_tokens`` = realised ``mix_fraction``) and masked/deleted tokens
    over the positives' cut lengths (``masked_tokens_changed / masked_tokens`` = realised
    ``mask_fraction``).
    """

    groups: int = 0
    mixup: int = 0
    masked: int = 0
    mixup_no_negative: int = 0
    skipped_unchanged: int = 0
    mixup_tokens_changed: int = 0
    mixup_tokens: int = 0
    masked_tokens_changed: int = 0
    masked_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counts as a plain dict (for logs and pipeline summaries)."""
        return asdict(self)


def dark_id(kind: str, qid: str, k: int) -> str:
    """Id of dark example ``k`` of ``kind`` (``"mix"`` or ``"mask"``) for query ``qid``.

    >>> dark_id("mix", "q7", 0)
    'dark:mix:q7:0'
    """
    return f"{DARK_PREFIX}{kind}:{qid}:{k}"


# --- pure token operations ------------------------------------------------------------------------

def _span_lengths(n: int, span: int) -> list[int]:
    """``n`` tokens cut into spans of ``span`` (the last one shorter)."""
    return [span] * (n // span) + ([n % span] if n % span else [])


def _source_span(pos_tokens: Sequence[str], length: int, rng: random.Random) -> list[str]:
    """``length`` contiguous positive tokens from a random start, wrapping round a short positive."""
    start = rng.randrange(max(1, len(pos_tokens) - length + 1))
    return [pos_tokens[(start + t) % len(pos_tokens)] for t in range(length)]


def mix_tokens(neg_tokens: Sequence[str], pos_tokens: Sequence[str], fraction: float, mode: str,
               span: int, rng: random.Random) -> tuple[list[str], int]:
    """Mix spans of a positive into a negative; the positive's share of the result is ``fraction``.

    Parameters
    ----------
    neg_tokens, pos_tokens
        Word pieces of the hard negative (``L`` tokens) and of the positive (non-empty).
    fraction
        Share of the result's tokens taken from the positive, in ``(0, 1)``.
    mode
        ``"replace"``: ``n = round(fraction * L)`` negative tokens are overwritten (result length
        ``L``). ``"insert"``: ``n = round(fraction * L / (1 - fraction))`` tokens are inserted (result
        length ``L + n``, so ``n / (L + n)`` is ``fraction`` up to rounding).
    span
        Positive tokens move in contiguous spans of this length (the last one shorter); replaced
        spans never overlap, inserted spans go into random gaps (two in one gap end up adjacent).
    rng
        Source of every random choice.

    Returns
    -------
    tokens, n_changed
        The mixed word pieces and ``n``, the number of positions that now hold a positive token
        (overwritten or inserted). An overwritten token can coincide with the one it replaced.

    Examples
    --------
    >>> out, n = mix_tokens(list("abcdefgh"), list("XYZ"), 0.25, "replace", 1, random.Random(3))
    >>> n, len(out), sum(t in "XYZ" for t in out)
    (2, 8, 2)
    >>> out, n = mix_tokens(list("abcdef"), list("XYZ"), 0.25, "insert", 2, random.Random(3))
    >>> n, len(out), [t for t in out if t in "abcdef"] == list("abcdef")
    (2, 8, True)
    """
    if not pos_tokens:
        raise ValueError("mix_tokens needs a non-empty positive")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    length = len(neg_tokens)
    if mode == "replace":
        n = min(length, round(fraction * length))
        spans = _span_lengths(n, span)
        # non-overlapping placement ("stars and bars"): choose which of the m + free slots hold a
        # span; every placement of m ordered spans among `free` untouched tokens is equally likely
        free = length - n
        slots = sorted(rng.sample(range(free + len(spans)), len(spans)))
        out, taken = list(neg_tokens), 0
        for k, (slot, size) in enumerate(zip(slots, spans)):
            start = slot - k + taken
            out[start:start + size] = _source_span(pos_tokens, size, rng)
            taken += size
        return out, n
    if mode == "insert":
        n = round(fraction * length / (1.0 - fraction))
        spans = _span_lengths(n, span)
        gaps = sorted((rng.randrange(length + 1), k) for k in range(len(spans)))
        pieces = [_source_span(pos_tokens, size, rng) for size in spans]
        out, prev = [], 0
        for gap, k in gaps:
            out.extend(neg_tokens[prev:gap])
            out.extend(pieces[k])
            prev = gap
        out.extend(neg_tokens[prev:])
        return out, n
    raise ValueError(f"mode must be 'replace' or 'insert', got {mode!r}")


def mask_tokens(tokens: Sequence[str], fraction: float, mode: str, mask_token: str | None,
                rng: random.Random) -> tuple[list[str], int]:
    """Mask or delete ``round(fraction * len(tokens))`` uniformly chosen tokens.

    Parameters
    ----------
    tokens
        Word pieces of the positive.
    fraction
        Share of tokens to change, in ``(0, 1)``.
    mode
        ``"mask"`` (replace by ``mask_token``) or ``"delete"``.
    mask_token
        The tokenizer's mask token; required for ``"mask"``.
    rng
        Source of the positions.

    Returns
    -------
    tokens, n_changed
        The edited word pieces and the number of positions masked or deleted.

    Examples
    --------
    >>> mask_tokens(list("abcd"), 0.5, "mask", "#", random.Random(1))
    (['a', '#', '#', 'd'], 2)
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    n = round(fraction * len(tokens))
    picked = set(rng.sample(range(len(tokens)), n))
    if mode == "mask":
        if mask_token is None:
            raise ValueError("mask_mode='mask' needs a tokenizer with a mask token; use 'delete'")
        return [mask_token if i in picked else t for i, t in enumerate(tokens)], n
    if mode == "delete":
        return [t for i, t in enumerate(tokens) if i not in picked], n
    raise ValueError(f"mode must be 'mask' or 'delete', got {mode!r}")


# --- groups ------------------------------------------------------------------------------------------

def _rng(seed: int, kind: str, qid: str, k: int) -> random.Random:
    # \x1f cannot occur in an int or a kind, so (seed, kind, qid, k) -> string is one-to-one
    return random.Random(f"{seed}\x1f{kind}\x1f{qid}\x1f{k}")


class _Texts:
    """Word pieces of passages (corpus or a group's extra passages), cut and memoised per call."""

    def __init__(self, corpus: Mapping[str, Passage], tokenizer: Any, max_tokens: int | None):
        self.corpus, self.tokenizer, self.max_tokens = corpus, tokenizer, max_tokens
        self._cache: dict[str, list[str]] = {}

    def tokens(self, group: TrainGroup, pid: str) -> list[str]:
        extra = group.extra_passages or {}
        if pid in extra:  # group-local text: not memoised under a corpus-wide key
            return self.tokenizer.tokenize(extra[pid])[: self.max_tokens]
        if pid not in self._cache:
            self._cache[pid] = self.tokenizer.tokenize(self.corpus[pid].full_text())[: self.max_tokens]
        return self._cache[pid]


def _check(groups: Sequence[TrainGroup], queries: Mapping[str, Any], corpus: Mapping[str, Passage]) -> None:
    """Fail before any work on a group that could not be annotated later anyway."""
    for g in groups:
        if g.qid not in queries or not g.pos_ids:
            raise ValueError(f"query {g.qid!r} is not in the queries or has no positive passage")
        extra = g.extra_passages or {}
        missing = [p for p in g.pos_ids + g.neg_ids if p not in extra and p not in corpus]
        if missing:
            raise ValueError(f"query {g.qid!r}: passages {missing[:3]} are neither in the corpus nor in "
                             "extra_passages")
        clash = [p for p in extra if p.startswith(DARK_PREFIX)]
        if clash:
            raise ValueError(f"query {g.qid!r} already has dark examples ({clash[:2]}); add them once")


def add_dark_examples_with_stats(groups: Sequence[TrainGroup], queries: Mapping[str, Any],
                                 corpus: Mapping[str, Passage], tokenizer: Any,
                                 cfg: DarkExampleConfig) -> tuple[list[TrainGroup], DarkExampleStats]:
    """:func:`add_dark_examples` that also returns the :class:`DarkExampleStats` (same arguments)."""
    _check(groups, queries, corpus)
    mask_token = getattr(tokenizer, "mask_token", None)
    if cfg.n_masked and cfg.mask_mode == "mask" and mask_token is None:
        raise ValueError("mask_mode='mask' needs a tokenizer with a mask token; use mask_mode='delete'")
    texts = _Texts(corpus, tokenizer, cfg.max_tokens)
    stats = DarkExampleStats(groups=len(groups))
    out = []
    for g in groups:
        extra = dict(g.extra_passages or {})
        # mix only real passages: mixing into an earlier synthetic candidate would compound edits
        negatives = [n for n in g.neg_ids if n not in extra]
        dark: dict[str, str] = {}
        for k in range(cfg.n_mixup):
            if not negatives:
                stats.mixup_no_negative += 1
                continue
            rng = _rng(cfg.seed, "mix", g.qid, k)
            neg, pos = rng.choice(negatives), rng.choice(g.pos_ids)
            pos_tokens = texts.tokens(g, pos)
            tokens, n = mix_tokens(texts.tokens(g, neg), pos_tokens, cfg.mix_fraction, cfg.mix_mode,
                                   cfg.span_length, rng) if pos_tokens else ([], 0)
            if n == 0:  # too short to change, or an empty positive: it would be a plain copy
                stats.skipped_unchanged += 1
                continue
            dark[dark_id("mix", g.qid, k)] = tokenizer.convert_tokens_to_string(tokens)
            stats.mixup += 1
            stats.mixup_tokens_changed += n
            stats.mixup_tokens += len(tokens)
        for k in range(cfg.n_masked):
            rng = _rng(cfg.seed, "mask", g.qid, k)
            pos_tokens = texts.tokens(g, rng.choice(g.pos_ids))
            tokens, n = mask_tokens(pos_tokens, cfg.mask_fraction, cfg.mask_mode, mask_token, rng)
            if n == 0:  # an unchanged copy of the positive must not be listed as a negative
                stats.skipped_unchanged += 1
                continue
            dark[dark_id("mask", g.qid, k)] = tokenizer.convert_tokens_to_string(tokens)
            stats.masked += 1
            stats.masked_tokens_changed += n
            stats.masked_tokens += len(pos_tokens)
        if any(d in corpus for d in dark):
            raise ValueError(f"a dark example id of query {g.qid!r} is also a corpus id")
        out.append(TrainGroup(g.qid, list(g.pos_ids), list(g.neg_ids) + list(dark), None,
                              {**extra, **dark} or None))
    logger.info("dark examples: %s", stats.as_dict())
    return out, stats


def add_dark_examples(groups: Sequence[TrainGroup], queries: Mapping[str, Any], corpus: Mapping[str, Passage],
                      tokenizer: Any, cfg: DarkExampleConfig) -> list[TrainGroup]:
    """Add ADAM mix-up and masked dark examples to every group (module docstring).

    Parameters
    ----------
    groups
        Training groups; left unmodified. Must not already hold dark examples.
    queries
        ``qid -> Query``; every group's qid must be present.
    corpus
        ``pid -> Passage`` for the groups' non-synthetic ids.
    tokenizer
        Hugging Face tokenizer (``tokenize``, ``convert_tokens_to_string``, ``mask_token``).
    cfg
        :class:`DarkExampleConfig`.

    Returns
    -------
    list[TrainGroup]
        New groups in input order: dark ids appended to ``neg_ids``, texts in ``extra_passages``,
        ``teacher_scores=None`` (annotate them next).
    """
    return add_dark_examples_with_stats(groups, queries, corpus, tokenizer, cfg)[0]
