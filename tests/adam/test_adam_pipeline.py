"""``densekd run`` with ADAM (dark examples + self-paced distillation) on the toy set, and its config."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from densekd.cli.config import load_config
from densekd.cli.main import main
from densekd.data.io import DataFormatError
from densekd.mining.dark_examples import DarkExampleConfig
from densekd.pipeline.config import DarkExamplesSection, PipelineConfig, SelfPacedSection, StudentSection
from densekd.pipeline.run import _student_settings
from densekd.teachers.annotate import load_annotations
from densekd.training.self_paced import SelfPacedConfig


def _config(tmp_path: Path, toy_beir_dir: Path, tiny_bert_path: str, **student) -> Path:
    cfg = {
        "name": "toy-adam", "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
        "encode_batch_size": 4,
        "data": {"root": str(toy_beir_dir)},
        "mining": {"depth": 8, "n_negatives": 3, "rank_range": [0, 8], "sampling": "top"},
        "teacher": {"model": tiny_bert_path, "max_steps": 2, "batch_size": 2, "group_size": 3, "max_length": 32,
                    "rerank_depth": 4},
        "student": {"model": tiny_bert_path, "max_steps": 4, "batch_size": 2, "group_size": 4,
                    "passage_max_length": 32, "query_max_length": 16, "logging_steps": 1, **student},
    }
    path = tmp_path / "toy-adam.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


ADAM = {"dark_examples": {"enabled": True, "n_mixup": 1, "n_masked": 2, "max_tokens": 24},
        "self_paced": {"enabled": True, "start_fraction": 0.6, "warm_epochs": 1}}


def test_adam_run_end_to_end_then_fully_cached(tmp_path, toy_beir_dir, tiny_bert_path):
    cfg = _config(tmp_path, toy_beir_dir, tiny_bert_path, **ADAM)
    assert main(["run", str(cfg)]) == 0
    out, cache = tmp_path / "out", tmp_path / "cache"
    first = json.loads((out / "metrics.json").read_text())
    assert first["student"]["steps"] == 4 and "dark" in first["steps"]
    assert 0.0 <= first["rows"][first["student_row"]]["ndcg@10"] <= 1.0

    # the mined candidates' scores come from the ordinary annotation cache; the dark file holds only
    # the positives and the dark examples, scored by the same teacher
    (base_file,) = cache.glob("annotations/*/scores.jsonl")
    (dark_file,) = cache.glob("dark/*/scores.jsonl")
    base_header, base = load_annotations(base_file)
    dark_header, dark = load_annotations(dark_file)
    assert base_header["teacher"] == dark_header["teacher"]
    assert all(not g.extra_passages for g in base)
    has_negatives = {g.qid: bool(g.neg_ids) for g in base}
    assert any(has_negatives.values())
    for g in dark:
        mix = [f"dark:mix:{g.qid}:0"] if has_negatives[g.qid] else []  # no negative, nothing to mix into
        assert g.neg_ids == mix + [f"dark:mask:{g.qid}:0", f"dark:mask:{g.qid}:1"]
        assert set(g.extra_passages) == set(g.neg_ids)

    # self-paced: 3 of the 5 toy queries in epoch 0 (2 steps of 2 with drop_last), all of them in epoch 1
    history = json.loads((out / "student" / "log_history.json").read_text())
    fractions = [h["self_paced_fraction"] for h in history if "self_paced_fraction" in h]
    assert fractions == [0.6, 1.0]
    assert all("self_paced_quality_mean" in h for h in history if "self_paced_fraction" in h)
    assert (out / "teacher_scores.png").is_file()

    assert main(["run", str(cfg)]) == 0
    second = json.loads((out / "metrics.json").read_text())
    cached = {name: t["cached"] for name, t in second["steps"].items() if name != "evaluate"}
    assert all(cached.values()), cached
    assert second["rows"] == first["rows"]


def test_adam_query_only_reads_dark_examples_from_frozen_vectors(tmp_path, toy_beir_dir, tiny_bert_path):
    """query_only + dark examples: the frozen tower encodes the dark texts once (cached next to the corpus
    vectors), training finds every candidate in the table, and the passage tower stays as it was."""
    import numpy as np

    from densekd.encoders.dense import DenseEncoder

    cfg = _config(tmp_path, toy_beir_dir, tiny_bert_path, train_mode="query_only", **ADAM)
    assert main(["run", str(cfg)]) == 0
    cache, out = tmp_path / "cache", tmp_path / "out"
    (ids_file,) = cache.glob("extra_embeddings/*/ids.json")
    ids = json.loads(ids_file.read_text())
    assert ids and all(pid.startswith("dark:") for pid in ids)
    vectors = np.load(ids_file.parent / "vectors.npy")
    # the cached dark vectors are the base model's passage vectors of the dark texts
    (dark_file,) = cache.glob("dark/*/scores.jsonl")
    texts = {pid: t for g in load_annotations(dark_file)[1] for pid, t in (g.extra_passages or {}).items()}
    base = DenseEncoder.from_pretrained(tiny_bert_path, passage_max_length=32)
    expected = base.encode_passages([texts[pid] for pid in ids], batch_size=4, show_progress=False)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    first = json.loads((out / "metrics.json").read_text())
    assert first["student"]["steps"] == 4 and not first["steps"]["encode:extra"]["cached"]
    assert main(["run", str(cfg)]) == 0
    second = json.loads((out / "metrics.json").read_text())
    assert second["steps"]["encode:extra"]["cached"] and second["rows"] == first["rows"]


@pytest.mark.parametrize("member", ["bm25", "dense"])
def test_every_teacher_member_scores_dark_examples(tmp_path, toy_beir_dir, tiny_bert_path, member):
    """Without a cross-encoder the fused signal's members score the dark texts themselves: BM25 with the
    corpus statistics, the dense member from the frozen vectors. With one member the fused signal is its
    per-query z-score, so it ranks every candidate (dark ones included) exactly as the member does."""
    import numpy as np

    from densekd.pipeline import steps
    from densekd.pipeline.candidates import mined_groups
    from densekd.pipeline.teacher_signal import fuse_groups

    path = _config(tmp_path, toy_beir_dir, tiny_bert_path, train_mode="query_only", **ADAM)
    cfg = load_config(path, [f"teacher.fusion={{{member}: 1.0}}", "mining.retrieval=bm25+dense"], PipelineConfig)
    m = mined_groups(cfg)
    dark = steps.dark_examples(m.ctx, m.groups, m.groups, m.mined_key, None)
    assert all(g.teacher_scores is None for g in dark) and any(g.extra_passages for g in dark)
    table = steps.query_only_table(m.ctx, dark, m.store, cfg.student.model, cfg.student.passage_max_length)
    fused = fuse_groups(m.ctx, dark, m.base_encoder, table)
    index = m.ctx.__dict__["_bm25_index"] if member == "bm25" else None
    for g in fused:
        cands = g.pos_ids + g.neg_ids
        assert set(g.teacher_scores) == set(cands) and all(np.isfinite(list(g.teacher_scores.values())))
        query = {g.qid: m.ctx.queries[g.qid].text}
        texts = {pid: g.extra_passages[pid] if pid in (g.extra_passages or {}) else m.ctx.corpus[pid].full_text()
                 for pid in cands}
        if member == "bm25":
            own = index.score_texts(query, {g.qid: texts})[g.qid]
        else:
            q = m.base_encoder.encode_queries([query[g.qid]])[0]
            p = m.base_encoder.encode_passages([texts[pid] for pid in cands], batch_size=4, show_progress=False)
            own = dict(zip(cands, (p @ q).tolist()))
        negs = g.neg_ids  # the judged positive is lifted above them (teacher.positive_margin)
        for a in negs:
            for b in negs:
                if own[a] > own[b] + 1e-4:
                    assert g.teacher_scores[a] > g.teacher_scores[b], (g.qid, a, b)


def test_adam_sections_are_off_by_default_and_keep_old_student_keys():
    student = StudentSection()
    assert not student.dark_examples.enabled and not student.self_paced.enabled
    settings = _student_settings(student)
    names = {f.name for f in dataclasses.fields(StudentSection)}
    # the default dense architecture and the absent passage head are left out of the key too (they predate it)
    assert set(settings) == names - {"dark_examples", "self_paced", "architecture", "colbert_dim", "save_steps",
                                     "passage_head", "head_learning_rate"}
    headed = _student_settings(dataclasses.replace(student, passage_head="gated"))
    assert headed["passage_head"] == "gated" and headed["head_learning_rate"] == student.head_learning_rate
    on = dataclasses.replace(student, self_paced=SelfPacedSection(enabled=True))
    assert "self_paced" in _student_settings(on)
    ernie = _student_settings(dataclasses.replace(student, architecture="ernie"))
    assert ernie["architecture"] == "ernie" and ernie["colbert_dim"] == 128


@pytest.mark.parametrize("section,library", [(DarkExamplesSection, DarkExampleConfig),
                                             (SelfPacedSection, SelfPacedConfig)])
def test_pipeline_sections_mirror_the_library_configs(section, library):
    ours = {f.name: f.default for f in dataclasses.fields(section) if f.name not in ("enabled", "in_every_group")}
    theirs = {f.name: f.default for f in dataclasses.fields(library)}
    assert ours == theirs
    assert section(enabled=True).to_config() == library()


@pytest.mark.parametrize("overrides,message", [
    (["student.dark_examples.enabled=true", "student.dark_examples.mix_fraction=1.5"], "mix_fraction"),
    (["student.self_paced.enabled=true", "student.self_paced.schedule=cosine"], "schedule"),
])
def test_bad_adam_settings_are_config_errors(tmp_path, toy_beir_dir, tiny_bert_path, overrides, message):
    cfg = _config(tmp_path, toy_beir_dir, tiny_bert_path)
    with pytest.raises(DataFormatError, match=message):
        load_config(cfg, overrides, PipelineConfig)


def test_scifact_adam_config_shares_the_kd_data_and_cache():
    root = Path(__file__).resolve().parents[2] / "configs"
    adam = load_config(root / "scifact-adam.yaml", [], PipelineConfig)
    kd = load_config(root / "scifact-kd.yaml", [], PipelineConfig)
    # the same data, one-time caches, candidates and teacher: every teacher member scores the dark examples,
    # so ADAM distils the scifact-kd teacher and differs from it only in the student's candidate lists
    assert (adam.data, adam.cache_dir, adam.mining, adam.teacher) == (kd.data, kd.cache_dir, kd.mining, kd.teacher)
    # (the passage head included: dark examples' token states are cached beside the corpus's)
    other = ("dark_examples", "self_paced")
    assert {k: v for k, v in dataclasses.asdict(adam.student).items() if k not in other} \
        == {k: v for k, v in dataclasses.asdict(kd.student).items() if k not in other}
    assert adam.student.dark_examples.enabled and not adam.student.self_paced.enabled
    assert adam.student.passage_head == kd.student.passage_head == "gated"
    assert adam.output_dir != kd.output_dir


def test_members_at_their_own_length_score_dark_examples_at_it(tmp_path, toy_beir_dir, tiny_bert_path):
    """teacher.label_dense.passage_max_length with dark examples: the members score every candidate, dark
    texts included, from vectors at *their* length (not the student's 32 tokens)."""
    from densekd.encoders.dense import DenseEncoder
    from densekd.pipeline import steps
    from densekd.pipeline.candidates import mined_groups
    from densekd.pipeline.label_dense import train_label_dense
    from densekd.pipeline.run import fused_groups

    path = _config(tmp_path, toy_beir_dir, tiny_bert_path, train_mode="query_only", **ADAM)
    cfg = load_config(path, ["teacher.fusion={label_dense: 1.0}", "teacher.positive_margin=0",
                             "teacher.label_dense={folds: 2, fold_seed: 1, seeds: [0], epochs: 1, passage_max_length: 6}"],
                      PipelineConfig)
    m = mined_groups(cfg)
    ld = train_label_dense(m.ctx, m.groups, m.store)
    dark = steps.dark_examples(m.ctx, m.groups, m.groups, m.mined_key, None)
    fused, _ = fused_groups(m.ctx, dark, m.base_encoder, m.store, ld)
    short = DenseEncoder.from_pretrained(tiny_bert_path, passage_max_length=6)
    checked = 0
    for g in fused:
        darks = [pid for pid in g.neg_ids if pid in (g.extra_passages or {})]
        if len(darks) < 2:
            continue
        member = ld.encoder(ld.fold_models[ld.fold_of[g.qid]][0])
        q = member.encode_queries([m.ctx.queries[g.qid].text])[0]
        p = short.encode_passages([g.extra_passages[d] for d in darks], batch_size=4, show_progress=False)
        own = dict(zip(darks, (p @ q).tolist()))
        # one member: the fused signal is its per-query z-score, so it orders the dark texts as the member does
        for a in darks:
            for b in darks:
                if own[a] > own[b] + 1e-4:
                    assert g.teacher_scores[a] > g.teacher_scores[b], (g.qid, a, b)
                    checked += 1
    assert checked > 0
