"""Benchmark: ADAM (dark examples + self-paced distillation) vs plain KL-KD on SciFact dev, 3 seeds.

Usage::

    python bench/adam_scifact.py                    # 6 rows x 3 seeds, query-side-only (~40 min here)
    python bench/adam_scifact.py --smoke            # tiny end-to-end check -> bench/results/smoke/
    python bench/adam_scifact.py --set student.epochs=4 --seeds 0 1

Every row trains the same student (MiniLM, ``configs/scifact-adam.yaml``) with the same seeds, steps,
batch, learning rate and loss (KL to the cross-encoder's logits over the candidate list + 0.1 InfoNCE),
in the cheap **query-side-only** mode: the passage tower is frozen, passages (dark examples included)
are read from vectors encoded once, which is what makes 18 trainings affordable on 2 CPU cores. Rows:

* ``kd``: candidates = positive + ``G - 1`` hard negatives sampled from BM25's top 50 (plain KL-KD).
* ``mixup`` / ``masking`` / ``dark_both``: the same list plus the query's mix-up dark examples (hard
  negative with spans of the positive), masked-positive dark examples, or both, in every list
  (``dark_examples.in_every_group``), scored by the same teacher.
* ``self_paced``: plain candidates, self-paced selection of the instances the teacher is most confident
  about (schedule from the config).
* ``adam``: both kinds of dark examples + self-paced.

The dark examples are generated and scored once (the config's ``dark_examples`` with both kinds on) and
each row keeps the kinds it uses, so every row sees identical examples and teacher scores. The cross-encoder
teacher, its annotations and the frozen vectors come from the pipeline cache (nothing is retrained when
``densekd run configs/scifact-kd.yaml`` ran before). Writes ``bench/results/adam_scifact.{json,md,png}``:
per row nDCG@10 / R@100 mean and std over seeds, and a histogram of the teacher's scores per candidate
kind (positives, hard negatives, mix-up, masked).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common import RESULTS, add_pipeline_args, markdown_table, provenance, write_results  # noqa: E402
from densekd.cli.config import load_config  # noqa: E402
from densekd.data.types import TrainGroup  # noqa: E402
from densekd.encoders.dense import DenseEncoder  # noqa: E402
from densekd.eval.metrics import evaluate  # noqa: E402
from densekd.mining.dark_examples import DARK_PREFIX  # noqa: E402
from densekd.pipeline import steps  # noqa: E402
from densekd.pipeline.config import PipelineConfig  # noqa: E402
from densekd.pipeline.report import teacher_score_histograms  # noqa: E402
from densekd.pipeline.run import train_student  # noqa: E402

NAME = "adam_scifact"
#: row -> (dark example kinds kept, self-paced on)
ROWS: dict[str, tuple[tuple[str, ...], bool]] = {
    "kd": ((), False), "mixup": (("mix",), False), "masking": (("mask",), False),
    "dark_both": (("mix", "mask"), False), "self_paced": ((), True), "adam": (("mix", "mask"), True)}
SMOKE_SETTINGS = ["data.max_train_queries=8", "teacher.max_steps=2", "teacher.max_length=128",
                  "student.max_steps=3", "student.batch_size=4", "student.passage_max_length=128",
                  "student.epochs=1", "student.self_paced.warm_epochs=0"]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pipeline_args(ap, "scifact-adam.yaml", "scifact", "bench-adam-scifact")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--smoke", action="store_true", help="tiny settings on a data subset, bench/results/smoke/")
    args = ap.parse_args()
    if args.smoke:
        args.seeds = args.seeds[:2]
    return args


def build_config(args: argparse.Namespace) -> PipelineConfig:
    """Config file < ``--data-root`` < (smoke settings) < ``--set``; always query-side-only here."""
    from distill_vs_st import SMOKE_ROOT, make_smoke_data

    overrides = ["student.train_mode=query_only"] + (SMOKE_SETTINGS if args.smoke else []) + list(args.overrides)
    cfg = load_config(args.config, overrides, PipelineConfig, flags={"data": {"root": str(Path(args.data_root).resolve())}})
    cfg = dataclasses.replace(cfg, output_dir=args.out_dir)
    if args.smoke:
        root = make_smoke_data(cfg, SMOKE_ROOT / "data", 20, 200)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(root)),
                                  cache_dir=str(SMOKE_ROOT / "cache"), output_dir=str(SMOKE_ROOT / "adam"))
    if not (cfg.student.dark_examples.n_mixup and cfg.student.dark_examples.n_masked):
        raise SystemExit("the config must build both kinds of dark examples (n_mixup > 0 and n_masked > 0)")
    return cfg


def kind_of(pid: str) -> str:
    """``"mix"`` / ``"mask"`` for a dark example id (``dark:<kind>:<qid>:<k>``), ``"mined"`` otherwise."""
    return pid.split(":", 2)[1] if pid.startswith(DARK_PREFIX) else "mined"


def keep_kinds(groups: list[TrainGroup], kinds: tuple[str, ...]) -> list[TrainGroup]:
    """The groups with only the dark examples of ``kinds`` (mined negatives and scores untouched)."""
    out = []
    for g in groups:
        neg = [n for n in g.neg_ids if kind_of(n) == "mined" or kind_of(n) in kinds]
        extra = {pid: t for pid, t in (g.extra_passages or {}).items() if kind_of(pid) in kinds}
        scores = {pid: s for pid, s in g.teacher_scores.items() if pid in g.pos_ids or pid in neg}
        out.append(TrainGroup(g.qid, g.pos_ids, neg, scores, extra or None))
    return out


def row_context(ctx: steps.Context, out: Path, kinds: tuple[str, ...], self_paced: bool, seed: int) -> steps.Context:
    s = ctx.cfg.student
    dark = dataclasses.replace(s.dark_examples, enabled=bool(kinds),
                               n_mixup=s.dark_examples.n_mixup if "mix" in kinds else 0,
                               n_masked=s.dark_examples.n_masked if "mask" in kinds else 0)
    student = dataclasses.replace(s, seed=seed, dark_examples=dark,
                                  self_paced=dataclasses.replace(s.self_paced, enabled=self_paced))
    return dataclasses.replace(ctx, cfg=dataclasses.replace(ctx.cfg, output_dir=str(out), student=student))


def run_row(ctx: steps.Context, name: str, groups: list[TrainGroup], table: Any, store: Any,
            seed: int) -> dict[str, Any]:
    """Train one (row, seed) student query-side-only and evaluate it against the frozen corpus vectors."""
    kinds, self_paced = ROWS[name]
    rctx = row_context(ctx, Path(ctx.cfg.output_dir) / f"{name}-seed{seed}", kinds, self_paced, seed)
    model_dir, summary = train_student(rctx, keep_kinds(groups, kinds), table)
    metrics = evaluate(steps.dense_run(DenseEncoder.from_pretrained(model_dir), store, rctx), ctx.eval_qrels,
                       steps.METRICS)
    print(f"[{name} seed {seed}] nDCG@10 {metrics['ndcg@10']:.4f} R@100 {metrics['recall@100']:.4f} "
          f"({summary['train_seconds']} s, {summary['steps']} steps)", flush=True)
    return {"metrics": metrics, "train_seconds": summary["train_seconds"], "steps": summary["steps"]}


def summarise(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean / std (population over seeds) of each metric, plus the per-seed values."""
    out: dict[str, Any] = {}
    for m in ("ndcg@10", "recall@100", "mrr@10"):
        vals = [r["metrics"][m] for r in runs.values()]
        out[f"{m}_mean"] = statistics.fmean(vals)
        out[f"{m}_std"] = statistics.pstdev(vals) if len(vals) > 1 else 0.0
        out[f"{m}_per_seed"] = vals
    out["train_seconds_mean"] = statistics.fmean(r["train_seconds"] for r in runs.values())
    out["steps"] = sorted({r["steps"] for r in runs.values()})
    return out


def score_distributions(groups: list[TrainGroup]) -> dict[str, list[float]]:
    """Teacher logits per candidate kind: positives, mined hard negatives, mix-up and masked dark examples."""
    dist: dict[str, list[float]] = {"positives": [], "hard negatives": [], "mix-up dark": [], "masked dark": []}
    names = {"mined": "hard negatives", "mix": "mix-up dark", "mask": "masked dark"}
    for g in groups:
        dist["positives"] += [g.teacher_scores[p] for p in g.pos_ids]
        for n in g.neg_ids:
            dist[names[kind_of(n)]].append(g.teacher_scores[n])
    return dist


def plot(rows: dict[str, Any], dist: dict[str, list[float]], path: Path) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    names = list(rows)
    ax1.bar(names, [rows[n]["ndcg@10_mean"] for n in names], yerr=[rows[n]["ndcg@10_std"] for n in names],
            capsize=4, color="#4c72b0")
    lo = min(rows[n]["ndcg@10_mean"] - rows[n]["ndcg@10_std"] for n in names)
    ax1.set_ylim(max(0.0, lo - 0.02), None)
    ax1.set_ylabel("nDCG@10 (SciFact dev, mean ± std over seeds)")
    ax1.set_title("ADAM ablation (query-side-only students)")
    ax1.tick_params(axis="x", rotation=20)
    teacher_score_histograms(ax2, dist)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    cfg = build_config(args)
    ctx = steps.load_context(cfg)
    train_run, eval_run, bm25_key = steps.bm25_runs(ctx)
    groups, mined_key = steps.mine(ctx, train_run, bm25_key)
    scorer = steps.teacher(ctx, groups, mined_key)
    scored = steps.annotate_groups(ctx, groups, mined_key, scorer)
    dark = steps.dark_examples(ctx, groups, scored, mined_key, scorer)
    base = cfg.student.model
    base_encoder = DenseEncoder.from_pretrained(base, passage_max_length=cfg.student.passage_max_length)
    store = steps.corpus_embeddings(ctx, base, cfg.student.passage_max_length, "zeroshot")
    table = steps.query_only_table(ctx, dark, store, base, cfg.student.passage_max_length)
    baselines = {"bm25": evaluate(eval_run, ctx.eval_qrels, steps.METRICS),
                 "zeroshot": evaluate(steps.dense_run(base_encoder, store, ctx), ctx.eval_qrels, steps.METRICS)}

    start = time.perf_counter()
    per_run = {name: {seed: run_row(ctx, name, dark, table, store, seed) for seed in args.seeds} for name in args.rows}
    rows = {name: summarise(runs) for name, runs in per_run.items()}
    dist = score_distributions(dark)
    result = report(args, cfg, rows, baselines, dist, ctx, time.perf_counter() - start)
    results_dir = RESULTS / "smoke" if args.smoke else RESULTS
    results_dir.mkdir(parents=True, exist_ok=True)
    plot(rows, dist, results_dir / f"{NAME}.png")
    write_results(NAME, result, markdown(result), results_dir)


def report(args: argparse.Namespace, cfg: PipelineConfig, rows: dict[str, Any], baselines: dict[str, Any],
           dist: dict[str, list[float]], ctx: steps.Context, seconds: float) -> dict[str, Any]:
    kd, full = rows.get("kd"), rows.get("adam")
    verdict = None
    if kd and full:
        gain = full["ndcg@10_mean"] - kd["ndcg@10_mean"]
        spread = max(full["ndcg@10_std"], kd["ndcg@10_std"])
        verdict = {"adam_minus_kd_ndcg@10": gain, "spread": spread, "goal_met": gain >= 0.01 + spread}
    quantiles = {k: statistics.quantiles(v, n=4) + [statistics.fmean(v)] for k, v in dist.items() if len(v) > 1}
    return {"rows": rows, "seeds": args.seeds, "baselines": baselines, "verdict": verdict,
            "teacher_score_quartiles_and_mean": quantiles,
            "settings": {"student": dataclasses.asdict(cfg.student), "teacher": dataclasses.asdict(cfg.teacher),
                         "mining": dataclasses.asdict(cfg.mining), "data_root": cfg.data.root,
                         "train_queries": len(ctx.train_qrels), "dev_queries": len(ctx.eval_qrels)},
            "bench_seconds": round(seconds, 1), "provenance": provenance()}


def markdown(result: dict[str, Any]) -> str:
    header = ["row", "nDCG@10 mean", "± std", "R@100 mean", "± std", "per-seed nDCG@10", "train s"]
    table = [[n, r["ndcg@10_mean"], r["ndcg@10_std"], r["recall@100_mean"], r["recall@100_std"],
              " / ".join(f"{v:.4f}" for v in r["ndcg@10_per_seed"]), round(r["train_seconds_mean"], 1)]
             for n, r in result["rows"].items()]
    base = [[n, m["ndcg@10"], "", m["recall@100"], "", "", ""] for n, m in result["baselines"].items()]
    q = result["teacher_score_quartiles_and_mean"]
    qtable = markdown_table(["candidates", "q1", "median", "q3", "mean"],
                            [[k, *[round(x, 2) for x in v]] for k, v in q.items()])
    return (f"Seeds {result['seeds']}, SciFact dev ({result['settings']['dev_queries']} queries), "
            f"query-side-only students.\n\n" + markdown_table(header, base + table)
            + f"\n\nVerdict (full ADAM vs plain KD): `{result['verdict']}`\n\n"
            + "Teacher logits per candidate kind (training queries):\n\n" + qtable + f"\n\n![plot]({NAME}.png)\n")


if __name__ == "__main__":
    main()
