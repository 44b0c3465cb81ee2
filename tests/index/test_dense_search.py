"""dense_search(): encoder + corpus -> Run, with and without the embedding cache."""

from __future__ import annotations

import numpy as np
import pytest

from densekd.index.dense_search import default_fingerprint, dense_search


def test_matches_brute_force(toy, make_encoder):
    corpus, queries, _ = toy
    run = dense_search(make_encoder(), corpus, queries, k=3, show_progress=False)
    enc = make_encoder()
    p = enc.encode_passages([x.full_text() for x in corpus.values()])
    q = enc.encode_queries([x.text for x in queries.values()])
    ids = list(corpus)
    for row, qid in enumerate(queries):
        scores = q[row] @ p.T
        assert set(run[qid]) == {ids[j] for j in np.argsort(-scores)[:3]}
        assert max(run[qid].values()) == pytest.approx(scores.max(), rel=1e-5)


def test_cache_is_reused(toy, make_encoder, tmp_path):
    corpus, queries, _ = toy
    first = make_encoder()
    cached = dense_search(first, corpus, queries, k=5, cache_dir=tmp_path, fingerprint="fake", show_progress=False)
    assert (tmp_path / "manifest.json").exists() and first.passage_calls == 1
    second = make_encoder()
    again = dense_search(second, corpus, queries, k=5, cache_dir=tmp_path, fingerprint="fake", show_progress=False)
    assert second.passage_calls == 0 and again == cached
    plain = dense_search(make_encoder(), corpus, queries, k=5, show_progress=False)
    assert plain.keys() == cached.keys()
    for qid in plain:
        assert plain[qid] == pytest.approx(cached[qid])


def test_plain_text_queries_and_ivf(toy, make_encoder):
    corpus, _, _ = toy
    run = dense_search(make_encoder(), corpus, {"q": "Paris France capital"}, k=2, factory="IVF2,Flat",
                       nprobe=2, show_progress=False)
    assert next(iter(run["q"])) == "d7"


def test_fingerprint_needed_for_non_torch_encoder(toy, make_encoder, tmp_path):
    corpus, queries, _ = toy
    with pytest.raises(ValueError, match="fingerprint"):
        dense_search(make_encoder(), corpus, queries, cache_dir=tmp_path, show_progress=False)


def test_default_fingerprint_tracks_weights():
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(4, 2)
    before = default_fingerprint(model)
    assert default_fingerprint(model) == before
    with torch.no_grad():
        model.weight[0, 0] += 1.0
    assert default_fingerprint(model) != before
