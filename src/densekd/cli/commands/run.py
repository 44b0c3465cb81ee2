"""``densekd run CONFIG.yaml``: the whole distillation pipeline in one command.

The stage commands ``densekd mine / train-teacher / annotate / train`` run the same pipeline up to
and including their stage (upstream stages come from the cache when already done), so each step can
be run and inspected on its own. All of them take the same YAML file
(:class:`densekd.pipeline.config.PipelineConfig`) and ``--set section.key=value`` overrides.
"""

from __future__ import annotations

import argparse

from densekd.cli.config import load_config, settings_help

EPILOG = """\
examples:
  densekd run configs/scifact-quick.yaml                       # ~10 min on 2 CPU cores, cached on rerun
  densekd run configs/scifact-kd.yaml --set student.seed=7     # the full benchmark setting, another seed
  densekd train-teacher configs/scifact-kd.yaml                # stop after the teacher (and its rerank eval)

outputs (in output_dir): student/model (the distilled encoder), metrics.json, report.md, *.png
one-time costs (BM25 runs, teacher, teacher scores, corpus vectors) are cached in cache_dir.

settings (YAML keys, or --set KEY=VALUE):
"""

STAGES = {
    "run": (None, "run the whole pipeline: BM25 -> mine -> teacher -> annotate -> distil -> evaluate -> report"),
    "mine": ("mine", "pipeline up to hard-negative mining (BM25 candidates for the training queries)"),
    "train-teacher": ("teacher", "pipeline up to training the cross-encoder teacher and its dev rerank eval"),
    "annotate": ("annotate", "pipeline up to scoring every training candidate with the teacher"),
    "train": ("student", "pipeline up to distilling the student (no final evaluation or report)"),
}


def make_stage_parser(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    """Register one pipeline command (``run`` or a stage)."""
    from densekd.pipeline.config import PipelineConfig

    parser = subparsers.add_parser(name, help=STAGES[name][1], description=__doc__, epilog=EPILOG
                                   + "  name, output_dir, cache_dir, encode_batch_size\n"
                                   + settings_help(PipelineConfig),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", metavar="CONFIG.yaml", help="pipeline configuration file")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                        help="override a setting (YAML value), e.g. --set student.max_steps=50; repeatable")
    parser.set_defaults(stage=STAGES[name][0])
    return parser


def main(args: argparse.Namespace) -> int:
    """Run the pipeline (up to ``args.stage``) and print where the results are."""
    import logging

    from densekd.pipeline.config import PipelineConfig
    from densekd.pipeline.run import run_pipeline

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.overrides, PipelineConfig)
    result = run_pipeline(cfg, until=args.stage)
    if "rows" in result:
        from densekd.pipeline.report import metrics_table
        from densekd.pipeline.steps import METRICS

        print(metrics_table(result["rows"], METRICS))
    if args.stage is None:
        print(f"report: {cfg.output_dir}/report.md")
    return 0


def make_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``densekd run``."""
    return make_stage_parser(subparsers, "run")
