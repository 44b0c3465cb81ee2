"""Checks a command runs on its output path and model folders *before* any work, so bad input fails fast
and writes nothing.

Contracts
---------
* :func:`check_output` refuses an empty path, an output that is one of the command's inputs, lies
  inside an input folder (an index, a model), or, for an output folder, holds an input (publishing
  the new folder would delete it), a path under a file,
  a file output onto a folder (and the reverse), and a folder the user cannot write in. Each raises
  :class:`~densekd.data.io.DataFormatError` naming the option and the path.
* :func:`check_model_folder` refuses a ``--model`` that is not a folder (other than the bundled
  default), instead of letting transformers read the string as a hub repository id and fail with a
  long traceback about repo ids.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from densekd.data.io import DataFormatError

__all__ = ["check_model_folder", "check_output"]

# Names resolve_model_path maps to the bundled MiniLM.
DEFAULT_MODEL_NAMES = ("", "minilm", "all-MiniLM-L6-v2")


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _inside(child: Path, folder: Path) -> bool:
    child, folder = child.resolve(), folder.resolve()
    return child == folder or folder in child.parents


def check_output(option: str, out: str | os.PathLike | None, inputs: Mapping[str, str | os.PathLike | None],
                 kind: Literal["file", "dir"] = "file") -> Path:
    """Check that ``out`` can be written without touching an input; return it as a :class:`Path`.

    Parameters
    ----------
    option
        The option's name as the user typed it, e.g. ``"--out"`` (named in the error).
    out
        The output path.
    inputs
        ``option -> path`` of the command's inputs (``None`` entries are skipped).
    kind
        Whether ``out`` is a file or a folder the command creates.

    Raises
    ------
    DataFormatError
        When writing ``out`` would fail or destroy an input.
    """
    if out is None or not str(out).strip():
        raise DataFormatError(None, f"{option}: empty output path")
    path = Path(out)
    for name, value in inputs.items():
        if value is None or not str(value):
            continue
        src = Path(value)
        if _same(path, src):
            what = "is"
        elif kind == "dir" and src.exists() and _inside(src, path):
            what = "holds"  # publishing the new folder would delete the input
        elif src.is_dir() and _inside(path, src):
            what = "is inside"  # e.g. a run written over a file of the --index folder
        else:
            continue
        raise DataFormatError(path, f"{option} {what} the input {name}: refusing to overwrite it "
                                    "(choose another output path)")
    if path.is_dir() and kind == "file":
        raise DataFormatError(path, f"{option}: is a folder, expected a file path")
    if path.exists() and not path.is_dir() and kind == "dir":
        raise DataFormatError(path, f"{option}: is a file, expected a folder path")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise DataFormatError(path, f"{option}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataFormatError(path, f"{option}: cannot write in {parent} (permission denied)")
    return path


def check_model_folder(option: str, model: str | os.PathLike | None) -> None:
    """Raise :class:`DataFormatError` unless ``model`` is ``None``, a default name or an existing folder."""
    if model is None or str(model) in DEFAULT_MODEL_NAMES:
        return
    path = Path(model)
    if not path.is_dir():
        what = "not a folder" if path.exists() else "folder not found"
        raise DataFormatError(None, f"{option}: {what}: {model}")
