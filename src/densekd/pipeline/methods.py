"""The pipelines ``densekd run`` can run, chosen by the config's top-level ``method`` key.

* ``distill`` (default): cross-encoder -> dual-encoder distillation,
  :class:`~densekd.pipeline.config.PipelineConfig` / :func:`~densekd.pipeline.run.run_pipeline`
  (stage commands ``mine``, ``train-teacher``, ``annotate``, ``train`` stop it early).
* ``fidkd``: reader -> retriever distillation (Izacard & Grave),
  :class:`~densekd.pipeline.fidkd_config.FidKDConfig` / :func:`~densekd.pipeline.fidkd.run_fidkd`
  (no stages: the loop runs whole, each step cached).

Each schema has a ``method`` field, so the key is checked like any other setting by
:func:`densekd.cli.config.load_config` (unknown keys remain errors naming the file).
"""

from __future__ import annotations

from typing import Any

DEFAULT_METHOD = "distill"
METHODS: dict[str, str] = {
    "distill": "cross-encoder -> dual-encoder distillation (BM25, mining, teacher, annotate, student)",
    "fidkd": "reader -> retriever distillation, iterative (BM25, then FiD reader -> scores -> retriever)",
}


def schema(method: str) -> type:
    """The config dataclass of ``method``."""
    if method == "fidkd":
        from densekd.pipeline.fidkd_config import FidKDConfig

        return FidKDConfig
    if method == "distill":
        from densekd.pipeline.config import PipelineConfig

        return PipelineConfig
    raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")


def has_stages(method: str) -> bool:
    """Whether the stage commands (``mine``, ``train`` ...) can stop ``method`` early."""
    return method == "distill"


def run(cfg: Any, until: str | None = None) -> dict[str, Any]:
    """Run the pipeline of ``cfg``'s method (``until``: a stage of the ``distill`` pipeline)."""
    if cfg.method == "fidkd":
        from densekd.pipeline.fidkd import run_fidkd

        if until is not None:
            raise ValueError("method fidkd has no stages: use `densekd run`")
        return run_fidkd(cfg)
    from densekd.pipeline.run import run_pipeline

    return run_pipeline(cfg, until=until)


def summary(cfg: Any, result: dict[str, Any]) -> str | None:
    """The Markdown results table to print after a run (``None`` when the result has none)."""
    if cfg.method == "fidkd":
        from densekd.pipeline.fidkd_report import summary_table

        return summary_table(result)
    if "rows" not in result:
        return None
    from densekd.pipeline.report import metrics_table
    from densekd.pipeline.steps import METRICS

    return metrics_table(result["rows"], METRICS)
