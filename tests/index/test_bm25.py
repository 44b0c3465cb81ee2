"""BM25Index: rankings on the toy set, empty queries, atomic save/load and id-map validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from densekd.data.io import DataFormatError
from densekd.data.types import Passage, top_k
from densekd.index.bm25 import BM25Index


@pytest.fixture(scope="module")
def toy_index(toy) -> BM25Index:
    corpus, _, _ = toy
    return BM25Index().index(corpus, show_progress=False)


def test_obvious_document_ranks_first(toy, toy_index):
    _, queries, qrels = toy
    run = toy_index.search(queries, k=10, show_progress=False)
    assert set(run) == set(queries)
    for qid, rels in qrels.items():
        best = max(rels, key=rels.get)
        assert top_k(run[qid], 1)[0][0] == best, (qid, run[qid])


def test_title_is_indexed():
    index = BM25Index().index([Passage("a", "some body text", title="Zanzibar"), Passage("b", "other text")],
                              show_progress=False)
    assert list(index.search({"q": "zanzibar"}, show_progress=False)["q"]) == ["a"]


def test_plain_text_queries_and_sorted_scores(toy_index):
    run = toy_index.search({"q": "heart disease risk"}, k=3, show_progress=False)
    scores = list(run["q"].values())
    assert len(scores) == 3 and scores == sorted(scores, reverse=True) and scores[-1] > 0


def test_stopword_and_unknown_queries_return_empty(toy_index):
    run = toy_index.search({"stop": "the of and is", "unknown": "xylophone zebra", "empty": ""},
                           show_progress=False)
    assert run == {"stop": {}, "unknown": {}, "empty": {}}


def test_k_is_clipped_to_matching_documents(toy_index):
    run = toy_index.search({"q": "disease"}, k=1000, show_progress=False)
    # "disease" occurs in d3 and d5 only; non-matching documents are never returned.
    assert set(run["q"]) == {"d3", "d5"}
    with pytest.raises(ValueError):
        toy_index.search({"q": "disease"}, k=0, show_progress=False)


def test_save_load_gives_identical_runs(toy, toy_index, tmp_path):
    _, queries, _ = toy
    toy_index.save(tmp_path / "bm25")
    loaded = BM25Index.load(tmp_path / "bm25")
    assert loaded.ids == toy_index.ids
    assert (loaded.k1, loaded.b, loaded.method, loaded.stemmer_name) == (1.5, 0.75, "lucene", "english")
    assert loaded.search(queries, show_progress=False) == toy_index.search(queries, show_progress=False)
    ids = np.load(tmp_path / "bm25" / "ids.npy", allow_pickle=False)
    assert ids.dtype.kind == "U" and ids.tolist() == toy_index.ids


def test_save_overwrites_atomically(toy_index, tmp_path):
    target = tmp_path / "bm25"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    toy_index.save(target)
    toy_index.save(target)
    assert not (target / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bm25"]  # no temporary folders left behind


def test_custom_tokenizer_settings_survive_save(tmp_path):
    index = BM25Index(stemmer=None, stopwords=None).index([Passage("a", "the running"), Passage("b", "run")],
                                                          show_progress=False)
    index.save(tmp_path / "i")
    assert json.loads((tmp_path / "i" / "tokenizer.json").read_text()) == {"stemmer": None, "stopwords": None,
                                                                         "avg_doc_len": 1.5}
    loaded = BM25Index.load(tmp_path / "i")
    # Without stemming "run" does not match "running"; without stop words "the" is a term.
    assert list(loaded.search({"q": "run"}, show_progress=False)["q"]) == ["b"]
    assert list(loaded.search({"q": "the"}, show_progress=False)["q"]) == ["a"]


def test_bad_id_map_is_reported_with_its_file(toy_index, tmp_path):
    toy_index.save(tmp_path / "bm25")
    np.save(tmp_path / "bm25" / "ids.npy", np.array(["d1", "d2"]))
    with pytest.raises(DataFormatError, match="ids.npy") as err:
        BM25Index.load(tmp_path / "bm25")
    assert err.value.path.endswith("ids.npy") and "2 ids" in str(err.value)


def test_pickled_id_map_is_refused(toy_index, tmp_path):
    toy_index.save(tmp_path / "bm25")
    np.save(tmp_path / "bm25" / "ids.npy", np.array(toy_index.ids, dtype=object), allow_pickle=True)
    with pytest.raises(DataFormatError, match="ids.npy"):
        BM25Index.load(tmp_path / "bm25")


def test_missing_file_is_reported(toy_index, tmp_path):
    toy_index.save(tmp_path / "bm25")
    (tmp_path / "bm25" / "vocab.index.json").unlink()
    with pytest.raises(DataFormatError, match="vocab.index.json"):
        BM25Index.load(tmp_path / "bm25")


def test_errors_on_misuse():
    with pytest.raises(RuntimeError, match="index"):
        BM25Index().search({"q": "x"})
    with pytest.raises(ValueError, match="duplicate"):
        BM25Index().index([Passage("a", "x y"), Passage("a", "z")], show_progress=False)


def _load_scifact(root):
    try:
        from densekd.data.beir import load_beir
    except ImportError:
        load_beir = None
    if load_beir is not None:
        data = load_beir(root, "dev")
        return data.corpus, {qid: q.text for qid, q in data.queries.items()}, data.qrels
    corpus, queries, qrels = {}, {}, {}
    with open(root / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            corpus[row["_id"]] = Passage(row["_id"], row["text"], row.get("title", ""))
    with open(root / "queries.jsonl", encoding="utf-8") as f:
        all_queries = {(row := json.loads(line))["_id"]: row["text"] for line in f}
    with open(root / "qrels" / "dev.tsv", encoding="utf-8") as f:
        for line in list(f)[1:]:
            qid, pid, rel = line.rstrip("\n").split("\t")
            qrels.setdefault(qid, {})[pid] = int(rel)
    return corpus, {qid: all_queries[qid] for qid in qrels}, qrels


@pytest.mark.integration
def test_scifact_dev_reference_scores(shared_data):
    """BM25 (k1=1.5, b=0.75, Lucene idf, English stemmer + stop words) on SciFact dev, 200 queries."""
    import ir_measures
    from ir_measures import R, nDCG

    corpus, queries, qrels = _load_scifact(shared_data / "scifact")
    assert len(queries) == 200
    run = BM25Index().index(corpus, show_progress=False).search(queries, k=100, show_progress=False)
    scores = ir_measures.calc_aggregate([nDCG @ 10, R @ 100], qrels, run)
    assert scores[nDCG @ 10] == pytest.approx(0.690, abs=0.002)
    assert scores[R @ 100] == pytest.approx(0.914, abs=0.002)


def test_score_is_the_exact_bm25_score_of_any_candidate(toy, toy_index):
    """Scores equal search's for what search returns, 0 for passages sharing no term, and a passage
    below the search depth keeps its own (lower) score rather than a guess."""
    query = {"q": "aspirin heart attack"}
    full = toy_index.search(query, k=len(toy_index.ids))["q"]
    scored = toy_index.score(query, {"q": list(toy_index.ids)})["q"]
    for pid in toy_index.ids:
        assert scored[pid] == pytest.approx(full.get(pid, 0.0), abs=1e-6)
    assert any(v == 0.0 for v in scored.values()) and any(v > 0 for v in scored.values())
    top1 = toy_index.search(query, k=1)["q"]
    below = [p for p in full if p not in top1]
    assert below and all(scored[p] <= min(top1.values()) for p in below)
    with pytest.raises(KeyError, match="not in the BM25 index"):
        toy_index.score(query, {"q": ["no-such-passage"]})


@pytest.mark.parametrize("method", ["lucene", "robertson"])
def test_score_texts_of_a_corpus_passage_equals_its_indexed_score(toy, method):
    """A text outside the index is scored as one more corpus document: a passage's own text (repeated query
    terms included) gets exactly the score the index holds for it, under each variant's own idf."""
    corpus = toy[0]
    toy_index = BM25Index(method=method).index(corpus, show_progress=False)
    queries = {"q1": "aspirin heart attack risk", "q2": "heart heart and aspirin"}
    ids = list(corpus)
    texts = {qid: {f"copy-{pid}": corpus[pid].full_text() for pid in ids} for qid in queries}
    indexed = toy_index.score(queries, {qid: ids for qid in queries})
    outside = toy_index.score_texts(queries, texts)
    for qid in queries:
        assert any(v > 0 for v in indexed[qid].values())
        for pid in ids:
            assert outside[qid][f"copy-{pid}"] == pytest.approx(indexed[qid][pid], rel=1e-5, abs=1e-6)


def test_score_texts_uses_the_corpus_statistics(toy_index):
    """Adding a query term to a text raises its score; a text sharing no term scores 0; scoring texts
    never changes the index (the same text scores the same before and after)."""
    q = {"q": "aspirin"}
    before = toy_index.score_texts(q, {"q": {"a": "daily aspirin use", "b": "nothing in common", "c": ""}})["q"]
    more = toy_index.score_texts(q, {"q": {"a2": "daily aspirin aspirin use"}})["q"]
    assert before["b"] == 0.0 and before["c"] == 0.0 and before["a"] > 0
    assert more["a2"] > before["a"]
    assert toy_index.score_texts(q, {"q": {"a": "daily aspirin use"}})["q"]["a"] == before["a"]


def test_score_texts_survives_save_and_refuses_what_it_cannot_do(toy, toy_index, tmp_path):
    toy_index.save(tmp_path / "idx")
    loaded = BM25Index.load(tmp_path / "idx")
    q, texts = {"q": "aspirin heart"}, {"q": {"t": "aspirin for the heart"}}
    assert loaded.score_texts(q, texts) == toy_index.score_texts(q, texts)
    tok = tmp_path / "idx" / "tokenizer.json"  # a folder written before the mean length was kept
    tok.write_text(json.dumps({k: v for k, v in json.loads(tok.read_text()).items() if k != "avg_doc_len"}))
    old = BM25Index.load(tmp_path / "idx")
    assert old.search(q, k=3, show_progress=False) == loaded.search(q, k=3, show_progress=False)
    with pytest.raises(RuntimeError, match="mean document length"):
        old.score_texts(q, texts)
    with pytest.raises(ValueError, match="lucene"):
        BM25Index(method="atire").index(toy[0], show_progress=False).score_texts(q, texts)
