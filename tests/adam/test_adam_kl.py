"""KL distillation over {positive, hard negatives, dark examples} through the real trainer path equals a
hand computation; self-paced weights reach the loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from densekd.data.beir import load_beir
from densekd.data.types import TrainGroup
from densekd.mining.dark_examples import DarkExampleConfig, add_dark_examples
from densekd.training import DistillConfig, DistillTrainer, TrainGroupDataset
from densekd.training.self_paced import SelfPacedConfig, SelfPacedDataset, SelfPacedSelector

TS, TT = 0.5, 2.0  # distinct student / teacher temperatures, so a swapped one would show


@pytest.fixture(scope="module")
def setup(toy_beir_dir, tiny_bert_path, tmp_path_factory):
    from densekd.encoders.dense import DenseEncoder

    data = load_beir(toy_beir_dir, "train")
    encoder = DenseEncoder.from_pretrained(tiny_bert_path, passage_max_length=32, query_max_length=16)
    groups = []
    for qid, rels in data.qrels.items():
        pos = [p for p, r in rels.items() if r > 0][:1]
        groups.append(TrainGroup(qid, pos, [p for p in data.corpus if p not in pos][:3]))
    groups = add_dark_examples(groups, data.queries, data.corpus, encoder.tokenizer,
                               DarkExampleConfig(n_mixup=1, n_masked=1))
    rng = np.random.default_rng(0)
    for g in groups:  # distinct teacher logits for every candidate, dark examples included
        g.teacher_scores = {pid: float(rng.normal(0, 3)) for pid in g.pos_ids + g.neg_ids}
    args = DistillConfig(output_dir=str(tmp_path_factory.mktemp("kl")), use_cpu=True, group_size=6,
                         negative_sampling="top", use_in_batch_negatives=False, disable_tqdm=True,
                         loss={"kl": {"weight": 1.0, "student_temperature": TS, "teacher_temperature": TT}})
    ds = TrainGroupDataset(groups, data.queries, data.corpus, group_size=6, seed=0, negative_sampling="top")
    trainer = DistillTrainer(encoder, args, train_dataset=ds)
    encoder.eval()  # no dropout: the hand computation re-encodes the same batch
    return trainer, ds, groups


def _hand_kl_rows(trainer, batch) -> np.ndarray:
    """Per-row KL(p_teacher || q_student) in float64 from separately encoded vectors."""
    enc = trainer.model
    with torch.no_grad():
        q = enc.encode_query(batch["query"]).double().numpy()
        p = enc.encode_passage(batch["passage"]).double().numpy()
    b, g = len(batch["pids"]), len(batch["pids"][0])
    student = np.einsum("bh,bgh->bg", q, p.reshape(b, g, -1)) / TS
    teacher = batch["teacher_scores"].double().numpy() / TT
    log_q = student - np.log(np.exp(student).sum(1, keepdims=True))
    log_p = teacher - np.log(np.exp(teacher).sum(1, keepdims=True))
    return (np.exp(log_p) * (log_p - log_q)).sum(1) * TS**2


def test_kl_over_the_enlarged_candidate_list_matches_a_hand_computation(setup):
    trainer, ds, groups = setup
    batch = trainer.data_collator([ds[i] for i in range(3)])
    for row, g in zip(batch["pids"], groups):
        assert row == g.pos_ids + g.neg_ids                        # positive, 3 mined, mix-up, masked
        assert row[-2:] == [f"dark:mix:{g.qid}:0", f"dark:mask:{g.qid}:0"]
    assert batch["mask"].all()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    assert loss.item() == pytest.approx(_hand_kl_rows(trainer, batch).mean(), rel=1e-5, abs=1e-7)


def test_self_paced_weights_reach_the_loss(setup):
    trainer, ds, groups = setup
    sel = SelfPacedSelector(groups, SelfPacedConfig(start_fraction=0.4, warm_epochs=1, mode="weight"))
    sp = SelfPacedDataset(ds, sel)
    items = [sp[i] for i in range(len(sp))]
    batch = trainer.data_collator(items)
    w = batch["weights"].double().numpy()
    assert w.sum() == 2                                            # round(0.4 * 5) instances kept
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    rows = _hand_kl_rows(trainer, batch)
    assert loss.item() == pytest.approx((w * rows).sum() / w.sum(), rel=1e-5, abs=1e-7)
    assert loss.item() != pytest.approx(rows.mean(), rel=1e-3)
