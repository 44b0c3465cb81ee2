"""The one resumable chunk writer behind every corpus producer, and the corpus part of its cache key.

Dense vectors (:func:`~densekd.index.encode.encode_corpus`), token vectors
(:func:`~densekd.index.late_interaction.encode_corpus_tokens`) and token states
(:func:`~densekd.index.token_states.encode_token_states`) all write a corpus in numbered chunks
through a :class:`ChunkWriter`, so a killed run resumes the same way everywhere.

Contracts
---------
* Cache key: a JSON object compared on ``key_fields`` (always ``format``, ``fingerprint``,
  ``corpus_digest`` from :func:`corpus_digest`, ``n``, plus the producer's own settings).
* While chunks are written, the folder holds a *state file* with the key. Chunks are reused only
  under the same key; any other key (or an unreadable state file) empties the folder first,
  manifest first, so that no stale manifest can outlive its chunks (:meth:`ChunkWriter.prepare`).
* Chunk ``i`` is one ``{name}_{i:05d}.npy`` per array name, each written atomically, then
  ``ids_{i:05d}.npy`` **last**: a chunk counts once its ids file holds exactly the expected ids and
  its arrays load and pass the producer's check (:meth:`ChunkWriter.load`); anything else is
  written again.
* The manifest, written last by :meth:`ChunkWriter.finish` in one atomic step, marks completion;
  the state file is removed after it. A folder whose manifest carries the key is complete
  (:meth:`ChunkWriter.complete`).
* Independent shards (:class:`~densekd.index.shards.ShardSpec`) may share a folder: chunk files are
  disjoint, and a shard that is not alone clears only its own chunks' leftovers.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from densekd.data.io import DataFormatError, write_json
from densekd.data.types import Passage
from densekd.index._storage import load_ids, publish_once, read_json_file, same_key, save_ids, save_npy
from densekd.index.shards import ShardSpec

__all__ = ["IDS", "ChunkWriter", "chunk_file", "corpus_digest"]

IDS = "ids"  # the array name of every chunk's passage ids, written last


def corpus_digest(passages: Sequence[Passage]) -> str:
    """A BLAKE2 hash of every passage's id and :meth:`~Passage.full_text`, in order."""
    h = hashlib.blake2b(digest_size=16)
    for p in passages:
        # NUL separators: no id/text split can make two different corpora hash the same.
        h.update(p.id.encode("utf-8") + b"\0" + p.full_text().encode("utf-8") + b"\0")
    return h.hexdigest()


def chunk_file(name: str, i: int) -> str:
    """File name of array ``name`` of chunk ``i``, e.g. ``emb_00003.npy``."""
    return f"{name}_{i:05d}.npy"


class ChunkWriter:
    """Write a corpus into ``out`` chunk by chunk, resumably, under one cache key (module docstring).

    Parameters
    ----------
    out
        The folder.
    key
        The cache key (JSON-serialisable); it is the state file's content.
    key_fields
        The fields of ``key`` that must match for chunks or a manifest to be reused.
    arrays
        Names of each chunk's arrays, in writing order (``ids`` is implied and written last).
    state, manifest
        File names of the state file and the manifest.
    spec
        This process's shard (which chunks' leftovers it may delete); one shard by default.
    """

    def __init__(self, out: str | os.PathLike, key: dict[str, Any], key_fields: Sequence[str],
                 arrays: Sequence[str], state: str, manifest: str = "manifest.json",
                 spec: ShardSpec | None = None):
        self.out, self.key, self.key_fields = Path(out), key, tuple(key_fields)
        self.arrays, self.state, self.manifest = tuple(arrays), state, manifest
        self.spec = spec or ShardSpec()
        names = "|".join(re.escape(a) for a in (*self.arrays, IDS))
        self._chunk_tmp = re.compile(rf"\.(?:{names})_(\d+)\.npy\..*\.tmp")

    def names(self, i: int) -> dict[str, str]:
        """``array name -> file name`` of chunk ``i``, ids last."""
        return {name: chunk_file(name, i) for name in (*self.arrays, IDS)}

    def complete(self) -> bool:
        """Whether the folder holds a finished store under the key."""
        path = self.out / self.manifest
        return path.is_file() and same_key(read_json_file(path), self.key, self.key_fields)

    def prepare(self) -> bool:
        """Make the folder ready to write under the key: keep chunks only when resuming that key.

        Returns ``True`` when another process completed the folder under the key meanwhile.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        self.clear_temporaries()
        state = self.out / self.state
        if state.is_file():
            try:
                if same_key(read_json_file(state), self.key, self.key_fields):
                    return False
            except DataFormatError:
                pass  # an unreadable state file is treated like a different key: start over
        # A finishing shard writes the manifest before it deletes the state file, so a state file found
        # missing here may mean "finished just now" rather than "never started".
        if self.complete():
            return True
        # The old manifest goes first: if we die while chunks are replaced, no stale manifest may claim
        # the folder is complete.
        (self.out / self.manifest).unlink(missing_ok=True)
        for name in (*self.arrays, IDS):
            for stale in self.out.glob(f"{name}_*.npy"):
                stale.unlink(missing_ok=True)  # an independent shard may be resetting the same folder
        write_json(state, self.key)
        return False

    def clear_temporaries(self) -> None:
        """Delete temporary files that a killed writer left (atomic writes name them ".<target>.*.tmp").

        Running alone (one shard, or the leader of a group before the others start) clears them all;
        an independent shard only those of its own chunks, because another shard may be writing its own
        right now.
        """
        spec = self.spec
        alone = spec.num_shards == 1 or (spec.grouped and spec.index == 0)
        own = (f".{self.manifest}.", f"..{self.manifest}.", f".{self.state}.")
        for leftover in self.out.glob(".*.tmp"):
            match = self._chunk_tmp.fullmatch(leftover.name)
            if match is not None and (alone or spec.owns(int(match.group(1)))):
                leftover.unlink(missing_ok=True)
            # "..manifest.json.*": write_json's own temporary inside publish_once's temporary file
            elif alone and leftover.name.startswith(own):
                leftover.unlink(missing_ok=True)

    def load(self, i: int, ids: Sequence[str],
             check: Callable[[dict[str, np.ndarray]], bool] | None = None) -> dict[str, np.ndarray] | None:
        """The arrays (read-only memory maps) of chunk ``i`` as an earlier run of the key left it, or
        ``None`` when the chunk must be written (missing, other ids, unreadable, or ``check`` fails)."""
        paths = {name: self.out / file for name, file in self.names(i).items()}
        if not all(p.is_file() for p in paths.values()):
            return None
        try:
            if load_ids(paths[IDS]) != list(ids):
                return None
            arrays = {name: np.load(paths[name], mmap_mode="r", allow_pickle=False) for name in self.arrays}
        except (DataFormatError, ValueError, OSError):
            return None
        return arrays if check is None or check(arrays) else None

    def write(self, i: int, arrays: Mapping[str, np.ndarray], ids: Sequence[str]) -> None:
        """Write chunk ``i``: each array atomically in :attr:`arrays` order, then its ids."""
        for name in self.arrays:
            save_npy(self.out / chunk_file(name, i), arrays[name])
        save_ids(self.out / chunk_file(IDS, i), ids)

    def finish(self, meta: dict[str, Any]) -> bool:
        """Publish the manifest ``meta`` (one atomic step), then drop the state file.

        Returns ``True`` when this call wrote the manifest, ``False`` when an equal one was there.
        """
        published = publish_once(self.out / self.manifest, meta)
        (self.out / self.state).unlink(missing_ok=True)
        return published
