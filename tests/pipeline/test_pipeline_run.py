"""End-to-end ``densekd run`` on the toy set with a tiny random model, plus cache semantics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from densekd.cli.main import main
from densekd.pipeline.cache import MARKER, cache_key, cached_step


def _config(tmp_path: Path, toy_beir_dir: Path, tiny_bert_path: str, train_mode: str, fusion: dict) -> Path:
    cfg = {
        "name": "toy", "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
        "encode_batch_size": 4,
        "data": {"root": str(toy_beir_dir)},
        "mining": {"depth": 8, "n_negatives": 3, "rank_range": [0, 8], "sampling": "top"},
        "teacher": {"model": tiny_bert_path, "max_steps": 3, "batch_size": 2, "group_size": 3, "max_length": 32,
                    "rerank_depth": 4, "fusion": fusion},
        "student": {"model": tiny_bert_path, "train_mode": train_mode, "max_steps": 3, "batch_size": 2,
                    "group_size": 3, "passage_max_length": 32, "query_max_length": 16, "logging_steps": 1},
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("train_mode,fusion", [("full", {"cross_encoder": 1.0}),
                                               ("query_only", {"cross_encoder": 1.0, "bm25": 0.5, "dense": 0.5})])
def test_run_end_to_end_then_fully_cached(tmp_path, toy_beir_dir, tiny_bert_path, train_mode, fusion, capsys):
    cfg = _config(tmp_path, toy_beir_dir, tiny_bert_path, train_mode, fusion)
    assert main(["run", str(cfg)]) == 0
    out = tmp_path / "out"
    first = json.loads((out / "metrics.json").read_text())
    assert {"bm25", "zero-shot dense", "distilled student (KL + InfoNCE)"} <= set(first["rows"])
    assert any(name.endswith("BM25 hybrid") for name in first["rows"])
    for row in first["rows"].values():
        assert 0.0 <= row["ndcg@10"] <= 1.0
    assert first["student"]["steps"] == 3
    report = (out / "report.md").read_text()
    assert "## Results on dev" in report  # the section names the evaluated split
    assert "distilled student" in report and (out / "training.png").is_file() and (out / "teacher_scores.png").is_file()
    history = json.loads((out / "student" / "log_history.json").read_text())
    assert any("loss" in h for h in history)
    printed = capsys.readouterr()
    assert "{'loss'" not in printed.out + printed.err  # the losses go to the history and plot, not the terminal

    # second run: every step comes from the cache and the figures are identical
    assert main(["run", str(cfg)]) == 0
    second = json.loads((out / "metrics.json").read_text())
    cached = {name: t["cached"] for name, t in second["steps"].items() if name != "evaluate"}
    assert all(cached.values()), cached
    assert second["rows"] == first["rows"]


def test_stage_command_stops_after_mining(tmp_path, toy_beir_dir, tiny_bert_path):
    cfg = _config(tmp_path, toy_beir_dir, tiny_bert_path, "full", {"cross_encoder": 1.0})
    assert main(["mine", str(cfg)]) == 0
    assert any((tmp_path / "cache" / "mined").glob("*/groups.jsonl"))
    assert not (tmp_path / "cache" / "teacher").exists()


def test_unknown_config_key_is_one_clear_error(tmp_path, toy_beir_dir, tiny_bert_path, capsys):
    cfg = _config(tmp_path, toy_beir_dir, tiny_bert_path, "full", {"cross_encoder": 1.0})
    assert main(["run", str(cfg), "--set", "student.lernrate=1"]) == 2
    err = capsys.readouterr().err
    assert "lernrate" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_cached_step_reuses_and_discards_interrupted_output(tmp_path):
    calls = []

    def compute(folder: Path) -> dict:
        calls.append(folder)
        (folder / "x.txt").write_text("done")
        return {"n": len(calls)}

    folder = tmp_path / cache_key("a")
    assert cached_step(folder, compute) == ({"n": 1}, False)
    assert cached_step(folder, compute) == ({"n": 1}, True)
    # an interrupted run leaves a folder without the marker: it is cleared and recomputed
    (folder / MARKER).unlink()
    (folder / "stale.txt").write_text("half")
    assert cached_step(folder, compute) == ({"n": 2}, False)
    assert not (folder / "stale.txt").exists()
    # a folder keyed from outside is recomputed when the key changes
    assert cached_step(folder, compute, key="k1") == ({"n": 3}, False)
    assert cached_step(folder, compute, key="k1") == ({"n": 3}, True)
    assert cached_step(folder, compute, key="k2") == ({"n": 4}, False)


def test_cache_key_is_order_insensitive_and_value_sensitive():
    assert cache_key({"a": 1, "b": [1, 2]}) == cache_key({"b": [1, 2], "a": 1})
    assert cache_key({"a": 1}) != cache_key({"a": 2})


def test_run_with_ernie_student(tmp_path, toy_beir_dir, tiny_bert_path):
    cfg_path = _config(tmp_path, toy_beir_dir, tiny_bert_path, "full", {"cross_encoder": 1.0})
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["student"].update({"architecture": "ernie", "colbert_dim": 8, "loss": {"ernie": {"ce_to_dense_weight": 0.5}}})
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(cfg_path)]) == 0
    model_dir = tmp_path / "out" / "student" / "model"
    from densekd.encoders.ernie import ErnieSearchModel

    assert ErnieSearchModel.from_pretrained(model_dir).colbert_dim == 8
    history = json.loads((tmp_path / "out" / "student" / "log_history.json").read_text())
    logged = {k for h in history for k in h}
    assert any("kl_colbert_to_dense" in k for k in logged), logged


def test_train_teacher_stage_reports_the_teachers_dev_rerank(tmp_path, toy_beir_dir, tiny_bert_path, capsys):
    cfg = _config(tmp_path, toy_beir_dir, tiny_bert_path, "full", {"cross_encoder": 1.0})
    assert main(["train-teacher", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "cross-encoder rerank" in out and "bm25" in out
    assert any((tmp_path / "cache" / "teacher_dev").glob("*/rerank.trec"))
    assert not (tmp_path / "cache" / "annotations").exists()


def test_run_with_cross_fitted_label_dense_teacher(tmp_path, toy_beir_dir, tiny_bert_path):
    """The ensemble teacher without a cross-encoder: no cross-encoder is trained, the labels-only members
    are cross-fitted, every reported system has a TREC run, and the query-only student is exported as a
    sentence-transformers Router that reproduces its two towers."""
    import numpy as np
    import yaml as _yaml
    from sentence_transformers import SentenceTransformer

    from densekd.data.trec import load_run
    from densekd.encoders.dense import DenseEncoder

    cfg_path = _config(tmp_path, toy_beir_dir, tiny_bert_path, "query_only", {"label_dense": 1.0, "bm25": 0.5})
    cfg = _yaml.safe_load(cfg_path.read_text())
    cfg["mining"]["retrieval"] = "bm25+dense"
    cfg["teacher"]["label_dense"] = {"folds": 2, "fold_seed": 1, "seeds": [0], "epochs": 1}  # seed 1 splits 2|3
    cfg["student"]["loss"] = {"kl": {"weight": 1.0, "student_temperature": 0.05}, "contrastive": {"weight": 1.0}}
    cfg_path.write_text(_yaml.safe_dump(cfg))
    assert main(["run", str(cfg_path)]) == 0
    out = tmp_path / "out"
    result = json.loads((out / "metrics.json").read_text())
    rows = result["rows"]
    assert not (tmp_path / "cache" / "teacher").exists()  # no cross-encoder in the fusion: none trained
    members = sorted(p.name for p in (tmp_path / "cache" / "label_dense").glob("*/*"))
    assert members == ["all-seed0", "fold0-seed0", "fold1-seed0"]
    assert any(n.startswith("labels-only student") for n in rows)
    teacher_row = next(n for n in rows if n.startswith("teacher rerank ("))
    assert "1 label_dense" in teacher_row and "0.5 bm25" in teacher_row
    assert "distilled student (KL + InfoNCE)" in rows
    assert "## Results on dev" in (out / "report.md").read_text()
    trec = sorted((out / "runs").glob("*.trec"))
    assert len(trec) == len(rows)
    assert all(load_run(f) for f in trec)

    student = DenseEncoder.from_pretrained(out / "student" / "model")
    st = SentenceTransformer(str(out / "sentence-transformers"), device="cpu")
    texts = ["aspirin and heart attacks", "vitamin c and colds"]
    np.testing.assert_allclose(st.encode_query(texts), student.encode_queries(texts), atol=1e-5)
    np.testing.assert_allclose(st.encode_document(texts), student.encode_passages(texts, show_progress=False),
                               atol=1e-5)

    assert main(["run", str(cfg_path)]) == 0  # all cached, same figures
    again = json.loads((out / "metrics.json").read_text())
    assert all(t["cached"] for n, t in again["steps"].items() if n != "evaluate"), again["steps"]
    assert again["rows"] == rows


def test_corpus_vectors_are_keyed_by_the_corpus_not_the_queries(tmp_path, toy_beir_dir, tiny_bert_path):
    """Another split (here: other training qrels) reuses the cached corpus encoding; another corpus does not."""
    import shutil

    from densekd.cli.config import load_config
    from densekd.pipeline import steps
    from densekd.pipeline.config import PipelineConfig

    data = tmp_path / "data"
    shutil.copytree(toy_beir_dir, data)
    cfg_path = _config(tmp_path, data, tiny_bert_path, "query_only", {"cross_encoder": 1.0})
    cfg = load_config(cfg_path, [], PipelineConfig)
    first = steps.load_context(cfg)
    steps.corpus_embeddings(first, tiny_bert_path, 32, "base")
    (data / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    second = steps.load_context(cfg)
    assert second.data_key != first.data_key  # BM25 runs and mining are recomputed ...
    steps.corpus_embeddings(second, tiny_bert_path, 32, "base")
    assert second.timings["encode:base"]["cached"] is True  # ... the corpus vectors are not
    with open(data / "corpus.jsonl", "a", encoding="utf-8") as f:
        f.write('{"_id": "d99", "title": "", "text": "a new passage"}\n')
    third = steps.load_context(cfg)
    steps.corpus_embeddings(third, tiny_bert_path, 32, "base")
    assert third.timings["encode:base"]["cached"] is False


def _untied_folder_changed_in_place(tmp_path, toy_beir_dir, tiny_bert_path, step):
    """``step(ctx, folder)`` on an untied model folder (no top-level model.safetensors), then again after its
    passage tower is changed and saved in place: ``(ctx, first result, second result)``."""
    import torch

    from densekd.cli.config import load_config
    from densekd.encoders.dense import DenseEncoder
    from densekd.pipeline import steps
    from densekd.pipeline.config import PipelineConfig

    cfg = load_config(_config(tmp_path, toy_beir_dir, tiny_bert_path, "query_only", {"cross_encoder": 1.0}), [],
                      PipelineConfig)
    ctx = steps.load_context(cfg)
    folder = tmp_path / "student"
    encoder = DenseEncoder.from_pretrained(tiny_bert_path, shared=False)
    encoder.save_pretrained(folder)
    before = step(ctx, folder)
    with torch.no_grad():
        next(encoder.passage_model.parameters()).add_(0.5)
    encoder.save_pretrained(folder)
    return ctx, before, step(ctx, folder)


def test_corpus_vectors_follow_the_weights_not_the_folder(tmp_path, toy_beir_dir, tiny_bert_path):
    """An untied model folder rewritten in place with a changed passage tower is encoded again, and its
    vectors are the new tower's: the key never falls back to the path."""
    import numpy as np

    from densekd.encoders.dense import DenseEncoder
    from densekd.pipeline import steps

    ctx, before, after = _untied_folder_changed_in_place(
        tmp_path, toy_beir_dir, tiny_bert_path, lambda ctx, folder: steps.corpus_embeddings(ctx, folder, 32, "student"))
    assert ctx.timings["encode:student"]["cached"] is False
    assert after.fingerprint != before.fingerprint
    texts = [p.full_text() for p in ctx.corpus.values()]
    folder = tmp_path / "student"
    expected = DenseEncoder.from_pretrained(folder, passage_max_length=32).encode_passages(texts, show_progress=False)
    rows = [after.ids.index(pid) for pid in ctx.corpus]
    np.testing.assert_allclose(np.asarray(after.embeddings)[rows], expected, atol=1e-5)


def test_passage_token_states_follow_the_weights_not_the_folder(tmp_path, toy_beir_dir, tiny_bert_path):
    """As the corpus vectors: a folder rewritten in place with a changed passage tower gets new token states
    (the key was the top-level model.safetensors digest, or the *path* for an untied folder)."""
    import numpy as np

    from densekd.pipeline import steps

    def states(ctx, folder):
        table = steps.passage_token_states(ctx, str(folder), 32, "student", dtype="float32")
        return table.manifest["fingerprint"], np.array(table.vectors, copy=True)

    ctx, before, after = _untied_folder_changed_in_place(tmp_path, toy_beir_dir, tiny_bert_path, states)
    assert ctx.timings["token-states:student"]["cached"] is False
    assert after[0] != before[0] and not np.allclose(after[1], before[1])
    assert states(ctx, tmp_path / "student")[0] == after[0]
    assert ctx.timings["token-states:student"]["cached"] is True


def test_label_dense_members_read_passages_at_their_own_length(tmp_path, toy_beir_dir, tiny_bert_path):
    """teacher.label_dense.passage_max_length: the members train on and score with corpus vectors at
    their length, whatever store the caller passes; at the student's length they share its store."""
    import numpy as np

    from densekd.cli.config import load_config
    from densekd.pipeline.candidates import mined_groups
    from densekd.pipeline.config import PipelineConfig
    from densekd.pipeline import steps
    from densekd.pipeline.label_dense import train_label_dense
    from densekd.pipeline.teacher_signal import dense_signal

    cfg_path = _config(tmp_path, toy_beir_dir, tiny_bert_path, "query_only", {"label_dense": 1.0})
    member = "teacher.label_dense={folds: 2, fold_seed: 1, seeds: [0], epochs: 1, passage_max_length: 6}"
    cfg = load_config(cfg_path, [member], PipelineConfig)
    m = mined_groups(cfg)
    ld = train_label_dense(m.ctx, m.groups, m.store)
    assert ld.store is not None and ld.store.fingerprint != m.store.fingerprint
    assert not np.allclose(ld.store.embeddings, m.store.embeddings)  # 6 tokens of each passage, not 32
    texts = {"new": "aspirin and heart attacks", "other": "vitamin c and colds"}  # no training query: full members
    cands = {q: list(m.store.ids[:3]) for q in texts}
    got = ld.scores(m.store, texts, cands)
    own = dense_signal(ld.encoder(ld.full_models[0]), ld.store, texts, cands)
    for q in texts:
        np.testing.assert_allclose([got[q][p] for p in cands[q]], [own[q][p] for p in cands[q]], rtol=1e-5)

    same = load_config(cfg_path, [member.replace("6}", "32}")], PipelineConfig)
    assert train_label_dense(steps.load_context(same), m.groups, m.store).store is None



def test_the_labels_only_row_of_members_at_their_own_length(tmp_path, toy_beir_dir, tiny_bert_path):
    """The report's labels-only member row is that member searching its own passage vectors (it once
    searched the student's, of another length, with a query tower trained for the member's)."""
    import yaml as _yaml

    from densekd.cli.config import load_config
    from densekd.encoders.dense import DenseEncoder
    from densekd.eval.metrics import evaluate
    from densekd.pipeline import steps
    from densekd.pipeline.candidates import mined_groups
    from densekd.pipeline.config import PipelineConfig
    from densekd.pipeline.label_dense import train_label_dense

    cfg_path = _config(tmp_path, toy_beir_dir, tiny_bert_path, "query_only", {"label_dense": 1.0, "bm25": 0.5})
    raw = _yaml.safe_load(cfg_path.read_text())
    raw["teacher"]["label_dense"] = {"folds": 2, "fold_seed": 1, "seeds": [0], "epochs": 1, "passage_max_length": 6}
    cfg_path.write_text(_yaml.safe_dump(raw))
    assert main(["run", str(cfg_path)]) == 0
    rows = json.loads((tmp_path / "out" / "metrics.json").read_text())["rows"]
    name = "labels-only student (teacher member, InfoNCE, query-side, passages 6)"
    m = mined_groups(load_config(cfg_path, [], PipelineConfig))
    ld = train_label_dense(m.ctx, m.groups, m.store)  # cached: the run's members
    member = DenseEncoder.from_pretrained(ld.full_models[0])
    assert rows[name] == evaluate(steps.dense_run(member, ld.store, m.ctx), m.ctx.eval_qrels, steps.METRICS)


def test_mined_groups_follow_the_mining_seed_not_the_students(tmp_path, toy_beir_dir, tiny_bert_path):
    """Random negative sampling draws with ``mining.seed`` (in the key): students of any seed read the same
    groups, and another mining seed is another cached mining, never the first run's draw."""
    import yaml as _yaml

    from densekd.cli.config import load_config
    from densekd.pipeline import steps
    from densekd.pipeline.config import PipelineConfig

    path = _config(tmp_path, toy_beir_dir, tiny_bert_path, "query_only", {"bm25": 1.0})
    raw = _yaml.safe_load(path.read_text())
    raw["mining"].update({"sampling": "random", "n_negatives": 1, "rank_range": [0, 8]})
    path.write_text(_yaml.safe_dump(raw))

    def mined(*sets: str):
        ctx = steps.load_context(load_config(path, list(sets), PipelineConfig))
        train_run, _, bm25_key = steps.bm25_runs(ctx)
        return steps.mine(ctx, train_run, bm25_key)

    groups, key = mined()
    assert mined("student.seed=7") == (groups, key)
    draws = {tuple(tuple(g.neg_ids) for g in mined(f"mining.seed={s}")[0]) for s in range(6)}
    assert len(draws) > 1  # the seed moves the draw ...
    other, other_key = mined("mining.seed=3")
    assert other_key != key and other == mined("mining.seed=3", "student.seed=9")[0]  # ... and keys it
