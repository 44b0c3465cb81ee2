"""encode_corpus / EmbeddingStore: chunk files, crash-resume equality, caching by fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from densekd.data.io import DataFormatError
from densekd.data.types import Passage
from densekd.index.encode import EmbeddingStore, encode_corpus


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_chunk_files_and_manifest(numbered_corpus, make_encoder, tmp_path):
    enc = make_encoder()
    store = encode_corpus(enc, numbered_corpus, tmp_path / "emb", chunk_size=4, show_progress=False,
                          fingerprint="fake-v1")
    names = sorted(p.name for p in (tmp_path / "emb").iterdir())
    assert names == ["emb_00000.npy", "emb_00001.npy", "emb_00002.npy",
                     "ids_00000.npy", "ids_00001.npy", "ids_00002.npy", "manifest.json"]
    manifest = json.loads((tmp_path / "emb" / "manifest.json").read_text())
    assert manifest["n"] == 10 and manifest["dim"] == 16 and manifest["fingerprint"] == "fake-v1"
    assert [c["n"] for c in manifest["chunks"]] == [4, 4, 2]
    assert enc.passage_calls == 3
    assert store.ids == [p.id for p in numbered_corpus] and len(store) == 10 and store.dim == 16
    want = make_encoder().encode_passages([p.full_text() for p in numbered_corpus])
    np.testing.assert_array_equal(store.embeddings, want)
    assert np.load(tmp_path / "emb" / "ids_00002.npy", allow_pickle=False).dtype.kind == "U"


def test_chunks_are_memory_mapped(numbered_corpus, make_encoder, tmp_path):
    encode_corpus(make_encoder(), numbered_corpus, tmp_path, chunk_size=4, show_progress=False)
    store = EmbeddingStore.load(tmp_path)
    chunks = list(store.iter_chunks())
    assert [len(ids) for ids, _ in chunks] == [4, 4, 2]
    assert all(isinstance(emb, np.memmap) and not emb.flags.writeable for _, emb in chunks)
    single = encode_corpus(make_encoder(), numbered_corpus, tmp_path / "one", chunk_size=100, show_progress=False)
    assert isinstance(single.embeddings, np.memmap)


def test_resume_after_crash_is_byte_identical(numbered_corpus, make_encoder, tmp_path):
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    encode_corpus(make_encoder(), numbered_corpus, clean, chunk_size=3, show_progress=False, fingerprint="f")

    crashing = make_encoder(fail_after=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        encode_corpus(crashing, numbered_corpus, resumed, chunk_size=3, show_progress=False, fingerprint="f")
    assert not (resumed / "manifest.json").exists()
    assert (resumed / "emb_00001.npy").exists() and not (resumed / "emb_00002.npy").exists()
    with pytest.raises(DataFormatError, match="manifest.json"):
        EmbeddingStore.load(resumed)

    # A writer killed mid-file leaves only a hidden temporary, which the rerun clears away.
    (resumed / ".emb_00002.npy.abc.tmp").write_bytes(b"partial")
    second = make_encoder()
    encode_corpus(second, numbered_corpus, resumed, chunk_size=3, show_progress=False, fingerprint="f")
    assert second.passage_calls == 2  # chunks 2 and 3 only
    assert _snapshot(resumed) == _snapshot(clean)


def test_complete_store_is_reused(numbered_corpus, make_encoder, tmp_path):
    encode_corpus(make_encoder(), numbered_corpus, tmp_path, chunk_size=4, show_progress=False, fingerprint="f")
    before = _snapshot(tmp_path)
    again = make_encoder()
    store = encode_corpus(again, numbered_corpus, tmp_path, chunk_size=4, show_progress=False, fingerprint="f")
    assert again.passage_calls == 0 and len(store) == 10 and _snapshot(tmp_path) == before


def test_fingerprint_change_reencodes(numbered_corpus, make_encoder, tmp_path):
    encode_corpus(make_encoder(), numbered_corpus, tmp_path, chunk_size=4, show_progress=False, fingerprint="a")
    other = make_encoder(salt="new-model")
    store = encode_corpus(other, numbered_corpus, tmp_path, chunk_size=4, show_progress=False, fingerprint="b")
    assert other.passage_calls == 3 and store.fingerprint == "b"
    want = make_encoder(salt="new-model").encode_passages([p.full_text() for p in numbered_corpus])
    np.testing.assert_array_equal(store.embeddings, want)


def test_fingerprint_change_discards_partial_chunks(numbered_corpus, make_encoder, tmp_path):
    with pytest.raises(RuntimeError):
        encode_corpus(make_encoder(fail_after=1), numbered_corpus, tmp_path, chunk_size=4,
                      show_progress=False, fingerprint="a")
    enc = make_encoder(salt="b")
    encode_corpus(enc, numbered_corpus, tmp_path, chunk_size=4, show_progress=False, fingerprint="b")
    assert enc.passage_calls == 3


def test_corpus_change_reencodes(numbered_corpus, make_encoder, tmp_path):
    encode_corpus(make_encoder(), numbered_corpus, tmp_path, chunk_size=4, show_progress=False, fingerprint="f")
    edited = [*numbered_corpus[:-1], Passage("p9", "a new text")]
    enc = make_encoder()
    store = encode_corpus(enc, edited, tmp_path, chunk_size=4, show_progress=False, fingerprint="f")
    assert enc.passage_calls == 3 and store.ids[-1] == "p9"


def test_load_rejects_broken_chunks(numbered_corpus, make_encoder, tmp_path):
    encode_corpus(make_encoder(), numbered_corpus, tmp_path, chunk_size=4, show_progress=False)
    np.save(tmp_path / "emb_00001.npy", np.zeros((4, 8), dtype=np.float32))
    with pytest.raises(DataFormatError, match="emb_00001.npy"):
        EmbeddingStore.load(tmp_path)
    (tmp_path / "ids_00000.npy").unlink()
    with pytest.raises(DataFormatError, match="ids_00000.npy"):
        EmbeddingStore.load(tmp_path)


def test_bad_encoder_output_is_rejected(numbered_corpus, tmp_path):
    class NanEncoder:
        def encode_passages(self, texts, batch_size, show_progress):
            return np.full((len(texts), 4), np.nan, dtype=np.float32)

    class ShortEncoder:
        def encode_passages(self, texts, batch_size, show_progress):
            return np.zeros((1, 4), dtype=np.float32)

    with pytest.raises(ValueError, match="NaN"):
        encode_corpus(NanEncoder(), numbered_corpus, tmp_path / "a", show_progress=False)
    with pytest.raises(ValueError, match=r"\(1, 4\)"):
        encode_corpus(ShortEncoder(), numbered_corpus, tmp_path / "b", show_progress=False)


def test_to_faiss_flat_and_ivf(numbered_corpus, make_encoder, tmp_path):
    store = encode_corpus(make_encoder(), numbered_corpus, tmp_path, chunk_size=3, show_progress=False)
    q = make_encoder().encode_queries(["gamma passage"])
    flat = store.to_faiss("Flat", show_progress=False)
    assert flat.ids == store.ids
    scores, hits = flat.search_arrays(q, k=10)
    ref = (q @ np.asarray(store.embeddings).T)[0]
    assert hits[0][0] == "p2"
    np.testing.assert_allclose(scores[0], np.sort(ref)[::-1], rtol=1e-5)
    ivf = store.to_faiss("IVF2,Flat", train_size=8, show_progress=False)
    assert ivf.is_trained and len(ivf) == 10
    assert store.sample(4, seed=1).shape == (4, 16)
