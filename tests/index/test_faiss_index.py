"""FaissIndex: exactness of Flat, recall of approximate factories, validation, save/load."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from densekd.data.io import DataFormatError
from densekd.index.faiss_index import FaissIndex

D = 16


def _data(n: int = 2000, nq: int = 20, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, D)).astype(np.float32)
    q = rng.standard_normal((nq, D)).astype(np.float32)
    return [f"d{i}" for i in range(n)], x, q


def _recall(approx: list[list[str]], exact: list[list[str]]) -> float:
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact)]))


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_matches_numpy_brute_force(metric):
    ids, x, q = _data(500)
    index = FaissIndex(D, "Flat", metric)
    index.add(ids[:200], x[:200])  # added in two chunks on purpose
    index.add(ids[200:], x[200:])
    scores, hits = index.search_arrays(q, k=10)
    if metric == "ip":
        ref = q @ x.T
    else:
        ref = -((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    order = np.argsort(-ref, axis=1, kind="stable")[:, :10]
    assert hits == [[ids[j] for j in row] for row in order]
    np.testing.assert_allclose(scores, np.take_along_axis(ref, order, axis=1), rtol=1e-4, atol=1e-4)


def test_search_returns_run_with_qids():
    ids, x, q = _data(50, nq=3)
    index = FaissIndex(D)
    index.add(ids, x)
    run = index.search(q, ["a", "b", "c"], k=5)
    scores, hits = index.search_arrays(q, k=5)
    assert list(run) == ["a", "b", "c"]
    assert list(run["b"]) == hits[1] and list(run["b"].values()) == pytest.approx(scores[1].tolist())
    with pytest.raises(ValueError, match="qids"):
        index.search(q, ["a"], k=5)


def test_k_is_clipped_to_index_size():
    ids, x, q = _data(7, nq=2)
    index = FaissIndex(D)
    index.add(ids, x)
    scores, hits = index.search_arrays(q, k=100)
    assert scores.shape == (2, 7) and all(len(h) == 7 for h in hits)


@pytest.mark.parametrize(("factory", "params"), [
    ("HNSW32", {"ef_search": 64}),
    ("IVF32,Flat", {"nprobe": 16}),
])
def test_approximate_recall_vs_flat(factory, params):
    ids, x, q = _data(3000)
    exact = FaissIndex(D)
    exact.add(ids, x)
    approx = FaissIndex(D, factory)
    if not approx.is_trained:
        approx.train(x)
    approx.add(ids, x)
    _, want = exact.search_arrays(q, k=10)
    _, got = approx.search_arrays(q, k=10, **params)
    assert _recall(got, want) >= 0.9


def test_ivf_pq_trains_and_searches():
    ids, x, q = _data(3000)
    index = FaissIndex(D, "IVF16,PQ4x4")
    assert not index.is_trained
    with pytest.raises(RuntimeError, match="trained"):
        index.add(ids, x)
    index.train(x)
    index.add(ids, x)
    _, hits = index.search_arrays(q, k=10, nprobe=16)
    exact = FaissIndex(D)
    exact.add(ids, x)
    _, want = exact.search_arrays(q, k=10)
    assert _recall(hits, want) > 0.2  # 4 sub-quantisers of 4 bits: coarse, but far above chance (0.003)


def test_refine_k_factor_recovers_pq_recall_and_is_restored():
    ids, x, q = _data(3000)
    exact = FaissIndex(D)
    exact.add(ids, x)
    _, want = exact.search_arrays(q, k=10)
    index = FaissIndex(D, "IVF16,PQ4x4,RFlat")
    index.train(x)
    index.add(ids, x)
    _, coarse = index.search_arrays(q, k=10, nprobe=16)
    _, refined = index.search_arrays(q, k=10, nprobe=16, k_factor=32)
    # exact rescoring of 320 PQ candidates recovers what 4x4-bit codes alone lose
    assert _recall(refined, want) >= 0.9 > _recall(coarse, want) + 0.2
    assert faiss.downcast_index(index.index).k_factor == 1
    with pytest.raises(ValueError, match="k_factor"):
        exact.search_arrays(q, k=5, k_factor=4)


def test_search_parameters_are_restored_and_checked():
    ids, x, q = _data(1000)
    index = FaissIndex(D, "IVF16,Flat")
    index.train(x)
    index.add(ids, x)
    index.search_arrays(q, k=5, nprobe=8)
    assert faiss.extract_index_ivf(index.index).nprobe == 1
    with pytest.raises(ValueError, match="ef_search"):
        index.search_arrays(q, k=5, ef_search=32)
    flat = FaissIndex(D)
    with pytest.raises(ValueError, match="nprobe"):
        flat.search_arrays(q, k=5, nprobe=4)


def test_input_validation_names_shapes():
    ids, x, q = _data(10, nq=2)
    index = FaissIndex(D)
    with pytest.raises(ValueError, match=r"\[N, 16\].*\(10, 8\)"):
        index.add(ids, x[:, :8])
    with pytest.raises(ValueError, match="float32"):
        index.add(ids, x.astype(np.float64))
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        index.add(ids, bad)
    with pytest.raises(ValueError, match="9 ids for 10 vectors"):
        index.add(ids[:9], x)
    index.add(ids, x)
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        index.search_arrays(q[:, :4], k=3)
    with pytest.raises(ValueError):
        FaissIndex(D, "NotAFactory")
    with pytest.raises(ValueError, match="metric"):
        FaissIndex(D, metric="cos")


def test_duplicate_ids_rejected():
    ids, x, _ = _data(4)
    index = FaissIndex(D)
    with pytest.raises(ValueError, match="duplicate"):
        index.add(["a", "b", "a", "c"], x)
    index.add(ids, x)
    with pytest.raises(ValueError, match="d2"):
        index.add(["new", "d2"], x[:2])
    assert len(index) == 4 and index.ids == ids


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF8,Flat"])
def test_save_load_round_trip(factory, tmp_path):
    ids, x, q = _data(600)
    index = FaissIndex(D, factory, "l2")
    if not index.is_trained:
        index.train(x)
    index.add(ids, x)
    index.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["ids.npy", "index.faiss", "meta.json"]
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta == {"factory": factory, "metric": "l2", "dim": D, "count": 600}
    loaded = FaissIndex.load(tmp_path / "idx")
    assert loaded.ids == ids and (loaded.factory, loaded.metric, loaded.dim) == (factory, "l2", D)
    qids = [str(i) for i in range(len(q))]
    assert loaded.search(q, qids, k=10) == index.search(q, qids, k=10)
    with pytest.raises(ValueError, match="duplicate"):
        loaded.add(["d0"], x[:1])
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


def test_load_rejects_id_map_mismatch(tmp_path):
    ids, x, _ = _data(20)
    index = FaissIndex(D)
    index.add(ids, x)
    index.save(tmp_path / "idx")
    np.save(tmp_path / "idx" / "ids.npy", np.array(ids[:19]))
    with pytest.raises(DataFormatError, match="ids.npy") as err:
        FaissIndex.load(tmp_path / "idx")
    assert "19 ids" in str(err.value) and "20 vectors" in str(err.value)


@pytest.mark.parametrize("name", ["index.faiss", "ids.npy", "meta.json"])
def test_load_reports_missing_files(name, tmp_path):
    ids, x, _ = _data(5)
    index = FaissIndex(D)
    index.add(ids, x)
    index.save(tmp_path / "idx")
    (tmp_path / "idx" / name).unlink()
    with pytest.raises(DataFormatError, match=name):
        FaissIndex.load(tmp_path / "idx")


def test_load_reports_corrupt_files(tmp_path):
    ids, x, _ = _data(5)
    index = FaissIndex(D)
    index.add(ids, x)
    index.save(tmp_path / "idx")
    (tmp_path / "idx" / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(DataFormatError, match="index.faiss"):
        FaissIndex.load(tmp_path / "idx")
    index.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    (tmp_path / "idx" / "meta.json").write_text(json.dumps({**meta, "dim": 8}))
    with pytest.raises(DataFormatError, match="meta.json"):
        FaissIndex.load(tmp_path / "idx")
