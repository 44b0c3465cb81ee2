"""Does distillation pay? The distilled student vs the same student trained on the labels alone, SciFact dev.

Usage::

    python bench/distill_scifact.py                 # configs/scifact-kd.yaml, seeds 0 1 2
    python bench/distill_scifact.py --smoke         # tiny end-to-end check -> bench/results/smoke/
    # Margin-MSE instead of KL (results in distill_scifact_margin_mse.*)
    python bench/distill_scifact.py --name distill_scifact_margin_mse \
        --set 'student.loss={margin_mse: {weight: 1.0, student_temperature: 0.05}, contrastive: {weight: 1.0, temperature: 0.05}}'

Both rows are the pipeline itself (``run_pipeline``, every one-time step cached and shared): for each
seed, ``distilled`` is ``densekd run configs/scifact-kd.yaml --set student.seed=<s>`` and
``labels_only`` the same run with the loss reduced to its InfoNCE term (``--set
student.loss={contrastive: ...}``). So both train on the same groups (the judged queries plus any
self-supervised ones, the same mined negatives), for the same steps and seeds; only the teacher's
scores are dropped. (sentence-transformers comparisons of the training loop itself:
``bench/distill_vs_st.py``.)

Speed: per-query latency at batch 1 on dev queries, the student (query encoding + exact FAISS search)
against its teacher (BM25 search, zero-shot dense retrieval of the candidates, every teacher member's
query encoding and scoring, fusion; plus cross-encoder scoring of the candidates when the fusion uses
one).

Writes bench/results/distill_scifact.{json,md,png}.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common import RESULTS, add_pipeline_args, markdown_table, provenance, write_results  # noqa: E402
from distill_vs_st import make_smoke_data  # noqa: E402
from densekd.cli.config import load_config  # noqa: E402
from densekd.pipeline.config import PipelineConfig  # noqa: E402
from densekd.pipeline.run import run_pipeline  # noqa: E402

NAME = "distill_scifact"
SMOKE_ROOT = Path(tempfile.gettempdir()) / "densekd-bench-smoke"
SMOKE = ["data.max_train_queries=12", "data.pseudo_queries=0", "teacher.label_dense.epochs=1",
         "teacher.label_dense.seeds=[0]", "student.epochs=1", "student.eval_steps=0", "student.batch_size=4"]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pipeline_args(ap, "scifact-kd.yaml", "scifact", "bench-distill-scifact")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="student seeds")
    ap.add_argument("--latency-queries", type=int, default=50, help="dev queries timed at batch 1")
    ap.add_argument("--smoke", action="store_true", help="tiny data and settings, /tmp caches, bench/results/smoke/")
    ap.add_argument("--name", default=NAME, help="results file stem under bench/results (a variant's run, e.g. "
                    "distill_scifact_margin_mse, leaves the main results as they are)")
    args = ap.parse_args()
    if args.smoke:
        args.seeds, args.latency_queries, args.out_dir = args.seeds[:2], 5, str(SMOKE_ROOT / "runs-distill")
    return args


def build_config(args: argparse.Namespace) -> PipelineConfig:
    cfg = load_config(args.config, ["student.save_steps=0", *(SMOKE if args.smoke else []), *args.overrides],
                      PipelineConfig, flags={"data": {"root": str(Path(args.data_root).resolve())}})
    if args.smoke:
        root = make_smoke_data(cfg, SMOKE_ROOT / "data-distill", 20, 200)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(root)),
                                  cache_dir=str(SMOKE_ROOT / "cache"))
    return cfg


def labels_only(cfg: PipelineConfig) -> PipelineConfig:
    """The same run with the student's loss reduced to its InfoNCE term (no teacher scores read)."""
    contrastive = dict(cfg.student.loss.get("contrastive") or {})
    contrastive["weight"] = 1.0
    return dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, loss={"contrastive": contrastive}))


def one_run(cfg: PipelineConfig, out: Path, seed: int) -> dict[str, Any]:
    cfg = dataclasses.replace(cfg, output_dir=str(out), student=dataclasses.replace(cfg.student, seed=seed))
    result = run_pipeline(cfg)
    student = next(n for n in result["rows"] if n.startswith(("distilled student", "labels-only student (InfoNCE)")))
    hybrid = next(n for n in result["rows"] if n.endswith("BM25 hybrid"))
    print(f"[{out.name}] {student}: nDCG@10 {result['rows'][student]['ndcg@10']:.4f}", flush=True)
    return {"rows": result["rows"], "student": result["rows"][student], "hybrid": result["rows"][hybrid],
            "train_seconds": result["student"].get("train_seconds"), "steps": result["student"].get("steps")}


def latency(cfg: PipelineConfig, model_dir: Path, n: int) -> dict[str, float]:
    """Per-query milliseconds at batch 1: the student's search vs its teacher's scoring (p50 and mean)."""
    from densekd.encoders.dense import DenseEncoder
    from densekd.index.bm25 import BM25Index
    from densekd.pipeline import steps
    from densekd.pipeline.candidates import mined_groups
    from densekd.pipeline.teacher_signal import fuse_run, member_scores, ranked_union

    m = mined_groups(cfg)
    ctx, base, store = m.ctx, m.base_encoder, m.store
    ld = m.members() if "label_dense" in cfg.teacher.uses or cfg.mining.retrieval == "bm25+label_dense" else None
    scorer = steps.teacher(ctx, m.groups, m.mined_key) if "cross_encoder" in cfg.teacher.uses else None
    bm25 = BM25Index().index(ctx.corpus)
    faiss = store.to_faiss("Flat", show_progress=False)
    student = DenseEncoder.from_pretrained(model_dir)
    depth = cfg.teacher.rerank_depth
    qids = list(ctx.eval_qrels)[:n]
    t_student, t_teacher = [], []
    for qid in qids:
        text = ctx.queries[qid].text
        start = time.perf_counter()
        faiss.search(student.encode_queries([text]), [qid], k=100)
        t_student.append(time.perf_counter() - start)
        start = time.perf_counter()
        b = bm25.search({qid: text}, k=depth, show_progress=False)
        firsts = [b]  # only the configured second stage: each is timed as part of the teacher
        if cfg.mining.retrieval == "bm25+dense":
            firsts.append(faiss.search(base.encode_queries([text]), [qid], k=depth))
        elif cfg.mining.retrieval == "bm25+label_dense":
            firsts.append(ld.retrieve(store, {qid: text}, depth))
        cands = ranked_union(firsts, depth)
        ce = None
        if scorer is not None:
            pairs = [(text, ctx.corpus[p].full_text()) for p in cands[qid]]
            ce = {qid: dict(zip(cands[qid], scorer.score(pairs).tolist()))}
        fuse_run(cands, member_scores(ctx, cands, ce, base, store, ld), cfg.teacher.fusion)
        t_teacher.append(time.perf_counter() - start)
    ms = {k: 1000 * np.asarray(v) for k, v in (("student", t_student), ("teacher", t_teacher))}
    return {**{f"{k}_ms_p50": float(np.median(v)) for k, v in ms.items()},
            **{f"{k}_ms_mean": float(v.mean()) for k, v in ms.items()}, "queries": len(qids),
            "speedup_p50": float(np.median(ms["teacher"]) / np.median(ms["student"]))}


def summarise(runs: list[dict[str, Any]], key: str) -> dict[str, float]:
    vals = {m: np.array([r[key][m] for r in runs]) for m in ("ndcg@10", "recall@100")}
    return {"ndcg@10_mean": float(vals["ndcg@10"].mean()), "ndcg@10_std": float(vals["ndcg@10"].std()),
            "recall@100_mean": float(vals["recall@100"].mean())}


def main() -> None:
    args = parse_args()
    cfg = build_config(args)
    began = time.perf_counter()
    out = Path(args.out_dir)
    distilled = {s: one_run(cfg, out / f"distilled-seed{s}", s) for s in args.seeds}
    labels = {s: one_run(labels_only(cfg), out / f"labels-only-seed{s}", s) for s in args.seeds}
    first = distilled[args.seeds[0]]["rows"]
    teacher_row = next(n for n in first if n.startswith("teacher rerank"))
    d, lo = summarise(list(distilled.values()), "student"), summarise(list(labels.values()), "student")
    speed = latency(dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, seed=args.seeds[0])),
                    out / f"distilled-seed{args.seeds[0]}" / "student" / "model", args.latency_queries)
    result = {
        "distilled_vs_labels_only": {"distilled_mean": d["ndcg@10_mean"], "distilled_std": d["ndcg@10_std"],
                                     "labels_only_mean": lo["ndcg@10_mean"], "labels_only_std": lo["ndcg@10_std"],
                                     "gain": d["ndcg@10_mean"] - lo["ndcg@10_mean"],
                                     "distilled_recall@100_mean": d["recall@100_mean"],
                                     "labels_only_recall@100_mean": lo["recall@100_mean"]},
        "hybrid_with_bm25": {"distilled": summarise(list(distilled.values()), "hybrid"),
                             "labels_only": summarise(list(labels.values()), "hybrid")},
        "teacher_rerank_ndcg@10": first[teacher_row]["ndcg@10"], "teacher_row": teacher_row,
        "student_within_of_teacher": first[teacher_row]["ndcg@10"] - d["ndcg@10_mean"],
        "student_speedup_vs_teacher": speed["speedup_p50"], "latency": speed,
        "baselines": {n: first[n] for n in ("bm25", "zero-shot dense")},
        "per_seed": {"distilled": {s: r["student"] for s, r in distilled.items()},
                     "labels_only": {s: r["student"] for s, r in labels.items()}},
        "train_seconds": {"distilled": [r["train_seconds"] for r in distilled.values()],
                          "labels_only": [r["train_seconds"] for r in labels.values()]},
        "settings": {"config": args.config, "overrides": args.overrides, "seeds": args.seeds,
                     "student": dataclasses.asdict(cfg.student), "teacher_fusion": dict(cfg.teacher.fusion),
                     "label_dense": dataclasses.asdict(cfg.teacher.label_dense),
                     "data": dataclasses.asdict(cfg.data), "mining": dataclasses.asdict(cfg.mining)},
        "wall_seconds": round(time.perf_counter() - began, 1), "provenance": provenance()}
    res_dir = RESULTS / "smoke" if args.smoke else RESULTS
    result["name"] = args.name
    write_results(args.name, result, markdown(result), res_dir)
    plot(result, res_dir / f"{args.name}.png")
    print(markdown(result))


def markdown(r: dict[str, Any]) -> str:
    c, h, lat = r["distilled_vs_labels_only"], r["hybrid_with_bm25"], r["latency"]
    table = [["BM25", r["baselines"]["bm25"]["ndcg@10"], "", r["baselines"]["bm25"]["recall@100"]],
             ["zero-shot dense", r["baselines"]["zero-shot dense"]["ndcg@10"], "",
              r["baselines"]["zero-shot dense"]["recall@100"]],
             [f"teacher: {r['teacher_row']}", r["teacher_rerank_ndcg@10"], "", ""],
             ["labels-only student", c["labels_only_mean"], c["labels_only_std"], c["labels_only_recall@100_mean"]],
             ["distilled student", c["distilled_mean"], c["distilled_std"], c["distilled_recall@100_mean"]],
             ["labels-only student + BM25", h["labels_only"]["ndcg@10_mean"], h["labels_only"]["ndcg@10_std"],
              h["labels_only"]["recall@100_mean"]],
             ["distilled student + BM25", h["distilled"]["ndcg@10_mean"], h["distilled"]["ndcg@10_std"],
              h["distilled"]["recall@100_mean"]]]
    s = r["settings"]
    return (f"SciFact dev; students: {s['student']['train_mode']}, {s['student']['epochs']:g} epochs, lr "
            f"{s['student']['learning_rate']}, batch {s['student']['batch_size']} x group {s['student']['group_size']}, "
            f"passage length {s['student']['passage_max_length']}, passage head "
            f"{s['student'].get('passage_head') or 'none'} (both arms), seeds {s['seeds']}; distilled loss "
            f"{s['student']['loss']}, labels-only: its InfoNCE term alone; {s['data']['pseudo_queries']} "
            f"self-supervised queries. Mean and std over seeds.\n\n"
            + markdown_table(["system", "nDCG@10", "std", "R@100"], table)
            + f"\nDistilled - labels-only: **{c['gain']:+.4f}** nDCG@10. Teacher - distilled student: "
              f"{r['student_within_of_teacher']:+.4f}.\n\nLatency at batch 1 ({lat['queries']} dev queries, p50): student "
              f"{lat['student_ms_p50']:.1f} ms, teacher {lat['teacher_ms_p50']:.1f} ms: student "
              f"{r['student_speedup_vs_teacher']:.1f}x faster.\n\nTotal wall time {r['wall_seconds']:.0f} s.\n\n"
              f"![plot]({r.get('name', NAME)}.png)\n")


def plot(r: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, key) in enumerate((("labels-only", "labels_only"), ("distilled", "distilled"))):
        vals = [v["ndcg@10"] for v in r["per_seed"][key].values()]
        ax.scatter([i] * len(vals), vals, label=name, zorder=3)
        ax.errorbar([i], [np.mean(vals)], yerr=[np.std(vals)], fmt="_", color="black", capsize=6, zorder=4)
    ax.axhline(r["teacher_rerank_ndcg@10"], color="C3", ls="--", lw=1, label="teacher rerank")
    ax.axhline(r["baselines"]["bm25"]["ndcg@10"], color="gray", ls=":", lw=1, label="BM25")
    ax.set_xticks([0, 1], ["labels-only", "distilled"])
    ax.set_ylabel("dev nDCG@10")
    ax.legend(fontsize=8)
    ax.set_title("SciFact dev: same data, steps and seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
