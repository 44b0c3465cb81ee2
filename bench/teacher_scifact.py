"""Which teacher knows more than the labels? Every teacher re-ranking the same SciFact dev candidates.

Usage::

    python bench/teacher_scifact.py                      # configs/scifact-kd.yaml; members cached with `densekd run`
    python bench/teacher_scifact.py --with-cross-encoder # also train and score a cross-encoder (+ ~15 min)
    python bench/teacher_scifact.py --smoke              # tiny end-to-end check -> bench/results/smoke/

Candidates: for every dev query the union of BM25's and the zero-shot dense retriever's top
``teacher.rerank_depth`` (100), exactly what the pipeline's teacher re-ranks; below them BM25's (then
the dense run's) order is kept, so R@100 is comparable across rows. Teachers:

* ``bm25``, ``zeroshot_dense``: the first stages themselves, as re-rankers of the same candidates;
* ``label_dense``: the mean of the labels-only query-side students (``teacher.label_dense.seeds``, each
  trained on every training query by InfoNCE), and ``label_dense_seed<k>`` one of them;
* ``label_dense+<w>bm25`` (and ``+0.2dense``): per-query z-scored fusions. The fusion weight is chosen
  on the *training* queries' out-of-fold scores (each scored by members that never saw it), never on
  dev: ``best_teacher`` is the fusion with the best out-of-fold training nDCG@10;
* with ``--with-cross-encoder``: the config's cross-encoder (trained on the training groups) alone and
  fused with BM25 (0.5, the previous config's recipe; its training scores are in-fold, so no weight
  is chosen for it).

``labels_only_student``: the same members evaluated as retrievers (full-corpus search), mean and std
over seeds: the student a teacher must beat. Timings: training minutes of every member together, and
scoring throughput (candidate pairs per second on dev, query encoding included).

Writes bench/results/teacher_scifact.{json,md,png}.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common import RESULTS, add_pipeline_args, markdown_table, provenance, write_results  # noqa: E402
from distill_vs_st import SMOKE_ROOT, make_smoke_data  # noqa: E402
from densekd.cli.config import load_config  # noqa: E402
from densekd.encoders.dense import DenseEncoder  # noqa: E402
from densekd.eval.metrics import evaluate  # noqa: E402
from densekd.pipeline import steps  # noqa: E402
from densekd.pipeline.candidates import mined_groups  # noqa: E402
from densekd.pipeline.config import PipelineConfig  # noqa: E402
from densekd.pipeline.label_dense import LabelDense, train_label_dense  # noqa: E402
from densekd.pipeline.teacher_signal import fuse_run, member_scores, ranked_union, with_tail  # noqa: E402

NAME = "teacher_scifact"
BM25_WEIGHTS = (0.25, 0.35, 0.5, 0.75, 1.0)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pipeline_args(ap, "scifact-kd.yaml", "scifact", "bench-teacher-scifact")
    ap.add_argument("--with-cross-encoder", action="store_true", help="train and score the config's cross-encoder")
    ap.add_argument("--smoke", action="store_true", help="tiny data and settings, /tmp caches, bench/results/smoke/")
    ap.add_argument("--name", default=NAME, help="results file stem under bench/results (a variant's run leaves "
                    "the main results as they are)")
    return ap.parse_args()


def build_config(args: argparse.Namespace) -> PipelineConfig:
    """Config file < ``--data-root`` < (smoke settings) < ``--set``."""
    smoke = ["data.max_train_queries=12", "teacher.label_dense.epochs=1", "teacher.label_dense.seeds=[0,1]",
             "student.batch_size=4",
             "teacher.max_steps=2", "teacher.max_length=64", "teacher.rerank_depth=10"] if args.smoke else []
    cfg = load_config(args.config, ["student.save_steps=0", *smoke, *args.overrides], PipelineConfig,
                      flags={"data": {"root": str(Path(args.data_root).resolve())}})
    if args.smoke:
        root = make_smoke_data(cfg, SMOKE_ROOT / "data-teacher", 20, 200)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(root)),
                                  cache_dir=str(SMOKE_ROOT / "cache"))
    return cfg


def timed_scores(ctx: Any, cands: dict, signal: str, **kw: Any) -> tuple[dict, float]:
    """One member's scores of ``cands`` and its throughput in pairs per second."""
    start = time.perf_counter()
    run = member_scores(ctx, cands, weights={signal: 1.0}, **kw)[signal]
    return run, sum(len(c) for c in cands.values()) / max(time.perf_counter() - start, 1e-9)


def main() -> None:
    args = parse_args()
    cfg = build_config(args)
    began = time.perf_counter()
    m = mined_groups(cfg)
    ctx, eval_run, base, store, groups = m.ctx, m.eval_run, m.base_encoder, m.store, m.groups
    ld = m.members()
    depth = cfg.teacher.rerank_depth
    firsts = {"dev": m.first_stage(depth), "train": m.first_stage(depth, train=True)}
    cands = {split: ranked_union(runs, depth) for split, runs in firsts.items()}
    qrels = {"dev": ctx.eval_qrels, "train": ctx.train_qrels}

    signals: dict[str, dict] = {"dev": {}, "train": {}}
    speed: dict[str, float] = {}
    for split in ("dev", "train"):
        signals[split]["bm25"], speed["bm25"] = timed_scores(ctx, cands[split], "bm25")
        signals[split]["dense"], speed["dense"] = timed_scores(ctx, cands[split], "dense",
                                                                        base_encoder=base, store=store)
        signals[split]["label_dense"], speed["label_dense"] = timed_scores(ctx, cands[split], "label_dense",
                                                                           store=store, label_dense=ld)
        for k, seed in enumerate(cfg.teacher.label_dense.seeds):  # single members (dev only needs these)
            one = LabelDense(ld.fold_of, [[m[k]] for m in ld.fold_models], [ld.full_models[k]], store=ld.store)
            signals[split][f"label_dense_seed{seed}"] = one.scores(store, {q: ctx.queries[q].text for q in cands[split]},
                                                                   cands[split])

    teachers = {"bm25": {"bm25": 1.0}, "zeroshot_dense": {"dense": 1.0}, "label_dense": {"label_dense": 1.0},
                # one member alone: its scores stand in for the label_dense signal (fuse_run knows no other name)
                **{f"label_dense_seed{s}": {"label_dense": 1.0} for s in cfg.teacher.label_dense.seeds},
                **{f"label_dense+{w:g}bm25": {"label_dense": 1.0, "bm25": w} for w in BM25_WEIGHTS},
                "label_dense+0.5bm25+0.2dense": {"label_dense": 1.0, "bm25": 0.5, "dense": 0.2}}
    rows: dict[str, dict[str, Any]] = {}
    for name, weights in teachers.items():
        row = {}
        for split in ("dev", "train"):
            sigs = signals[split]
            if name.startswith("label_dense_seed"):
                sigs = {**sigs, "label_dense": sigs[name]}
            run = with_tail(fuse_run(cands[split], sigs, weights), firsts[split])
            e = evaluate(run, qrels[split], ["ndcg@10", "recall@100"])
            row.update({"ndcg@10": e["ndcg@10"], "recall@100": e["recall@100"]} if split == "dev"
                       else {"train_oof_ndcg@10": e["ndcg@10"]})
        label = "label_dense" in name
        row["train_minutes"] = round(ld.train_seconds / 60, 2) if label else 0.0
        row["weights"] = weights
        # the slowest weighted model member bounds the teacher's throughput (BM25 scores come with the search)
        models = [speed[s] for s in weights if s in speed]
        row["pairs_per_s"] = round(min(models), 1) if models else None
        rows[name] = row
        print(f"[{name}] dev nDCG@10 {row['ndcg@10']:.3f} R@100 {row['recall@100']:.3f} "
              f"train-OOF {row['train_oof_ndcg@10']:.3f}", flush=True)
    if args.with_cross_encoder:
        rows.update(cross_encoder_rows(ctx, groups, m.mined_key, eval_run, firsts["dev"], cands["dev"], signals["dev"]))

    fused = [n for n in rows if "+" in n and "label_dense" in n]
    best = max(fused, key=lambda n: rows[n]["train_oof_ndcg@10"])  # chosen on training queries, not dev
    students = [evaluate(steps.dense_run(DenseEncoder.from_pretrained(member), store, ctx), ctx.eval_qrels,
                         ["ndcg@10", "recall@100"]) for member in labels_only_members(ctx, m.member_groups, store, ld)]
    labels_only = {"ndcg@10_mean": float(np.mean([s["ndcg@10"] for s in students])),
                   "ndcg@10_std": float(np.std([s["ndcg@10"] for s in students])),
                   "recall@100_mean": float(np.mean([s["recall@100"] for s in students])),
                   "seeds": list(cfg.teacher.label_dense.seeds), "per_seed": students}
    result = {"teachers": rows, "best_teacher": best, "labels_only_student": labels_only,
              "best_margin_over_labels_only": rows[best]["ndcg@10"] - labels_only["ndcg@10_mean"],
              "candidates": {"depth": depth, "mean_per_dev_query": float(np.mean([len(c) for c in cands["dev"].values()]))},
              "settings": {"config": args.config, "overrides": args.overrides,
                           "label_dense": dataclasses.asdict(cfg.teacher.label_dense),
                           "mining": dataclasses.asdict(cfg.mining), "passage_max_length": cfg.student.passage_max_length},
              "wall_seconds": round(time.perf_counter() - began, 1), "provenance": provenance()}
    out = RESULTS / "smoke" if args.smoke else RESULTS
    write_results(args.name, result, markdown(result, args.name), out)
    plot(result, out / f"{args.name}.png")
    print(markdown(result))


def labels_only_members(ctx: Any, groups: list, store: Any, ld: LabelDense) -> list[Path]:
    """The labels-only student of the reference row: the members on all training queries, at the
    student's passage length (the teacher's members may read longer passages; then the student-length
    ones are trained, or reused from the cache, beside them)."""
    if ld.store is None:
        return ld.full_models
    section = dataclasses.replace(ctx.cfg.teacher.label_dense, passage_max_length=None)
    cfg = dataclasses.replace(ctx.cfg, teacher=dataclasses.replace(ctx.cfg.teacher, label_dense=section))
    return train_label_dense(dataclasses.replace(ctx, cfg=cfg), groups, store).full_models


def cross_encoder_rows(ctx: Any, groups: list, mined_key: str, eval_run: dict, first: list, cands: dict,
                       signals: dict) -> dict[str, dict]:
    """The config's cross-encoder (trained on the training groups) re-ranking the same candidates."""
    from densekd.teachers.rerank import rerank

    start = time.perf_counter()
    scorer = steps.teacher(ctx, groups, mined_key)
    minutes = ctx.timings["teacher"]["seconds"] / 60 if not ctx.timings["teacher"]["cached"] else None
    cand_run = {q: {p: 0.0 for p in c} for q, c in cands.items()}
    start = time.perf_counter()
    ce = rerank(scorer, cand_run, ctx.queries, ctx.corpus, k=max(len(c) for c in cands.values()),
                batch_size=ctx.cfg.teacher.score_batch_size, show_progress=True)
    pairs_per_s = sum(len(c) for c in cands.values()) / (time.perf_counter() - start)
    rows = {}
    for name, weights in (("cross_encoder", {"cross_encoder": 1.0}),
                          ("cross_encoder+0.5bm25", {"cross_encoder": 1.0, "bm25": 0.5}),
                          ("label_dense+0.5bm25+0.5cross_encoder", {"label_dense": 1.0, "bm25": 0.5,
                                                                    "cross_encoder": 0.5})):
        m = evaluate(with_tail(fuse_run(cands, {**signals, "cross_encoder": ce}, weights), first), ctx.eval_qrels,
                     ["ndcg@10", "recall@100"])
        rows[name] = {"ndcg@10": m["ndcg@10"], "recall@100": m["recall@100"], "train_oof_ndcg@10": None,
                      "train_minutes": round(minutes, 2) if minutes else None, "weights": weights,
                      "pairs_per_s": round(pairs_per_s, 1)}
        print(f"[{name}] dev nDCG@10 {m['ndcg@10']:.3f}", flush=True)
    return rows


def markdown(r: dict[str, Any], name: str = NAME) -> str:
    lo = r["labels_only_student"]
    table = [[n, v["ndcg@10"], v["recall@100"], v["train_oof_ndcg@10"] if v["train_oof_ndcg@10"] is not None else "",
              v["train_minutes"] if v["train_minutes"] is not None else "(cached)", v["pairs_per_s"] or "-"]
             for n, v in r["teachers"].items()]
    s = r["settings"]
    return (f"SciFact dev, {r['candidates']['mean_per_dev_query']:.0f} candidates per query (BM25 top "
            f"{r['candidates']['depth']} + zero-shot dense top {r['candidates']['depth']}); label_dense members: "
            f"{s['label_dense']}, passage length {s['passage_max_length']}. Fusions are per-query z-scores; the "
            f"weight is chosen on out-of-fold *training* nDCG@10 (column 4), never on dev.\n\n"
            + markdown_table(["teacher", "dev nDCG@10", "dev R@100", "train OOF nDCG@10", "train min",
                              "pairs/s"], table)
            + f"\nLabels-only student (members trained on all training queries at the student's passage length "
              f"{s['passage_max_length']}, seeds {lo['seeds']}): nDCG@10 "
              f"{lo['ndcg@10_mean']:.3f} ± {lo['ndcg@10_std']:.3f}, R@100 {lo['recall@100_mean']:.3f}.\n\n"
              f"Best teacher (by training OOF): **{r['best_teacher']}**, dev nDCG@10 "
              f"{r['teachers'][r['best_teacher']]['ndcg@10']:.3f} = labels-only + "
              f"{r['best_margin_over_labels_only']:+.3f}.\n\nTotal wall time {r['wall_seconds']:.0f} s.\n\n"
              f"![plot]({name}.png)\n")


def plot(r: dict[str, Any], path: Path) -> None:
    names = list(r["teachers"])
    fig, ax = plt.subplots(figsize=(max(7, 0.7 * len(names)), 4))
    x = np.arange(len(names))
    ax.bar(x, [r["teachers"][n]["ndcg@10"] for n in names], color=["C1" if n == r["best_teacher"] else "C0" for n in names])
    lo = r["labels_only_student"]
    ax.axhline(lo["ndcg@10_mean"], color="black", ls="--", lw=1, label="labels-only student")
    ax.set_xticks(x, names, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0.55, 0.9)
    ax.set_ylabel("dev nDCG@10")
    ax.legend(fontsize=8)
    ax.set_title("SciFact dev: teachers re-ranking BM25 + dense top 100")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
