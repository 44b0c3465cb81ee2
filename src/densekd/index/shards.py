"""Process coordination for sharded encoding: which shard this process runs and how shards wait for
each other. Nothing here reads or writes a store.

:func:`densekd.index.encode.encode_corpus` uses this module; the folder format and its finalisation
live in :mod:`densekd.index.store`.

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
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

__all__ = ["ShardSpec", "ShardSync", "resolve_shards", "shard_group"]

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
