"""Low-level file helpers shared by every loader and writer.

Contracts
---------
* Every reader that can fail on user data raises :class:`DataFormatError`, whose message names the
  file and, where there is one, the 1-based line number.
* Every writer goes through :func:`atomic_write` (or :func:`atomic_path`): data is written to a
  temporary file in the destination folder and renamed over the target only when complete, so an
  interrupted step never leaves a file that a later step would take as finished.
* Text files are UTF-8. Invalid bytes are an error (never silently replaced). A UTF-8 byte-order mark
  at the very start of a file (spreadsheet exports, Windows editors) is dropped, as ``utf-8-sig``
  decoding does; anywhere else it is an ordinary character.

Id policy (one normaliser, :func:`normalize_id`, used by every loader)
---------------------------------------------------------------------
* Surrounding whitespace is stripped from every id (``"d1 "`` from a spreadsheet export is ``"d1"``):
  ids are compared between files (qrels against runs), and an invisible trailing space would
  otherwise make every comparison fail and every metric 0.0 without a word.
* Whitespace inside an id is kept where the format allows it (JSON, TSV); TREC files cannot hold it.
* An id that is empty after stripping is an error, and so is one holding a lone surrogate
  (``"\\ud800"`` in JSON): it cannot be written back as UTF-8, so the failure would come later, far
  from the line that caused it.
* JSON integers are ids too (BEIR ships some ids as numbers) and are read as their decimal text.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from densekd.data.types import Corpus, Passage

BOM = "\ufeff"  # a UTF-8 byte-order mark, dropped at the start of a file (see the module docstring)


class DataFormatError(ValueError):
    """Bad user input: a malformed file, a broken contract between files, a bad config value.

    Parameters
    ----------
    path
        The offending file (or ``None`` when the input is not a file).
    message
        What is wrong, in words a user can act on.
    line
        1-based line number, where the problem sits on one line.
    """

    def __init__(self, path: str | os.PathLike | None, message: str, line: int | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        self.reason = message
        where = ""
        if self.path is not None:
            where = f"{self.path}:{line}: " if line is not None else f"{self.path}: "
        super().__init__(f"{where}{message}")


def require_file(path: str | os.PathLike) -> Path:
    """Return ``path`` as a :class:`Path`, raising :class:`DataFormatError` if it is not a file."""
    p = Path(path)
    if not p.is_file():
        raise DataFormatError(p, "file not found" if not p.exists() else "not a regular file")
    return p


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each non-blank line, decoding UTF-8 strictly.

    Reading is streamed line by line, so files larger than memory are fine.
    """
    p = require_file(path)
    with open(p, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataFormatError(p, f"invalid UTF-8 ({e.reason} at byte {e.start})", lineno) from None
            line = line.rstrip("\r\n")
            if lineno == 1 and line.startswith(BOM):
                line = line[1:]
            if line.strip():
                yield lineno, line


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each line of a JSON-lines file.

    Raises
    ------
    DataFormatError
        On a line that is not JSON (e.g. a truncated last line) or not a JSON object.
    """
    for lineno, line in iter_lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(path, f"malformed JSON ({e.msg})", lineno) from None
        if not isinstance(obj, dict):
            raise DataFormatError(path, f"expected a JSON object, got {type(obj).__name__}", lineno)
        yield lineno, obj


def iter_tsv(path: str | os.PathLike, n_fields: int | tuple[int, ...]) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` of a tab-separated file, checking the field count."""
    allowed = (n_fields,) if isinstance(n_fields, int) else n_fields
    for lineno, line in iter_lines(path):
        fields = line.split("\t")
        if len(fields) not in allowed:
            want = " or ".join(map(str, allowed))
            raise DataFormatError(path, f"expected {want} tab-separated fields, got {len(fields)}", lineno)
        yield lineno, fields


def get_field(obj: dict[str, Any], key: str | tuple[str, ...], path: str | os.PathLike, line: int,
              types: type | tuple[type, ...] = str, required: bool = True, default: Any = None) -> Any:
    """Read ``obj[key]`` with a type check; ``key`` may be a tuple of accepted aliases."""
    keys = (key,) if isinstance(key, str) else key
    for k in keys:
        if k in obj and obj[k] is not None:
            value = obj[k]
            if not isinstance(value, types):
                want = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
                raise DataFormatError(path, f"field {k!r} must be {want}, got {type(value).__name__}", line)
            return value
    if required:
        raise DataFormatError(path, f"missing field {keys[0]!r}", line)
    return default


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Use this for writers that want a file name rather than a handle (numpy, faiss, safetensors).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would (umask applies)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file for writing; it replaces ``path`` only when the block completes."""
    with atomic_path(path) as tmp:
        encoding = None if "b" in mode else "utf-8"
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    """Atomically write ``rows`` as JSON lines; returns the number of rows written."""
    n = 0
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


# --- small parsing helpers shared by the format modules (beir, msmarco, dpr, trec) ---------------

_INT_RE = re.compile(r"[+-]?[0-9]+")


def parse_int(value: str, path: str | os.PathLike, line: int, what: str) -> int:
    """Parse a base-10 integer field strictly (ASCII digits only; ``int()`` would take ``"1_0"``)."""
    text = value.strip()
    if not _INT_RE.fullmatch(text):
        raise DataFormatError(path, f"{what} must be an integer, got {value!r}", line)
    return int(text)


def parse_float(value: str, path: str | os.PathLike, line: int, what: str) -> float:
    """Parse a finite float field; NaN and infinities are rejected because they break rankings."""
    try:
        number = float(value)
    except ValueError:
        raise DataFormatError(path, f"{what} must be a number, got {value!r}", line) from None
    if not math.isfinite(number):
        raise DataFormatError(path, f"{what} must be finite, got {value!r}", line)
    return number


def collect_passages(path: str | os.PathLike, numbered: Iterable[tuple[int, Passage]]) -> Corpus:
    """Gather ``(line_number, passage)`` pairs into a :data:`Corpus` (file order), rejecting duplicate ids.

    Parameters
    ----------
    path
        The file the passages were read from (named in the error).
    numbered
        ``(line_number, passage)`` pairs, as a format module's line iterator yields them.

    Raises
    ------
    DataFormatError
        On the line of the second passage with an id already seen.
    """
    corpus: Corpus = {}
    for line, passage in numbered:
        if passage.id in corpus:
            raise DataFormatError(path, f"duplicate passage id {passage.id!r}", line)
        corpus[passage.id] = passage
    return corpus


def check_tsv_value(value: str, path: str | os.PathLike, what: str) -> str:
    """Return ``value`` if a TSV writer can store it, else raise :class:`DataFormatError`.

    Tabs and line breaks are rejected rather than escaped: the MS MARCO / DPR / BEIR TSV readers of
    other tools do not unescape, so an escaped text would silently differ from the original there.
    """
    if not value:
        raise DataFormatError(path, f"cannot write an empty {what}")
    if "\t" in value or "\n" in value or "\r" in value:
        raise DataFormatError(path, f"cannot write {what} {value[:40]!r}: it contains a tab or line break")
    return value


def stable_id(*parts: str, prefix: str = "") -> str:
    """A deterministic id from text parts (64-bit BLAKE2b, hex), for records that come without one.

    The same parts give the same id on every machine and run (unlike ``hash()``), so files loaded
    twice or on two workers agree on ids.
    """
    digest = hashlib.blake2b("\x1f".join(parts).encode("utf-8"), digest_size=8).hexdigest()
    return f"{prefix}{digest}"


def normalize_id(value: str | int, path: str | os.PathLike | None, line: int | None, what: str = "id") -> str:
    """The one id normaliser of every loader (policy in the module docstring).

    Parameters
    ----------
    value
        The raw id: text from a file, or a JSON string or integer.
    path, line
        Where it was read (named in the error).
    what
        What the id is, e.g. ``"query id"`` (named in the error).

    Returns
    -------
    str
        The id without surrounding whitespace.

    Raises
    ------
    DataFormatError
        For an empty id, or one holding a lone surrogate (not encodable as UTF-8).

    Examples
    --------
    >>> normalize_id(" d1\\t", "qrels.tsv", 2)
    'd1'
    >>> normalize_id(7, "corpus.jsonl", 1)
    '7'
    """
    text = str(value).strip()
    if not text:
        raise DataFormatError(path, f"empty {what}", line)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise DataFormatError(path, f"{what} {text!r} holds a lone surrogate (an invalid \\u escape)", line) from None
    return text


def get_id(obj: dict[str, Any], key: str | tuple[str, ...], path: str | os.PathLike, line: int,
           required: bool = True) -> str | None:
    """Read an id field through :func:`normalize_id`; JSON integers are accepted (BEIR ships some ids as numbers).

    ``bool`` is rejected although it is an ``int`` subclass, and so is an empty string.
    """
    value = get_field(obj, key, path, line, types=(str, int), required=required)
    if value is None:
        return None
    name = key if isinstance(key, str) else key[0]
    if isinstance(value, bool):
        raise DataFormatError(path, f"field {name!r} must be str/int, got bool", line)
    return normalize_id(value, path, line, f"id in field {name!r}")


def check_token(value: str, path: str | os.PathLike, what: str) -> str:
    """Return ``value`` if it can be a field of a whitespace-separated (TREC) file, else raise.

    A leading byte-order mark is refused too: readers drop one at the start of a file, so the first
    line's id would read back as another id (or vanish).
    """
    if not value or value.split() != [value]:
        raise DataFormatError(path, f"cannot write {what} {value!r}: empty or contains whitespace")
    if value.startswith(BOM):
        raise DataFormatError(path, f"cannot write {what} {value!r}: starts with a byte-order mark")
    return value
