"""``densekd run`` with ``method: fidkd``: the iterative reader -> retriever loop on a toy QA set.

The toy folder has **no** ``qrels/train.tsv``: training questions come from ``answers`` alone (every
answerable query outside the dev split), which is the check that no training passage label is read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from densekd.cli.main import main
from densekd.data.trec import load_run

CORPUS = [
    ("p1", "Paris", "Paris is the capital and largest city of France."),
    ("p2", "Denver Broncos", "The Denver Broncos won Super Bowl 50 against the Carolina Panthers."),
    ("p3", "Berlin", "Berlin is the capital of Germany and its largest city."),
    ("p4", "Amazon", "The Amazon is the largest rainforest on Earth, mostly in Brazil."),
    ("p5", "Everest", "Mount Everest is the highest mountain above sea level, in the Himalayas."),
    ("p6", "Nile", "The Nile is a river in Africa that flows into the Mediterranean Sea."),
    ("p7", "Tokyo", "Tokyo is the capital of Japan and one of the largest cities in the world."),
    ("p8", "Coffee", "Coffee is brewed from roasted coffee beans, the seeds of Coffea plants."),
]
QUESTIONS = [  # (qid, question, answers); the last three are the dev split
    ("t1", "what is the capital of france", ["Paris"]),
    ("t2", "who won super bowl 50", ["Denver Broncos", "Broncos"]),
    ("t3", "which river flows into the mediterranean sea", ["Nile"]),
    ("t4", "what is the highest mountain", ["Mount Everest", "Everest"]),
    ("t5", "what is coffee brewed from", ["roasted coffee beans"]),
    ("d1", "what is the capital of germany", ["Berlin"]),
    ("d2", "where is most of the amazon rainforest", ["Brazil"]),
    ("d3", "what is the capital of japan", ["Tokyo"]),
]
DEV = {"d1": "p3", "d2": "p4", "d3": "p7"}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models are dominated by per-op overhead, which a second intra-op thread only adds to when
    the machine is busy (10x slower generation measured under load); restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_toy_qa(root: Path) -> Path:
    """A BEIR folder with answers in queries.jsonl and only ``qrels/dev.tsv``."""
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n"
                                               for i, t, x in CORPUS))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t, "answers": a}) + "\n"
                                                for q, t, a in QUESTIONS))
    (root / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                            + "".join(f"{q}\t{p}\t1\n" for q, p in DEV.items()))
    return root


def write_config(tmp_path: Path, reader_dir: str, retriever_dir: str, normalize: str = "none",
                 **retriever: object) -> Path:
    cfg = {
        "method": "fidkd", "name": "toy-fidkd", "output_dir": str(tmp_path / "out"),
        "cache_dir": str(tmp_path / "cache"), "encode_batch_size": 4, "iterations": 2,
        "data": {"root": str(write_toy_qa(tmp_path / "toy_qa")), "eval_split": "dev"},
        "retrieval": {"k": 3, "eval_depth": 20},
        "reader": {"model": reader_dir, "passage_max_length": 40, "answer_max_length": 8, "max_steps": 2,
                   "batch_size": 2, "learning_rate": 1e-3, "save_steps": 0, "eval_batch_size": 2},
        "teacher": {"scoring": "fid-kd", "normalize": normalize},
        "retriever": {"model": retriever_dir, "max_steps": 2, "batch_size": 2, "query_max_length": 16,
                      "passage_max_length": 32, "logging_steps": 1, "save_steps": 0, **retriever},
    }
    path = tmp_path / "fidkd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("train_mode,normalize", [("query_only", "none"), ("full", "zscore")])
def test_fidkd_two_iterations_then_fully_cached(tmp_path, tiny_reader_dir, tiny_bert_path, train_mode, normalize,
                                                capsys):
    cfg = write_config(tmp_path, tiny_reader_dir, tiny_bert_path, normalize, train_mode=train_mode)
    assert main(["run", str(cfg)]) == 0
    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["questions"] == {"train": 5, "eval": 3, "reader_eval": 3}
    assert set(metrics["bm25"]) == {"answer_recall@1", "answer_recall@5", "answer_recall@20"}
    assert [row["iteration"] for row in metrics["iterations"]] == [1, 2]
    for row in metrics["iterations"]:
        for name in ("answer_recall@1", "answer_recall@5", "answer_recall@20", "reader_em", "reader_f1",
                     "top_attention_has_answer", "train_top_attention_has_answer"):
            assert 0.0 <= row[name] <= 1.0, name
    for n in (1, 2):
        for part in ("reader/model", "scores/groups.jsonl", "retriever/model", "runs/train.trec", "runs/dev.trec",
                     "eval/predictions.jsonl"):
            assert (out / f"iter_{n}" / part).exists(), (n, part)
    assert (out / "iter_0" / "runs" / "train.trec").is_file()
    assert not (out / "checkpoints").exists()  # finished steps leave no resume state behind
    report = (out / "report.md").read_text()
    assert "iteration 2" in report and (out / "iterations.png").is_file() and (out / "reader_scores.png").is_file()
    assert "iteration 2" in capsys.readouterr().out

    # the reader scored every training question's k retrieved passages: label-free groups, no positive
    groups = [json.loads(line) for line in (out / "iter_1" / "scores" / "groups.jsonl").read_text().splitlines()]
    assert len(groups) == 5
    bm25 = load_run(out / "iter_0" / "runs" / "train.trec")
    for g in groups:
        assert g["pos_ids"] == [] and g["neg_ids"] == _top(bm25[g["qid"]])  # retrieval order
        assert list(g["teacher_scores"]) == g["neg_ids"]

    # iteration 2's reader read iteration 1's dense runs, which are exactly retriever 1's FAISS search
    marker = json.loads((out / "iter_2" / "reader" / "DONE.json").read_text())
    assert marker["summary"]["passages_from"] == str(out / "iter_1" / "runs")
    runs_marker = json.loads((out / "iter_1" / "runs" / "DONE.json").read_text())["summary"]
    assert runs_marker["retriever"] == "dense" and runs_marker["model"] == str(out / "iter_1" / "retriever" / "model")
    assert _dense_top(out / "iter_1" / "retriever" / "model", tmp_path / "toy_qa", "d1") \
        == _top(load_run(out / "iter_1" / "runs" / "dev.trec")["d1"])

    # a rerun recomputes nothing and reproduces the figures
    assert main(["run", str(cfg)]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert all(t["cached"] for t in again["steps"].values()), again["steps"]
    assert again["iterations"] == metrics["iterations"] and again["bm25"] == metrics["bm25"]


def _top(scores: dict[str, float]) -> list[str]:
    return sorted(scores, key=lambda p: (-scores[p], p))[:3]


def _dense_top(model_dir: Path, root: Path, qid: str) -> list[str]:
    """Brute-force top 3 of ``qid`` with the saved retriever (full mode: its own passage vectors;
    query_only: the untied passage tower is the start model's, whose vectors the index holds)."""
    from densekd.data.beir import load_corpus, load_queries
    from densekd.encoders.dense import DenseEncoder

    encoder = DenseEncoder.from_pretrained(model_dir)
    corpus, queries = load_corpus(root / "corpus.jsonl"), load_queries(root / "queries.jsonl")
    p = encoder.encode_passages(list(corpus.values()), show_progress=False)
    q = encoder.encode_queries([queries[qid].text])[0]
    return _top(dict(zip(corpus, (p @ q).tolist())))


def test_changing_the_retriever_loss_reuses_the_readers(tmp_path, tiny_reader_dir, tiny_bert_path):
    cfg = write_config(tmp_path, tiny_reader_dir, tiny_bert_path)
    assert main(["run", str(cfg), "--set", "iterations=1"]) == 0
    assert main(["run", str(cfg), "--set", "iterations=1", "--set", "retriever.loss={margin_ranking: {margin: 0.1}}"]) == 0
    steps = json.loads((tmp_path / "out" / "metrics.json").read_text())["steps"]
    assert steps["iter_0/bm25"]["cached"] and steps["iter_1/reader"]["cached"] and steps["iter_1/scores"]["cached"]
    assert not steps["iter_1/retriever"]["cached"] and not steps["iter_1/retrieve"]["cached"]


def test_fidkd_config_errors_name_the_file(tmp_path, tiny_reader_dir, tiny_bert_path, capsys):
    cfg = write_config(tmp_path, tiny_reader_dir, tiny_bert_path)
    assert main(["run", str(cfg), "--set", "reader.lernrate=1"]) == 2
    err = capsys.readouterr().err
    assert "lernrate" in err and err.count("\n") == 1
    text = cfg.read_text()
    cfg.write_text(text + "mining: {depth: 5}\n")  # a distill-only section is unknown to method fidkd
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "mining" in err
    cfg.write_text(text.replace("method: fidkd", "method: fid"))
    assert main(["run", str(cfg)]) == 2
    assert "method" in capsys.readouterr().err
    cfg.write_text(text)
    assert main(["mine", str(cfg)]) == 2
    assert "densekd run" in capsys.readouterr().err
    assert main(["run", str(cfg), "--set", "retrieval.eval_depth=5"]) == 2
    assert "eval_depth" in capsys.readouterr().err
    assert main(["run", str(cfg), "--set", "retrieval.k=1"]) == 2  # one passage: nothing to distil
    assert "retrieval.k must be >= 2" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_interrupted_scoring_resumes_where_it_stopped(tmp_path, tiny_reader_dir, tiny_bert_path, monkeypatch):
    """Scoring goes through the shared annotator: a kill mid-way keeps the flushed questions, and the
    rerun scores only the rest and writes exactly the groups of an uninterrupted run."""
    from densekd.pipeline import fidkd
    from densekd.teachers.fid import FiDTeacher

    cfg = write_config(tmp_path, tiny_reader_dir, tiny_bert_path)
    assert main(["run", str(cfg), "--set", "iterations=1"]) == 0
    scores = tmp_path / "out" / "iter_1" / "scores"
    finished = (scores / "groups.jsonl").read_text().splitlines()
    (scores / "DONE.json").unlink()  # as if this step never finished
    monkeypatch.setattr(fidkd, "SCORE_CHUNK", 1)  # a flush after every question
    original, calls = FiDTeacher.score_passages, []

    def dies_on_the_third(self, *args):
        calls.append(args[0])
        if len(calls) == 3:
            raise KeyboardInterrupt  # like a kill while the third question is scored
        return original(self, *args)

    monkeypatch.setattr(FiDTeacher, "score_passages", dies_on_the_third)
    assert main(["run", str(cfg), "--set", "iterations=1"]) == 130
    checkpoints = tmp_path / "out" / "checkpoints" / "scores-iter_1"
    assert any(checkpoints.rglob("*.partial"))
    calls.clear()
    monkeypatch.setattr(FiDTeacher, "score_passages", lambda self, *a: calls.append(a[0]) or original(self, *a))
    assert main(["run", str(cfg), "--set", "iterations=1"]) == 0
    assert len(calls) == len(finished) - 2  # the two flushed questions are not scored again
    assert (scores / "groups.jsonl").read_text().splitlines() == finished
    assert not checkpoints.exists() or not any(checkpoints.iterdir())
    steps = json.loads((tmp_path / "out" / "metrics.json").read_text())["steps"]
    assert not steps["iter_1/scores"]["cached"] and steps["iter_1/retriever"]["cached"]


def test_killed_reader_training_resumes_from_its_checkpoint(tmp_path, tiny_reader_dir, tiny_bert_path, monkeypatch):
    from safetensors.torch import load_file
    from transformers import Trainer

    settings = ["--set", "iterations=1", "--set", "reader.max_steps=4", "--set", "reader.save_steps=2",
                "--set", "reader.batch_size=1"]
    straight = write_config(tmp_path / "a", tiny_reader_dir, tiny_bert_path)
    assert main(["run", str(straight), *settings]) == 0
    cfg = write_config(tmp_path / "b", tiny_reader_dir, tiny_bert_path)
    original, calls = Trainer.training_step, []

    def dies_at_step_3(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # like a kill after checkpoint-2 was written
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", dies_at_step_3)
    assert main(["run", str(cfg), *settings]) == 130
    monkeypatch.setattr(Trainer, "training_step", original)
    assert main(["run", str(cfg), *settings]) == 0
    done = json.loads((tmp_path / "b" / "out" / "iter_1" / "reader" / "DONE.json").read_text())["summary"]
    assert done["resumed_from"] == "checkpoint-2" and done["steps"] == 4
    a, b = (load_file(root / "out" / "iter_1" / "reader" / "model" / "model.safetensors")
            for root in (tmp_path / "a", tmp_path / "b"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_full_mode_retrieval_never_indexes_a_frozen_passage_store(tmp_path, tiny_reader_dir, tiny_bert_path):
    """A retriever whose passage tower trained must index its own passage vectors: a frozen store handed
    to ``retrieve`` (as a query-side-only caller would) is ignored, not silently searched."""
    from densekd.cli.config import load_config
    from densekd.pipeline import fidkd
    from densekd.pipeline.fidkd_config import FidKDConfig
    from densekd.pipeline.qa_data import load_qa_context

    cfg = load_config(write_config(tmp_path, tiny_reader_dir, tiny_bert_path, train_mode="full"), [], FidKDConfig)
    ctx = load_qa_context(cfg)

    class FrozenStore:  # any use of it fails the test
        def to_faiss(self, *args, **kwargs):
            raise AssertionError("full-mode retrieval searched the frozen passage store")

    runs, _ = fidkd.retrieve(ctx, 1, (Path(tiny_bert_path), "tiny"), FrozenStore())
    summary = json.loads((runs / "DONE.json").read_text())["summary"]
    assert Path(summary["passage_vectors"]).parent.name == "embeddings"
    assert _dense_top(Path(tiny_bert_path), tmp_path / "toy_qa", "d1") == _top(load_run(runs / "dev.trec")["d1"])


def test_span_reader_loop_cross_fits_every_score_and_reruns_from_the_cache(tmp_path, tiny_reader_dir, tiny_bert_path):
    from densekd.encoders.span_reader import SpanReader
    from densekd.teachers.base import CandidateList
    from densekd.teachers.span_reader import SpanReaderTeacher

    cfg = write_config(tmp_path, tiny_reader_dir, tiny_bert_path)
    settings = ["--set", "reader.kind=span", "--set", "reader.cross_fit=true", "--set", f"reader.model={tiny_bert_path}",
                "--set", "reader.frozen_layers=1", "--set", "teacher.scoring=mass"]
    assert main(["run", str(cfg), *settings]) == 0
    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["iteration"] for row in metrics["iterations"]] == [1, 2]
    trained = {f: json.loads((out / "iter_1" / f"reader_fold{f}" / "DONE.json").read_text())["summary"]["questions"]
               for f in (0, 1)}
    assert trained[0] >= 1 and trained[1] >= 1 and trained[0] + trained[1] == 5
    # each question's scores are those of the reader that was *not* trained on it
    from densekd.data.beir import load_corpus, load_queries

    corpus, queries = load_corpus(tmp_path / "toy_qa" / "corpus.jsonl"), load_queries(tmp_path / "toy_qa" / "queries.jsonl")
    teachers = {f: SpanReaderTeacher(SpanReader.from_pretrained(out / "iter_1" / f"reader_fold{f}" / "model"))
                for f in (0, 1)}
    from densekd.pipeline.readers import title_folds

    bm25 = load_run(out / "iter_0" / "runs" / "train.trec")
    title = {q: corpus[_top(bm25[q])[0]].title for q in bm25}
    fold = {q: title_folds(list(title.values()))[t] for q, t in title.items()}
    groups = [json.loads(line) for line in (out / "iter_1" / "scores" / "groups.jsonl").read_text().splitlines()]
    assert len(groups) == 5
    for g in groups:
        pids = list(g["teacher_scores"])
        lists = [CandidateList(queries[g["qid"]].text, [corpus[p] for p in pids])]
        got = [g["teacher_scores"][p] for p in pids]
        matches = [f for f, t in teachers.items() if np.allclose(t.score_candidates(lists)[0], got, atol=1e-4)]
        assert matches == [1 - fold[g["qid"]]], g["qid"]
    assert main(["run", str(cfg), *settings]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert all(t["cached"] for t in again["steps"].values()) and again["iterations"] == metrics["iterations"]
    assert main(["run", str(cfg), "--set", "reader.kind=span", "--set", "teacher.scoring=fid-kd"]) == 2


def test_hybrid_candidates_feed_iteration_2_and_leave_iteration_1_cached(tmp_path, tiny_reader_dir, tiny_bert_path):
    """retrieval.candidates=hybrid: iteration 2 reads BM25's and retriever 1's training runs fused by reciprocal
    rank (top k); iteration 1 does not depend on the setting, so switching it reuses every iteration-1 step."""
    from densekd.index.hybrid import fuse

    cfg = write_config(tmp_path, tiny_reader_dir, tiny_bert_path)
    assert main(["run", str(cfg), "--set", "iterations=1"]) == 0
    assert main(["run", str(cfg), "--set", "retrieval.candidates=hybrid"]) == 0
    out = tmp_path / "out"
    steps = json.loads((out / "metrics.json").read_text())["steps"]
    assert all(t["cached"] for name, t in steps.items() if name.startswith(("iter_0", "iter_1/"))
               and name != "iter_1/candidates"), steps
    assert not steps["iter_1/candidates"]["cached"] and not steps["iter_2/reader"]["cached"]
    fused = load_run(out / "iter_1" / "candidates" / "train.trec")
    expected = fuse([load_run(out / "iter_0" / "runs" / "train.trec"), load_run(out / "iter_1" / "runs" / "train.trec")],
                    method="rrf", k=3)
    assert fused.keys() == expected.keys()
    assert all(_top(fused[q]) == _top(expected[q]) for q in fused)
    marker = json.loads((out / "iter_2" / "reader" / "DONE.json").read_text())["summary"]
    assert marker["passages_from"] == str(out / "iter_1" / "candidates")
    groups = [json.loads(line) for line in (out / "iter_2" / "scores" / "groups.jsonl").read_text().splitlines()]
    assert all(sorted(g["teacher_scores"]) == sorted(fused[g["qid"]]) for g in groups)
    assert not (out / "iter_2" / "candidates").exists()  # nothing reads candidates after the last iteration


def test_unknown_candidates_setting_is_refused(tmp_path, tiny_reader_dir, tiny_bert_path, capsys):
    cfg = write_config(tmp_path, tiny_reader_dir, tiny_bert_path)
    assert main(["run", str(cfg), "--set", "retrieval.candidates=rrf"]) == 2
    assert "retrieval.candidates" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_retraining_later_retrievers_from_the_start_model_reuses_iteration_1(tmp_path, tiny_reader_dir,
                                                                             tiny_bert_path):
    """retriever.continue_training=false changes only retrievers n > 1 (iteration 1 never continues): every
    iteration-1 step and iteration 2's readers and scores are reused; retriever 2 starts from the model."""
    cfg = write_config(tmp_path, tiny_reader_dir, tiny_bert_path)
    assert main(["run", str(cfg)]) == 0
    assert main(["run", str(cfg), "--set", "retriever.continue_training=false"]) == 0
    out = tmp_path / "out"
    steps = json.loads((out / "metrics.json").read_text())["steps"]
    reused = [n for n in steps if n.startswith(("iter_0", "iter_1/")) or n in ("iter_2/reader", "iter_2/scores")]
    assert reused and all(steps[n]["cached"] for n in reused), steps
    assert not steps["iter_2/retriever"]["cached"]
    marker = json.loads((out / "iter_2" / "retriever" / "DONE.json").read_text())["summary"]
    assert marker["start"] == tiny_bert_path


def test_a_label_based_retriever_loss_is_refused(tmp_path, tiny_reader_dir, tiny_bert_path, capsys):
    """The reader's groups are label-free: a contrastive term would learn its favourite as a labelled positive."""
    cfg = write_config(tmp_path, tiny_reader_dir, tiny_bert_path)
    loss = "retriever.loss={kl: {weight: 1.0}, contrastive: {weight: 0.5}}"
    assert main(["run", str(cfg), "--set", loss]) == 2
    err = capsys.readouterr().err
    assert "retriever.loss" in err and "label" in err
    assert not (tmp_path / "out").exists()
