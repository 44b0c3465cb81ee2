"""``densekd annotate CONFIG.yaml``: the pipeline of :mod:`densekd.cli.commands.run`, up to this stage."""

from __future__ import annotations

import argparse

from densekd.cli.commands.run import main, make_stage_parser

__all__ = ["main", "make_parser"]


def make_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``densekd annotate``."""
    return make_stage_parser(subparsers, "annotate")
