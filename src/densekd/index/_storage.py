"""Private on-disk helpers shared by the index modules: atomic folders and ``.npy`` id maps.

Contracts
---------
* An id map is a 1-D numpy unicode array (dtype ``<U*``) saved with :func:`numpy.save`; it is read
  with ``allow_pickle=False``, so an object array (which would need pickle) is rejected as bad input.
* Resumable encoders keep their cache key in a state file while encoding and in the manifest,
  written last, once complete (:func:`same_key`; the shared logic is :mod:`~densekd.index.chunks`).
  :func:`publish_once` writes such a manifest in one atomic step that exactly one of several
  simultaneous finishers wins.
* :func:`atomic_dir` builds a whole folder under a temporary name beside the target and renames it
  into place only when every file is written, so a reader never sees half an index, and a failed
  rebuild leaves the old folder untouched. The swap is serialised by a lock on the parent folder
  (:func:`publish_dir`), so simultaneous writers of one target never trip over each other.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from densekd.data.io import DataFormatError, atomic_write, require_file, write_json


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def publish_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the folder that contains ``target`` (released on exit).

    Locking the parent folder itself (not a lock file beside the target) leaves nothing behind and
    serialises every publish into that folder across processes; publishes are rare and short.
    """
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where unsupported."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)  # glibc >= 2.28
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a file system without the flag
        return False
    raise OSError(err, os.strerror(err), str(b))


def publish_dir(tmp: Path, target: Path) -> None:
    """Put the finished folder ``tmp`` in place of ``target`` (a sibling), replacing any old one.

    An existing folder is swapped with the new one in one atomic step where the kernel can
    (``renameat2(RENAME_EXCHANGE)``), so a reader sees the old folder or the new one, never none.
    Elsewhere the swap is two renames (old aside, new in), because a folder cannot be renamed over a
    non-empty one. Either way it runs under :func:`publish_lock`: writers publishing the same target
    never interleave (before the lock, about one run in five of four simultaneous ``densekd index``
    failed with ``Directory not empty`` or ``No such file or directory``). The last publish wins; the
    old folder is deleted after the lock is released.
    """
    old = None
    with publish_lock(target):
        if target.is_dir() and not target.is_symlink():
            if _exchange(tmp, target):
                old = tmp  # now holds the previous folder
            else:
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
                os.replace(target, old / "dir")
                os.replace(tmp, target)
        else:
            os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder that replaces ``path`` when the block completes (:func:`publish_dir`).

    The folder gets the permissions of a plain ``mkdir`` (``0777`` less the umask; ``mkdtemp`` makes
    ``0700``, which would hide a shared index from other users). If the block fails, the temporary
    folder is deleted and an existing ``path`` is left exactly as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        publish_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def save_ids(path: str | os.PathLike, ids: Sequence[str]) -> None:
    """Atomically write ``ids`` as a unicode ``.npy`` array (never pickled)."""
    arr = np.asarray(list(ids), dtype=np.str_)
    save_npy(path, arr)


def save_npy(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Atomically write ``arr`` to ``path`` with :func:`numpy.save`, refusing object arrays."""
    # Writing through a handle: given a file *name* not ending in .npy, np.save appends the suffix,
    # which would miss the temporary file that is renamed into place.
    with atomic_write(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)


def load_ids(path: str | os.PathLike) -> list[str]:
    """Read an id map written by :func:`save_ids`.

    Raises
    ------
    DataFormatError
        When the file is missing, unreadable, pickled, or not a 1-D unicode array.
    """
    p = require_file(path)
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataFormatError(p, f"not a readable .npy id map ({e})") from None
    if arr.ndim != 1 or arr.dtype.kind != "U":
        raise DataFormatError(p, f"id map must be a 1-D unicode array, got dtype {arr.dtype} shape {arr.shape}")
    return arr.tolist()


def read_json_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON object from ``path``, raising :class:`DataFormatError` when it is missing or bad."""
    p = require_file(path)
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(p, f"malformed JSON ({e})") from None
    if not isinstance(obj, dict):
        raise DataFormatError(p, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def require_keys(obj: dict[str, Any], keys: dict[str, type | tuple[type, ...]], path: str | os.PathLike) -> None:
    """Check that ``obj`` has each key with the given type (metadata files written by this package)."""
    for key, types in keys.items():
        if key not in obj:
            raise DataFormatError(path, f"missing field {key!r}")
        if not isinstance(obj[key], types) or isinstance(obj[key], bool) and types is int:
            raise DataFormatError(path, f"field {key!r} has the wrong type ({type(obj[key]).__name__})")


def same_key(meta: dict[str, Any], key: dict[str, Any], fields: Sequence[str]) -> bool:
    """Whether ``meta`` (a manifest's or state file's content) holds ``key``'s value for each of ``fields``."""
    return all(meta.get(f) == key[f] for f in fields)


def publish_once(path: Path, meta: dict[str, Any]) -> bool:
    """Create ``path`` holding ``meta`` (as :func:`~densekd.data.io.write_json` writes it) unless an
    equal file is already there.

    Returns ``True`` when this call created (or corrected) the file. The file appears in one atomic
    step (a hard link, which fails when the target exists), so of several shards finishing at once
    exactly one gets ``True`` and is the one to go on (build the index, print the summary).
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write_json(tmp, meta)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            if path.read_bytes() == tmp.read_bytes():
                return False
        except OSError:
            pass  # a file system without hard links: a plain atomic replace (then two may both win)
        os.replace(tmp, path)  # the file there differs (stale): ours was just verified, it wins
        return True
    finally:
        tmp.unlink(missing_ok=True)
