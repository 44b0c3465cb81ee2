"""BM25 lexical retrieval on `bm25s <https://github.com/xhluca/bm25s>`_ with PyStemmer.

Tokenisation is bm25s's (scikit-learn style ``\\b\\w\\w+\\b`` words, lower-cased, stop words removed,
then stemmed); documents are indexed as :meth:`Passage.full_text` (title and text).

Retrieval contract
------------------
* Only documents sharing at least one term with the query are returned (as in Lucene), so a query
  whose tokens are all stop words or unknown gets an empty ranking ``{}``.
* ``k`` is clipped to the corpus size. Scores are plain BM25 (higher = better).

On-disk format (a folder, written atomically: built under a temporary name, then renamed)
------------------------------------------------------------------------------------------
* the files of ``bm25s.BM25.save`` (``data/indices/indptr.csc.index.npy``, ``vocab.index.json``,
  ``params.index.json``, ...), never pickled;
* ``ids.npy``: passage ids, a 1-D unicode array, row ``i`` = bm25s document ``i``;
* ``tokenizer.json``: ``{"stemmer": str | null, "stopwords": str | list[str] | null,
  "avg_doc_len": float}``, so that queries are tokenised after loading exactly as the corpus was, and
  texts outside the corpus can be scored with its statistics (:meth:`BM25Index.score_texts`; folders
  written before ``avg_doc_len`` was kept load and search as before, and refuse ``score_texts``).

Example
-------
>>> from densekd.data.types import Passage, Query
>>> bm25 = BM25Index().index([Passage("a", "cats purr"), Passage("b", "dogs bark")], show_progress=False)
>>> bm25.search({"q": "a barking dog", "stop": "the of"}, k=5, show_progress=False)["stop"]
{}
>>> list(bm25.search({"q": "a barking dog"}, k=5, show_progress=False)["q"])
['b']
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
import Stemmer
from tqdm.auto import tqdm

from densekd.data.io import DataFormatError, require_file, write_json
from densekd.data.types import Corpus, Passage, Queries, Query, Run
from densekd.index._storage import atomic_dir, load_ids, read_json_file, save_ids

__all__ = ["BM25Index"]

TOKENIZE_CHUNK = 2048
METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")
IDS_FILE = "ids.npy"
TOKENIZER_FILE = "tokenizer.json"
# bm25s's own files; we check they exist so a missing one is reported by name, not as a KeyError.
BM25S_FILES = ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy",
               "vocab.index.json", "params.index.json")


class BM25Index:
    """A BM25 index over passages with string ids.

    Parameters
    ----------
    k1, b
        BM25 term-frequency saturation (finite, ``> 0``) and length normalisation (``[0, 1]``);
        other values raise ``ValueError`` instead of building a useless index.
    method
        bm25s scoring variant: ``"lucene"`` (default), ``"robertson"``, ``"atire"``, ``"bm25l"``,
        ``"bm25+"``.
    stemmer
        A PyStemmer language name (``"english"``) or ``None`` for no stemming.
    stopwords
        A bm25s stop-word set name (``"en"``), an explicit list, or ``None``.
    """

    def __init__(self, k1: float = 1.5, b: float = 0.75, method: str = "lucene",
                 stemmer: str | None = "english", stopwords: str | list[str] | None = "en"):
        # nan fails every comparison, so "not (k1 > 0)" also catches it
        if not (isinstance(k1, (int, float)) and k1 > 0 and math.isfinite(k1)):
            raise ValueError(f"k1 must be a finite number > 0, got {k1!r}")
        if not (isinstance(b, (int, float)) and 0 <= b <= 1):
            raise ValueError(f"b must be in [0, 1], got {b!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if stemmer and stemmer not in Stemmer.algorithms():
            raise ValueError(f"stemmer {stemmer!r} is unknown (PyStemmer has: {', '.join(Stemmer.algorithms())})")
        self.k1, self.b, self.method = k1, b, method
        self.stemmer_name = stemmer
        self.stopwords = stopwords
        self._stemmer = Stemmer.Stemmer(stemmer) if stemmer else None
        self._bm25: bm25s.BM25 | None = None
        self.ids: list[str] = []
        self.avg_doc_len: float | None = None  # mean tokens per document, for texts outside the corpus

    def __len__(self) -> int:
        return len(self.ids)

    def _tokenize(self, texts: list[str], show_progress: bool) -> list[list[str]]:
        return bm25s.tokenize(texts, stopwords=self.stopwords or None, stemmer=self._stemmer,
                              return_ids=False, show_progress=show_progress)

    def index(self, corpus: Corpus | Iterable[Passage], show_progress: bool = True) -> BM25Index:
        """Index ``corpus`` (replacing any previous content) and return ``self``.

        Parameters
        ----------
        corpus
            A :data:`Corpus` mapping or any iterable of :class:`Passage`; ids must be unique.
        show_progress
            Show one progress bar over the passages (bm25s's own six bars stay hidden).
        """
        passages = list(corpus.values()) if isinstance(corpus, Mapping) else list(corpus)
        if not passages:
            raise ValueError("cannot build a BM25 index over an empty corpus")
        ids = [p.id for p in passages]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate passage ids in the corpus")
        # Tokenised in chunks under one bar: bm25s tokenises each text on its own, so chunking changes nothing.
        tokens: list[list[str]] = []
        with tqdm(total=len(passages), desc="BM25 index", disable=not show_progress) as bar:
            for start in range(0, len(passages), TOKENIZE_CHUNK):
                chunk = passages[start:start + TOKENIZE_CHUNK]
                tokens += self._tokenize([p.full_text() for p in chunk], show_progress=False)
                bar.update(len(chunk))
        # bm25s builds its vocabulary from a set, whose order changes from run to run (string hash
        # seeds); a sorted vocabulary makes the saved index byte-for-byte reproducible.
        vocab = {tok: i for i, tok in enumerate(sorted({t for doc in tokens for t in doc}))}
        token_ids = [[vocab[t] for t in doc] for doc in tokens]
        self._bm25 = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        self._bm25.index((token_ids, vocab), show_progress=False)
        self.ids = ids
        self.avg_doc_len = float(np.mean([len(doc) for doc in tokens]))
        return self

    def _require_index(self) -> bm25s.BM25:
        if self._bm25 is None:
            raise RuntimeError("the BM25 index is empty: call .index(corpus) or BM25Index.load(dir) first")
        return self._bm25

    def search(self, queries: Queries | Mapping[str, str], k: int = 100, show_progress: bool = True) -> Run:
        """Retrieve the top ``k`` passages for each query.

        Parameters
        ----------
        queries
            ``qid -> Query`` or ``qid -> text``.
        k
            Ranking depth, clipped to the corpus size.
        show_progress
            Show a progress bar over queries.

        Returns
        -------
        Run
            ``qid -> {pid: score}`` with only passages that match a query term; every qid is present.
        """
        bm25 = self._require_index()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        qids = list(queries)
        texts = [q.text if isinstance(q, Query) else q for q in queries.values()]
        tokens = self._tokenize(texts, show_progress=False)
        run: Run = {}
        for qid, toks in zip(tqdm(qids, desc="BM25 search", disable=not show_progress), tokens):
            run[qid] = self._search_one(bm25, toks, k)
        return run

    def score(self, queries: Queries | Mapping[str, str], candidates: Mapping[str, Sequence[str]]) -> Run:
        """Exact BM25 score of each query's ``candidates`` (corpus ids), ``0.0`` where no term matches.

        A re-ranker fusing BM25 with other signals needs the score of every candidate, also of those
        another retriever found below BM25's own depth; filling them with a guess (the lowest score
        of BM25's top k) ranks them above documents BM25 scored, or below ones it did not.
        """
        bm25 = self._require_index()
        row = {pid: i for i, pid in enumerate(self.ids)}
        unknown = sorted({p for c in candidates.values() for p in c if p not in row})[:3]
        if unknown:
            raise KeyError(f"candidates not in the BM25 index: {unknown}")
        qids = list(candidates)
        texts = [q.text if isinstance(q, Query) else q for q in (queries[qid] for qid in qids)]
        out: Run = {}
        for qid, tokens in zip(qids, self._tokenize(texts, show_progress=False)):
            token_ids = [bm25.vocab_dict[t] for t in tokens if t and t in bm25.vocab_dict]
            rows = [row[p] for p in candidates[qid]]
            scores = bm25.get_scores_from_ids(token_ids)[rows] if token_ids else np.zeros(len(rows))
            out[qid] = {p: float(s) for p, s in zip(candidates[qid], scores)}
        return out

    def score_texts(self, queries: Queries | Mapping[str, str],
                    texts: Mapping[str, Mapping[str, str]]) -> Run:
        """BM25 score of texts that need not be in the corpus, with the corpus's statistics.

        ``texts[qid]`` maps text ids to texts (e.g. ADAM dark examples, which exist only in training
        groups). Each text is scored as if it were one more document of the indexed corpus that does
        not change its statistics: the corpus's document frequencies and mean document length, the
        text's own term counts and length (tokenised as the corpus was). A corpus passage's own text
        gets the score :meth:`score` gives it (up to float32 rounding).

        Only the ``"lucene"`` and ``"robertson"`` variants (the same term-frequency weighting in bm25s,
        each with its own idf: :func:`_idf`) are supported; others raise ``ValueError``. ``RuntimeError``
        for an index loaded from a folder written without the mean document length.
        """
        bm25 = self._require_index()
        if self.method not in ("lucene", "robertson"):
            raise ValueError(f"score_texts supports the lucene and robertson BM25 variants, not {self.method!r}")
        if self.avg_doc_len is None:
            raise RuntimeError("this BM25 index was saved without its mean document length: rebuild it with "
                               ".index(corpus) to score texts outside the corpus")
        indptr = np.asarray(bm25.scores["indptr"])
        n_docs = len(self.ids)
        out: Run = {}
        for qid, docs in texts.items():
            query = queries[qid]
            q_tokens = self._tokenize([query.text if isinstance(query, Query) else query], show_progress=False)[0]
            # a term the corpus lacks has no idf; a repeated query term counts each time, as in score()
            terms = [t for t in q_tokens if t in bm25.vocab_dict]
            doc_ids = list(docs)
            doc_tokens = self._tokenize([docs[d] for d in doc_ids], show_progress=False) if doc_ids else []
            out[qid] = {}
            for did, tokens in zip(doc_ids, doc_tokens):
                norm = self.k1 * (1 - self.b + self.b * len(tokens) / self.avg_doc_len)
                score = 0.0
                for t in terms:
                    tf = tokens.count(t)
                    if tf:
                        df = int(indptr[bm25.vocab_dict[t] + 1] - indptr[bm25.vocab_dict[t]])
                        score += _idf(self.method, df, n_docs) * tf / (tf + norm)
                out[qid][did] = float(score)
        return out

    def _search_one(self, bm25: bm25s.BM25, tokens: list[str], k: int) -> dict[str, float]:
        token_ids = [bm25.vocab_dict[t] for t in tokens if t and t in bm25.vocab_dict]
        if not token_ids:
            return {}
        indices, indptr = bm25.scores["indices"], bm25.scores["indptr"]
        # Documents containing a query term, read off the CSC columns: restricting the ranking to them
        # (Lucene semantics) keeps unrelated zero-score documents out of short result lists.
        matched = np.unique(np.concatenate([indices[indptr[t]:indptr[t + 1]] for t in token_ids]))
        scores = bm25.get_scores_from_ids(token_ids)[matched]
        if len(matched) > k:
            top = np.argpartition(-scores, k - 1)[:k]
            matched, scores = matched[top], scores[top]
        order = np.argsort(-scores, kind="stable")
        return {self.ids[i]: float(s) for i, s in zip(matched[order], scores[order])}

    def save(self, path: str | os.PathLike) -> None:
        """Write the index folder described in the module docstring (atomically)."""
        bm25 = self._require_index()
        with atomic_dir(path) as tmp:
            bm25.save(str(tmp), show_progress=False)
            save_ids(tmp / IDS_FILE, self.ids)
            write_json(tmp / TOKENIZER_FILE, {"stemmer": self.stemmer_name, "stopwords": self.stopwords,
                                              "avg_doc_len": self.avg_doc_len})

    @classmethod
    def load(cls, path: str | os.PathLike) -> BM25Index:
        """Load a folder written by :meth:`save`.

        Raises
        ------
        DataFormatError
            Naming the file, when a file is missing or when ``ids.npy`` does not have one id per
            indexed document.
        """
        root = Path(path)
        for name in BM25S_FILES:
            require_file(root / name)
        ids = load_ids(root / IDS_FILE)
        tok_cfg = read_json_file(root / TOKENIZER_FILE)
        try:
            bm25 = bm25s.BM25.load(str(root), mmap=False, show_progress=False)
        except (ValueError, OSError, KeyError) as e:
            raise DataFormatError(root, f"cannot read the bm25s index ({e})") from None
        n_docs = int(bm25.scores["num_docs"])
        if len(ids) != n_docs:
            raise DataFormatError(root / IDS_FILE, f"{len(ids)} ids for an index of {n_docs} documents")
        params: dict[str, Any] = {"k1": bm25.k1, "b": bm25.b, "method": bm25.method}
        index = cls(**params, stemmer=tok_cfg.get("stemmer"), stopwords=tok_cfg.get("stopwords"))
        index._bm25, index.ids = bm25, ids
        index.avg_doc_len = tok_cfg.get("avg_doc_len")
        return index


def _idf(method: str, df: int, n_docs: int) -> float:
    """The idf bm25s gives a term in ``df`` of ``n_docs`` documents under ``method``.

    ``lucene``: ``log(1 + (N - df + .5) / (df + .5))``, never negative; ``robertson`` (the original):
    ``log((N - df + .5) / (df + .5))`` floored at 0, so a term in more than half the documents adds nothing.

    Examples
    --------
    >>> round(_idf("lucene", 3, 4), 3), _idf("robertson", 3, 4)
    (0.357, 0.0)
    """
    inner = (n_docs - df + 0.5) / (df + 0.5)
    return math.log(1 + inner) if method == "lucene" else math.log(max(inner, 1.0))
