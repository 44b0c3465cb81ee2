"""The cross-fitted labels-only teacher members and the teacher signal built from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from densekd.encoders.dense import DenseEncoder
from densekd.pipeline.label_dense import LabelDense, assign_folds
from densekd.pipeline.teacher_signal import dense_signal, fuse_run, ranked_union, with_tail


def test_folds_are_stable_balanced_and_independent_of_other_queries():
    qids = [f"q{i}" for i in range(400)]
    folds = assign_folds(qids, 3)
    assert set(folds.values()) == {0, 1, 2}
    assert min(np.bincount(list(folds.values()))) > 100  # a hash split: roughly a third each
    assert assign_folds(qids[:50], 3) == {q: folds[q] for q in qids[:50]}  # adding queries moves none
    assert assign_folds(qids, 3, seed=1) != folds
    with pytest.raises(ValueError, match="folds must be >= 2"):
        assign_folds(qids, 1)


class _Store:
    def __init__(self, ids, embeddings):
        self.ids, self.embeddings = ids, embeddings


def _member(tiny_bert_path, path, seed):
    torch.manual_seed(seed)
    enc = DenseEncoder.from_pretrained(tiny_bert_path)
    with torch.no_grad():
        for param in enc.query_model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    enc.save_pretrained(path)
    return path


def test_a_training_query_is_scored_only_by_members_that_never_saw_it(tiny_bert_path, tmp_path):
    members = [_member(tiny_bert_path, tmp_path / f"m{i}", i) for i in range(4)]
    rng = np.random.default_rng(0)
    store = _Store(["a", "b", "c"], rng.normal(size=(3, 32)).astype(np.float32))
    texts = {"t0": "aspirin and heart attacks", "t1": "vitamin c", "new": "lung cancer causes"}
    cands = {q: ["a", "b", "c"] for q in texts}
    ld = LabelDense({"t0": 0, "t1": 1}, fold_models=[[members[0]], [members[1]]], full_models=[members[2], members[3]])
    got = ld.scores(store, texts, cands)

    def alone(member, qid):
        return dense_signal(DenseEncoder.from_pretrained(member), store, texts, {qid: cands[qid]})[qid]

    for qid, member in (("t0", members[0]), ("t1", members[1])):
        np.testing.assert_allclose([got[qid][p] for p in "abc"], [alone(member, qid)[p] for p in "abc"], rtol=1e-5)
    full = [np.mean([alone(m, "new")[p] for m in members[2:]]) for p in "abc"]
    np.testing.assert_allclose([got["new"][p] for p in "abc"], full, rtol=1e-5)
    assert not np.allclose([got["t0"][p] for p in "abc"], [alone(members[1], "t0")[p] for p in "abc"])


def test_ranked_union_keeps_run_order_and_each_id_once():
    bm25 = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
    dense = {"q": {"c": 0.9, "d": 0.8, "a": 0.1}, "r": {"x": 1.0}}
    assert ranked_union([bm25, dense], 2) == {"q": ["a", "b", "c", "d"], "r": ["x"]}


def test_with_tail_ranks_the_head_then_the_first_stage_order():
    head = {"q": {"b": 5.0, "a": 1.0}}
    tail = {"q": {"a": 9.0, "c": 8.0, "b": 7.0, "d": 6.0}}
    out = with_tail(head, [tail])
    assert sorted(out["q"], key=lambda p: -out["q"][p]) == ["b", "a", "c", "d"]


def test_fused_signal_is_the_weighted_sum_of_per_query_zscores():
    cands = {"q": ["a", "b", "c"]}
    signals = {"bm25": {"q": {"a": 10.0, "b": 0.0, "c": 5.0}}, "label_dense": {"q": {"a": 0.1, "b": 0.9, "c": 0.5}}}
    fused = fuse_run(cands, signals, {"bm25": 0.5, "label_dense": 1.0})["q"]

    def z(x):
        x = np.asarray(x)
        return (x - x.mean()) / x.std()

    expected = 0.5 * z([10.0, 0.0, 5.0]) + z([0.1, 0.9, 0.5])
    np.testing.assert_allclose([fused[p] for p in "abc"], expected, rtol=1e-9)


def test_a_labels_only_student_is_keyed_without_teacher_scores(tmp_path, toy_beir_dir, tiny_bert_path):
    """Changing the teacher must not retrain a student that never reads its scores (the labels-only
    baseline of every distillation comparison), and must retrain a distilled one."""
    import dataclasses

    import yaml

    from densekd.cli.config import load_config
    from densekd.data.types import TrainGroup
    from densekd.pipeline import steps
    from densekd.pipeline.config import PipelineConfig
    from densekd.pipeline.student import train_student

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"), "data": {"root": str(toy_beir_dir)},
        "student": {"model": tiny_bert_path, "train_mode": "full", "max_steps": 1, "batch_size": 2, "group_size": 2,
                    "passage_max_length": 16, "query_max_length": 8, "save_steps": 0,
                    "loss": {"contrastive": {}}}}))
    cfg = load_config(cfg_path, [], PipelineConfig)
    ctx = steps.load_context(cfg)

    def groups(score: float) -> list[TrainGroup]:
        return [TrainGroup("q1", ["d1"], ["d2"], {"d1": score, "d2": 0.0}),
                TrainGroup("q2", ["d2"], ["d1"], {"d2": score, "d1": 0.0})]

    def cached_after(score: float, loss: dict, self_paced: bool = False) -> bool:
        student = dataclasses.replace(cfg.student, loss=loss,
                                      self_paced=dataclasses.replace(cfg.student.self_paced, enabled=self_paced))
        c = dataclasses.replace(ctx, cfg=dataclasses.replace(cfg, student=student), timings={})
        train_student(c, groups(score), None)
        return c.timings["student"]["cached"]

    assert not cached_after(1.0, {"contrastive": {}})
    assert cached_after(5.0, {"contrastive": {}})  # other teacher scores, same labels: reused
    assert not cached_after(1.0, {"kl": {}})
    assert not cached_after(5.0, {"kl": {}})  # a distilled student depends on them
    assert not cached_after(1.0, {"contrastive": {"type": "kl"}})
    assert not cached_after(5.0, {"contrastive": {"type": "kl"}})  # the entry's type, not its name, says KL
    assert not cached_after(1.0, {"contrastive": {}}, self_paced=True)
    assert not cached_after(5.0, {"contrastive": {}}, self_paced=True)  # the selector ranks by the teacher


@pytest.mark.parametrize("fusion", [{"cross_encoder": 1.0}, {"cross_encoder": 2.0}])
def test_positive_margin_lifts_positives_whatever_the_fusion(fusion):
    """teacher.positive_margin applies to the cross-encoder's own logits too (it once returned them unlifted)."""
    from types import SimpleNamespace

    from densekd.data.types import Query, TrainGroup
    from densekd.pipeline.config import TeacherSection
    from densekd.pipeline.teacher_signal import fuse_groups

    def context(teacher: TeacherSection) -> SimpleNamespace:
        return SimpleNamespace(cfg=SimpleNamespace(teacher=teacher), queries={"q": Query("q", "a question")})

    group = TrainGroup("q", ["p"], ["n1", "n2"], {"p": 0.0, "n1": 5.0, "n2": 1.0})
    (out,) = fuse_groups(context(TeacherSection(fusion=fusion, positive_margin=3.0)), [group], None, None)
    negatives = max(out.teacher_scores["n1"], out.teacher_scores["n2"])
    assert out.teacher_scores["p"] >= negatives + 3.0 - 1e-6
    assert out.teacher_scores["n1"] > out.teacher_scores["n2"]  # the teacher's order of the negatives stays
    (plain,) = fuse_groups(context(TeacherSection(fusion=fusion)), [group], None, None)
    assert plain.teacher_scores["p"] < max(plain.teacher_scores["n1"], plain.teacher_scores["n2"])


def test_a_local_start_model_is_keyed_by_its_content(tmp_path, tiny_bert_path):
    """A start model folder retrained in place must not reuse what was trained from its old weights."""
    import shutil

    from densekd.pipeline.cache import model_ref
    from densekd.pipeline.config import StudentSection
    from densekd.pipeline.student import _student_settings

    folder = tmp_path / "start"
    shutil.copytree(tiny_bert_path, folder)
    before = _student_settings(StudentSection(model=str(folder)))
    assert model_ref(folder) == model_ref(folder)  # stable
    weights = next(f for f in folder.iterdir() if f.suffix == ".safetensors")
    blob = weights.read_bytes()
    weights.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))  # one bit of the weights changes
    assert _student_settings(StudentSection(model=str(folder))) != before
    assert _student_settings(StudentSection())["model"] is None  # the bundled model keeps old keys


def test_members_of_recipes_with_other_student_groups_do_not_share_a_folder(tmp_path, toy_beir_dir, tiny_bert_path):
    """The members inherit the student's group size, so it keys them (v1 did not: such recipes overwrote
    each other's members); ``teacher.label_dense.group_size`` pins it, and pinned to the student's own
    value the members are the same cached ones."""
    from densekd.cli.config import load_config
    from densekd.pipeline.candidates import mined_groups
    from densekd.pipeline.config import PipelineConfig
    from densekd.pipeline.label_dense import train_label_dense

    from tests.pipeline.test_pipeline_run import _config

    path = _config(tmp_path, toy_beir_dir, tiny_bert_path, "query_only", {"label_dense": 1.0})
    member = "teacher.label_dense={folds: 2, fold_seed: 1, seeds: [0], epochs: 1}"

    def members(*sets: str) -> Path:
        m = mined_groups(load_config(path, [member, *sets], PipelineConfig))
        return train_label_dense(m.ctx, m.groups, m.store).full_models[0]

    three = members()  # the toy config's student reads groups of 3
    two = members("student.group_size=2")
    assert three.parent != two.parent and three.exists() and two.exists()
    pinned = members("student.group_size=2", "teacher.label_dense.group_size=3")
    assert pinned == three
