"""Benchmark: BM25 and zero-shot MiniLM retrieval quality, and encoding throughput vs sentence-transformers.

Usage::

    python bench/encode_and_search.py                     # SciFact dev + Cranfield, full corpora
    python bench/encode_and_search.py --max-docs 300      # quick smoke run (numbers not comparable)

For each data set: BM25 (bm25s, English stemmer + stopwords), all-MiniLM-L6-v2 zero-shot through
densekd (Flat FAISS, max length 256), and a BM25+dense RRF hybrid; nDCG@10, MRR@10, R@100, MAP.
Throughput: the same SciFact corpus encoded by densekd ``encode_passages`` and by
sentence-transformers ``encode`` with the same model, max length and batch size, in the same process;
the ratio is densekd passages/s over sentence-transformers passages/s. The two embedding matrices are
also compared (they should agree to float precision).

Writes bench/results/encode_and_search.{json,md,png}.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common import RESULTS, SHARED_DATA, markdown_table, provenance, write_results  # noqa: E402
from densekd.data.beir import BeirData, load_beir  # noqa: E402
from densekd.encoders.dense import DenseEncoder, resolve_model_path  # noqa: E402
from densekd.eval.metrics import evaluate  # noqa: E402
from densekd.index.bm25 import BM25Index  # noqa: E402
from densekd.index.faiss_index import FaissIndex  # noqa: E402
from densekd.index.hybrid import fuse  # noqa: E402

METRICS = ("ndcg@10", "mrr@10", "recall@100", "map")


def subsample(data: BeirData, max_docs: int | None) -> BeirData:
    """Keep every judged document plus the first ``max_docs`` others (smoke runs only)."""
    if not max_docs:
        return data
    judged = {pid for docs in data.qrels.values() for pid in docs}
    keep = [pid for pid in data.corpus if pid in judged] + [pid for pid in data.corpus if pid not in judged][:max_docs]
    corpus = {pid: data.corpus[pid] for pid in keep}
    return BeirData(corpus=corpus, queries=data.queries, qrels=data.qrels)


def run_dataset(name: str, data: BeirData, encoder: DenseEncoder, batch_size: int,
                p_emb: np.ndarray | None = None) -> dict:
    """BM25, dense and hybrid metrics on one data set (passage embeddings computed unless given)."""
    out: dict[str, dict[str, float]] = {}
    queries = {qid: q.text for qid, q in data.queries.items()}
    bm25 = BM25Index()
    bm25.index(data.corpus)
    bm25_run = bm25.search(queries, k=100)
    out["bm25"] = evaluate(bm25_run, data.qrels, METRICS)

    passages = list(data.corpus.values())
    if p_emb is None:
        p_emb = encoder.encode_passages(passages, batch_size=batch_size, show_progress=True)
    index = FaissIndex(p_emb.shape[1], "Flat")
    index.add([p.id for p in passages], p_emb)
    qids = list(queries)
    dense_run = index.search(encoder.encode_queries([queries[q] for q in qids]), qids, k=100)
    out["minilm_zeroshot"] = evaluate(dense_run, data.qrels, METRICS)
    out["hybrid_rrf"] = evaluate(fuse([bm25_run, dense_run], method="rrf", k=100), data.qrels, METRICS)
    print(f"[{name}] " + "  ".join(f"{m}: nDCG@10 {v['ndcg@10']:.3f} R@100 {v['recall@100']:.3f}"
                                    for m, v in out.items()))
    return out


def interleaved_throughput(encoder: DenseEncoder, texts: list[str], batch_size: int, max_length: int,
                           chunk: int = 512) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Encode ``texts`` with densekd and sentence-transformers, alternating chunk by chunk.

    Alternating makes both encoders see the same background load on a shared machine, so the ratio
    is fair even when the absolute speeds drift. Returns (densekd emb, ST emb, densekd s, ST s).
    """
    from sentence_transformers import SentenceTransformer
    from tqdm.auto import tqdm

    st = SentenceTransformer(resolve_model_path(None), device="cpu")
    st.max_seq_length = max_length
    warm = texts[:batch_size]
    encoder.encode_passages(warm, batch_size=batch_size, show_progress=False)
    st.encode(warm, batch_size=batch_size, show_progress_bar=False)
    dk_parts, st_parts, dk_s, st_s = [], [], 0.0, 0.0
    for start in tqdm(range(0, len(texts), chunk), desc="interleaved encoding", unit="chunk"):
        part = texts[start:start + chunk]
        t0 = time.perf_counter()
        dk_parts.append(encoder.encode_passages(part, batch_size=batch_size, show_progress=False))
        t1 = time.perf_counter()
        st_parts.append(st.encode(part, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True))
        t2 = time.perf_counter()
        dk_s, st_s = dk_s + (t1 - t0), st_s + (t2 - t1)
    return np.concatenate(dk_parts), np.concatenate(st_parts), dk_s, st_s


def plot(result: dict, path) -> None:
    """Bar charts: quality per data set and method, and throughput."""
    sets = [s for s in ("scifact_dev", "cranfield") if s in result]
    methods = ["bm25", "minilm_zeroshot", "hybrid_rrf"]
    fig, axes = plt.subplots(1, len(sets) + 1, figsize=(5 * (len(sets) + 1), 4))
    for ax, s in zip(axes, sets):
        x = np.arange(2)
        for i, m in enumerate(methods):
            vals = [result[s][m]["ndcg@10"], result[s][m]["recall@100"]]
            ax.bar(x + i * 0.25, vals, width=0.25, label=m)
        ax.set_xticks(x + 0.25, ["nDCG@10", "R@100"])
        ax.set_ylim(0, 1)
        ax.set_title(s)
        ax.legend(fontsize=8)
    tp = result["throughput"]
    axes[-1].bar(["densekd", "sentence-transformers"], [tp["densekd_passages_per_s"], tp["st_passages_per_s"]],
                 color=["tab:green", "tab:gray"])
    axes[-1].set_ylabel("passages / s")
    axes[-1].set_title(f"encoding, ratio {result['encode_ratio_vs_sentence_transformers']:.2f}x")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-docs", type=int, default=None, help="subsample corpora (smoke runs)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=256)
    args = ap.parse_args()

    result: dict = {"provenance": provenance(), "settings": vars(args)}
    encoder = DenseEncoder.from_pretrained(None, passage_max_length=args.max_length)
    scifact = subsample(load_beir(SHARED_DATA / "scifact", "dev"), args.max_docs)
    texts = [p.full_text() for p in scifact.corpus.values()]
    dk_emb, st_emb, dk_s, st_s = interleaved_throughput(encoder, texts, args.batch_size, args.max_length)
    result["scifact_dev"] = run_dataset("scifact dev", scifact, encoder, args.batch_size, p_emb=dk_emb)
    # Cranfield has two documents with empty text (ids 471, 995), one of them judged: keep them
    cran = subsample(load_beir(SHARED_DATA / "cranfield", "test", allow_empty=True), args.max_docs)
    result["cranfield"] = run_dataset("cranfield", cran, encoder, args.batch_size)
    n = len(texts)
    result["throughput"] = {
        "corpus": "scifact", "n_passages": n, "batch_size": args.batch_size, "max_length": args.max_length,
        "densekd_seconds": dk_s, "st_seconds": st_s,
        "densekd_passages_per_s": n / dk_s, "st_passages_per_s": n / st_s,
        "max_abs_embedding_diff": float(np.abs(dk_emb - st_emb).max()),
    }
    result["encode_ratio_vs_sentence_transformers"] = (n / dk_s) / (n / st_s)

    rows = [[s, m, *[result[s][m][k] for k in METRICS]]
            for s in ("scifact_dev", "cranfield") for m in ("bm25", "minilm_zeroshot", "hybrid_rrf")]
    tp = result["throughput"]
    body = markdown_table(["data set", "method", *METRICS], rows)
    body += "\n" + markdown_table(
        ["encoder", "passages/s", "seconds", "ratio vs ST"],
        [["densekd encode_passages", tp["densekd_passages_per_s"], tp["densekd_seconds"],
          result["encode_ratio_vs_sentence_transformers"]],
         ["sentence-transformers encode", tp["st_passages_per_s"], tp["st_seconds"], 1.0]])
    body += (f"\nSame model (all-MiniLM-L6-v2), max length {args.max_length}, batch size {args.batch_size}, "
             f"{n} SciFact passages; max |embedding difference| = {tp['max_abs_embedding_diff']:.2e}.\n")
    body += "\n![results](encode_and_search.png)\n"
    write_results("encode_and_search", result, body)
    plot(result, RESULTS / "encode_and_search.png")
    print(body)


if __name__ == "__main__":
    main()
