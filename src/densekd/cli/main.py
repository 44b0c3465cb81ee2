"""The ``densekd`` console script: one parser, one subcommand per module of :mod:`densekd.cli.commands`.

Usage::

    densekd index --corpus data/scifact/corpus.jsonl --out indexes/scifact-bm25
    densekd search --index indexes/scifact-bm25 --queries data/scifact/queries.jsonl --split dev --out run.trec
    densekd evaluate --run run.trec --qrels data/scifact/qrels/dev.tsv

Contracts
---------
* A command module defines ``make_parser(subparsers) -> ArgumentParser`` and ``main(args) -> int``
  and holds no logic of its own beyond wiring (it calls library functions). Adding a command is one
  line in :data:`COMMANDS`.
* Command modules import heavy libraries (torch, faiss, ir_measures) inside ``main`` only, so
  ``densekd --help`` stays fast.
* User errors (:class:`~densekd.data.io.DataFormatError`, :class:`FileNotFoundError`, a missing optional
  package: :class:`~densekd.encoders.deps.MissingDependencyError`) print one line,
  ``densekd: error: <message>``, to stderr and exit with status 2 (argparse's own usage-error status);
  anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from densekd import __version__
from densekd.data.io import DataFormatError
from densekd.encoders.deps import MissingDependencyError

# Module names under densekd.cli.commands, in the order `densekd --help` lists them.
COMMANDS: list[str] = ["run", "mine", "train_teacher", "annotate", "train", "index", "search", "evaluate"]

EPILOG = """\
typical workflow:
  densekd run configs/scifact-quick.yaml     # the whole distillation pipeline, cached, with a report

  building blocks:
  densekd index    --corpus data/scifact/corpus.jsonl --out idx/scifact-bm25
  densekd search   --index idx/scifact-bm25 --queries data/scifact/queries.jsonl --split dev --out dev.trec
  densekd evaluate --run dev.trec --qrels data/scifact/qrels/dev.tsv

Every command accepts a config file (densekd run CONFIG.yaml; --config FILE.yaml elsewhere) and --set KEY=VALUE; run `densekd COMMAND --help` for details.
"""


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every command of :data:`COMMANDS` registered."""
    parser = argparse.ArgumentParser(
        prog="densekd", description="Train and evaluate dense retrievers distilled from stronger teachers.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"densekd {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"densekd.cli.commands.{name}")
        module.make_parser(subparsers).set_defaults(handler=module.main)
    return parser


def _message(error: Exception) -> str:
    if isinstance(error, FileNotFoundError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or 'file not found'}"
    return str(error)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``densekd`` command line and return its exit status (0 success, 2 user error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors: return the status instead of exiting
        return e.code if isinstance(e.code, int) else 2
    try:
        return args.handler(args)
    except (DataFormatError, FileNotFoundError, MissingDependencyError) as e:
        print(f"densekd: error: {_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("densekd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
