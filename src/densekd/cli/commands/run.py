"""``densekd run CONFIG.yaml``: the whole distillation pipeline in one command.

The stage commands ``densekd mine / train-teacher / annotate / train`` run the same pipeline up to
and including their stage (upstream stages come from the cache when already done), so each step can
be run and inspected on its own. All of them take the same YAML file
(:class:`densekd.pipeline.config.PipelineConfig`) and ``--set section.key=value`` overrides.

The file's top-level ``method`` key (or ``--set method=...``) picks the pipeline
(:mod:`densekd.pipeline.methods`): ``distill`` (default, the above) or ``fidkd`` (reader -> retriever
distillation, :class:`densekd.pipeline.fidkd_config.FidKDConfig`; ``densekd run`` only).
"""

from __future__ import annotations

import argparse
import dataclasses

from densekd.cli.config import load_config, read_yaml, settings_help
from densekd.data.io import DataFormatError

EPILOG = """\
examples:
  densekd run configs/scifact-quick.yaml                       # ~10 min on 2 CPU cores, cached on rerun
  densekd run configs/scifact-kd.yaml --set student.seed=7     # the full benchmark setting, another seed
  densekd train-teacher configs/scifact-kd.yaml                # stop after the teacher (and its rerank eval)
  densekd run configs/squad-fidkd.yaml                         # method: fidkd, reader -> retriever loop

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
    from densekd.pipeline.fidkd_config import FidKDConfig

    parser = subparsers.add_parser(name, help=STAGES[name][1], description=__doc__, epilog=EPILOG
                                   + settings_help(PipelineConfig, top_level=True)
                                   + "\n\nsettings of method: fidkd:\n" + settings_help(FidKDConfig, top_level=True),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", metavar="CONFIG.yaml", help="pipeline configuration file")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                        help="override a setting (YAML value), e.g. --set student.max_steps=50; repeatable")
    parser.set_defaults(stage=STAGES[name][0])
    return parser


def config_method(path: str, overrides: list[str]) -> str:
    """The ``method`` a config asks for: its ``--set method=...`` (last wins), else the file's, else the default."""
    from densekd.pipeline.methods import DEFAULT_METHOD, METHODS

    method = read_yaml(path).get("method", DEFAULT_METHOD)
    for item in overrides:
        key, _, raw = item.partition("=")
        if key.strip() == "method":
            method = raw.strip()
    if not isinstance(method, str) or method not in METHODS:
        raise DataFormatError(path, f"key 'method' must be one of {', '.join(METHODS)}, got {method!r}")
    return method


def check_model_folders(cfg: object, prefix: str = "") -> dict[str, str]:
    """Check every ``model`` / ``path`` setting (``teacher.model``, ``student.model``, ...) names a folder,
    before hours of earlier steps run (:func:`densekd.cli.outputs.check_model_folder`); return them as
    ``"key '<section>.<field>'" -> path``."""
    from densekd.cli.outputs import check_model_folder

    found: dict[str, str] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            found.update(check_model_folders(value, f"{prefix}{f.name}."))
        elif f.name in ("model", "path") and isinstance(value, str):
            check_model_folder(f"key '{prefix}{f.name}'", value)
            found[f"key '{prefix}{f.name}'"] = value
    return found


def main(args: argparse.Namespace) -> int:
    """Run the pipeline of the config's method (up to ``args.stage``) and print where the results are."""
    from densekd.pipeline import methods

    method = config_method(args.config, args.overrides)
    if args.stage is not None and not methods.has_stages(method):
        raise DataFormatError(args.config, f"method {method} has no stages: run it with `densekd run {args.config}`")
    cfg = load_config(args.config, args.overrides, methods.schema(method))
    models = check_model_folders(cfg)
    from densekd.cli.outputs import check_output

    # a start model inside output_dir would be deleted when its step's folder is replaced (e.g. continuing
    # from runs/a/student/model with output_dir runs/a); the cache only ever replaces unfinished folders
    check_output("key 'output_dir'", cfg.output_dir, models, kind="dir")
    check_output("key 'cache_dir'", cfg.cache_dir, {}, kind="dir")
    result = methods.run(cfg, until=args.stage)
    table = methods.summary(cfg, result)
    if table:
        print(table)
    if args.stage is None:
        print(f"report: {cfg.output_dir}/report.md")
    return 0


def make_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``densekd run``."""
    return make_stage_parser(subparsers, "run")
