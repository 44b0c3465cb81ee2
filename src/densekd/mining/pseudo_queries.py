"""Self-supervised training queries made from the corpus itself: one sentence of a passage as its query.

Why: labels limit a labels-only student to the queries somebody judged (SciFact: 609). A teacher can
score any query, so sentences drawn from the corpus become extra training queries on which the
student learns the teacher's ranking (SPAR, Chen et al. 2021, trained a dense model on such queries
to imitate BM25). The source passage is the query's pseudo-positive, so a labels-only baseline can
train on exactly the same pairs, and a comparison of the two isolates what the teacher adds.

Contract
--------
:func:`sentence_queries` returns ``(queries, qrels)``: query ids ``pseudo:<pid>``, the text one
sentence of passage ``pid`` (``min_words``..``max_words`` words; a passage without such a sentence is
skipped), qrels ``{qid: {pid: 1}}``. Which passages and which sentence depend only on ``seed`` and the
passage ids, not on the corpus order.
"""

from __future__ import annotations

import re

from densekd.data.hashing import seeded_hash
from densekd.data.types import Corpus, Qrels, Queries, Query

PREFIX = "pseudo:"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(])")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: split after ``.``, ``!`` or ``?`` followed by a capital, digit or ``(``.

    Examples
    --------
    >>> split_sentences("Aspirin helps. It reduces risk e.g. of strokes. (A) holds.")
    ['Aspirin helps.', 'It reduces risk e.g. of strokes.', '(A) holds.']
    """
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def sentence_queries(corpus: Corpus, n: int, seed: int = 0, min_words: int = 6,
                     max_words: int = 40) -> tuple[Queries, Qrels]:
    """``n`` pseudo-queries (one sentence each) from ``n`` passages of ``corpus`` (see the module contract).

    Raises ``ValueError`` for ``n < 1`` or ``min_words > max_words``.
    """
    if n < 1 or min_words > max_words:
        raise ValueError(f"need n >= 1 and min_words <= max_words, got n={n}, {min_words}..{max_words}")
    queries: Queries = {}
    qrels: Qrels = {}
    for pid in sorted(corpus, key=lambda p: seeded_hash(seed, p)):  # a seeded order independent of the file's
        sentences = [s for s in split_sentences(corpus[pid].text) if min_words <= len(s.split()) <= max_words]
        if not sentences:
            continue
        qid = PREFIX + pid
        queries[qid] = Query(qid, sentences[seeded_hash(seed + 1, pid) % len(sentences)])
        qrels[qid] = {pid: 1}
        if len(queries) == n:
            break
    return queries, qrels
