"""Benchmark: densekd's streaming encode -> FAISS path at 1M vectors, and sharded encoding on SciFact.

Usage::

    python bench/scale.py                       # 1M x 384-d synthetic + SciFact encoding (~25 min here)
    python bench/scale.py --n 20000 --smoke     # quick check -> bench/results/smoke/

Part 1, large corpus (``--n`` synthetic 384-d unit vectors, default 1,000,000). The vectors go through
the same path as real passages: :func:`densekd.index.encode.encode_corpus` writes them in chunks
(memory-mapped ``.npy``, resumable) from a deterministic stand-in encoder, and
:meth:`EmbeddingStore.to_faiss` trains the index on a sample and fills it chunk by chunk. The data are
clustered (``--clusters`` Gaussian clusters on the sphere), like text embeddings, rather than uniform
noise (on which every ANN method degrades); queries are perturbed corpus vectors. Each index is built
and queried in its **own process**, so ``peak_rss_gb`` (``ru_maxrss``) is that index's whole footprint:

* ``flat``: exact inner-product search (the ground truth for recall@10);
* ``ivfpq``: ``IVF4096,PQ48x4fs,RFlat`` (fast-scan PQ codes, exact re-scoring of ``k * k_factor``
  candidates), swept over ``nprobe`` and ``k_factor``;
* ``ivfpq_codes_only``: ``IVF4096,PQ48x4fs`` without the exact re-scoring (what the compressed codes
  alone give; 24 bytes a vector);
* ``hnsw``: ``HNSW32`` swept over ``efSearch``.

For each ANN index the reported operating point is the fastest setting with recall@10 >= 0.9 against
Flat (all settings are in ``sweep``); ``speedup_vs_flat`` is its queries/s over Flat's, measured in the
same run with the same thread count (all cores). Part 2, real text: encoding throughput of the first
``--encode-passages`` SciFact passages with all-MiniLM-L6-v2 at max length 256, one process (all threads)
vs ``encode_corpus`` sharded over 2 processes (one thread each) merged into one store; the merged
embeddings are checked against the one-process ones.

Writes ``bench/results/scale.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from common import RESULTS, SHARED_DATA, markdown_table, provenance, write_results  # noqa: E402

NAME = "scale"
DIM = 384
FACTORIES = {"flat": "Flat", "ivfpq": "IVF4096,PQ48x4fs,RFlat", "ivfpq_codes_only": "IVF4096,PQ48x4fs",
             "hnsw": "HNSW32"}
SWEEPS: dict[str, list[dict[str, int]]] = {
    "flat": [{}],
    # the exact re-scoring is cheap (k * k_factor dot products) next to a Flat scan, so large factors pay
    "ivfpq": [{"nprobe": p, "k_factor": f} for p in (16, 32, 64) for f in (16, 64, 256)],
    "ivfpq_codes_only": [{"nprobe": p} for p in (16, 64)],
    "hnsw": [{"ef_search": e} for e in (16, 32, 64, 128, 256)],
}
TARGET_RECALL = 0.9


class SyntheticEncoder:
    """Stand-in passage encoder: passage text ``"<i>"`` -> a fixed unit vector of cluster ``i % C``.

    Vector ``i`` depends only on ``i`` and the seed (noise drawn per block of 1,000 ids), so a resumed or
    sharded encoding produces the same bytes as a single pass.
    """

    def __init__(self, clusters: int, noise: float, seed: int = 0):
        rng = np.random.default_rng([seed, 0])
        c = rng.standard_normal((clusters, DIM)).astype(np.float32)
        self.centres = c / np.linalg.norm(c, axis=1, keepdims=True)
        self.noise, self.seed = noise, seed

    def vectors(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), DIM), dtype=np.float32)
        for block in np.unique(idx // 1000):
            sel = idx // 1000 == block
            rng = np.random.default_rng([self.seed, 1, int(block)])
            noise = rng.standard_normal((1000, DIM)).astype(np.float32)[idx[sel] % 1000]
            out[sel] = self.centres[(idx[sel] * 7919) % len(self.centres)] + self.noise / np.sqrt(DIM) * noise
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def encode_passages(self, texts: list[str], batch_size: int = 0, show_progress: bool = False) -> np.ndarray:
        return self.vectors(np.asarray([int(t) for t in texts], dtype=np.int64))


def synthetic_store(args: argparse.Namespace) -> tuple[Path, float, float]:
    """Encode (or reuse) the synthetic corpus through ``encode_corpus``; returns folder, seconds, peak RSS GB."""
    from densekd.data.types import Passage
    from densekd.index.encode import encode_corpus

    folder = Path(args.work_dir) / f"store-{args.n}-{args.clusters}"
    corpus = [Passage(str(i), str(i)) for i in range(args.n)]
    start = time.perf_counter()
    encode_corpus(SyntheticEncoder(args.clusters, args.noise), corpus, folder, chunk_size=50_000,
                  fingerprint=f"synthetic-{args.clusters}-{args.noise}")
    return folder, time.perf_counter() - start, peak_rss_gb()


def queries(args: argparse.Namespace) -> np.ndarray:
    """``--queries`` perturbed copies of random corpus vectors, unit length."""
    rng = np.random.default_rng(123)
    base = SyntheticEncoder(args.clusters, args.noise).vectors(rng.choice(args.n, args.queries, replace=False))
    q = base + 0.5 * args.noise / np.sqrt(DIM) * rng.standard_normal(base.shape).astype(np.float32)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def faiss_threads() -> int:
    import faiss

    return faiss.omp_get_max_threads()


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def dir_size_gb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**30


def worker(args: argparse.Namespace) -> None:
    """One index in this process: build from the store, save, sweep search settings; JSON to --out."""
    from densekd.index.encode import EmbeddingStore

    kind, work = args.worker, Path(args.work_dir)
    store = EmbeddingStore.load(args.store)
    q = queries(args)
    start = time.perf_counter()
    index = store.to_faiss(FACTORIES[kind], train_size=args.train_size, show_progress=False)
    build_s = time.perf_counter() - start
    saved = work / f"index-{kind}"
    index.save(saved)
    result: dict[str, Any] = {"factory": FACTORIES[kind], "build_s": build_s, "index_size_gb": dir_size_gb(saved),
                              "n": len(index), "sweep": []}
    truth = None if kind == "flat" else np.load(work / "truth.npy")
    for params in SWEEPS[kind]:
        index.search_arrays(q[:20], 10, **params)  # warm-up
        start = time.perf_counter()
        _, hits = index.search_arrays(q, 10, **params)
        seconds = time.perf_counter() - start
        pos = np.asarray([[int(h) for h in row] + [-1] * (10 - len(row)) for row in hits])
        point = {"params": params, "qps": len(q) / seconds}
        if truth is None:
            np.save(work / "truth.npy", pos)
        else:
            point["recall@10"] = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(pos, truth)]))
        result["sweep"].append(point)
        print(kind, point, flush=True)
    result["peak_rss_gb"] = peak_rss_gb()
    Path(args.out).write_text(json.dumps(result))


def run_worker(args: argparse.Namespace, kind: str, store: Path) -> dict[str, Any]:
    out = Path(args.work_dir) / f"{kind}.json"
    cmd = [sys.executable, __file__, "--worker", kind, "--store", str(store), "--out", str(out),
           "--work-dir", args.work_dir, "--n", str(args.n), "--clusters", str(args.clusters),
           "--noise", str(args.noise), "--queries", str(args.queries), "--train-size", str(args.train_size)]
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())


def reuse_or_run(args: argparse.Namespace, kind: str, store: Path) -> dict[str, Any]:
    """``--reuse``: an index measured by an earlier run in the same work folder with the same factory and
    sweep is read back instead of rebuilt (its JSON records both); otherwise build it now."""
    out = Path(args.work_dir) / f"{kind}.json"
    if args.reuse and out.is_file() and (kind != "flat" or (Path(args.work_dir) / "truth.npy").is_file()):
        old = json.loads(out.read_text())
        if old["factory"] == FACTORIES[kind] and [p["params"] for p in old["sweep"]] == SWEEPS[kind] \
                and old["n"] == args.n:
            print(f"{kind}: reusing {out}", flush=True)
            return {**old, "reused_from_earlier_run": True}
    return run_worker(args, kind, store)


def operating_point(result: dict[str, Any], flat_qps: float) -> dict[str, Any]:
    """The fastest swept setting with recall@10 >= target (else the most accurate one)."""
    ok = [p for p in result["sweep"] if p["recall@10"] >= TARGET_RECALL]
    best = max(ok, key=lambda p: p["qps"]) if ok else max(result["sweep"], key=lambda p: p["recall@10"])
    return {"recall@10": best["recall@10"], "qps": best["qps"], "params": best["params"],
            "speedup_vs_flat": best["qps"] / flat_qps, "meets_recall_target": bool(ok)}


# ------------------------------------------------------------------ part 2: sharded text encoding
def scifact_passages(n: int) -> list[Any]:
    from densekd.data.beir import load_corpus

    corpus = load_corpus(SHARED_DATA / "scifact" / "corpus.jsonl")
    return [corpus[pid] for pid in list(corpus)[:n]]


def encode_worker(args: argparse.Namespace) -> None:
    """Encode the SciFact slice (one shard of it with ``--shard-index``) with MiniLM at length 256."""
    import torch

    from densekd.encoders.dense import DenseEncoder
    from densekd.index.encode import encode_corpus

    torch.set_num_threads(args.threads)
    encoder = DenseEncoder.from_pretrained(None, passage_max_length=256)
    shards = 1 if args.shard_index is None else 2
    passages = scifact_passages(args.encode_passages)
    start = time.time()  # wall clock: the parent compares the two shards' spans
    encode_corpus(encoder, passages, args.encode_dir, batch_size=32, chunk_size=32, show_progress=False,
                  fingerprint="minilm-256", num_shards=shards, shard_index=args.shard_index or 0)
    Path(args.out).write_text(json.dumps({"start": start, "end": time.time()}))


def encoding_throughput(args: argparse.Namespace) -> dict[str, Any]:
    """Passages/s of one process (all threads) vs two single-thread shard processes into one store."""
    from densekd.index.encode import EmbeddingStore, finalize_encoding

    base = [sys.executable, __file__, "--encode-passages", str(args.encode_passages)]
    work = Path(args.work_dir)
    one, two = work / "enc-one", work / "enc-two"
    out: dict[str, Any] = {"passages": args.encode_passages, "model": "all-MiniLM-L6-v2", "max_length": 256}
    for folder in (one, two):
        subprocess.run(["rm", "-rf", str(folder)], check=True)
    # timed inside the workers (model loading excluded): first start to last end
    def span(files: list[Path]) -> float:
        times = [json.loads(f.read_text()) for f in files]
        return max(t["end"] for t in times) - min(t["start"] for t in times)

    subprocess.run(base + ["--encode-dir", str(one), "--threads", str(os.cpu_count()), "--out",
                           str(work / "enc-one.json")], check=True)
    out["one_process_passages_per_s"] = args.encode_passages / span([work / "enc-one.json"])
    procs = [subprocess.Popen(base + ["--encode-dir", str(two), "--threads", "1", "--shard-index", str(k),
                                      "--out", str(work / f"enc-two-{k}.json")]) for k in range(2)]
    if any(p.wait() != 0 for p in procs):
        raise SystemExit("a shard process failed")
    finalize_encoding(two)  # idempotent: the last shard to finish has usually written the manifest already
    out["two_shards_passages_per_s"] = args.encode_passages / span([work / f"enc-two-{k}.json" for k in range(2)])
    out["ratio_two_shards_vs_one"] = out["two_shards_passages_per_s"] / out["one_process_passages_per_s"]
    a, b = EmbeddingStore.load(one), EmbeddingStore.load(two)
    out["same_ids"] = a.ids == b.ids
    out["max_abs_diff"] = float(np.abs(np.asarray(a.embeddings) - np.asarray(b.embeddings)).max())
    return out


# ------------------------------------------------------------------------------------ report
def plot(results: dict[str, Any], flat_qps: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, res in results.items():
        if kind == "flat":
            continue
        pts = sorted(res["sweep"], key=lambda p: p["recall@10"])
        ax.plot([p["recall@10"] for p in pts], [p["qps"] for p in pts], "o-", label=f"{kind} ({res['factory']})")
    ax.axhline(flat_qps, color="k", ls="--", label="Flat (exact)")
    ax.axhline(10 * flat_qps, color="grey", ls=":", label="10x Flat")
    ax.axvline(TARGET_RECALL, color="r", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("recall@10 vs Flat")
    ax.set_ylabel("queries / s (log)")
    ax.set_title(f"{results['flat']['n']:,} synthetic 384-d vectors, {faiss_threads()} faiss thread(s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(result: dict[str, Any]) -> str:
    rows = [["flat", result["flat"]["factory"], "exact", 1.0, result["flat"]["qps"], 1.0,
             result["flat"]["build_s"], result["flat"]["index_size_gb"], result["flat"]["peak_rss_gb"]]]
    for kind in ("ivfpq", "ivfpq_codes_only", "hnsw"):
        r = result[kind]
        rows.append([kind, r["factory"], json.dumps(r["params"]), r["recall@10"], r["qps"], r["speedup_vs_flat"],
                     r["build_s"], r["index_size_gb"], r["peak_rss_gb"]])
    table = markdown_table(["index", "factory", "setting", "recall@10", "queries/s", "x Flat", "build s",
                            "size GB", "peak RSS GB"], rows)
    enc = result.get("scifact_encoding")
    enc_md = "" if not enc else (
        f"\n\nSciFact encoding ({enc['passages']} passages, MiniLM, length 256): one process "
        f"{enc['one_process_passages_per_s']:.1f} passages/s; two shard processes merged into one store "
        f"{enc['two_shards_passages_per_s']:.1f} passages/s (ratio {enc['ratio_two_shards_vs_one']:.2f}); "
        f"same ids: {enc['same_ids']}, max |diff| {enc['max_abs_diff']:.1e}.\n")
    return (f"{result['n_vectors']:,} synthetic {DIM}-d vectors ({result['clusters']} clusters), "
            f"{result['n_queries']} queries, k=10, {result['faiss_threads']} faiss thread(s) for every index; encoded into a chunked store in {result['store_encode_s']:.0f} s. "
            f"Operating point: fastest swept setting with recall@10 >= {TARGET_RECALL}."
            + (f" Measured by an earlier run with the same store, factory and sweep (`--reuse`): "
               f"{', '.join(result['reused_indexes'])}." if result["reused_indexes"] else "")
            + f"\n\n{table}{enc_md}\n"
            f"![recall vs speed]({NAME}.png)\n")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="synthetic vectors")
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--noise", type=float, default=0.6, help="within-cluster spread (relative to the centre norm)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--train-size", type=int, default=200_000, help="sample the IVF/PQ indexes are trained on")
    ap.add_argument("--encode-passages", type=int, default=512, help="SciFact passages for part 2 (0 = skip)")
    ap.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "densekd-bench-scale"))
    ap.add_argument("--smoke", action="store_true", help="write to bench/results/smoke/")
    ap.add_argument("--reuse", action="store_true",
                    help="read back indexes an earlier run in --work-dir measured with the same factory and sweep")
    # internal: the per-index and per-shard worker processes
    ap.add_argument("--worker", choices=list(FACTORIES), help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--encode-dir", help=argparse.SUPPRESS)
    ap.add_argument("--shard-index", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        return worker(args)
    if args.encode_dir:
        return encode_worker(args)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    store, store_s, store_rss = synthetic_store(args)
    indexes = {kind: reuse_or_run(args, kind, store) for kind in FACTORIES}
    flat = indexes["flat"]
    flat_qps = flat["sweep"][0]["qps"]
    result: dict[str, Any] = {
        "n_vectors": args.n, "dim": DIM, "clusters": args.clusters, "n_queries": args.queries,
        "store_encode_s": store_s, "store_encode_peak_rss_gb": store_rss, "store_size_gb": dir_size_gb(store),
        "flat": {"qps": flat_qps, "build_s": flat["build_s"], "peak_rss_gb": flat["peak_rss_gb"],
                 "index_size_gb": flat["index_size_gb"], "factory": flat["factory"], "n": flat["n"]}}
    for kind in ("ivfpq", "ivfpq_codes_only", "hnsw"):
        r = indexes[kind]
        result[kind] = {**operating_point(r, flat_qps), "build_s": r["build_s"], "peak_rss_gb": r["peak_rss_gb"],
                        "index_size_gb": r["index_size_gb"], "factory": r["factory"], "sweep": r["sweep"]}
    result["goal_met"] = {k: result[k]["recall@10"] >= TARGET_RECALL and result[k]["speedup_vs_flat"] >= 10
                          for k in ("ivfpq", "hnsw")}
    if args.encode_passages:
        result["scifact_encoding"] = encoding_throughput(args)
    result["faiss_threads"] = faiss_threads()
    result["reused_indexes"] = [k for k, r in indexes.items() if r.get("reused_from_earlier_run")]
    result["provenance"] = {**provenance(), "load_average_1_5_15_at_end": os.getloadavg()}
    results_dir = RESULTS / "smoke" if args.smoke else RESULTS
    results_dir.mkdir(parents=True, exist_ok=True)
    plot({**indexes}, flat_qps, results_dir / f"{NAME}.png")
    write_results(NAME, result, markdown(result), results_dir)
    print(markdown(result))


if __name__ == "__main__":
    main()
