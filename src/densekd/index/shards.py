"""Sharded corpus encoding: which shard this process runs, how shards wait for each other, and the
merge that finishes the folder (:func:`finalize_encoding`).

:func:`densekd.index.encode.encode_corpus` uses this module; the folder format is documented there.

Contracts
---------
* Shard ``k`` of ``N`` owns chunks ``i`` with ``i % N == k`` (:meth:`ShardSpec.owns`): interleaved,
  so every shard gets about the same work whatever the corpus size.
* :func:`resolve_shards` takes explicit values first; ``None`` means "from the environment": the
  initialised ``torch.distributed`` group, else torchrun's ``WORLD_SIZE`` / ``RANK`` variables, else
  one shard. Only shards taken from the environment with more than one process are *grouped*
  (:attr:`ShardSpec.grouped`); explicit ``--num-shards/--shard-index`` processes are independent.
* :func:`shard_group` gives grouped shards a collective :meth:`ShardSync.step` (a barrier that also
  carries failures, so one rank's exception never leaves the others waiting); independent shards
  get a no-op one. Without an initialised group it starts a gloo group from torchrun's variables
  and destroys it on exit; an existing group (e.g. a trainer's) is used as is and left alone.
* :func:`publish_manifest` checks every chunk against the state file's key (ids in corpus order,
  dtype, shape) and publishes ``manifest.json`` with :func:`publish_once`: one atomic step that
  exactly one of several simultaneous finishers wins. :func:`finalize_encoding` is its public,
  idempotent form (an explicit merge).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from densekd.data.io import DataFormatError, write_json
from densekd.data.types import Corpus, Passage
from densekd.index._storage import read_json_file, require_keys

if TYPE_CHECKING:  # encode.py imports this module at its top
    from densekd.index.encode import EmbeddingStore

__all__ = ["ShardSpec", "ShardSync", "finalize_encoding", "publish_manifest", "publish_once", "resolve_shards",
           "shard_group"]

T = TypeVar("T")
# A rank that resumes with its chunks already done waits at the barrier while the others encode, which
# can take hours; gloo's 30-minute default would kill a healthy run. A crashed rank does not hang the
# others: torchrun stops the whole group when one worker dies, and exceptions travel through step().
GROUP_TIMEOUT = timedelta(days=7)


@dataclass(frozen=True)
class ShardSpec:
    """This process's share of the work.

    Attributes
    ----------
    num_shards
        How many processes split the work.
    index
        This process's shard, ``0 <= index < num_shards``; shard 0 is the leader.
    grouped
        Whether the shards form a ``torch.distributed`` group (torchrun) and can wait for each other.
    """

    num_shards: int = 1
    index: int = 0
    grouped: bool = False

    def __post_init__(self) -> None:
        if self.num_shards < 1 or not 0 <= self.index < self.num_shards:
            raise ValueError(f"shard index {self.index} is not in [0, {self.num_shards}) "
                             "(num_shards must be >= 1)")

    def owns(self, chunk: int) -> bool:
        """Whether chunk number ``chunk`` is this shard's work."""
        return chunk % self.num_shards == self.index


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_shards(num_shards: int | None = None, shard_index: int | None = None) -> ShardSpec:
    """The :class:`ShardSpec` of this process: explicit values, else the distributed environment.

    Parameters
    ----------
    num_shards, shard_index
        Both given: independent shards (no group). Both ``None``: world size and rank of the
        initialised ``torch.distributed`` group, else of ``WORLD_SIZE`` / ``RANK`` (set by
        torchrun), else a single shard.

    Raises
    ------
    ValueError
        Only one of the two is given, or the index is out of range.
    """
    if (num_shards is None) != (shard_index is None):
        raise ValueError("give both num_shards and shard_index, or neither (to take them from torchrun)")
    if num_shards is not None and shard_index is not None:
        return ShardSpec(num_shards, shard_index)
    world, rank = _distributed_world()
    return ShardSpec(world, rank, grouped=world > 1)


def _distributed_world() -> tuple[int, int]:
    """``(world_size, rank)`` of the initialised group, else of torchrun's variables, else ``(1, 0)``."""
    # Only look at torch.distributed when torch is already loaded: importing it costs seconds, and
    # a group can only be initialised by code that imported it.
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    world, rank = _env_int("WORLD_SIZE"), _env_int("RANK")
    if world is None or world <= 1:
        return 1, 0
    if rank is None:
        raise ValueError(f"WORLD_SIZE={world} is set but RANK is not (launch with torchrun)")
    return world, rank


class ShardSync:
    """Synchronisation points between the shards of one :class:`ShardSpec`."""

    def __init__(self, spec: ShardSpec):
        self.spec = spec

    def step(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` here, then wait until every shard has finished its own call of :meth:`step`.

        Raises ``fn``'s exception on this rank and a :class:`RuntimeError` naming the failed ranks
        on the others, so that no rank goes on (or waits forever) after a failure elsewhere.
        """
        if not self.spec.grouped:
            return fn()
        import torch.distributed as dist

        error: BaseException | None = None
        result = None
        try:
            result = fn()
        except Exception as e:  # handed to the other ranks below, then re-raised
            error = e
        reports: list[str | None] = [None] * self.spec.num_shards
        # all_gather_object doubles as the barrier and carries each rank's failure message.
        dist.all_gather_object(reports, None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        failed = [f"rank {r}: {msg}" for r, msg in enumerate(reports) if msg is not None]
        if failed:
            raise RuntimeError("another shard failed; " + "; ".join(failed))
        return result  # type: ignore[return-value]


@contextlib.contextmanager
def shard_group(spec: ShardSpec) -> Iterator[ShardSync]:
    """Yield the :class:`ShardSync` of ``spec``, starting (and afterwards destroying) a gloo group when
    ``spec`` is grouped and no ``torch.distributed`` group exists yet."""
    if not spec.grouped:
        yield ShardSync(spec)
        return
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        # gloo runs on CPU everywhere; the group only passes a few bytes, never tensors of the model.
        dist.init_process_group("gloo", timeout=GROUP_TIMEOUT)
    try:
        if (dist.get_world_size(), dist.get_rank()) != (spec.num_shards, spec.index):
            raise ValueError(f"shard {spec.index} of {spec.num_shards} does not match the process group "
                             f"(rank {dist.get_rank()} of {dist.get_world_size()})")
        yield ShardSync(spec)
    finally:
        if owned:
            dist.destroy_process_group()


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


def finalize_encoding(out_dir: str | os.PathLike, corpus: Corpus | Sequence[Passage] | None = None) -> EmbeddingStore:
    """Check every chunk of a (sharded) encoding, write ``manifest.json`` and return the store.

    Idempotent and safe to call from several processes at once (the manifest is published with one
    atomic step and its content is deterministic). :func:`~densekd.index.encode.encode_corpus` calls
    it itself; call it explicitly to merge shards that ran as separate jobs.

    Parameters
    ----------
    out_dir
        The folder all shards wrote to.
    corpus
        When given, every chunk's ids must be that corpus slice in order and the folder's
        ``corpus_digest`` must match; without it the ids are checked for count and uniqueness only.

    Raises
    ------
    DataFormatError
        Naming ``out_dir`` when a chunk is missing (the error lists them) or nothing was encoded
        there, or naming the file of a chunk whose ids, dtype or shape are wrong.
    """
    from densekd.index.encode import MANIFEST, EmbeddingStore, _passages, corpus_digest

    out = Path(out_dir)
    passages = None if corpus is None else _passages(corpus)
    digest = None if passages is None else corpus_digest(passages)
    publish_manifest(out, passages, digest, wait=False)
    store = EmbeddingStore.load(out)
    if digest is not None and store.manifest.get("corpus_digest") != digest:
        raise DataFormatError(out / MANIFEST, "was encoded from a different corpus (corpus_digest differs)")
    return store


def publish_manifest(out: Path, passages: list[Passage] | None, digest: str | None, wait: bool) -> bool:
    """Verify every chunk of ``out`` against its state file's key and publish ``manifest.json``.

    Returns ``True`` when this call wrote the manifest, ``False`` when it was already there (another
    process finished first) or, with ``wait``, when chunks are still missing (other shards at work).
    """
    # encode.py imports this module at its top, so its names are looked up here, at call time.
    from densekd.index.encode import FORMAT, KEY_FIELDS, MANIFEST, STATE, EmbeddingStore, _chunk_names

    state, manifest = out / STATE, out / MANIFEST
    try:
        key = read_json_file(state)
    except DataFormatError:
        if state.exists():
            raise
        if manifest.is_file():
            return False  # finished earlier, possibly a moment ago by another shard
        raise DataFormatError(out, f"nothing to finalize: no {STATE} or {MANIFEST} "
                                   "(run encode_corpus first)") from None
    require_keys(key, {"format": str, "fingerprint": str, "corpus_digest": str, "n": int, "chunk_size": int}, state)
    if key["format"] != FORMAT:
        raise DataFormatError(state, f"unsupported format {key['format']!r} (expected {FORMAT!r})")
    if digest is not None and key["corpus_digest"] != digest:
        raise DataFormatError(state, "was written for a different corpus (corpus_digest differs)")
    n, size = key["n"], key["chunk_size"]
    count = -(-n // size)
    missing = [i for i in range(count) if not all((out / name).is_file() for name in _chunk_names(i))]
    if missing:
        if wait:
            return False
        listed = ", ".join(f"{i:05d}" for i in missing[:8]) + (", ..." if len(missing) > 8 else "")
        raise DataFormatError(out, f"incomplete encoding: {len(missing)} of {count} chunks missing ({listed}); "
                                   "run the missing shards with the same settings, then finalize")
    chunks = [{"emb": emb, "ids": ids, "n": min(size, n - i * size)}
              for i, (emb, ids) in enumerate(map(_chunk_names, range(count)))]
    try:
        dim = int(np.load(out / chunks[0]["emb"], mmap_mode="r", allow_pickle=False).shape[-1])
    except (ValueError, OSError, IndexError):
        dim = -1  # unreadable: the check below names the file
    ids: list[str] = []
    seen: set[str] = set()  # without the corpus, ids can still be checked for duplicates
    for i, chunk in enumerate(chunks):
        EmbeddingStore._check_chunk(out, chunk, dim, state, ids)  # shape, dtype, id count
        start, new = i * size, ids[i * size:]
        if passages is not None and new != [p.id for p in passages[start:start + chunk["n"]]]:
            raise DataFormatError(out / chunk["ids"], f"expected the ids of corpus rows {start}.."
                                                      f"{start + chunk['n'] - 1}, in corpus order")
        if passages is None and not seen.isdisjoint(new):
            raise DataFormatError(out / chunk["ids"], f"ids already in an earlier chunk, e.g. "
                                                      f"{sorted(seen.intersection(new))[0]!r}")
        seen.update(new if passages is None else ())
    published = publish_once(manifest, {**{f: key[f] for f in KEY_FIELDS}, "dim": dim, "chunks": chunks})
    state.unlink(missing_ok=True)
    return published
