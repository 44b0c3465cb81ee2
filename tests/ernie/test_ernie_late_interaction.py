"""LateInteractionEncoder and token-store search agree with exhaustive exact MaxSim on the toy corpus."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from densekd.data.io import DataFormatError
from densekd.encoders.late_interaction import LateInteractionEncoder
from densekd.index.late_interaction import (
    TokenEmbeddingStore,
    TokenFaissIndex,
    encode_corpus_tokens,
    late_interaction_search,
)
from densekd.scores import maxsim
from densekd.teachers.late_interaction import LateInteractionTeacher
from densekd.teachers.rerank import rerank


def exhaustive(encoder: LateInteractionEncoder, data) -> dict[str, dict[str, float]]:
    """Reference: every query against every passage with the padded-tensor MaxSim of the losses."""
    pids, qids = list(data.corpus), list(data.queries)
    with torch.no_grad():
        q = encoder.encode_query(encoder.tokenize_queries([data.queries[i].text for i in qids]))
        p = encoder.encode_passage(encoder.tokenize_passages([data.corpus[i].full_text() for i in pids]))
        scores = maxsim(q.tokens, q.mask, p.tokens, p.mask)                  # [Nq, Np]
    return {qid: dict(zip(pids, row.tolist())) for qid, row in zip(qids, scores)}


def ranked(run_for_query: dict[str, float]) -> list[str]:
    return sorted(run_for_query, key=lambda pid: (-run_for_query[pid], pid))


def assert_same_scores(run: dict, ref: dict, atol: float) -> None:
    for qid, docs in run.items():
        for pid, score in docs.items():
            assert score == pytest.approx(ref[qid][pid], abs=atol), (qid, pid)


def test_ernie_rerank_equals_exhaustive_maxsim(colbert, toy_train):
    ref = exhaustive(colbert, toy_train)
    first_stage = {qid: {pid: float(i) for i, pid in enumerate(reversed(list(toy_train.corpus)))} for qid in ref}
    run = rerank(LateInteractionTeacher(colbert), first_stage, toy_train.queries, toy_train.corpus, k=8)
    assert_same_scores(run, ref, atol=1e-5)
    assert {qid: list(docs) for qid, docs in run.items()} == {qid: ranked(ref[qid]) for qid in ref}
    top3 = rerank(LateInteractionTeacher(colbert), first_stage, toy_train.queries, toy_train.corpus, k=3)
    assert all(len(docs) == 3 for docs in top3.values())
    with pytest.raises(DataFormatError):
        rerank(LateInteractionTeacher(colbert), {"q1": {"nope": 1.0}}, toy_train.queries, toy_train.corpus)


def test_ernie_token_store_exhaustive_faiss_and_candidate_search_agree(colbert, toy_train, tmp_path):
    ref = exhaustive(colbert, toy_train)
    store = encode_corpus_tokens(colbert, toy_train.corpus, tmp_path / "tok", chunk_size=3, dtype="float32",
                                 show_progress=False)
    assert len(store) == 8 and len(store.manifest["chunks"]) == 3 and store.dim == 16
    full = late_interaction_search(colbert, store, toy_train.queries, k=8)
    assert_same_scores(full, ref, atol=1e-5)
    assert {qid: list(docs) for qid, docs in full.items()} == {qid: ranked(ref[qid]) for qid in ref}

    # token FAISS (exact Flat): with every token reachable the candidates are the whole corpus
    index = TokenFaissIndex(store)
    deep = late_interaction_search(colbert, store, toy_train.queries, k=5, token_index=index, k_tokens=10_000)
    assert {qid: list(docs) for qid, docs in deep.items()} == {qid: ranked(ref[qid])[:5] for qid in ref}
    # shallow token search: fewer candidates, each still scored by exact MaxSim, each a token-NN hit
    shallow = late_interaction_search(colbert, store, toy_train.queries, k=8, token_index=index, k_tokens=2)
    assert_same_scores(shallow, ref, atol=1e-5)
    assert any(len(docs) < 8 for docs in shallow.values())
    q_tokens = colbert.encode_query_tokens([toy_train.queries["q1"].text])
    assert set(shallow["q1"]) == {store.ids[r] for r in index.candidates(q_tokens, k_tokens=2)[0]}

    # first-stage candidates: only those, exactly scored
    cands = {qid: {"d1": 1.0, "d7": 0.5} for qid in ref}
    assert_same_scores(late_interaction_search(colbert, store, toy_train.queries, candidates=cands), ref, 1e-5)

    index.save(tmp_path / "tfaiss")
    again = TokenFaissIndex.load(tmp_path / "tfaiss", TokenEmbeddingStore.load(tmp_path / "tok"))
    assert late_interaction_search(colbert, store, toy_train.queries, k=8, token_index=again, k_tokens=2) == shallow
    other = encode_corpus_tokens(colbert, toy_train.corpus, tmp_path / "other", chunk_size=3, dtype="float32",
                                 fingerprint="another model", show_progress=False)
    with pytest.raises(DataFormatError, match="another token store"):
        TokenFaissIndex.load(tmp_path / "tfaiss", other)


def test_ernie_float16_store_is_compact_close_and_reused(colbert, toy_train, tmp_path):
    ref = exhaustive(colbert, toy_train)
    store = encode_corpus_tokens(colbert, toy_train.corpus, tmp_path / "f16", chunk_size=4, show_progress=False)
    assert store.passage_tokens(0).dtype == np.float16
    # unit-norm tokens: float16 rounding moves each cosine by ~1e-3 at most, Lq of them per score
    assert_same_scores(late_interaction_search(colbert, store, toy_train.queries, k=8), ref, atol=2e-2)

    class NoEncoding:
        def encode_passage_tokens(self, *args, **kwargs):
            raise AssertionError("a complete store with the same key must be reused")
    reused = encode_corpus_tokens(NoEncoding(), toy_train.corpus, tmp_path / "f16", chunk_size=4)
    assert reused.ids == store.ids


def test_ernie_token_store_resumes_after_its_last_complete_chunk(colbert, toy_train, tmp_path):
    calls: list[int] = []

    class DiesOnSecondChunk:
        def encode_passage_tokens(self, texts, batch_size, show_progress):
            if calls:
                raise KeyboardInterrupt
            calls.append(len(texts))
            return colbert.encode_passage_tokens(texts, batch_size)

    with pytest.raises(KeyboardInterrupt):
        encode_corpus_tokens(DiesOnSecondChunk(), toy_train.corpus, tmp_path / "s", chunk_size=5, fingerprint="m")
    assert not (tmp_path / "s" / "manifest.json").exists()  # incomplete: nothing may load it

    class Counting:
        def encode_passage_tokens(self, texts, batch_size, show_progress):
            calls.append(len(texts))
            return colbert.encode_passage_tokens(texts, batch_size)

    resumed = encode_corpus_tokens(Counting(), toy_train.corpus, tmp_path / "s", chunk_size=5, fingerprint="m")
    assert calls == [5, 3]  # chunk 0 once (first run), then only chunk 1
    fresh = encode_corpus_tokens(colbert, toy_train.corpus, tmp_path / "fresh", chunk_size=5, fingerprint="m")
    for row in range(len(fresh)):
        np.testing.assert_array_equal(resumed.passage_tokens(row), fresh.passage_tokens(row))
    calls.clear()
    encode_corpus_tokens(Counting(), toy_train.corpus, tmp_path / "s", chunk_size=5, fingerprint="other")
    assert calls == [5, 3]  # another model: everything is re-encoded


def test_ernie_late_interaction_encoder_save_load(colbert, toy_train, tmp_path):
    colbert.save_pretrained(tmp_path / "cb")
    loaded = LateInteractionEncoder.from_pretrained(tmp_path / "cb")
    assert loaded.config == colbert.config
    queries = [toy_train.queries["q1"].text] * 3
    passages = [p.full_text() for p in list(toy_train.corpus.values())[:3]]
    np.testing.assert_array_equal(loaded.score(queries, passages), colbert.score(queries, passages))
    with pytest.raises(ValueError, match="cannot override dim"):
        LateInteractionEncoder.from_pretrained(tmp_path / "cb", dim=8)


def test_colbert_teacher_annotates_groups_and_has_a_fingerprint(colbert, toy_train, toy_groups, tmp_path):
    from densekd.teachers import Teacher
    from densekd.teachers.annotate import annotate, load_annotations

    teacher = LateInteractionTeacher(colbert)
    assert isinstance(teacher, Teacher)
    scored = annotate(toy_groups, toy_train.queries, toy_train.corpus, teacher, tmp_path / "s.jsonl",
                      batch_size=4, flush_every=2, show_progress=False)
    for group in scored:
        pids = group.pos_ids + group.neg_ids
        expected = colbert.score([toy_train.queries[group.qid].text] * len(pids),
                                 [toy_train.corpus[p].full_text() for p in pids])
        np.testing.assert_allclose([group.teacher_scores[p] for p in pids], expected, atol=1e-5)
    fingerprint = teacher.fingerprint
    assert load_annotations(tmp_path / "s.jsonl")[0]["teacher"] == fingerprint
    assert LateInteractionTeacher(colbert).fingerprint == fingerprint     # stable for the same weights
    with torch.no_grad():
        colbert.head.linear.weight.mul_(2.0)                              # in place: the cache must notice
    assert teacher.fingerprint != fingerprint
