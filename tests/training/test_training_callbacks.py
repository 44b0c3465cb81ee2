"""RetrievalEvalCallback (re-ranking a candidate run during training) and EpochSetterCallback."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from densekd.encoders.dense import DenseEncoder
from densekd.training import RetrievalEvalCallback
from densekd.training.callbacks import EpochSetterCallback
from densekd.training.trainer import freeze_passage_side


def _all_docs_run(toy_data):
    return {qid: {pid: 0.0 for pid in toy_data.corpus} for qid in toy_data.queries}


def test_reranking_every_document_equals_exhaustive_search(tiny_bert_path, toy_data):
    encoder = DenseEncoder.from_pretrained(tiny_bert_path)
    metrics = ("ndcg@10", "recall@5", "mrr@10")
    rerank = RetrievalEvalCallback(toy_data.queries, toy_data.corpus, toy_data.qrels, _all_docs_run(toy_data),
                                   metrics=metrics)
    search = RetrievalEvalCallback(toy_data.queries, toy_data.corpus, toy_data.qrels, None, metrics=metrics)
    scores = rerank.evaluate(encoder)
    assert scores == pytest.approx(search.evaluate(encoder))
    assert set(scores) == set(metrics) and all(0.0 <= v <= 1.0 for v in scores.values())


def test_passage_vectors_are_cached_only_when_the_passage_side_is_frozen(tiny_bert_path, toy_data):
    encoder = DenseEncoder.from_pretrained(tiny_bert_path)
    calls = []
    encode = encoder.encode_passages
    encoder.encode_passages = lambda *a, **kw: calls.append(1) or encode(*a, **kw)
    callback = RetrievalEvalCallback(toy_data.queries, toy_data.corpus, toy_data.qrels, _all_docs_run(toy_data))
    callback.evaluate(encoder), callback.evaluate(encoder)
    assert len(calls) == 2  # trainable passage tower: re-encoded every time
    freeze_passage_side(encoder)
    callback.evaluate(encoder), callback.evaluate(encoder), callback.evaluate(encoder)
    assert len(calls) == 3


def test_metrics_land_in_the_training_log_records(make_trainer, tiny_bert_path, toy_data, tmp_path):
    callback = RetrievalEvalCallback(toy_data.queries, toy_data.corpus, toy_data.qrels, _all_docs_run(toy_data),
                                     metrics=("ndcg@10",), every_n_steps=1)
    trainer = make_trainer(tiny_bert_path, tmp_path, max_steps=2, logging_steps=10,
                           trainer_kw={"callbacks": [callback]})
    trainer.train()
    evaluated = [r for r in trainer.state.log_history if "eval_ndcg@10" in r]
    assert [r["step"] for r in evaluated] == [1, 2]
    assert all("loss" in r for r in evaluated)  # one record with the training loss, not a separate one


def test_epoch_setter_uses_the_integer_epoch():
    dataset = SimpleNamespace(set_epoch=lambda e: setattr(dataset, "epoch", e))
    EpochSetterCallback(dataset).on_epoch_begin(None, SimpleNamespace(epoch=1.5), None)
    assert dataset.epoch == 1


def test_bad_arguments(toy_data):
    with pytest.raises(ValueError, match="every_n_steps"):
        RetrievalEvalCallback(toy_data.queries, toy_data.corpus, toy_data.qrels, every_n_steps=0)
    with pytest.raises(ValueError, match="unknown metric"):
        RetrievalEvalCallback(toy_data.queries, toy_data.corpus, toy_data.qrels, metrics=("ndgc@10",))
    with pytest.raises(ValueError, match="not in the corpus"):
        RetrievalEvalCallback(toy_data.queries, toy_data.corpus, toy_data.qrels, {"q1": {"zzz": 1.0}})
