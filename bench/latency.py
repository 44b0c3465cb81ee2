"""Benchmark: per-query search latency at batch 1 on SciFact: dense (Flat / HNSW), BM25, hybrid.

Usage::

    python bench/latency.py                                  # full SciFact corpus, dev queries
    python bench/latency.py --backend onnx-int8              # query encoder on ONNX Runtime int8
    python bench/latency.py --smoke --results-dir /tmp/lat   # quick check (numbers not comparable)

Each query is searched alone, as a user's query would be (:func:`densekd.index.latency.timed_search`):

* ``dense-<factory>``: query encoding with ``--backend`` + FAISS search (Flat = exact, HNSW32 =
  graph, efSearch 128);
* ``bm25``: bm25s tokenisation + scoring;
* ``hybrid``: BM25 + dense (Flat) + reciprocal-rank fusion of the two top-100 lists.

Passage embeddings are computed once (same backend) and cached under ``runs/latency/``. nDCG@10 of each
run is recorded next to its latency. Writes ``latency.{json,md,png}`` under ``--results-dir``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from common import REPO, RESULTS, SHARED_DATA, markdown_table, provenance, write_results  # noqa: E402

from densekd.data.beir import BeirData, load_beir  # noqa: E402
from densekd.eval.metrics import evaluate  # noqa: E402
from densekd.index.bm25 import BM25Index  # noqa: E402
from densekd.index.faiss_index import FaissIndex  # noqa: E402
from densekd.index.hybrid import fuse  # noqa: E402
from densekd.index.latency import timed_search  # noqa: E402


def smoke_subset(data: BeirData, max_passages: int, max_queries: int) -> BeirData:
    """The first ``max_queries`` judged queries, their judged passages and other passages up to ``max_passages``."""
    qids = list(data.queries)[:max_queries]
    qrels = {q: data.qrels[q] for q in qids if q in data.qrels}
    judged = {pid for docs in qrels.values() for pid in docs}
    others = [pid for pid in data.corpus if pid not in judged][:max(0, max_passages - len(judged))]
    keep = [pid for pid in data.corpus if pid in judged] + others
    return BeirData(corpus={p: data.corpus[p] for p in keep}, queries={q: data.queries[q] for q in qids}, qrels=qrels)


def measure_latency(encoder: Any, passage_emb: np.ndarray, data: BeirData, k: int = 100,
                    factories: tuple[str, ...] = ("Flat", "HNSW32")) -> dict[str, dict[str, float]]:
    """Batch-1 latency (ms: p50, p95, mean, max) and nDCG@10 of dense, BM25 and hybrid search.

    ``passage_emb[N, D]`` are the corpus passages (in ``data.corpus`` order) encoded like the queries.
    """
    pids = list(data.corpus)
    queries = {qid: q.text for qid, q in data.queries.items()}
    out: dict[str, dict[str, float]] = {}
    indexes = {}
    for factory in factories:
        index = FaissIndex(passage_emb.shape[1], factory)
        if not index.is_trained:
            index.train(passage_emb)
        index.add(pids, passage_emb)
        indexes[factory] = index
    bm25 = BM25Index()
    bm25.index(data.corpus)

    def dense_one(factory: str):
        def one(qid: str, text: str) -> dict[str, float]:
            q = encoder.encode_queries([text], batch_size=1)
            return indexes[factory].search(q, [qid], k=k, ef_search=128 if "HNSW" in factory else None)[qid]
        return one

    def bm25_one(qid: str, text: str) -> dict[str, float]:
        return bm25.search({qid: text}, k=k, show_progress=False).get(qid, {})

    def hybrid_one(qid: str, text: str) -> dict[str, float]:
        runs = [{qid: bm25_one(qid, text)}, {qid: dense_one("Flat")(qid, text)}]
        return fuse(runs, method="rrf", k=k).get(qid, {})

    searchers = {**{f"dense-{f}": dense_one(f) for f in factories}, "bm25": bm25_one, "hybrid": hybrid_one}
    for name, fn in searchers.items():
        run, lat = timed_search(fn, queries)
        out[name] = {**lat, "ndcg@10": evaluate(run, data.qrels, ("ndcg@10",))["ndcg@10"]}
        print(f"[latency] {name}: p50 {lat['p50']:.2f} ms  p95 {lat['p95']:.2f} ms  nDCG@10 {out[name]['ndcg@10']:.3f}")
    return out


def plot(lat: dict[str, dict[str, float]], path: Path, title: str) -> None:
    """p50 and p95 bars per search method."""
    names = list(lat)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(x - 0.2, [lat[n]["p50"] for n in names], width=0.4, label="p50")
    ax.bar(x + 0.2, [lat[n]["p95"] for n in names], width=0.4, label="p95")
    ax.set_xticks(x, names)
    ax.set_ylabel("ms per query (batch 1)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="torch", help="query/passage encoder backend: torch, onnx, onnx-int8")
    ap.add_argument("--max-length", type=int, default=256, help="passage length limit in tokens")
    ap.add_argument("--batch-size", type=int, default=32, help="passage encoding batch size")
    ap.add_argument("--smoke", action="store_true", help="300 passages, 20 queries (checks the script only)")
    ap.add_argument("--results-dir", default=str(RESULTS), help="where latency.{json,md,png} go")
    ap.add_argument("--cache-dir", default=str(REPO / "runs" / "latency"), help="passage-embedding cache")
    args = ap.parse_args()

    from densekd.encoders.onnx_backend import load_encoder
    from densekd.index.dense_search import default_fingerprint
    from densekd.index.encode import encode_corpus

    data = load_beir(SHARED_DATA / "scifact", "dev")
    if args.smoke:
        data = smoke_subset(data, 300, 20)
    encoder = load_encoder(None, args.backend, passage_max_length=args.max_length)
    cache = Path(args.cache_dir) / (f"{args.backend}-{args.max_length}" + ("-smoke" if args.smoke else ""))
    store = encode_corpus(encoder, list(data.corpus.values()), cache, batch_size=args.batch_size,
                          fingerprint=default_fingerprint(encoder))
    lat = measure_latency(encoder, np.asarray(store.embeddings, dtype=np.float32), data)
    result = {"provenance": provenance(), "settings": vars(args), "n_passages": len(data.corpus),
              "n_queries": len(data.queries), "latency_ms": lat}
    rows = [[name, v["p50"], v["p95"], v["mean"], v["ndcg@10"]] for name, v in lat.items()]
    body = markdown_table(["search", "p50 ms", "p95 ms", "mean ms", "nDCG@10"], rows)
    body += (f"\nSciFact dev, {len(data.queries)} queries searched one at a time over {len(data.corpus)} "
             f"passages; query encoder backend `{args.backend}`, top 100, HNSW efSearch 128, hybrid = RRF of "
             "BM25 and dense Flat.\n\n![latency](latency.png)\n")
    results_dir = Path(args.results_dir)
    write_results("latency", result, body, results_dir)
    plot(lat, results_dir / "latency.png", f"SciFact batch-1 latency ({args.backend})")
    print(body)


if __name__ == "__main__":
    main()
