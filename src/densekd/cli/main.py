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
  package (:class:`~densekd.encoders.deps.MissingDependencyError`), and the ``OSError`` of a path the
  user named: permission denied, not a folder, is a folder, read-only file
  system) print one line, ``densekd: error: <message>``, to stderr and exit with status 2 (argparse's
  own usage-error status); anything else is a bug and keeps its traceback.
* Logging: densekd's own loggers report at INFO (step summaries); libraries (transformers, faiss's
  loader, bm25s, torch, ...) only at WARNING, and transformers' weight-loading report not at all,
  unless ``--verbose`` is given, which shows everything at INFO.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from densekd import __version__
from densekd.data.io import DataFormatError
from densekd.encoders.deps import MissingDependencyError

# Module names under densekd.cli.commands, in the order `densekd --help` lists them.
COMMANDS: list[str] = ["run", "mine", "train_teacher", "annotate", "train", "index", "search", "evaluate", "qad"]

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
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the INFO messages of the libraries (transformers, faiss, bm25s, ...)")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"densekd.cli.commands.{name}")
        module.make_parser(subparsers).set_defaults(handler=module.main)
    return parser


# OSErrors that mean "this path cannot be written/read as asked", i.e. the user's path, not a bug.
USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EROFS, errno.EEXIST, errno.ENOENT,
               errno.ENAMETOOLONG, errno.ENOSPC, errno.ENOTEMPTY}


def _message(error: Exception) -> str:
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or 'file not found'}"
    return str(error)


def _user_error(error: BaseException) -> bool:
    if isinstance(error, (DataFormatError, FileNotFoundError)):
        return True
    return isinstance(error, OSError) and error.filename is not None and error.errno in USER_ERRNOS


class _QuietLibraries(logging.Filter):
    """Pass densekd's records at any level and other libraries' at WARNING and above."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name == "densekd" or record.name.startswith("densekd.")


def configure_logging(verbose: bool) -> None:
    """densekd's loggers at INFO; libraries at WARNING (INFO with ``verbose``); see the module docstring."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("densekd").setLevel(logging.INFO)
    if verbose:
        return
    # A filter on the handlers, not logger levels: some libraries (bm25s) set their own level at import.
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
            handler.addFilter(_QuietLibraries())
    # transformers logs its weight-loading report (a table about the new classifier head) as a warning,
    # and draws a bar for loading the weights (seconds); the Trainer's own training bar is plain tqdm
    # and stays. Both settings are read when transformers / huggingface_hub are imported.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # already imported: set them directly
        sys.modules["transformers"].utils.logging.set_verbosity_error()
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``densekd`` command line and return its exit status (0 success, 2 user error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors: return the status instead of exiting
        return e.code if isinstance(e.code, int) else 2
    configure_logging(args.verbose)
    try:
        return args.handler(args)
    except MissingDependencyError as e:
        print(f"densekd: error: {_message(e)}", file=sys.stderr)
        return 2
    except (DataFormatError, OSError) as e:
        if not _user_error(e):
            raise
        print(f"densekd: error: {_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("densekd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
