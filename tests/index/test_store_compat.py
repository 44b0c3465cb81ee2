"""Stores written before the store/chunk-writer refactor still load and are reused, byte for byte.

Every literal here (digests, manifest texts, file names, format strings) was produced by the code
*before* the refactor (``densekd.index.encode`` and ``shards`` importing each other): caches under
``~/.cache/densekd`` are keyed by them, so they must never change.
"""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pytest

from densekd.data.types import Passage
from densekd.index._storage import save_ids, save_npy
from densekd.index.encode import EmbeddingStore, corpus_digest, encode_corpus
from densekd.index.late_interaction import TokenEmbeddingStore, encode_corpus_tokens
from densekd.index.token_states import PassageTokenStates, encode_token_states

TOY = [  # a frozen copy of conftest.TOY_CORPUS: the pinned digest must not follow edits there
    ("d1", "Aspirin", "Aspirin reduces the risk of heart attack in adults."),
    ("d2", "Vitamin C", "Vitamin C does not prevent the common cold."),
    ("d3", "Smoking", "Smoking causes lung cancer and heart disease."),
    ("d4", "Exercise", "Regular exercise lowers blood pressure."),
    ("d5", "Coffee", "Coffee consumption is linked to lower risk of liver disease."),
    ("d6", "Sleep", "Lack of sleep impairs memory consolidation."),
    ("d7", "Paris", "Paris is the capital and largest city of France."),
    ("d8", "Denver Broncos", "The Denver Broncos won Super Bowl 50 against the Carolina Panthers."),
]
TOY_DIGEST = "b37b02b85500109a4e2982e37f2961b6"  # corpus_digest of TOY, computed by the old code


@pytest.fixture
def toy() -> list[Passage]:
    return [Passage(pid, text, title=title) for pid, title, text in TOY]


def test_corpus_digest_is_pinned(toy):
    assert corpus_digest(toy) == TOY_DIGEST
    assert corpus_digest([Passage("a", "x")]) == "709c631ed7205cff4afd24390d7716a4"
    assert corpus_digest([Passage("a", "x"), Passage("é 1", "naïve café — 東京", title="T")]) == \
        "cbec3ae5bdc81e2a34a150ccafe52f7a"


class HashEncoder:
    """Deterministic fake dense encoder: 6 numbers from each text's SHA-256."""

    calls = 0

    def encode_passages(self, texts, batch_size, show_progress):
        self.calls += 1
        return np.stack([np.frombuffer(hashlib.sha256(t.encode()).digest(), dtype=np.uint8)[:6].astype(np.float32) / 7
                         for t in texts])


def _old_manifest(key: dict, dim: int, chunks: list[dict]) -> str:
    # write_json's layout: indent 2, key order as built by the old encoder, trailing newline
    return json.dumps({**key, "dim": dim, "chunks": chunks}, indent=2, ensure_ascii=False) + "\n"


def test_dense_manifest_is_byte_identical_to_the_old_one(toy, tmp_path):
    encode_corpus(HashEncoder(), toy, tmp_path / "e", chunk_size=3, fingerprint="fp", show_progress=False)
    key = {"format": "densekd.embeddings/1", "fingerprint": "fp", "corpus_digest": TOY_DIGEST, "n": 8, "chunk_size": 3}
    chunks = [{"emb": f"emb_0000{i}.npy", "ids": f"ids_0000{i}.npy", "n": n} for i, n in enumerate([3, 3, 2])]
    assert (tmp_path / "e" / "manifest.json").read_text() == _old_manifest(key, 6, chunks)
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == sorted(
        ["manifest.json"] + [c["emb"] for c in chunks] + [c["ids"] for c in chunks])


def test_an_old_dense_store_is_loaded_and_reused_untouched(toy, tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    vectors = HashEncoder().encode_passages([p.full_text() for p in toy], 8, False)
    key = {"format": "densekd.embeddings/1", "fingerprint": "fp", "corpus_digest": TOY_DIGEST, "n": 8, "chunk_size": 5}
    chunks = []
    for i, start in enumerate((0, 5)):
        save_npy(out / f"emb_0000{i}.npy", vectors[start:start + 5])
        save_ids(out / f"ids_0000{i}.npy", [p.id for p in toy[start:start + 5]])
        chunks.append({"emb": f"emb_0000{i}.npy", "ids": f"ids_0000{i}.npy", "n": len(toy[start:start + 5])})
    (out / "manifest.json").write_text(_old_manifest(key, 6, chunks))
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}

    encoder = HashEncoder()
    store = encode_corpus(encoder, toy, out, chunk_size=5, fingerprint="fp", show_progress=False)
    assert encoder.calls == 0 and isinstance(store, EmbeddingStore)
    np.testing.assert_array_equal(store.embeddings, vectors)
    assert store.ids == [p.id for p in toy]
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()} == before


class RaggedEncoder:
    """Fake late-interaction encoder: one token row per word, 4-d."""

    calls = 0

    def encode_passage_tokens(self, texts, batch_size, show_progress):
        self.calls += 1
        return [np.arange(len(t.split()) * 4, dtype=np.float32).reshape(-1, 4) / (1 + len(t)) for t in texts]


def test_an_old_token_store_is_loaded_and_reused_untouched(toy, tmp_path):
    out = tmp_path / "tok"
    out.mkdir()
    arrays = RaggedEncoder().encode_passage_tokens([p.full_text() for p in toy], 4, False)
    key = {"format": "densekd.tokens/1", "fingerprint": "fp", "corpus_digest": TOY_DIGEST, "n": 8, "chunk_size": 8,
           "dtype": "float16"}
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int64)
    save_npy(out / "tokens_00000.npy", np.concatenate(arrays).astype("float16"))
    save_npy(out / "offsets_00000.npy", offsets)
    save_ids(out / "ids_00000.npy", [p.id for p in toy])
    chunk = {"tokens": "tokens_00000.npy", "offsets": "offsets_00000.npy", "ids": "ids_00000.npy", "n": 8}
    (out / "manifest.json").write_text(_old_manifest(key, 4, [chunk]))
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    encoder = RaggedEncoder()
    store = encode_corpus_tokens(encoder, toy, out, chunk_size=8, fingerprint="fp", show_progress=False)
    assert encoder.calls == 0 and isinstance(store, TokenEmbeddingStore)
    np.testing.assert_array_equal(store.passage_tokens(2), arrays[2].astype("float16"))
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # and a fresh encoding writes exactly that folder again
    fresh = tmp_path / "fresh"
    encode_corpus_tokens(RaggedEncoder(), toy, fresh, chunk_size=8, fingerprint="fp", show_progress=False)
    assert sorted(p.name for p in fresh.iterdir()) == sorted(before)
    for name in before:
        assert (fresh / name).read_bytes() == (out / name).read_bytes(), name


def test_an_old_token_state_folder_is_loaded_and_reused_untouched(toy, tmp_path):
    out = tmp_path / "states"
    out.mkdir()
    lengths = [3, 5, 4, 2, 6, 3, 4, 5]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    hidden = np.arange(offsets[-1] * 4, dtype=np.float32).reshape(-1, 4).astype("float16")
    np.save(out / "hidden.npy", hidden)
    save_npy(out / "token_ids.npy", np.arange(offsets[-1], dtype=np.int32))
    save_npy(out / "offsets.npy", offsets)
    save_npy(out / "vectors.npy", np.ones((8, 3), np.float32))
    save_ids(out / "ids.npy", [p.id for p in toy])
    manifest = {"format": "densekd.token_states/1", "fingerprint": "fp", "corpus_digest": TOY_DIGEST, "n": 8,
                "dtype": "float16", "max_length": 256, "prefix": "", "hidden_size": 4, "dim": 3,
                "n_tokens": int(offsets[-1])}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    # the key is checked before the model is touched: a config is all a reused folder needs
    encoder = SimpleNamespace(config=SimpleNamespace(passage_max_length=256, passage_prefix=""))
    states = encode_token_states(encoder, toy, out, batch_size=3, dtype="float16", fingerprint="fp",
                                 show_progress=False)
    assert isinstance(states, PassageTokenStates) and states.ids == [p.id for p in toy]
    np.testing.assert_array_equal(states.hidden, hidden)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["states"]  # no work folder was started
