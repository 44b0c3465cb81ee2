"""`densekd search` as ERNIE-Search's inference cascade: index search -> ColBERT MaxSim -> cross-encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from densekd.cli.main import main
from densekd.data.beir import load_corpus, load_queries
from densekd.data.trec import load_run
from densekd.data.types import top_k
from densekd.teachers.cascade import Stage, cascade_search, top


def cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_bert_path):
    """A tiny shared-tower ERNIE-Search model (dense + ColBERT heads) and a tiny cross-encoder, saved."""
    from densekd.encoders.cross_encoder import CrossEncoder
    from densekd.encoders.ernie import ErnieSearchModel

    root = tmp_path_factory.mktemp("cascade-models")
    ErnieSearchModel.from_pretrained(tiny_bert_path, colbert_dim=16).save_pretrained(root / "ernie")
    CrossEncoder.from_pretrained(tiny_bert_path, max_length=32).save_pretrained(root / "ce")
    return root


def _search(tmp_path, toy_beir_dir, models, *extra) -> int:
    return cli("search", "--index", tmp_path / "idx", "--queries", toy_beir_dir / "queries.jsonl", "-k", "6",
               "--colbert", models / "ernie", "--colbert-depth", "4", "--token-store", tmp_path / "tokens", *extra)


def test_cascade_orders_each_stage_by_its_own_scores(tmp_path, toy_beir_dir, models):
    """The final run is the cross-encoder's order on its top 2, then the ColBERT order on the rest of its
    top 4, then the dense order; the candidate set is the dense top 6. Per-stage latency is reported."""
    from densekd.encoders.late_interaction import LateInteractionEncoder
    from densekd.teachers.cross_encoder import CrossEncoderTeacher

    assert cli("index", "--corpus", toy_beir_dir / "corpus.jsonl", "--out", tmp_path / "idx", "--kind", "dense",
               "--model", models / "ernie", "--batch-size", "4", "--max-length", "32") == 0
    assert cli("search", "--index", tmp_path / "idx", "--queries", toy_beir_dir / "queries.jsonl", "-k", "6",
               "--out", tmp_path / "dense.trec") == 0
    assert _search(tmp_path, toy_beir_dir, models, "--cross-encoder", models / "ce", "--cross-encoder-depth", "2",
                   "--out", tmp_path / "cascade.trec", "--latency", "--latency-out", tmp_path / "lat.json") == 0
    dense, cascade = load_run(tmp_path / "dense.trec"), load_run(tmp_path / "cascade.trec")
    corpus, queries = load_corpus(toy_beir_dir / "corpus.jsonl"), load_queries(toy_beir_dir / "queries.jsonl")
    colbert = LateInteractionEncoder.from_pretrained(models / "ernie")
    ce = CrossEncoderTeacher.from_pretrained(models / "ce")
    for qid, docs in dense.items():
        order = [p for p, _ in top_k(cascade[qid], len(cascade[qid]))]
        first6 = [p for p, _ in top_k(docs, 6)]
        assert set(order) == set(first6)
        q = colbert.encode_query_tokens([queries[qid].text], batch_size=1)[0]
        maxsim = {p: float((q @ colbert.encode_passage_tokens([corpus[p].full_text()], 1, False)[0].T).max(1).sum())
                  for p in first6[:4]}
        by_colbert = sorted(maxsim, key=lambda p: -maxsim[p])
        logits = ce.score([(queries[qid].text, corpus[p].full_text()) for p in by_colbert[:2]])
        assert order[:2] == [by_colbert[:2][i] for i in np.argsort(-logits, kind="stable")]
        assert order[2:4] == by_colbert[2:] and order[4:] == first6[4:]
    lat = json.loads((tmp_path / "lat.json").read_text())
    assert set(lat["stages"]) == {"dense", "colbert", "cross-encoder"} and lat["n"] == len(cascade)
    assert lat["mean"] == pytest.approx(sum(s["mean"] for s in lat["stages"].values()), rel=1e-6)
    # the token store is reused on the next run (same model, same corpus): identical results
    manifest = (tmp_path / "tokens" / "manifest.json").stat().st_mtime_ns
    assert _search(tmp_path, toy_beir_dir, models, "--out", tmp_path / "again.trec") == 0
    assert (tmp_path / "tokens" / "manifest.json").stat().st_mtime_ns == manifest


def test_cascade_bad_settings_write_nothing(tmp_path, toy_beir_dir, models, capsys):
    assert cli("index", "--corpus", toy_beir_dir / "corpus.jsonl", "--out", tmp_path / "idx", "--kind", "dense",
               "--model", models / "ernie", "--batch-size", "4", "--max-length", "32") == 0
    out = tmp_path / "run.trec"
    capsys.readouterr()
    assert _search(tmp_path, toy_beir_dir, models, "--colbert-depth", "7", "--out", out) == 2
    assert "--colbert-depth 7 exceeds the 6" in capsys.readouterr().err
    assert _search(tmp_path, toy_beir_dir, models, "--cross-encoder", models / "ce", "--cross-encoder-depth", "5",
                   "--out", out) == 2
    assert "--cross-encoder-depth 5 exceeds the 4" in capsys.readouterr().err
    assert cli("search", "--index", tmp_path / "idx", "--queries", toy_beir_dir / "queries.jsonl",
               "--colbert", models / "ernie", "--out", out) == 2
    assert "--token-store" in capsys.readouterr().err
    # a missing re-ranker or a bad backend is refused before the corpus is encoded into the token store
    assert _search(tmp_path, toy_beir_dir, models, "--cross-encoder", tmp_path / "typo", "--out", out) == 2
    assert "--cross-encoder: folder not found" in capsys.readouterr().err
    assert _search(tmp_path, toy_beir_dir, models, "--backend", "tpu", "--out", out) == 2
    assert "backend must be one of" in capsys.readouterr().err
    assert not (tmp_path / "tokens").exists()
    # --latency-out is an output like --out: it may not overwrite an input
    queries = (toy_beir_dir / "queries.jsonl").read_bytes()
    assert _search(tmp_path, toy_beir_dir, models, "--latency", "--latency-out", toy_beir_dir / "queries.jsonl",
                   "--out", out) == 2
    assert "--latency-out is the input --queries" in capsys.readouterr().err
    assert (toy_beir_dir / "queries.jsonl").read_bytes() == queries
    # a token store of another model is refused and left untouched
    other = tmp_path / "tokens"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert _search(tmp_path, toy_beir_dir, models, "--out", out) == 2
    assert "not a token store" in capsys.readouterr().err and (other / "notes.txt").read_text() == "mine"
    assert not out.exists()


def test_cascade_search_keeps_the_first_stage_tail_and_times_per_query():
    first = {"a": 5.0, "b": 4.0, "c": 3.0, "d": 2.0}
    reverse = Stage("reverse", lambda qs, run: {q: {p: -s for p, s in top(run, 3)[q].items()} for q in run}, 3)
    keep_two = Stage("two", lambda qs, run: {q: dict(top_k(top(run, 2)[q], 2)) for q in run}, 2)
    run, seconds = cascade_search({"q1": "x", "q2": "y"}, lambda qs: {q: dict(first) for q in qs},
                                  [reverse, keep_two], first_name="bm25", per_query=True, warmup=1)
    # reverse re-ranks a, b, c -> c, b, a; "two" keeps c, b; then a (reverse's tail), then d (first stage's)
    assert [p for p, _ in top_k(run["q1"], 4)] == ["c", "b", "a", "d"] and run["q1"] == run["q2"]
    assert {k: len(v) for k, v in seconds.items()} == {"bm25": 2, "reverse": 2, "two": 2}
    batch, totals = cascade_search({"q1": "x"}, lambda qs: {q: dict(first) for q in qs}, [reverse])
    assert list(totals) == ["first stage", "reverse"] and all(len(v) == 1 for v in totals.values())
    with pytest.raises(ValueError, match="unique"):
        cascade_search({"q": "x"}, lambda qs: {}, [reverse, reverse])
