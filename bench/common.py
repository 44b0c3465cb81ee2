"""Shared helpers for benchmark scripts: provenance (command, machine, date, commit) and output.

Every benchmark writes ``bench/results/<name>.json`` (machine-readable), ``<name>.md`` (a Markdown
table with the provenance block) and PNG plots beside them. Results must come from committed code:
the git commit and a dirty flag are recorded so a reader can tell.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from densekd.data.io import write_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SHARED_DATA = Path(os.environ.get("DENSEKD_DATA", REPO.parent / "shared" / "data"))


def add_pipeline_args(ap: argparse.ArgumentParser, config: str, data: str, out: str) -> None:
    """The options every pipeline benchmark shares: ``--config``, ``--set``, ``--data-root``, ``--out-dir``.

    ``config`` is a file name under ``configs/``, ``data`` a folder under the shared data, ``out`` a
    folder under ``runs/``.
    """
    ap.add_argument("--config", default=str(REPO / "configs" / config), help="pipeline YAML")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="pipeline config override (repeatable, applied last)")
    ap.add_argument("--data-root", default=str(SHARED_DATA / data), help="BEIR data folder")
    ap.add_argument("--out-dir", default=str(REPO / "runs" / out), help="output folders of the trained models")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance() -> dict[str, Any]:
    """Command line, date, git commit (+ dirty flag) and machine description."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        # results files written by another benchmark running beside this one do not make the code dirty
        "git_dirty": bool(_git("status", "--porcelain", "--", "src", "bench", ":(exclude)bench/results")),
        "machine": {
            "cpu": cpu,
            "logical_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }


def provenance_markdown(prov: dict[str, Any]) -> str:
    """The provenance block that heads every results table."""
    m = prov["machine"]
    dirty = " (uncommitted changes!)" if prov["git_dirty"] else ""
    return (f"- command: `{prov['command']}`\n- date: {prov['date']}\n"
            f"- commit: `{prov['git_commit']}`{dirty}\n"
            f"- machine: {m['cpu']}, {m['logical_cores']} cores ({m['torch_threads']} torch threads), "
            f"{m['memory_gb']} GiB, Python {m['python']}, torch {m['torch']}\n")


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured Markdown table; floats printed with 3 decimals."""
    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(name: str, result: dict[str, Any], markdown_body: str, results_dir: Path = RESULTS) -> Path:
    """Write ``<name>.json`` and ``<name>.md`` under ``results_dir`` (default ``bench/results``; atomically)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    write_json(results_dir / f"{name}.json", result)
    md = f"# {name}\n\n{provenance_markdown(result['provenance'])}\n{markdown_body}"
    (results_dir / f"{name}.md").write_text(md, encoding="utf-8")
    return results_dir / f"{name}.json"


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n: int, seed: int = 0) -> dict[str, float]:
    """Mean of ``a - b`` (per question) and its 95 % percentile interval over ``n`` resamples of questions."""
    diff = a - b
    idx = np.random.default_rng(seed).integers(0, len(diff), size=(n, len(diff)))
    means = diff[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"delta": float(diff.mean()), "ci95": [float(lo), float(hi)]}
