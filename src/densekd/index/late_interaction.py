"""Corpus search for late-interaction (ColBERT) encoders: a compact token store and exact MaxSim.

The encoder is anything with ``encode_passage_tokens(texts, batch_size, show_progress)`` and
``encode_query_tokens(texts, batch_size)`` returning lists of ``np.float32[n_i, D]`` (e.g.
:class:`densekd.encoders.late_interaction.LateInteractionEncoder`, or
``ErnieSearchModel.to_late_interaction_encoder()``).

Search = candidates, then **exact** MaxSim over every candidate's stored tokens. Candidates come from
(1) a first-stage :data:`Run` (BM25, a dense retriever), (2) the token-level FAISS index: each query
token retrieves its ``k_tokens`` nearest passage tokens and the union of their passages is the
candidate set (ColBERT v1's end-to-end retrieval), or (3) the whole corpus (exhaustive; small corpora).

On-disk token store (folder ``out_dir``)
----------------------------------------
* ``tokens_00000.npy``: ``float16`` (or ``float32``) ``[T_i, D]`` kept tokens of chunk ``i``'s passages,
  stacked in corpus order; ``offsets_00000.npy``: ``int64[n_i + 1]``, passage ``j`` of the chunk owns
  rows ``offsets[j]:offsets[j + 1]``; ``ids_00000.npy``: its passage ids (unicode, never pickled).
  Each file is written atomically, ids last: a chunk counts once its ids exist (resumed by the
  shared :class:`~densekd.index.chunks.ChunkWriter`, as every corpus store).
* ``token_state.json`` while encoding (the cache key, for resuming after a crash) and ``manifest.json``
  written **last**: key + ``dim``, ``dtype`` and ``chunks`` (``[{"tokens", "offsets", "ids", "n"}]``).
  The key is ``format``, ``fingerprint`` (caller's model description), ``corpus_digest``, ``n``,
  ``chunk_size`` and ``dtype``; a complete folder with the same key is loaded, not re-encoded.
float16 halves the store at a cost of ~1e-3 relative error per cosine (tokens are unit vectors).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

from densekd.data.io import DataFormatError, require_file, write_json
from densekd.data.types import Corpus, Passage, Queries, Query, Run
from densekd.index._storage import atomic_dir, load_ids, read_json_file, require_keys
from densekd.index.chunks import ChunkWriter, corpus_digest
from densekd.scores import maxsim_ragged, stack_ragged

__all__ = ["TokenEmbeddingStore", "TokenFaissIndex", "encode_corpus_tokens", "late_interaction_search"]

FORMAT = "densekd.tokens/1"
MANIFEST, STATE = "manifest.json", "token_state.json"
KEY_FIELDS = ("format", "fingerprint", "corpus_digest", "n", "chunk_size", "dtype")
DTYPES = ("float16", "float32")




def encode_corpus_tokens(encoder: Any, corpus: Corpus | Sequence[Passage], out_dir: str | os.PathLike,
                         batch_size: int = 32, chunk_size: int = 4096, dtype: str = "float16",
                         fingerprint: str = "", show_progress: bool = True) -> TokenEmbeddingStore:
    """Encode every passage's tokens into ``out_dir`` (format in the module docstring); resumable.

    Parameters
    ----------
    encoder
        Has ``encode_passage_tokens(texts, batch_size, show_progress) -> list[np.float32[n_i, D]]``.
    corpus
        A :data:`Corpus` or a sequence of :class:`Passage`; the order fixes the chunks.
    out_dir
        Output folder (reused when complete under the same key; chunks of a killed run are reused).
    batch_size, chunk_size
        Encoder batch size; passages per chunk file.
    dtype
        ``"float16"`` (compact, default) or ``"float32"``.
    fingerprint
        Describes the model and its settings; a different value re-encodes everything.
    show_progress
        Progress bar over passages.
    """
    passages = list(corpus.values()) if isinstance(corpus, Mapping) else list(corpus)
    if not passages or chunk_size < 1 or dtype not in DTYPES:
        raise ValueError(f"need a non-empty corpus, chunk_size >= 1 and dtype in {DTYPES}")
    out = Path(out_dir)
    key = {"format": FORMAT, "fingerprint": fingerprint, "corpus_digest": corpus_digest(passages),
           "n": len(passages), "chunk_size": chunk_size, "dtype": dtype}
    writer = ChunkWriter(out, key, KEY_FIELDS, ("tokens", "offsets"), state=STATE, manifest=MANIFEST)
    if writer.complete():
        return TokenEmbeddingStore.load(out)
    writer.prepare()
    chunks, dim = [], None
    bar = tqdm(total=len(passages), desc="encode corpus tokens", unit="psg", disable=not show_progress)
    for i, start in enumerate(range(0, len(passages), chunk_size)):
        part = passages[start:start + chunk_size]
        ids = [p.id for p in part]
        done = writer.load(i, ids, lambda a, n=len(part): _valid_chunk(a["tokens"], a["offsets"], n, dtype))
        if done is None:
            arrays = encoder.encode_passage_tokens([p.full_text() for p in part], batch_size=batch_size,
                                                   show_progress=False)
            if len(arrays) != len(part) or any(a.ndim != 2 or len(a) == 0 for a in arrays):
                raise ValueError(f"chunk {i}: the encoder must return one non-empty [n_i, D] array per passage")
            tokens, offsets = stack_ragged(arrays)
            writer.write(i, {"tokens": tokens.astype(dtype), "offsets": offsets}, ids)
        width = np.load(out / writer.names(i)["tokens"], mmap_mode="r").shape[1]
        if dim is not None and width != dim:
            raise ValueError(f"chunk {i}: token width {width} differs from earlier chunks ({dim})")
        dim = width
        chunks.append({**writer.names(i), "n": len(part)})  # "tokens", "offsets", "ids", "n"
        bar.update(len(part))
    bar.close()
    writer.finish({**key, "dim": dim, "chunks": chunks})
    return TokenEmbeddingStore.load(out)


def _valid_chunk(tokens: np.ndarray, offsets: np.ndarray, n: int, dtype: str) -> bool:
    """Whether a chunk left by an earlier run holds ``n`` passages' tokens in ``dtype``."""
    return (tokens.dtype == np.dtype(dtype) and tokens.ndim == 2 and offsets.shape == (n + 1,)
            and offsets[0] == 0 and offsets[-1] == tokens.shape[0])


class TokenEmbeddingStore:
    """Read access to a completed :func:`encode_corpus_tokens` folder.

    Token matrices are memory-mapped (only the candidates' rows are read); offsets and ids live in RAM.

    Attributes
    ----------
    ids
        Passage ids, row ``i`` = passage ``i`` in corpus order.
    dim
        Token embedding size ``D``.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], ids: list[str], tokens: list[np.ndarray],
                 offsets: list[np.ndarray]):
        self.path, self.manifest, self.ids, self.dim = path, manifest, ids, int(manifest["dim"])
        self.row_of = {pid: i for i, pid in enumerate(ids)}
        self._tokens, self._offsets = tokens, offsets
        sizes = [len(o) - 1 for o in offsets]
        self._chunk_of = np.repeat(np.arange(len(sizes)), sizes)                  # row -> chunk
        self._local = np.concatenate([np.arange(n) for n in sizes])               # row -> index in chunk

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TokenEmbeddingStore:
        """Open a folder written by :func:`encode_corpus_tokens`; :class:`DataFormatError` names a bad file."""
        root = Path(path)
        mpath = root / MANIFEST
        manifest = read_json_file(mpath)
        require_keys(manifest, {"format": str, "n": int, "dim": int, "dtype": str, "chunks": list}, mpath)
        if manifest["format"] != FORMAT:
            raise DataFormatError(mpath, f"unsupported format {manifest['format']!r} (expected {FORMAT!r})")
        ids: list[str] = []
        tokens, offsets = [], []
        for chunk in manifest["chunks"]:
            require_keys(chunk, {"tokens": str, "offsets": str, "ids": str, "n": int}, mpath)
            tok = np.load(root / chunk["tokens"], mmap_mode="r", allow_pickle=False)
            off = np.load(root / chunk["offsets"], allow_pickle=False)
            chunk_ids = load_ids(root / chunk["ids"])
            ok = (tok.dtype == np.dtype(manifest["dtype"]) and tok.ndim == 2 and tok.shape[1] == manifest["dim"]
                  and off.shape == (chunk["n"] + 1,) and len(chunk_ids) == chunk["n"] and off[0] == 0
                  and off[-1] == tok.shape[0] and bool(np.all(np.diff(off) >= 1)))
            if not ok:
                raise DataFormatError(root / chunk["tokens"], "tokens, offsets and ids disagree with the manifest")
            ids.extend(chunk_ids)
            tokens.append(tok)
            offsets.append(off)
        if len(ids) != manifest["n"]:
            raise DataFormatError(mpath, f"chunks hold {len(ids)} passages, manifest says {manifest['n']}")
        return cls(root, manifest, ids, tokens, offsets)

    def passage_tokens(self, row: int) -> np.ndarray:
        """Stored ``[n_i, D]`` tokens of passage ``row`` (a memory-map view)."""
        c, j = self._chunk_of[row], self._local[row]
        return self._tokens[c][self._offsets[c][j]:self._offsets[c][j + 1]]

    def maxsim(self, q: np.ndarray, rows: Sequence[int]) -> np.ndarray:
        """Exact MaxSim of query tokens ``q[Lq, D]`` with the passages ``rows``, ``np.float32[len(rows)]``."""
        tokens, offsets = stack_ragged([self.passage_tokens(r) for r in rows])
        return maxsim_ragged(q, tokens, offsets) if len(rows) else np.zeros(0, np.float32)

    def iter_chunks(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(first_row, tokens[T_i, D], offsets[n_i + 1])`` per chunk (tokens memory-mapped)."""
        start = 0
        for tok, off in zip(self._tokens, self._offsets):
            yield start, tok, off
            start += len(off) - 1

    def maxsim_all(self, q: np.ndarray) -> np.ndarray:
        """Exact MaxSim of ``q[Lq, D]`` with every passage, ``np.float32[n]`` (chunk by chunk, no copies)."""
        return np.concatenate([maxsim_ragged(q, tok, off) for _, tok, off in self.iter_chunks()])

    def sample_tokens(self, size: int, seed: int = 0) -> np.ndarray:
        """``min(size, T)`` stored tokens drawn uniformly without replacement, ``np.float32[m, D]``."""
        sizes = [len(tok) for tok in self._tokens]
        pick = np.sort(np.random.default_rng(seed).choice(sum(sizes), size=min(size, sum(sizes)), replace=False))
        parts, start = [], 0
        for tok, n in zip(self._tokens, sizes):
            # chunk by chunk so that only the sampled rows are read from the memory maps
            parts.append(np.asarray(tok[pick[(pick >= start) & (pick < start + n)] - start], dtype=np.float32))
            start += n
        return np.concatenate(parts)


class TokenFaissIndex:
    """FAISS index over every stored token, mapping hits back to passage rows (candidate generation).

    Parameters
    ----------
    store
        The token store; the token -> passage map comes from its offsets, so an index is only valid
        with the store it was built from (checked on :meth:`load` through the store's cache key).
    factory
        ``faiss.index_factory`` string (inner product); ``"Flat"`` is exact, ``"IVF4096,PQ16"``-style
        ones scale to large corpora.
    train_size, seed
        Size and seed of the token sample that IVF/PQ factories are trained on.
    """

    def __init__(self, store: TokenEmbeddingStore, factory: str = "Flat", train_size: int = 262_144,
                 seed: int = 0):
        self.store, self.factory, self.passage_of = store, factory, _token_owners(store)
        try:
            self.index = faiss.index_factory(store.dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise ValueError(f"invalid faiss factory string {factory!r}: {e}") from None
        if not self.index.is_trained:
            self.index.train(store.sample_tokens(train_size, seed))
        for _, tok, _ in store.iter_chunks():  # chunk by chunk: one chunk in float32 at a time
            self.index.add(np.ascontiguousarray(tok, dtype=np.float32))

    def candidates(self, queries: list[np.ndarray], k_tokens: int = 64) -> list[np.ndarray]:
        """For each query ``[Lq, D]``: sorted unique passage rows hit by any of its tokens' ``k_tokens`` NNs."""
        if not queries:
            return []
        if k_tokens < 1:
            raise ValueError(f"k_tokens must be >= 1, got {k_tokens}")
        # one faiss call for every token of every query, split back per query afterwards
        _, pos = self.index.search(np.concatenate(queries).astype(np.float32), min(k_tokens, self.index.ntotal))
        out, start = [], 0
        for q in queries:
            hits = pos[start:start + len(q)].ravel()
            out.append(np.unique(self.passage_of[hits[hits >= 0]]))  # -1 = fewer hits (approximate indexes)
            start += len(q)
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write ``index.faiss`` and ``meta.json`` (factory, token count, the store's key) into ``path``."""
        meta = {"factory": self.factory, "n_tokens": int(self.index.ntotal), "store": _store_key(self.store)}
        with atomic_dir(path) as tmp:
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            write_json(tmp / "meta.json", meta)

    @classmethod
    def load(cls, path: str | os.PathLike, store: TokenEmbeddingStore) -> TokenFaissIndex:
        """Read a :meth:`save` folder; :class:`DataFormatError` when it was built from another store."""
        meta_path = Path(path) / "meta.json"
        meta = read_json_file(meta_path)
        require_keys(meta, {"factory": str, "n_tokens": int, "store": dict}, meta_path)
        index = faiss.read_index(str(require_file(Path(path) / "index.faiss")))
        obj = cls.__new__(cls)
        obj.store, obj.factory, obj.passage_of, obj.index = store, meta["factory"], _token_owners(store), index
        if meta["store"] != _store_key(store) or not index.ntotal == len(obj.passage_of) == meta["n_tokens"]:
            raise DataFormatError(meta_path, "the token index was built from another token store")
        return obj


def _token_owners(store: TokenEmbeddingStore) -> np.ndarray:
    """``int64[T]``: the passage row of every stored token, in index order."""
    return np.concatenate([first + np.repeat(np.arange(len(off) - 1), np.diff(off))
                           for first, _, off in store.iter_chunks()])


def _store_key(store: TokenEmbeddingStore) -> dict[str, Any]:
    return {f: store.manifest.get(f) for f in KEY_FIELDS}


def late_interaction_search(encoder: Any, store: TokenEmbeddingStore, queries: Queries | Mapping[str, str],
                            k: int = 100, candidates: Run | None = None, token_index: TokenFaissIndex | None = None,
                            k_tokens: int = 64, batch_size: int = 32) -> Run:
    """Exact-MaxSim retrieval of the top ``k`` passages per query (candidate sources: module docstring).

    Parameters
    ----------
    encoder
        Has ``encode_query_tokens(texts, batch_size)``.
    store
        Token store of the corpus, encoded with the same encoder.
    queries
        ``qid -> Query`` or ``qid -> text``.
    k
        Ranking depth.
    candidates
        First-stage run: only its documents (all of them, whatever their rank) are scored.
    token_index
        Used when ``candidates`` is ``None``: token-level FAISS candidate generation.
    k_tokens
        Nearest tokens retrieved per query token (token-index path).
    batch_size
        Query encoding batch size.

    Without ``candidates`` and ``token_index`` every passage is scored (exhaustive).
    """
    if candidates is not None and token_index is not None:
        raise ValueError("give candidates or token_index, not both")
    qids = list(queries)
    texts = [q.text if isinstance(q, Query) else q for q in queries.values()]
    q_tokens = encoder.encode_query_tokens(texts, batch_size=batch_size)
    if candidates is not None:
        missing = sorted({pid for qid in qids for pid in candidates.get(qid, {}) if pid not in store.row_of})
        if missing:
            raise DataFormatError(None, f"candidate documents {missing[:3]} are not in the token store")
        rows = [np.array([store.row_of[pid] for pid in candidates.get(qid, {})], dtype=np.int64) for qid in qids]
    elif token_index is not None:
        rows = token_index.candidates(q_tokens, k_tokens)
    else:
        rows = [None] * len(qids)
    run: Run = {}
    for qid, q, cand in zip(qids, q_tokens, rows):
        if cand is None:
            cand, scores = np.arange(len(store)), store.maxsim_all(q)
        else:
            scores = store.maxsim(q, cand)
        top = np.argsort(-scores, kind="stable")[:k]
        run[qid] = {store.ids[cand[j]]: float(scores[j]) for j in top}
    return run
