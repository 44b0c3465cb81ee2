"""Benchmark: CPU encoding speed and quality of densekd's inference backends vs sentence-transformers.

Usage::

    python bench/encode_speed.py                                 # full: 1,000-passage speed sample,
                                                                 # quality on the whole SciFact corpus
    python bench/encode_speed.py --smoke --results-dir /tmp/es   # quick check (numbers not comparable)

Speed: a fixed seeded sample of SciFact passages (``--speed-passages``) encoded at each max length
(128 and 256) by every variant, ``--reps`` times, interleaved (each repetition runs every variant in
a rotated order, so all see the same background load); passages/s = passages x reps / seconds.

* ``densekd-torch``: ``DenseEncoder.encode_passages`` (PyTorch fp32, length-sorted batches);
* ``densekd-onnx``: ONNX Runtime fp32 on densekd's fused export (``--backend onnx``);
* ``densekd-onnx-int8``: dynamic int8 of that export (``--backend onnx-int8``);
* ``densekd-torch-int8``: PyTorch dynamic int8 of the ``nn.Linear`` layers (reference, not a backend);
* ``densekd-qad-onnx-int8``: ``onnx-int8`` of the same model after quantisation-aware distillation
  (``densekd qad``: the model distilled from its own fp32 self under simulated int8; trained once on
  ``--qad-passages`` corpus passages + training queries, cached under ``~/.cache/densekd/bench-qad``);
* ``st-torch``: ``SentenceTransformer.encode`` (PyTorch fp32);
* ``st-onnx`` / ``st-onnx-int8``: sentence-transformers' own ONNX backend (``backend="onnx"``) and its
  ``export_dynamic_quantized_onnx_model`` (the CPU's best config, e.g. avx512_vnni). They need
  ``optimum-onnx``, which pins an older transformers than densekd's, so they run in a second virtual
  environment (``--st-python``; make it with ``bash bench/setup_st_onnx_env.sh``) through
  ``bench/st_backend_worker.py``, timed by the worker around ``encode`` only. Without that environment
  they are EMULATED (sentence-transformers' batching over ONNX Runtime on densekd's export) and the
  results say so.

Quality: nDCG@10 and R@100 on SciFact dev (``--quality-queries`` queries) from ONE full-corpus encoding
per densekd variant at length 256 (queries encoded by the same variant). The sentence-transformers
rows compute the same function as their densekd counterparts (max |embedding diff| on the speed
sample is recorded), so their quality is taken from those rows rather than encoding the corpus again.
Latency: batch-1 p50/p95 of dense (recommended int8 variant and torch), BM25 and hybrid
(``bench/latency.py``'s ``measure_latency``).

Writes ``encode_speed.{json,md,png}`` under ``--results-dir`` (default bench/results).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from common import REPO, RESULTS, SHARED_DATA, markdown_table, provenance, write_results
from latency import measure_latency, smoke_subset

from densekd.data.beir import load_beir
from densekd.encoders.dense import DenseEncoder, resolve_model_path
from densekd.encoders.onnx_backend import OnnxDenseEncoder
from densekd.eval.metrics import evaluate
from densekd.index.faiss_index import FaissIndex

DENSEKD = ("densekd-torch", "densekd-onnx", "densekd-onnx-int8", "densekd-qad-onnx-int8", "densekd-torch-int8")
ST = ("st-torch", "st-onnx", "st-onnx-int8")
# the densekd variant computing the same function as each sentence-transformers row
ST_TWIN = {"st-torch": "densekd-torch", "st-onnx": "densekd-onnx", "st-onnx-int8": "densekd-onnx-int8"}
# sentence-transformers' own int8 export is not densekd's graph: its quality is measured, not borrowed
ST_MEASURED = ("st-onnx-int8",)


class StOnnxEmulation:
    """sentence-transformers-style batching (longest texts first by characters) over an ONNX Runtime model."""

    def __init__(self, onnx_encoder: OnnxDenseEncoder):
        self.enc = onnx_encoder

    def encode(self, texts: list[str], batch_size: int, max_length: int) -> np.ndarray:
        session, names = self.enc._sessions["passage"], self.enc._inputs["passage"]
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.enc.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            batch = self.enc.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                       max_length=max_length, return_tensors="np")
            out[idx] = session.run(None, {k: v.astype(np.int64) for k, v in batch.items() if k in names})[0]
        return out


class StWorker:
    """Client of ``bench/st_backend_worker.py`` running sentence-transformers' ONNX backends in ``python``."""

    def __init__(self, python: str, model: str, cache: Path, scratch: Path):
        self.proc = subprocess.Popen([python, str(Path(__file__).with_name("st_backend_worker.py")),
                                      "--model", model, "--cache", str(cache)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.scratch, self._texts = scratch, {}

    def ask(self, **req: Any) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"st_backend_worker died on {req}")
        return json.loads(line)

    def encoder(self, name: str, backend: str, max_length: int) -> Any:
        """``(texts, batch_size) -> (embeddings, seconds)`` of one sentence-transformers backend."""
        self.ask(cmd="load", name=name, backend=backend, max_length=max_length)

        def encode(texts: list[str], batch_size: int) -> tuple[np.ndarray, float]:
            key = hashlib.sha1("\x00".join(texts).encode()).hexdigest()
            if key not in self._texts:  # written once per text list, not timed
                self._texts[key] = self.scratch / f"texts-{len(self._texts)}.json"
                self._texts[key].write_text(json.dumps(texts))
            out = self.scratch / f"{name}.npy"
            reply = self.ask(cmd="encode", name=name, texts=str(self._texts[key]), batch_size=batch_size, out=str(out))
            return np.load(out), reply["seconds"]
        return encode

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _passage_fn(encoder: Any) -> Any:
    return lambda texts, batch_size: encoder.encode_passages(texts, batch_size=batch_size, show_progress=False)


def build_variants(max_length: int, qad_model: str | None, st_worker: StWorker | None) -> dict[str, Any]:
    """``name -> encode(texts, batch_size) -> np.float32[N, D]`` (or ``(embeddings, seconds)``) per variant."""
    from sentence_transformers import SentenceTransformer

    base = DenseEncoder.from_pretrained(None, passage_max_length=max_length, query_max_length=64)
    onnx, int8 = OnnxDenseEncoder(base, "onnx"), OnnxDenseEncoder(base, "onnx-int8")
    torch_int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(base), {torch.nn.Linear}, dtype=torch.qint8)
    st = SentenceTransformer(resolve_model_path(None), device="cpu")
    st.max_seq_length = max_length
    encoders = {"densekd-torch": base, "densekd-onnx": onnx, "densekd-onnx-int8": int8, "densekd-torch-int8": torch_int8}
    if qad_model is not None:
        qad = DenseEncoder.from_pretrained(qad_model, passage_max_length=max_length, query_max_length=64)
        encoders["densekd-qad-onnx-int8"] = OnnxDenseEncoder(qad, "onnx-int8")
    fns = {name: _passage_fn(e) for name, e in encoders.items()}
    fns["st-torch"] = lambda t, b: st.encode(t, batch_size=b, show_progress_bar=False, convert_to_numpy=True)
    if st_worker is not None:
        fns["st-onnx"] = st_worker.encoder(f"st-onnx-{max_length}", "onnx", max_length)
        fns["st-onnx-int8"] = st_worker.encoder(f"st-onnx-int8-{max_length}", "onnx-int8", max_length)
    else:
        st_onnx, st_int8 = StOnnxEmulation(onnx), StOnnxEmulation(int8)
        fns["st-onnx"] = lambda t, b: st_onnx.encode(t, b, max_length)
        fns["st-onnx-int8"] = lambda t, b: st_int8.encode(t, b, max_length)
    return {"fns": fns, "encoders": encoders}


def interleaved_speed(fns: dict[str, Any], texts: list[str], batch_size: int, reps: int) -> tuple[dict, dict]:
    """passages/s of each variant over ``reps`` rotated-order passes, and each variant's embeddings."""
    names = list(fns)
    for name in names:  # warm-up: thread pools, arenas, lazy init
        fns[name](texts[:batch_size], batch_size)
    seconds = dict.fromkeys(names, 0.0)
    emb: dict[str, np.ndarray] = {}
    for rep in range(reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            t0 = time.perf_counter()
            out = fns[name](texts, batch_size)
            took = time.perf_counter() - t0
            # an out-of-process variant reports the time of its encode call itself (no IPC in it)
            emb[name], took = out if isinstance(out, tuple) else (out, took)
            seconds[name] += took
    return {n: len(texts) * reps / s for n, s in seconds.items()}, emb


def cosine_stats(x: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    cos = (x * ref).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(ref, axis=1))
    return {"min": float(cos.min()), "mean": float(cos.mean()), "max_abs_diff": float(np.abs(x - ref).max())}


def quality(encoder: Any, data: Any, batch_size: int) -> tuple[dict[str, float], np.ndarray]:
    """nDCG@10 / R@100 of one variant (Flat index) and its corpus embeddings."""
    passages = list(data.corpus.values())
    emb = encoder.encode_passages(passages, batch_size=batch_size, show_progress=True)
    index = FaissIndex(emb.shape[1], "Flat")
    index.add([p.id for p in passages], emb)
    qids = list(data.queries)
    q = encoder.encode_queries([data.queries[i].text for i in qids], batch_size=128)
    return evaluate(index.search(q, qids, k=100), data.qrels, ("ndcg@10", "recall@100")), emb


def train_qad(texts: list[str], max_length: int, n_passages: int, steps: int, lr: float) -> str:
    """The QAD model folder: the bundled MiniLM distilled from itself under simulated int8 (cached).

    Trained on a seeded sample of ``n_passages`` corpus passages and the SciFact *training* queries
    (texts only, no labels; no dev query is seen).
    """
    from densekd.training.qad import QadConfig, quantization_aware_distill

    key = hashlib.sha256(json.dumps(["qad-v1", resolve_model_path(None), max_length, n_passages, steps, lr])
                         .encode()).hexdigest()[:16]
    out = Path.home() / ".cache" / "densekd" / "bench-qad" / key
    if (out / "model.safetensors").exists() or any(out.glob("*.safetensors")):
        return str(out)
    rng = np.random.default_rng(1)
    passages = [texts[i] for i in rng.choice(len(texts), min(n_passages, len(texts)), replace=False)]
    queries = [q.text for q in load_beir(SHARED_DATA / "scifact", "train").queries.values()]
    base = DenseEncoder.from_pretrained(None, passage_max_length=max_length, query_max_length=64)
    tmp = Path(tempfile.mkdtemp(prefix=".qad.", dir=out.parent if out.parent.exists() else None))
    student = quantization_aware_distill(base, passages, QadConfig(output_dir=str(tmp / "trainer"), max_steps=steps,
                                                                   learning_rate=lr, disable_tqdm=True),
                                         queries=queries)
    student.save_pretrained(tmp / "model")
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp / "model", out)
    return str(out)


def quality_of_fn(encode: Any, data: Any, batch_size: int) -> dict[str, float]:
    """nDCG@10 / R@100 of a ``(texts, batch_size) -> (embeddings, seconds)`` variant (queries and passages)."""
    pids, qids = list(data.corpus), list(data.queries)
    emb, _ = encode([data.corpus[p].full_text() for p in pids], batch_size)
    index = FaissIndex(emb.shape[1], "Flat")
    index.add(pids, emb)
    q, _ = encode([data.queries[i].text for i in qids], 128)
    return evaluate(index.search(q, qids, k=100), data.qrels, ("ndcg@10", "recall@100"))


def plot(result: dict, path: Path) -> None:
    lengths = [str(n) for n in result["settings"]["lengths"]]
    names = list(result["speed"][lengths[0]])
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(lengths)
    for i, n in enumerate(lengths):
        ax.bar(np.arange(len(names)) + i * width, [result["speed"][n][v] for v in names], width, label=f"max length {n}")
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=20, fontsize=8)
    ax.set_ylabel("passages / s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 256], help="max lengths timed")
    ap.add_argument("--speed-passages", type=int, default=1000, help="size of the fixed speed sample")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions per length")
    ap.add_argument("--batch-size", type=int, default=32, help="encoding batch size (all variants)")
    ap.add_argument("--quality-queries", type=int, default=200, help="SciFact dev queries scored")
    ap.add_argument("--smoke", action="store_true",
                    help="32-passage speed sample, 1 rep, quality on 150 passages / 10 queries (checks the script only)")
    ap.add_argument("--results-dir", default=str(RESULTS), help="where encode_speed.{json,md,png} go")
    ap.add_argument("--st-python", default=str(REPO / ".venv-st-onnx" / "bin" / "python"),
                    help="python of the environment with sentence-transformers + optimum-onnx "
                         "(bench/setup_st_onnx_env.sh); if missing, the st-onnx rows are emulated")
    ap.add_argument("--qad-passages", type=int, default=3200, help="corpus passages QAD trains on (0 = no QAD row)")
    ap.add_argument("--qad-steps", type=int, default=200, help="QAD optimizer steps (batch 16)")
    ap.add_argument("--qad-lr", type=float, default=5e-5, help="QAD learning rate")
    args = ap.parse_args()
    if args.smoke:
        args.speed_passages, args.reps, args.quality_queries = 32, 1, 10
        args.qad_passages, args.qad_steps = min(args.qad_passages, 32), min(args.qad_steps, 2)

    data = load_beir(SHARED_DATA / "scifact", "dev")
    rng = np.random.default_rng(0)
    all_texts = [p.full_text() for p in data.corpus.values()]
    sample = [all_texts[i] for i in np.sort(rng.choice(len(all_texts), args.speed_passages, replace=False))]
    result: dict[str, Any] = {"provenance": provenance(), "settings": vars(args), "speed": {}, "cosine_to_fp32": {}}
    qad_model = (train_qad(all_texts, max(args.lengths), args.qad_passages, args.qad_steps, args.qad_lr)
                 if args.qad_passages else None)
    st_worker = None
    if Path(args.st_python).exists():
        st_worker = StWorker(args.st_python, resolve_model_path(None), Path.home() / ".cache/densekd/bench-st-onnx",
                             Path(tempfile.mkdtemp(prefix="encode_speed.")))
        result["st_environment"] = st_worker.ask(cmd="versions")
    result["st_onnx_emulated"] = st_worker is None
    variants_256 = None
    for length in args.lengths:
        v = build_variants(length, qad_model, st_worker)
        speed, emb = interleaved_speed(v["fns"], sample, args.batch_size, args.reps)
        result["speed"][str(length)] = speed
        result["cosine_to_fp32"][str(length)] = {n: cosine_stats(e, emb["densekd-torch"]) for n, e in emb.items()}
        print(f"[length {length}] " + "  ".join(f"{n} {s:.1f}/s" for n, s in speed.items()))
        if length == max(args.lengths):
            variants_256 = v

    qdata = smoke_subset(data, 150, args.quality_queries) if args.smoke else smoke_subset(
        data, len(data.corpus), args.quality_queries)
    qual, corpus_emb = {}, {}
    for name in (n for n in DENSEKD if n in variants_256["encoders"]):
        qual[name], corpus_emb[name] = quality(variants_256["encoders"][name], qdata, args.batch_size)
        print(f"[quality] {name}: nDCG@10 {qual[name]['ndcg@10']:.4f} R@100 {qual[name]['recall@100']:.4f}")
    for name, twin in ST_TWIN.items():
        if st_worker is not None and name in ST_MEASURED:
            qual[name] = quality_of_fn(variants_256["fns"][name], qdata, args.batch_size)
            print(f"[quality] {name}: nDCG@10 {qual[name]['ndcg@10']:.4f} R@100 {qual[name]['recall@100']:.4f}")
        else:
            qual[name] = {**qual[twin], "from": twin}
    if st_worker is not None:
        st_worker.close()
    names = [n for n in (*DENSEKD, *ST) if n in qual]

    main_len = str(max(args.lengths))
    speed = result["speed"][main_len]
    st_fastest = max(ST, key=lambda n: speed[n])
    fp32 = qual["densekd-torch"]["ndcg@10"]
    # "at equal quality": the fastest densekd variant whose nDCG@10 is within 0.005 of fp32
    eligible = [n for n in DENSEKD if n in qual and fp32 - qual[n]["ndcg@10"] <= 0.005] or ["densekd-torch"]
    best = max(eligible, key=lambda n: speed[n])
    result["variants"] = {n: {"passages_per_s": speed[n], "ndcg@10": qual[n]["ndcg@10"],
                              "recall@100": qual[n]["recall@100"],
                              "passages_per_s_by_length": {k: result["speed"][k][n] for k in result["speed"]},
                              "cosine_to_fp32": result["cosine_to_fp32"][main_len][n],
                              **({"quality_from": qual[n]["from"]} if "from" in qual[n] else {})}
                          for n in names}
    result.update({
        "main_length": int(main_len), "best_variant": best, "st_fastest": st_fastest,
        "best_ratio_vs_st_torch": speed[best] / speed["st-torch"],
        "best_ratio_vs_st_fastest": speed[best] / speed[st_fastest],
        "best_ndcg_drop": fp32 - qual[best]["ndcg@10"],
        "ndcg_drop": {n: fp32 - qual[n]["ndcg@10"] for n in DENSEKD if n in qual},
        "n_speed_passages": len(sample), "n_quality_passages": len(qdata.corpus), "n_quality_queries": len(qdata.queries),
    })
    lat = measure_latency(variants_256["encoders"]["densekd-onnx-int8"], corpus_emb["densekd-onnx-int8"], qdata)
    lat_torch = measure_latency(variants_256["encoders"]["densekd-torch"], corpus_emb["densekd-torch"], qdata,
                                factories=("Flat",))
    result["latency_ms"] = {"dense": lat["dense-Flat"], "dense_hnsw": lat["dense-HNSW32"], "bm25": lat["bm25"],
                            "hybrid": lat["hybrid"], "dense_torch": lat_torch["dense-Flat"],
                            "dense_backend": "onnx-int8"}

    rows = [[n, *[result["speed"][str(L)][n] for L in args.lengths], speed[n] / speed["st-torch"],
             result["variants"][n]["cosine_to_fp32"]["min"], qual[n]["ndcg@10"], qual[n]["recall@100"]]
            for n in names]
    body = markdown_table(["variant", *[f"passages/s @{L}" for L in args.lengths], f"ratio vs st-torch @{main_len}",
                           "min cosine to fp32", "nDCG@10", "R@100"], rows)
    body += (f"\nSpeed: {len(sample)} SciFact passages (seeded sample), batch {args.batch_size}, {args.reps} "
             f"interleaved reps, {torch.get_num_threads()} threads. Quality: {len(qdata.corpus)} passages, "
             f"{len(qdata.queries)} dev queries, length {main_len}, Flat index. "
             + ("`st-onnx` / `st-onnx-int8` are EMULATED (no --st-python environment: onnxruntime on densekd's "
                "export with sentence-transformers' batching); " if st_worker is None else
                "`st-onnx` / `st-onnx-int8`: sentence-transformers' own ONNX backend and dynamic int8 export "
                f"({result['st_environment']['int8_config']}), run in a second environment "
                f"(sentence-transformers {result['st_environment']['sentence-transformers']}, optimum-onnx "
                f"{result['st_environment']['optimum-onnx']}, transformers {result['st_environment']['transformers']}); ")
             + ("`st-onnx-int8`'s quality is measured on its own vectors; the other " if st_worker is not None else "")
             + "sentence-transformers rows take their quality from "
             f"their densekd twin (max |diff| st-torch vs densekd-torch: "
             f"{result['cosine_to_fp32'][main_len]['st-torch']['max_abs_diff']:.1e}).\n\n"
             f"Best densekd variant within 0.005 nDCG@10 of fp32: **{best}**, {result['best_ratio_vs_st_torch']:.2f}x "
             f"st-torch, {result['best_ratio_vs_st_fastest']:.2f}x the fastest sentence-transformers row "
             f"({st_fastest}); nDCG@10 drop {result['best_ndcg_drop']:+.4f}.\n\n")
    body += markdown_table(["search (batch 1)", "p50 ms", "p95 ms", "nDCG@10"],
                           [[n, v["p50"], v["p95"], v["ndcg@10"]] for n, v in result["latency_ms"].items()
                            if isinstance(v, dict)])
    body += "\n![encode speed](encode_speed.png)\n"
    results_dir = Path(args.results_dir)
    write_results("encode_speed", result, body, results_dir)
    plot(result, results_dir / "encode_speed.png")
    print(body)


if __name__ == "__main__":
    main()
