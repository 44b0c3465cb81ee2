"""``mining.retrieval: bm25+label_dense``: the student's candidates from BM25 + the members' own retrieval."""

from __future__ import annotations

import json

import numpy as np
import yaml

from densekd.cli.main import main
from densekd.data.types import top_k
from densekd.index.faiss_index import FaissIndex
from densekd.pipeline.label_dense import LabelDense

from tests.pipeline.test_label_dense import _member, _Store
from tests.pipeline.test_pipeline_run import _config


class _FaissStore(_Store):
    built = 0

    def to_faiss(self, factory: str = "Flat", show_progress: bool = False) -> FaissIndex:
        self.built += 1
        index = FaissIndex(self.embeddings.shape[1], factory)
        index.add(self.ids, self.embeddings)
        return index


def test_member_retrieval_is_the_exact_top_k_of_the_mean_member_score(tiny_bert_path, tmp_path):
    """One search with the members' mean query vector ranks the corpus exactly as the mean of their
    scores does, and a training query is retrieved by the members that never saw it."""
    members = [_member(tiny_bert_path, tmp_path / f"m{i}", i) for i in range(6)]
    rng = np.random.default_rng(0)
    ids = [f"p{i}" for i in range(40)]
    store = _FaissStore(ids, rng.normal(size=(40, 32)).astype(np.float32))
    ld = LabelDense({"t0": 0, "t1": 1}, fold_models=[members[0:2], members[2:4]], full_models=members[4:6])
    texts = {"t0": "aspirin and heart attacks", "t1": "vitamin c", "new": "lung cancer causes"}
    got = ld.retrieve(store, texts, k=5)
    every = ld.scores(store, texts, {q: ids for q in texts})
    for qid in texts:
        assert list(got[qid]) == [p for p, _ in top_k(every[qid], 5)]
        np.testing.assert_allclose(list(got[qid].values()), [every[qid][p] for p in got[qid]], rtol=1e-4, atol=1e-5)
    assert ld.retrieve(store, texts, k=5) == got and store.built == 1  # one index per store, built once
    full_only = LabelDense({}, fold_models=[], full_models=members[4:6]).retrieve(store, texts, k=5)
    assert list(got["new"]) == list(full_only["new"])
    assert list(got["t0"]) != list(full_only["t0"]) or list(got["t1"]) != list(full_only["t1"])


def test_two_stage_mining_from_the_members_retrieval(tmp_path, toy_beir_dir, tiny_bert_path):
    """Members train on exactly the bm25+dense groups (their cache is shared), the student's negatives
    come from BM25's and the members' own top ``depth``, the teacher re-ranks the same union on dev,
    and ``densekd run`` goes through end to end."""
    from densekd.cli.config import load_config
    from densekd.pipeline.candidates import mined_groups
    from densekd.eval.metrics import evaluate
    from densekd.pipeline.config import PipelineConfig
    from densekd.pipeline.steps import METRICS
    from densekd.pipeline.teacher_signal import teacher_dev_runs

    path = _config(tmp_path, toy_beir_dir, tiny_bert_path, "query_only", {"label_dense": 1.0, "bm25": 0.5})
    raw = yaml.safe_load(path.read_text())
    raw["mining"].update({"retrieval": "bm25+label_dense", "depth": 3, "rank_range": [0, 6], "n_negatives": 4})
    raw["teacher"]["label_dense"] = {"folds": 2, "fold_seed": 1, "seeds": [0], "epochs": 1}
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path, [], PipelineConfig)
    two = mined_groups(cfg)
    one = mined_groups(load_config(path, ["mining.retrieval=bm25+dense"], PipelineConfig))
    assert [g.to_json() for g in two.member_groups] == [g.to_json() for g in one.groups]
    assert two.members().full_models == one.members().full_models  # the same cached members
    assert two.mined_key != one.mined_key

    ctx, ld = two.ctx, two.members()
    retrieved = ld.retrieve(two.store, {q: ctx.queries[q].text for q in ctx.train_qrels}, 3)
    assert any(g.neg_ids for g in two.groups)
    for g in two.groups:
        assert set(g.neg_ids) <= {p for p, _ in top_k(two.train_run[g.qid], 3)} | set(retrieved[g.qid])
    first = two.first_stage(cfg.teacher.rerank_depth)
    assert first[1] == ld.retrieve(two.store, {q: ctx.queries[q].text for q in ctx.eval_qrels}, cfg.teacher.rerank_depth)

    assert main(["run", str(path)]) == 0
    rows = json.loads((tmp_path / "out" / "metrics.json").read_text())["rows"]
    teacher = next(n for n in rows if n.startswith("teacher rerank ("))
    dev = teacher_dev_runs(ctx, None, two.eval_run, two.base_encoder, two.store, label_dense=ld, dense_eval_run=first[1])
    assert rows[teacher] == evaluate(dev["fused"], ctx.eval_qrels, METRICS)  # the members' union, not zero-shot's


def test_an_unknown_retrieval_is_one_clear_error(tmp_path, toy_beir_dir, tiny_bert_path, capsys):
    path = _config(tmp_path, toy_beir_dir, tiny_bert_path, "query_only", {"bm25": 1.0})
    assert main(["run", str(path), "--set", "mining.retrieval=colbert"]) == 2
    err = capsys.readouterr().err
    assert "mining.retrieval" in err and "bm25+label_dense" in err
    assert not (tmp_path / "out").exists()
