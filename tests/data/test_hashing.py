"""Pinned digests: the hashes that feed cache keys under ~/.cache/densekd must never change.

The expected strings were computed with the code as it was before the hash helpers were merged into
:mod:`densekd.data.hashing` (pipeline.cache.file_digest, teachers.base.fingerprint_*,
index.dense_search.default_fingerprint, encoders.onnx_backend._weights_digest, the seeded draws of
pipeline.label_dense and mining.pseudo_queries). A change here means
every cached step, annotation and embedding store would silently be recomputed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from densekd.data import hashing
from densekd.data.hashing import seeded_hash, weights_digest
from densekd.index.dense_search import default_fingerprint
from densekd.pipeline.cache import cache_key, file_digest
from densekd.pipeline.label_dense import assign_folds
from densekd.teachers.base import fingerprint_file, fingerprint_parts, fingerprint_state_dict

FILE_A = b"densekd\n" * 1000
FILE_B = bytes(range(256)) * 5000  # > 1 MiB: more than one read block


@pytest.fixture()
def files(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.tsv"
    a.write_bytes(FILE_A)
    b.write_bytes(FILE_B)
    return a, b


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = {"dim": 3}
        self.lin = nn.Linear(3, 2)
        with torch.no_grad():
            self.lin.weight.copy_(torch.arange(6, dtype=torch.float32).reshape(2, 3) / 10)
            self.lin.bias.copy_(torch.tensor([0.25, -0.5]))


def test_pipeline_file_digest_is_pinned(files):
    a, b = files
    assert file_digest(a) == "f2b07b2ecef99b4c"
    assert file_digest(a, b) == "7b9c3717d080eaea"
    assert file_digest(a, b, length=64) == "7b9c3717d080eaea04886ee9e97ac521de3eb324be36f1b8dca06645926dbe2c"


def test_teacher_fingerprint_file_is_pinned(files):
    a, b = files
    assert fingerprint_file(a) == "f2b07b2ecef99b4c80d23b6a2fc6dfec350409b34ed3273e27f4322bf31f0013"
    assert fingerprint_file(b) == "7d471e4af16db5a30ce10aebbc29f5178b2edbad6c7dc2e8ff8ee6e4848a726f"


def test_fingerprint_parts_and_state_dict_are_pinned():
    assert fingerprint_parts("cross-encoder", 256, None, ("x", 1.5)) == (
        "a06e740c5c62af659d3a57389e8a9c92bbece34f9018baae904b9ba033ae2ced")
    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64),
             "h": torch.tensor([0.5, -1.0], dtype=torch.bfloat16)}
    assert fingerprint_state_dict(state) == "9f29b38c72d9daee11460b851ef1886a3d09a449f8e5864d7d603bd7a36d255f"


def test_dense_search_default_fingerprint_is_pinned():
    assert default_fingerprint(_Tiny()) == "_Tiny:{'dim': 3}:weights=0219f64110569cfc6137336ac4fb05fd"


def test_weights_digest_is_pinned():
    # the ONNX export key's "weights" entry (tower then projection; None skipped), as onnx_backend hashed it
    tiny = _Tiny()
    constant = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        constant.weight.fill_(2.0)
    assert weights_digest([tiny.lin.state_dict(), constant.state_dict()]) == "5e310a4dec60ea9bd1ff355cbd59a88e"
    # one module: the same digest default_fingerprint puts after "weights="
    assert weights_digest([tiny.state_dict()]) == "0219f64110569cfc6137336ac4fb05fd"


def test_seeded_draws_are_pinned():
    # fold assignment of the label-dense teacher and the pseudo-query order hash (seed, key) the same way
    assert assign_folds(["q1", "q2", "q3", "abc", "7"], 5, 13) == {"q1": 1, "q2": 3, "q3": 4, "abc": 0, "7": 2}
    assert [seeded_hash(0, "p1"), seeded_hash(42, "doc-7")] == [18192574648761365533, 14780803897903428590]


def test_file_digest_helper_matches_both_old_call_sites(files):
    a, b = files
    assert hashing.file_digest(a) == fingerprint_file(a)
    assert hashing.file_digest(a, b, length=16) == file_digest(a, b)


def test_cache_key_is_pinned():
    assert cache_key({"b": 1, "a": [2, 3]}, Path("x/y"), "s") == "caf5804ee961cf18"
