"""Sharded corpus encoding: shards merge into the one-process folder byte for byte, no manifest while a
chunk is missing, and real parallel processes (independent or a torchrun group) finish exactly once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from densekd.data.io import DataFormatError
from densekd.data.types import Passage
from densekd.index._storage import publish_once, save_ids, save_npy
from densekd.index.encode import EmbeddingStore, encode_corpus, finalize_encoding
from densekd.index.shards import ShardSpec, resolve_shards

HERE = Path(__file__).resolve().parent
TIMEOUT = 120


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` (hidden temporaries included) by name."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _shard_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


# ---------------------------------------------------------------- shards one after another

@pytest.mark.parametrize("num_shards", [2, 3])
def test_shards_in_turn_equal_one_process_byte_for_byte(numbered_corpus, make_encoder, tmp_path, num_shards):
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    encode_corpus(make_encoder(), numbered_corpus, one, chunk_size=3, show_progress=False, fingerprint="f")

    results = []
    for k in range(num_shards):
        enc = make_encoder()
        results.append(encode_corpus(enc, numbered_corpus, sharded, chunk_size=3, show_progress=False,
                                     fingerprint="f", num_shards=num_shards, shard_index=k))
        assert enc.passage_calls == len(range(k, 4, num_shards))  # 4 chunks, interleaved
        if k < num_shards - 1:
            assert not (sharded / "manifest.json").exists()
    # only the shard that completed the folder gets the store
    assert results[:-1] == [None] * (num_shards - 1) and results[-1] is not None
    assert _snapshot(sharded) == _snapshot(one)
    assert results[-1].ids == [p.id for p in numbered_corpus]

    # finalize is idempotent: an explicit merge call on the finished folder changes nothing
    store = finalize_encoding(sharded, numbered_corpus)
    assert _snapshot(sharded) == _snapshot(one) and store.manifest == results[-1].manifest
    # rerunning a shard on the finished folder encodes nothing; shard 0 is the one that gets the store
    again = make_encoder()
    assert encode_corpus(again, numbered_corpus, sharded, chunk_size=3, show_progress=False, fingerprint="f",
                         num_shards=num_shards, shard_index=1) is None
    assert encode_corpus(again, numbered_corpus, sharded, chunk_size=3, show_progress=False, fingerprint="f",
                         num_shards=num_shards, shard_index=0) is not None
    assert again.passage_calls == 0


def test_shards_resume_with_another_shard_count(numbered_corpus, make_encoder, tmp_path):
    """The shard count is not part of the cache key: a 2-shard start finished by one process is reused."""
    one, mixed = tmp_path / "one", tmp_path / "mixed"
    encode_corpus(make_encoder(), numbered_corpus, one, chunk_size=3, show_progress=False, fingerprint="f")
    encode_corpus(make_encoder(), numbered_corpus, mixed, chunk_size=3, show_progress=False, fingerprint="f",
                  num_shards=2, shard_index=1)
    rest = make_encoder()
    store = encode_corpus(rest, numbered_corpus, mixed, chunk_size=3, show_progress=False, fingerprint="f")
    assert rest.passage_calls == 2 and store is not None  # chunks 0 and 2 only
    assert _snapshot(mixed) == _snapshot(one)


# ---------------------------------------------------------------- no manifest while a chunk is missing

def test_finalize_refuses_incomplete_folder(numbered_corpus, make_encoder, tmp_path):
    out = tmp_path / "emb"
    assert encode_corpus(make_encoder(), numbered_corpus, out, chunk_size=3, show_progress=False,
                         fingerprint="f", num_shards=2, shard_index=0) is None
    assert (out / "encode_state.json").is_file() and not (out / "manifest.json").exists()
    with pytest.raises(DataFormatError) as info:
        finalize_encoding(out)
    message = str(info.value)
    assert str(out) in message and "2 of 4 chunks missing" in message and "00001, 00003" in message
    assert not (out / "manifest.json").exists()
    with pytest.raises(DataFormatError, match="manifest.json"):
        EmbeddingStore.load(out)
    with pytest.raises(DataFormatError, match="nothing to finalize"):
        finalize_encoding(tmp_path / "never-encoded")


def test_finalize_checks_ids_against_corpus_order(numbered_corpus, make_encoder, tmp_path):
    out = tmp_path / "emb"
    encode_corpus(make_encoder(), numbered_corpus, out, chunk_size=3, show_progress=False, fingerprint="f",
                  num_shards=2, shard_index=0)
    # a "shard 1" that wrote chunk 1 with the rows of another slice (e.g. a different corpus order)
    save_npy(out / "emb_00001.npy", np.zeros((3, 16), dtype=np.float32))
    save_ids(out / "ids_00001.npy", ["p6", "p7", "p8"])
    save_npy(out / "emb_00003.npy", np.zeros((1, 16), dtype=np.float32))
    save_ids(out / "ids_00003.npy", ["p9"])
    with pytest.raises(DataFormatError, match="ids_00001.npy"):
        finalize_encoding(out, numbered_corpus)
    with pytest.raises(DataFormatError, match=r"ids_00002.npy: ids already in an earlier chunk, e.g. 'p6'"):
        finalize_encoding(out)  # without the corpus only duplicates can be seen: p6..p8 are in chunks 1 and 2
    assert not (out / "manifest.json").exists()
    # a chunk of the wrong width is named too
    save_ids(out / "ids_00001.npy", ["p3", "p4", "p5"])
    save_npy(out / "emb_00001.npy", np.zeros((3, 8), dtype=np.float32))
    with pytest.raises(DataFormatError, match="emb_00001.npy"):
        finalize_encoding(out, numbered_corpus)
    assert not (out / "manifest.json").exists()


def test_publish_once_has_one_winner(tmp_path):
    path = tmp_path / "manifest.json"
    assert publish_once(path, {"a": 1}) is True
    assert publish_once(path, {"a": 1}) is False  # an equal file: someone else finished first
    assert publish_once(path, {"a": 2}) is True and json.loads(path.read_text()) == {"a": 2}  # stale: replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]  # no temporaries left


def test_resolve_shards_from_torchrun_environment(monkeypatch, numbered_corpus, make_encoder, tmp_path):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert resolve_shards() == ShardSpec(1, 0, grouped=False)
    assert resolve_shards(4, 3) == ShardSpec(4, 3, grouped=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert resolve_shards() == ShardSpec(2, 1, grouped=True)
    assert resolve_shards(3, 0) == ShardSpec(3, 0)  # explicit values win
    with pytest.raises(ValueError, match="both"):
        resolve_shards(2, None)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        resolve_shards(2, 2)
    # the library default stays one shard under torchrun: no barrier a rank-0-only caller would hang on
    store = encode_corpus(make_encoder(), numbered_corpus, tmp_path, chunk_size=4, show_progress=False)
    assert store is not None and len(store) == 10


# ---------------------------------------------------------------- real processes in parallel

class CrcEncoder:
    """One seeded random unit vector per text: equal across processes (crc32, not hash()), distinct per
    passage (so a passage's nearest neighbour is itself), and slow enough for the shards to overlap."""

    def encode_passages(self, texts: list[str], batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        time.sleep(0.05)
        out = np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(16) for t in texts])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def _crc_corpus() -> list[Passage]:
    return [Passage(f"p{i}", f"passage {i} word{i} w{i % 3} v{i % 5}") for i in range(24)]


def _shard_main(out: str, num_shards: int, shard_index: int) -> None:
    """Entry point of the subprocesses below."""
    store = encode_corpus(CrcEncoder(), _crc_corpus(), out, chunk_size=2, show_progress=False, fingerprint="crc",
                          num_shards=num_shards, shard_index=shard_index)
    print("STORE" if store is not None else "NONE")


def test_parallel_independent_shards_finish_once(tmp_path):
    one, par = tmp_path / "one", tmp_path / "par"
    encode_corpus(CrcEncoder(), _crc_corpus(), one, chunk_size=2, show_progress=False, fingerprint="crc")
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); from test_encode_shards import _shard_main; " \
           f"_shard_main({str(par)!r}, 2, int(sys.argv[1]))"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(k)], env=_shard_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for k in range(2)]
    outputs = [p.communicate(timeout=TIMEOUT) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert sorted(out.strip() for out, _ in outputs) == ["NONE", "STORE"]  # exactly one finisher
    assert _snapshot(par) == _snapshot(one)
    store = EmbeddingStore.load(par)
    index = store.to_faiss(show_progress=False)
    run = index.search(np.asarray(store.embeddings), store.ids, k=1)
    assert all(next(iter(hits)) == pid for pid, hits in run.items())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks_build_index_with_right_ids(tmp_path, toy_beir_dir, tiny_bert_path, toy):
    from densekd.encoders.dense import DenseEncoder
    from densekd.index.faiss_index import FaissIndex

    idx = tmp_path / "idx"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "densekd.cli.main", "index", "--corpus", str(toy_beir_dir / "corpus.jsonl"), "--out", str(idx),
           "--kind", "dense", "--model", tiny_bert_path, "--max-length", "32", "--batch-size", "2",
           "--chunk-size", "2"]
    proc = subprocess.run(cmd, env=_shard_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "encode corpus (shard 0/2)" in proc.stderr and "encode corpus (shard 1/2)" in proc.stderr
    assert "shard 1 of 2 encoded" in proc.stderr  # rank 1 leaves the index to rank 0
    assert json.loads((idx / "densekd_index.json").read_text())["kind"] == "dense"

    corpus = toy[0]
    store = EmbeddingStore.load(idx / "embeddings")
    assert store.ids == list(corpus) and len(store.manifest["chunks"]) == 4
    assert not (idx / "embeddings" / "encode_state.json").exists()
    encoder = DenseEncoder.from_pretrained(tiny_bert_path, passage_max_length=32)
    want = encoder.encode_passages([p.full_text() for p in corpus.values()], batch_size=2, show_progress=False)
    np.testing.assert_allclose(store.embeddings, want, atol=1e-5)
    # the saved index and a fresh one from the merged store map every passage back to its own id
    for index in (FaissIndex.load(idx / "faiss"), store.to_faiss(show_progress=False)):
        run = index.search(want, list(corpus), k=1)
        assert {qid: next(iter(hits)) for qid, hits in run.items()} == {pid: pid for pid in corpus}
