"""Benchmark: ERNIE-Search on SciFact dev (trained on train), query-only mode, several seeds.

Usage::

    python bench/ernie_scifact.py                 # full run: 4 trained rows x 3 seeds (~50 min, 2 CPU cores)
    python bench/ernie_scifact.py --smoke         # tiny end-to-end check -> bench/results/smoke/
    python bench/ernie_scifact.py --rows cascade --seeds 0 --ernie colbert_temperature=0.5 --tag tune1

Every student starts from all-MiniLM-L6-v2 and is trained by the pipeline's ``train_student`` in
``query_only`` mode; the ColBERT rows are :class:`~densekd.encoders.ernie.ErnieSearchModel` students (a
new 128-d ColBERT head on the shared tower). Their passage side is
the frozen base tower, read from the cached token states (``steps.passage_token_states``: last-layer
hidden states + pooled vectors, computed once), so the dense head is evaluated against the ordinary
cached corpus embeddings of the base model and the ColBERT head against ``colbert_head(cached states)``.
Same data, steps, batch, lr and seeds for every row; only the loss differs (``densekd.losses.ernie``):

* ``dual_contrastive``: dense-head InfoNCE only (weight 1); a plain dense student (see ``row_losses``).
* ``on_the_fly``: + ColBERT->dense KL (self on-the-fly distillation); both heads InfoNCE (weight 1), no
  cross-encoder.
* ``cascade``: teacher->ColBERT KL + ColBERT->dense KL + both InfoNCE terms at the config's weights.
* ``direct_ce``: teacher->dense KL (weight: the cascade's ColBERT->dense weight, so the dense head
  gets one KL term of the same weight in both rows) + dense InfoNCE (the config's dense weight); no
  ColBERT term (a plain dense student with the ``kl`` + ``contrastive`` losses at the ERNIE settings'
  temperatures).

"Teacher" is the config's ``teacher.fusion`` signal: in ``configs/scifact-ernie.yaml`` the scifact-kd
ensemble (cross-fitted labels-only dense members + BM25), the strongest teacher this machine has; the
``ce`` in the row and loss names is the paper's cross-encoder slot, which any teacher fills.
* ``colbert_head``: the cascade model's ColBERT head re-ranking its dense top-100 by exact MaxSim over
  the cached, projected passage tokens; ``colbert_head_retriever`` (extra): the same head scoring every
  passage (exhaustive MaxSim).

Reported: nDCG@10 and R@100 on dev (mean, sample std over seeds, per seed), and ``ms_per_query``:
one pass after training, queries one at a time (1 torch and 1 faiss thread), rows interleaved per
query; dense rows = query encoding + Flat FAISS search of the 5,183 passages; ``colbert_head`` = one query
forward pass (vector and tokens) + the FAISS top-100 + MaxSim over their cached tokens;
``colbert_head_retriever`` = query forward + MaxSim over every stored token + top-100. The teacher (members and scores),
BM25, mining and the corpus embeddings come from the pipeline's caches (``configs/scifact-ernie.yaml``). The
``colbert_head`` row's time is also split per stage of the retrieval cascade (query encoder, dense
top-100, MaxSim re-rank).

Writes bench/results/ernie_scifact.{json,md,png} (``--tag X``: ernie_scifact_X; ``--smoke``: under
bench/results/smoke/, with its own data subset and caches under /tmp).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import faiss  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from common import RESULTS, add_pipeline_args, markdown_table, provenance, write_results  # noqa: E402
from distill_vs_st import Prepared, make_smoke_data, prepare  # noqa: E402
from densekd.cli.config import load_config  # noqa: E402
from densekd.data.types import Run  # noqa: E402
from densekd.encoders.dense import DenseEncoder  # noqa: E402
from densekd.encoders.ernie import ErnieSearchModel  # noqa: E402
from densekd.eval.metrics import evaluate  # noqa: E402
from densekd.index.late_interaction import late_interaction_search  # noqa: E402
from densekd.index.passage_table import PassageEmbeddingTable  # noqa: E402
from densekd.losses.ernie import ErnieLossSettings  # noqa: E402
from densekd.pipeline import steps  # noqa: E402
from densekd.pipeline.config import PipelineConfig  # noqa: E402
from densekd.pipeline.run import train_student  # noqa: E402

NAME = "ernie_scifact"
TRAINED = ["dual_contrastive", "on_the_fly", "cascade", "direct_ce"]
ROW_ORDER = [*TRAINED, "colbert_head", "colbert_head_retriever", "on_the_fly_colbert_head"]
METRICS = ["ndcg@10", "recall@100", "mrr@10"]
SMOKE_ROOT = Path(tempfile.gettempdir()) / "densekd-bench-ernie-smoke"
SMOKE_SETTINGS = ["data.max_train_queries=8", "teacher.max_steps=2", "teacher.max_length=128",
                  "student.max_steps=2", "student.batch_size=4", "student.passage_max_length=128",
                  "student.logging_steps=1"]
OFF = {"dense_contrastive_weight": 0.0, "colbert_contrastive_weight": 0.0, "colbert_to_dense_weight": 0.0,
       "ce_to_colbert_weight": 0.0, "ce_to_dense_weight": 0.0}


# ----------------------------------------------------------------------------------------- setup
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pipeline_args(ap, "scifact-ernie.yaml", "scifact", "bench-ernie-scifact")
    ap.add_argument("--ernie", action="append", default=[], metavar="KEY=VALUE",
                    help="override of the config's ernie loss settings (repeatable), e.g. colbert_temperature=0.5")
    ap.add_argument("--direct-teacher-temperature", type=float, default=-1.0,
                    help="teacher temperature of the direct_ce row; negative (default) = the ERNIE settings' "
                         "teacher_temperature, so that direct and cascade rows read the teacher alike")
    ap.add_argument("--rows", default=",".join(TRAINED), help="trained rows to run (comma-separated)")
    ap.add_argument("--seeds", default="0,1,2", help="student seeds (comma-separated)")
    ap.add_argument("--latency-queries", type=int, default=200, help="dev queries timed per model")
    ap.add_argument("--no-retriever", action="store_true", help="skip the exhaustive ColBERT-head retrieval")
    ap.add_argument("--retrain", action="store_true", help="retrain students even when cached")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch / faiss threads (default 1: on the shared 2-core machine, 2 threads were measured "
                         "3-10x slower than 1 under load, OpenMP workers spinning against other jobs)")
    ap.add_argument("--tag", default="", help="suffix of the result files (tuning runs)")
    ap.add_argument("--smoke", action="store_true", help="tiny settings, /tmp caches, bench/results/smoke/")
    args = ap.parse_args()
    args.rows = [r for r in args.rows.split(",") if r]
    unknown = set(args.rows) - set(TRAINED)
    if unknown:
        ap.error(f"unknown rows {sorted(unknown)}; choose from {TRAINED}")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if args.smoke:
        args.out_dir, args.retrain, args.latency_queries = str(SMOKE_ROOT / "runs"), True, 10
        args.seeds = args.seeds[:2]
    return args


def build_config(args: argparse.Namespace) -> PipelineConfig:
    """Config file < data root < query_only, no checkpoints < (smoke settings) < ``--set``."""
    flags = {"data": {"root": str(Path(args.data_root).resolve())},
             "student": {"train_mode": "query_only", "save_steps": 0}}
    overrides = (SMOKE_SETTINGS if args.smoke else []) + list(args.overrides)
    cfg = load_config(args.config, overrides, PipelineConfig, flags=flags)
    cfg = dataclasses.replace(cfg, output_dir=args.out_dir)
    if cfg.student.architecture != "ernie" or cfg.student.train_mode != "query_only":
        raise SystemExit("this benchmark needs student.architecture=ernie and train_mode=query_only")
    if args.smoke:
        root = make_smoke_data(cfg, SMOKE_ROOT / "data", 20, 200)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(root)),
                                  cache_dir=str(SMOKE_ROOT / "cache"))
    return cfg


def base_settings(cfg: PipelineConfig, extra: list[str]) -> dict[str, Any]:
    """The config's ``ernie`` loss settings with ``--ernie`` overrides (validated by ErnieLossSettings)."""
    settings = dict((cfg.student.loss or {}).get("ernie") or {})
    for item in extra:
        key, _, value = item.partition("=")
        settings[key] = yaml.safe_load(value)
    ErnieLossSettings(**settings)
    return settings


def row_losses(base: dict[str, Any], direct_tt: float | None = None) -> dict[str, dict[str, Any]]:
    """The loss spec of each trained row (module docstring); temperatures and weights from ``base``.

    The rows without a ColBERT term are trained as plain dense students with the equivalent losses
    (``contrastive``, ``kl``: the same functions ``ErnieSearchLoss`` calls): the dense head's gradient is
    identical, and skipping the unused ColBERT head makes them ~3x cheaper.
    """
    d = ErnieLossSettings(**base)
    contrastive = {"temperature": d.dense_temperature, "use_in_batch": d.use_in_batch}
    # the dense head gets one KL term of the same weight in both rows: from the CE (direct_ce) or from
    # the ColBERT head (cascade)
    kl = {"weight": d.colbert_to_dense_weight, "student_temperature": d.dense_temperature,
          "teacher_temperature": d.teacher_temperature if direct_tt is None else direct_tt,
          "scale_by_t2": d.scale_by_t2}
    return {
        "dual_contrastive": {"contrastive": {"weight": 1.0, **contrastive}},
        "on_the_fly": {"ernie": {**base, **OFF, "dense_contrastive_weight": 1.0, "colbert_contrastive_weight": 1.0,
                                 "colbert_to_dense_weight": d.colbert_to_dense_weight}},
        "cascade": {"ernie": {**base, "ce_to_dense_weight": 0.0}},
        "direct_ce": {"kl": kl, "contrastive": {"weight": d.dense_contrastive_weight, **contrastive}},
    }


# ------------------------------------------------------------------------------- training rows
def train_row(p: Prepared, out: Path, loss: dict[str, Any], seed: int, retrain: bool) -> tuple[Path, dict, bool]:
    """One student through the pipeline's cached ``train_student`` (its own output folder)."""
    if retrain and (out / "student").exists():
        shutil.rmtree(out / "student")
    architecture = "ernie" if "ernie" in loss else "dense"
    student = dataclasses.replace(p.ctx.cfg.student, loss=loss, seed=seed, architecture=architecture)
    ctx = dataclasses.replace(p.ctx, cfg=dataclasses.replace(p.ctx.cfg, output_dir=str(out), student=student))
    model_dir, summary = train_student(ctx, p.scored, p.zero_shot_store)
    return model_dir, summary, p.ctx.timings["student"]["cached"]


def dev_texts(p: Prepared) -> dict[str, str]:
    return {qid: p.ctx.queries[qid].text for qid in p.ctx.eval_qrels}


def passage_store(p: Prepared, model: DenseEncoder, states: Any) -> Any:
    """The passage vectors a query_only student searches: the frozen zero-shot store, or with a passage head
    the head over the cached token states (``student.passage_head``)."""
    if model.passage_head is None:
        return p.zero_shot_store
    return PassageEmbeddingTable(states.ids, model.encode_cached_passages(states, states.ids))


def evaluate_model(p: Prepared, model: DenseEncoder, states: Any, colbert: bool,
                   retriever: bool) -> tuple[dict[str, dict], dict[str, float]]:
    """Dense-head metrics (and the ColBERT head's as reranker / retriever) of one trained model."""
    ctx = p.ctx
    dense = steps.dense_run(model, passage_store(p, model, states), ctx)
    out = {"dense": evaluate(dense, ctx.eval_qrels, METRICS)}
    seconds: dict[str, float] = {}
    if colbert:
        start = time.perf_counter()
        store = states.colbert_store(model.colbert_head, model.skip_ids)
        seconds["colbert_store"] = time.perf_counter() - start
        rerank = late_interaction_search(model, store, dev_texts(p), k=100, candidates=dense)
        out["colbert_rerank"] = evaluate(rerank, ctx.eval_qrels, METRICS)
        if retriever:
            start = time.perf_counter()
            full = late_interaction_search(model, store, dev_texts(p), k=100)
            seconds["colbert_exhaustive_search"] = time.perf_counter() - start
            out["colbert_retriever"] = evaluate(full, ctx.eval_qrels, METRICS)
    return out, seconds


def summarize(per_seed: list[dict[str, float]]) -> dict[str, Any]:
    """Mean, sample std (ddof=1; 0 for one seed) and per-seed values of every metric."""
    out: dict[str, Any] = {}
    for m in METRICS:
        values = np.array([r[m] for r in per_seed])
        out[f"{m}_mean"] = float(values.mean())
        out[f"{m}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out[f"{m}_per_seed"] = values.tolist()
    return out


def teacher_row(p: Prepared) -> dict[str, Any]:
    """The distilled teacher signal re-ranking the dev candidates, as the pipeline reports it."""
    cfg = p.ctx.cfg
    ce_run = steps.teacher_dev_run(p.ctx, p.scorer, p.eval_run, p.bm25_key) if p.scorer is not None else None
    from densekd.pipeline.teacher_signal import teacher_dev_runs

    first = p.mined.first_stage(cfg.teacher.rerank_depth)
    dense_first = first[1] if len(first) > 1 else None

    runs = teacher_dev_runs(p.ctx, ce_run, p.eval_run, p.base_encoder, p.zero_shot_store,
                                  label_dense=p.label_dense, dense_eval_run=dense_first)
    fusion = " + ".join(f"{w:g} {n}" for n, w in cfg.teacher.fusion.items() if w > 0)
    return {"name": f"teacher rerank ({fusion}; top {cfg.teacher.rerank_depth})",
            "metrics": evaluate(runs["fused"], p.ctx.eval_qrels, METRICS)}


# ------------------------------------------------------------------------------------ latency
@torch.inference_mode()
def latency(p: Prepared, models: dict[str, DenseEncoder], colbert: tuple[ErnieSearchModel, Any] | None,
            n: int, retriever: bool, states: Any) -> dict[str, Any]:
    """Per-query wall time (ms) of each model, queries one at a time, rows interleaved per query."""
    # one Flat index per model: the same size and cost, but a passage head has its own vectors
    indexes = {id(m): passage_store(p, m, states).to_faiss("Flat", show_progress=False)
               for m in [*models.values(), *([colbert[0]] if colbert else [])]}
    texts = list(dev_texts(p).items())[:n]
    for model in models.values():
        model.eval()

    def dense_query(model: DenseEncoder, qid: str, text: str) -> Run:
        vector = model.encode_query(model.tokenize_queries([text]))              # same path as colbert_query
        return indexes[id(model)].search(vector.float().numpy(), [qid], k=100)

    stages: dict[str, list[float]] = {"query encoder (vector + tokens)": [], "dense top-100 (FAISS Flat)": [],
                                      "ColBERT MaxSim re-rank of 100": []}

    def colbert_query(model: ErnieSearchModel, store: Any, qid: str, text: str) -> list[tuple[str, float]]:
        t0 = time.perf_counter()
        emb = model.embed(model.tokenize_queries([text]), passage=False)          # vector + tokens, one pass
        t1 = time.perf_counter()
        run = indexes[id(model)].search(emb.vector.float().numpy(), [qid], k=100)
        t2 = time.perf_counter()
        rows = [store.row_of[pid] for pid in run[qid]]
        scores = store.maxsim(emb.tokens[0][emb.mask[0]].float().numpy(), rows)
        order = np.argsort(-scores, kind="stable")
        t3 = time.perf_counter()
        for name, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2)):
            stages[name].append(dt)
        return [(store.ids[rows[j]], float(scores[j])) for j in order]

    def colbert_exhaustive(model: ErnieSearchModel, store: Any, qid: str, text: str) -> list[tuple[str, float]]:
        emb = model.embed(model.tokenize_queries([text]), passage=False)
        scores = store.maxsim_all(emb.tokens[0][emb.mask[0]].float().numpy())
        top = np.argsort(-scores, kind="stable")[:100]
        return [(store.ids[j], float(scores[j])) for j in top]

    calls = {name: (lambda qid, text, m=model: dense_query(m, qid, text)) for name, model in models.items()}
    if colbert is not None:
        calls["colbert_head"] = lambda qid, text: colbert_query(*colbert, qid, text)
        if retriever:
            calls["colbert_head_retriever"] = lambda qid, text: colbert_exhaustive(*colbert, qid, text)
    # one thread each for torch and faiss: both use OpenMP, and on a shared 2-core machine their
    # worker threads spin against each other and the other jobs (2 threads measured 2-10x slower)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    timings: dict[str, list[float]] = {name: [] for name in calls}
    for qid, text in texts[:5]:  # warm-up
        for call in calls.values():
            call(qid, text)
    for v in stages.values():  # the warm-up's stage times are not measurements
        v.clear()
    load_before = os.getloadavg()
    for qid, text in texts:
        for name, call in calls.items():
            start = time.perf_counter()
            call(qid, text)
            timings[name].append(time.perf_counter() - start)
    load_after = os.getloadavg()
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    return {"queries": len(texts), "torch_threads": 1, "faiss_threads": 1, "loadavg_before": load_before,
            "loadavg_after": load_after,
            "ms_per_query": {k: 1000 * float(np.mean(v)) for k, v in timings.items()},
            "ms_p50": {k: 1000 * float(np.median(v)) for k, v in timings.items()},
            "colbert_stages_ms": {k: 1000 * float(np.mean(v)) for k, v in stages.items() if v}}


# ------------------------------------------------------------------------------ report
def goal(rows: dict[str, dict]) -> dict[str, Any] | None:
    """Cascade vs direct CE->DE on nDCG@10: mean difference, paired per-seed differences, goal test."""
    if not {"cascade", "direct_ce"} <= set(rows):
        return None
    c, d = rows["cascade"], rows["direct_ce"]
    diffs = np.array(c["ndcg@10_per_seed"]) - np.array(d["ndcg@10_per_seed"])
    spread = max(c["ndcg@10_std"], d["ndcg@10_std"])
    diff = c["ndcg@10_mean"] - d["ndcg@10_mean"]
    return {"definition": "mean(cascade) - mean(direct_ce) >= 0.01 + max(std(cascade), std(direct_ce)) on nDCG@10",
            "ndcg@10_diff_mean": diff, "paired_diffs": diffs.tolist(), "spread": spread,
            "met": bool(diff >= 0.01 + spread)}


def goal_on_the_fly(rows: dict[str, dict]) -> dict[str, Any] | None:
    """On-the-fly (ColBERT head -> dense head, no teacher) vs the contrastive-only dense student."""
    if not {"on_the_fly", "dual_contrastive"} <= set(rows):
        return None
    o, d = rows["on_the_fly"], rows["dual_contrastive"]
    diff, spread = o["ndcg@10_mean"] - d["ndcg@10_mean"], max(o["ndcg@10_std"], d["ndcg@10_std"])
    return {"definition": "mean(on_the_fly) - mean(dual_contrastive) >= 0.01 + max(std) on nDCG@10",
            "ndcg@10_diff_mean": diff, "spread": spread, "met": bool(diff >= 0.01 + spread)}


def markdown(result: dict[str, Any]) -> str:
    rows, base = result["rows"], result["baselines"]
    table = [[name, r["ndcg@10_mean"], r["ndcg@10_std"], r["recall@100_mean"], r["recall@100_std"],
              r["mrr@10_mean"], _fmt(r.get("ms_per_query")), _fmt(r.get("train_seconds_mean"), 0)]
             for name, r in ((n, rows[n]) for n in ROW_ORDER if n in rows)]
    table += [[f"({name})", m["ndcg@10"], "-", m["recall@100"], "-", m["mrr@10"], "-", "-"] for name, m in base.items()]
    body = markdown_table(["row", "nDCG@10", "std", "R@100", "std", "MRR@10", "ms/query", "train s"], table)
    g = result.get("goal")
    if g:
        body += (f"\nCascade - direct CE->DE: {g['ndcg@10_diff_mean']:+.4f} nDCG@10 (per seed "
                 f"{', '.join(f'{x:+.4f}' for x in g['paired_diffs'])}; spread {g['spread']:.4f}). Goal "
                 f"({g['definition']}): **{'met' if g['met'] else 'not met'}**.\n")
    o = result.get("goal_on_the_fly")
    if o:
        body += (f"\nOn-the-fly - dual contrastive: {o['ndcg@10_diff_mean']:+.4f} nDCG@10 (spread "
                 f"{o['spread']:.4f}). Goal ({o['definition']}): **{'met' if o['met'] else 'not met'}**.\n")
    stages = result["latency"].get("colbert_stages_ms")
    if stages:
        body += ("\nRetrieval cascade (`colbert_head`), ms/query per stage: "
                 + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()) + ".\n")
    s, lat = result["settings"], result["latency"]
    body += (f"\nSciFact {s['eval_split']} ({s['eval_queries']} queries, {s['corpus_size']} passages), "
             f"{s['train_groups']} training queries; seeds {result['seeds']} (std = sample std over seeds). "
             f"Students start from MiniLM (ColBERT rows: ERNIE-Search, + {s['student']['colbert_dim']}-d ColBERT "
             f"head; rows without a ColBERT term: dense students, same losses), passage head "
             f"{s['student'].get('passage_head') or 'none'} (every row), query_only: "
             f"batch {s['student']['batch_size']} x group {s['student']['group_size']}, {s['steps']} steps "
             f"({s['student']['epochs']} epochs), lr {s['student']['learning_rate']}, max length "
             f"{s['student']['query_max_length']}/{s['student']['passage_max_length']}. Base ERNIE loss "
             f"settings: `{s['ernie_base']}`; per-row specs in the JSON. Latency: {lat.get('queries')} dev "
             f"queries one at a time, 1 torch and 1 faiss thread, load average "
             f"{_loads(lat.get('loadavg_before'))} -> {_loads(lat.get('loadavg_after'))} (the machine is "
             f"shared: compare rows, not absolute values).\n\n![results]({result['name']}.png)\n")
    return body


def _fmt(v: Any, digits: int = 1) -> str:
    return "-" if v is None else f"{float(v):.{digits}f}"


def _loads(v: Any) -> str:
    return "-" if not v else "/".join(f"{x:.1f}" for x in v)


def plot(result: dict[str, Any], path: Path) -> None:
    """nDCG@10 (mean +- std, seeds as dots) and ms/query per row."""
    rows = result["rows"]
    names = [n for n in ROW_ORDER if n in rows]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    x = np.arange(len(names))
    axes[0].bar(x, [rows[n]["ndcg@10_mean"] for n in names], yerr=[rows[n]["ndcg@10_std"] for n in names],
                color="tab:blue", alpha=0.7, capsize=4)
    for i, n in enumerate(names):
        axes[0].scatter([i] * len(rows[n]["ndcg@10_per_seed"]), rows[n]["ndcg@10_per_seed"], color="k", s=10, zorder=3)
    for name, m in result["baselines"].items():
        axes[0].axhline(m["ndcg@10"], ls="--", lw=1, color="tab:gray" if "zero" in name else "tab:red", label=name)
    lo = min([min(rows[n]["ndcg@10_per_seed"]) for n in names] + [m["ndcg@10"] for m in result["baselines"].values()])
    axes[0].set_ylim(max(0.0, lo - 0.02), None)
    axes[0].set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    axes[0].set_title("SciFact dev nDCG@10 (mean +- std over seeds)")
    axes[0].legend(fontsize=7)
    timed = [n for n in names if rows[n].get("ms_per_query") is not None]
    axes[1].bar(timed, [rows[n]["ms_per_query"] for n in timed], color="tab:green")
    axes[1].tick_params(axis="x", rotation=30, labelsize=8)
    axes[1].set_ylabel("ms / query (batch 1)")
    axes[1].set_title("query latency: encode + search (+ MaxSim rerank)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------ main
def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    cfg = build_config(args)
    result: dict[str, Any] = {"name": NAME + (f"_{args.tag}" if args.tag else ""), "provenance": provenance()}
    p = prepare(cfg)
    s = cfg.student
    states = steps.passage_token_states(p.ctx, s.model, s.passage_max_length, "student")
    vec_diff = float(np.abs(np.asarray(p.zero_shot_store.embeddings) - states.vectors).max())
    base = base_settings(cfg, args.ernie)
    direct_tt = args.direct_teacher_temperature if args.direct_teacher_temperature > 0 else None
    losses = row_losses(base, direct_tt)
    zero_shot = steps.dense_run(p.base_encoder, p.zero_shot_store, p.ctx)
    baselines = {"zero-shot dense": evaluate(zero_shot, p.ctx.eval_qrels, METRICS),
                 "bm25": evaluate(p.eval_run, p.ctx.eval_qrels, METRICS)}
    teacher = teacher_row(p)
    baselines[teacher["name"]] = teacher["metrics"]

    per_seed: dict[str, list[dict[str, float]]] = {}
    train_info: dict[str, list[dict[str, Any]]] = {}
    seed0: dict[str, Path] = {}
    for row in args.rows:
        for seed in args.seeds:
            model_dir, summary, cached = train_row(p, Path(args.out_dir) / row / f"seed{seed}", losses[row], seed,
                                                   args.retrain)
            colbert = "ernie" in losses[row]
            model = (ErnieSearchModel if colbert else DenseEncoder).from_pretrained(model_dir).eval()
            metrics, secs = evaluate_model(p, model, states, colbert, colbert and row == "cascade"
                                           and not args.no_retriever)
            per_seed.setdefault(row, []).append(metrics["dense"])
            for head, key in (("colbert_rerank", "colbert_head"), ("colbert_retriever", "colbert_head_retriever")):
                if head in metrics and row == "cascade":
                    per_seed.setdefault(key, []).append(metrics[head])
            if row == "on_the_fly" and "colbert_rerank" in metrics:
                per_seed.setdefault("on_the_fly_colbert_head", []).append(metrics["colbert_rerank"])
            train_info.setdefault(row, []).append({"seed": seed, **summary, "cached": cached, **secs})
            seed0.setdefault(row, model_dir)
            print(f"[{row} seed {seed}] dense nDCG@10 {metrics['dense']['ndcg@10']:.4f} R@100 "
                  f"{metrics['dense']['recall@100']:.4f}"
                  + "".join(f" | {h} nDCG@10 {m['ndcg@10']:.4f}" for h, m in metrics.items() if h != "dense")
                  + f" | train {summary['train_seconds']}s{' (cached)' if cached else ''}", flush=True)

    rows = {name: summarize(v) for name, v in per_seed.items()}
    for row, infos in train_info.items():
        rows[row]["train_seconds_mean"] = float(np.mean([i["train_seconds"] for i in infos]))
    models = {row: (ErnieSearchModel if "ernie" in losses[row] else DenseEncoder).from_pretrained(d).eval()
              for row, d in seed0.items()}
    colbert = None
    if "cascade" in models:
        colbert = (models["cascade"], states.colbert_store(models["cascade"].colbert_head, models["cascade"].skip_ids))
    lat = latency(p, models, colbert, args.latency_queries, "colbert_head_retriever" in rows, states)
    for name, ms in lat["ms_per_query"].items():
        rows[name]["ms_per_query"] = ms
    result.update({
        "rows": rows, "seeds": args.seeds, "baselines": baselines, "goal": goal(rows),
        "goal_on_the_fly": goal_on_the_fly(rows), "latency": lat,
        "teacher": {"name": teacher["name"], "rerank_ndcg@10": teacher["metrics"]["ndcg@10"]},
        "train": train_info, "losses": {r: losses[r] for r in args.rows},
        "checks": {"max_abs_diff_cached_vs_store_vectors": vec_diff, "token_states_shape": list(states.hidden.shape),
                   "token_states_dtype": str(states.hidden.dtype)},
        "settings": {"eval_split": cfg.data.eval_split, "eval_queries": len(p.ctx.eval_qrels),
                     "corpus_size": len(p.ctx.corpus), "train_groups": len(p.scored), "ernie_base": base,
                     "steps": train_info[args.rows[0]][0]["steps"], "student": dataclasses.asdict(s),
                     "teacher": dataclasses.asdict(cfg.teacher), "args": vars(args)},
        "pipeline_steps": p.ctx.timings,
    })
    out_dir = RESULTS / "smoke" if args.smoke else RESULTS
    body = markdown(result)
    write_results(result["name"], result, body, out_dir)
    plot(result, out_dir / f"{result['name']}.png")
    print(body)


if __name__ == "__main__":
    main()
