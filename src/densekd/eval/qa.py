"""Answer-string metrics for open-domain QA: normalisation, EM/F1, has-answer and answer recall@k.

Data contracts
--------------
* Answers are ``Query.answers``: a list of acceptable strings (``None`` or ``[]`` for IR sets; such
  queries are skipped by :func:`answer_recall` and :func:`reader_metrics`).
* :func:`normalize_answer` is the SQuAD v1.1 normalisation (lower-case, drop punctuation, drop the
  articles *a/an/the*, collapse whitespace) preceded by Unicode NFD as in DPR, so composed and
  decomposed accents compare equal. One deliberate extension: Unicode punctuation (category ``P*``:
  curly quotes, dashes) is dropped as well as ASCII ``string.punctuation``. The official script keeps
  it, so ``“Paris”`` would not match ``Paris``; on NQ-open / SQuAD this changes a handful of answers.
* :func:`has_answer` is DPR's retrieval-accuracy test (``has_answer`` in DPR's ``qa_validation``):
  the passage's *token sequence* contains an answer's token sequence. Tokens are DPR's: after NFD
  and lower-casing, runs of letters/digits, and every other non-space character on its own, so
  ``"1972"`` is found in ``"1972-73"`` and ``"(1972)"`` but not in ``"19723"``; articles and
  punctuation are *not* dropped (``"The Who"`` needs ``the who`` in the passage). One deviation:
  combining accents are dropped, so ``"Beyonce"`` and ``"Beyoncé"`` match (DPR keeps them).
  It reads the passage **text only**, not its title, as DPR does; titles often restate the answer
  entity (SQuAD titles are article names), which would inflate recall.
* :func:`answer_recall` averages over every query that has answers; a query missing from the run
  counts as a miss (the same convention as :func:`densekd.eval.metrics.evaluate`).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from densekd.data.types import Corpus, Queries, Run, top_k

_ARTICLES = re.compile(r"\b(a|an|the)\b")
# DPR's SimpleTokenizer: alphanumeric runs, or any single non-space character ("_" included).
_DPR_TOKEN = re.compile(r"[^\W_]+|\S")
_ASCII_PUNCT = frozenset(string.punctuation)


def _is_punct(ch: str) -> bool:
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def normalize_answer(text: str) -> str:
    """SQuAD/DPR answer normalisation.

    Examples
    --------
    >>> normalize_answer("The  Denver Broncos!")
    'denver broncos'
    >>> normalize_answer("“The Beatles” – a band")
    'beatles band'
    """
    text = unicodedata.normalize("NFD", text).lower()
    text = "".join(ch for ch in text if not _is_punct(ch))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _as_list(answers: str | Iterable[str]) -> list[str]:
    return [answers] if isinstance(answers, str) else list(answers)


def exact_match(pred: str, answers: str | Iterable[str]) -> float:
    """1.0 if ``pred`` equals any answer after :func:`normalize_answer`, else 0.0.

    Examples
    --------
    >>> exact_match("the Broncos", ["Denver Broncos", "Broncos"])
    1.0
    """
    norm = normalize_answer(pred)
    return float(any(norm == normalize_answer(a) for a in _as_list(answers)))


def _token_f1(pred_tokens: Sequence[str], gold_tokens: Sequence[str]) -> float:
    # SQuAD v1.1: no shared token -> 0, including when both sides normalise to nothing.
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(pred: str, answers: str | Iterable[str]) -> float:
    """Bag-of-tokens F1 between ``pred`` and the best-matching answer (SQuAD v1.1).

    Examples
    --------
    >>> round(f1_score("Denver", ["Denver Broncos"]), 4)  # P = 1/1, R = 1/2
    0.6667
    """
    pred_tokens = normalize_answer(pred).split()
    return max((_token_f1(pred_tokens, normalize_answer(a).split()) for a in _as_list(answers)), default=0.0)


def _contains(tokens: Sequence[str], needle: Sequence[str]) -> bool:
    n = len(needle)
    return any(tokens[i:i + n] == needle for i in range(len(tokens) - n + 1))


def dpr_tokens(text: str) -> list[str]:
    """DPR's uncased tokens of ``text`` (accents dropped), as :func:`has_answer` compares them.

    Examples
    --------
    >>> dpr_tokens("U.S. 1972-73, Beyoncé")
    ['u', '.', 's', '.', '1972', '-', '73', ',', 'beyonce']
    >>> dpr_tokens("won in\\n1972\\tby x\\u200by")  # control and format characters separate words
    ['won', 'in', '1972', 'by', 'x', 'y']
    """
    text = unicodedata.normalize("NFD", text).lower()
    # Combining marks are only separable after NFD; dropping them makes accents irrelevant. Control
    # and format characters (newlines, tabs, zero-width spaces, soft hyphens) are never tokens but, as
    # in DPR's tokenizer, they end one: deleting them would glue "in\n1972" into one token "in1972"
    text = "".join(" " if unicodedata.category(ch)[0] == "C" else ch
                   for ch in text if unicodedata.category(ch) != "Mn")
    return _DPR_TOKEN.findall(text)


def _answer_tokens(answers: str | Iterable[str]) -> list[list[str]]:
    # An answer without tokens (blank) would match every passage: skip it.
    return [t for t in (dpr_tokens(a) for a in _as_list(answers)) if t]


def has_answer(text: str, answers: str | Iterable[str]) -> bool:
    """Whether ``text`` contains any answer as a contiguous sequence of :func:`dpr_tokens` (DPR).

    Examples
    --------
    >>> has_answer("It ended on 14 December 1972 (UTC).", ["december 1972"])
    True
    >>> has_answer("In 19723 nothing happened.", ["1972"])
    False
    """
    tokens = dpr_tokens(text)
    return any(_contains(tokens, a) for a in _answer_tokens(answers))


def _first_hit(ranking: list[str], answers: list[list[str]], corpus: Corpus,
               cache: dict[str, list[str]]) -> int | None:
    """1-based rank of the first passage containing an answer, or ``None``."""
    for rank, pid in enumerate(ranking, start=1):
        if pid not in corpus:
            raise ValueError(f"the run ranks passage {pid!r}, which is not in the corpus")
        if pid not in cache:  # a passage is retrieved for many queries: normalise it once
            cache[pid] = dpr_tokens(corpus[pid].text)
        if any(_contains(cache[pid], a) for a in answers):
            return rank
    return None


def answer_recall(run: Run, queries: Queries, corpus: Corpus, ks: Sequence[int] = (1, 5, 20)) -> dict[str, float]:
    """Top-k retrieval accuracy: fraction of answerable queries with an answer in the top k passages.

    Parameters
    ----------
    run
        ``qid -> pid -> score``; ranks follow :func:`densekd.data.types.top_k`.
    queries
        Queries; only those with a non-empty ``answers`` list are counted.
    corpus
        Passages ranked in ``run`` (``Passage.text`` is searched, the title is not).
    ks
        Cutoffs, positive integers.

    Returns
    -------
    dict[str, float]
        ``{"answer_recall@k": fraction}`` for each ``k`` in ``ks``.

    Raises
    ------
    ValueError
        When no query has answers, a ``k`` is not positive, or the run ranks (within the top
        ``max(ks)``) a passage id absent from ``corpus``.
    """
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {list(ks)}")
    answerable = {qid: _answer_tokens(q.answers) for qid, q in queries.items() if q.answers}
    if not answerable:
        raise ValueError("no query has answers; answer recall needs a QA set (Query.answers)")
    depth = max(ks)
    cache: dict[str, list[str]] = {}
    hits: list[int | None] = []
    for qid, answers in answerable.items():
        ranking = [pid for pid, _ in top_k(run.get(qid) or {}, depth)]
        hits.append(_first_hit(ranking, answers, corpus, cache))
    return {f"answer_recall@{k}": sum(h is not None and h <= k for h in hits) / len(hits) for k in ks}


def reader_metrics(preds: Mapping[str, str], queries: Queries) -> dict[str, float]:
    """Mean exact match and F1 of predicted answer strings.

    Parameters
    ----------
    preds
        ``qid -> predicted answer``. Queries without a prediction score 0; predictions for query ids
        that are not in ``queries`` (or have no answers) are ignored.
    queries
        Queries with ``answers``.

    Returns
    -------
    dict[str, float]
        ``{"em": mean EM, "f1": mean F1}`` over the queries that have answers.

    Raises
    ------
    ValueError
        When no query has answers.

    Examples
    --------
    >>> from densekd.data.types import Query
    >>> qs = {"q": Query("q", "who won?", ["Denver Broncos"])}
    >>> reader_metrics({"q": "Broncos"}, qs)
    {'em': 0.0, 'f1': 0.6666666666666666}
    """
    answerable = [q for q in queries.values() if q.answers]
    if not answerable:
        raise ValueError("no query has answers; reader metrics need a QA set (Query.answers)")
    predicted = [q for q in answerable if q.id in preds]  # a missing prediction adds 0 to both sums
    em = sum(exact_match(preds[q.id], q.answers) for q in predicted)
    f1 = sum(f1_score(preds[q.id], q.answers) for q in predicted)
    return {"em": em / len(answerable), "f1": f1 / len(answerable)}
