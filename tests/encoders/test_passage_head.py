"""Passage head: a no-op at zero, exact over cached states, saved and exported, trained query_only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from densekd.encoders.dense import DenseEncoder
from densekd.encoders.passage_head import PASSAGE_HEAD_NAME, GatedResidualHead
from densekd.index.token_states import encode_token_states
from densekd.training import DistillConfig, DistillTrainer, TrainGroupDataset

TEXTS = ["Aspirin reduces the risk of heart attack.", "Paris is the capital of France.", "short",
         "A much longer passage that keeps going, " * 6]


def _headed(tiny_bert_path: str, seed: int = 0) -> DenseEncoder:
    """A tiny encoder with a non-zero passage head (seeded)."""
    enc = DenseEncoder.from_pretrained(tiny_bert_path, passage_head="gated").eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in enc.passage_head.parameters():
            p.normal_(0.0, 0.2)
    return enc


def test_new_head_is_the_base_encoder_and_a_trained_one_is_not(tiny_bert_path):
    base = DenseEncoder.from_pretrained(tiny_bert_path)
    fresh = DenseEncoder.from_pretrained(tiny_bert_path, passage_head="gated")
    a = base.encode_passages(TEXTS, batch_size=2, show_progress=False)
    # the same vector, renormalised (float rounding only)
    np.testing.assert_allclose(fresh.encode_passages(TEXTS, batch_size=2, show_progress=False), a, rtol=0, atol=1e-6)
    headed = _headed(tiny_bert_path)
    b = headed.encode_passages(TEXTS, batch_size=2, show_progress=False)
    assert np.abs(b - a).max() > 1e-3
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    # queries never go through the head
    np.testing.assert_array_equal(headed.encode_queries(TEXTS), base.encode_queries(TEXTS))


def test_head_matches_its_definition_and_ignores_padding():
    torch.manual_seed(1)
    head = GatedResidualHead(6, 4)
    for p in head.parameters():
        torch.nn.init.normal_(p)
    hidden, base = torch.randn(1, 3, 6), torch.nn.functional.normalize(torch.randn(1, 4), dim=-1)
    padded = torch.cat([hidden, 1e4 * torch.ones(1, 2, 6)], dim=1)
    out = head(padded, torch.tensor([[1, 1, 1, 0, 0]]), base)
    gate = torch.sigmoid(hidden[0] @ head.gate.weight[0] + head.gate.bias)                 # [3]
    expected = base[0] + head.up.weight @ (gate[:, None] * hidden[0]).mean(0)
    torch.testing.assert_close(out[0], expected / expected.norm())


def test_save_load_and_sentence_transformers_export_give_the_same_vectors(tiny_bert_path, tmp_path):
    from sentence_transformers import SentenceTransformer

    enc = _headed(tiny_bert_path)
    enc.untie()  # a query_only student's shape: two towers plus the head
    p, q = enc.encode_passages(TEXTS, show_progress=False), enc.encode_queries(TEXTS)
    enc.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / PASSAGE_HEAD_NAME).is_file()
    again = DenseEncoder.from_pretrained(tmp_path / "m")
    np.testing.assert_array_equal(again.encode_passages(TEXTS, show_progress=False), p)
    enc.export_sentence_transformers(tmp_path / "st")
    st = SentenceTransformer(str(tmp_path / "st"), device="cpu", trust_remote_code=True)
    np.testing.assert_allclose(st.encode_document(TEXTS), p, atol=1e-5)
    np.testing.assert_allclose(st.encode_query(TEXTS), q, atol=1e-5)
    # a shared tower with a head still exports two routes (the sides differ)
    shared = _headed(tiny_bert_path)
    shared.export_sentence_transformers(tmp_path / "st2")
    st2 = SentenceTransformer(str(tmp_path / "st2"), device="cpu", trust_remote_code=True)
    np.testing.assert_allclose(st2.encode_document(TEXTS), shared.encode_passages(TEXTS, show_progress=False),
                               atol=1e-5)
    # a folder whose config names a head it does not hold is refused, never read as the base model
    (tmp_path / "m" / PASSAGE_HEAD_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=PASSAGE_HEAD_NAME):
        DenseEncoder.from_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="passage_head"):
        DenseEncoder.from_pretrained(tiny_bert_path, passage_head="attention")


def test_cached_states_give_the_encoders_passage_vectors(tiny_bert_path, toy_train, tmp_path):
    enc = _headed(tiny_bert_path)
    states = encode_token_states(DenseEncoder.from_pretrained(tiny_bert_path), toy_train.corpus, tmp_path / "s",
                                 batch_size=3, dtype="float32", fingerprint="tiny", show_progress=False)
    texts = [toy_train.corpus[pid].full_text() for pid in states.ids]
    np.testing.assert_allclose(enc.encode_cached_passages(states, states.ids, batch_size=3),
                               enc.encode_passages(texts, batch_size=3, show_progress=False), atol=1e-5)
    # paths that would skip the head refuse it: token states of a headed encoder, ONNX towers
    with pytest.raises(ValueError, match="base encoder"):
        encode_token_states(enc, toy_train.corpus, tmp_path / "s2", dtype="float32", show_progress=False)
    assert not (tmp_path / "s2").exists()
    from densekd.encoders.onnx_backend import OnnxDenseEncoder

    with pytest.raises(ValueError, match="passage head"):
        OnnxDenseEncoder(enc, export_root=tmp_path / "onnx")


def test_stacked_state_tables_read_as_one(tiny_bert_path, toy_train, tmp_path):
    """Corpus states + dark-example states: every id's padded states and vector as its own table gives them,
    in the asked order; an id in neither table is a KeyError naming it."""
    from densekd.data.types import Passage
    from densekd.encoders.cached_passages import StackedStateTable

    base = DenseEncoder.from_pretrained(tiny_bert_path)
    corpus = encode_token_states(base, toy_train.corpus, tmp_path / "c", batch_size=3, dtype="float32",
                                 show_progress=False)
    extra = encode_token_states(base, [Passage(f"dark{i}", t) for i, t in enumerate(TEXTS)], tmp_path / "d",
                                batch_size=3, dtype="float32", show_progress=False)
    table = StackedStateTable([corpus, extra])
    pids = ["dark3", corpus.ids[1], "dark2", corpus.ids[0], "dark3"]
    got = table.lookup(pids)
    for i, pid in enumerate(pids):
        own = (extra if pid.startswith("dark") else corpus).lookup([pid])
        n = own.hidden.shape[1]
        torch.testing.assert_close(got.hidden[i, :n], own.hidden[0])
        assert got.attention_mask[i, :n].all() and not got.attention_mask[i, n:].any()
        assert not got.hidden[i, n:].any() and torch.equal(got.input_ids[i, :n], own.input_ids[0])
        torch.testing.assert_close(got.vectors[i], own.vectors[0])
    assert got.hidden.shape[1] == max(c.lookup([p]).hidden.shape[1] for p in pids
                                      for c in [extra if p.startswith("dark") else corpus])
    # the head over the stacked table: the encoder's vectors of those texts
    headed = _headed(tiny_bert_path)
    texts = {**{f"dark{i}": t for i, t in enumerate(TEXTS)}, **{p: toy_train.corpus[p].full_text() for p in pids[1::2]}}
    np.testing.assert_allclose(headed.encode_cached_passages(table, pids),
                               headed.encode_passages([texts[p] for p in pids], show_progress=False), atol=1e-5)
    with pytest.raises(KeyError, match="nowhere"):
        table.lookup(["nowhere"])


def test_query_only_training_moves_the_head_and_query_tower_never_the_passage_tower(tiny_bert_path, toy_train,
                                                                                      toy_groups, tmp_path):
    torch.manual_seed(0)
    enc = DenseEncoder.from_pretrained(tiny_bert_path, passage_head="gated")
    states = encode_token_states(DenseEncoder.from_pretrained(tiny_bert_path), toy_train.corpus, tmp_path / "s",
                                 batch_size=3, dtype="float32", fingerprint="tiny", show_progress=False)
    args = DistillConfig(output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=2,
                         learning_rate=1e-4, head_learning_rate=1e-2, logging_steps=1, save_strategy="no",
                         use_cpu=True, disable_tqdm=True, group_size=4, train_mode="query_only",
                         loss={"kl": {"weight": 1.0}, "contrastive": {"weight": 1.0}})
    ds = TrainGroupDataset(toy_groups, toy_train.queries, toy_train.corpus, group_size=4, seed=0)
    trainer = DistillTrainer(enc, args, train_dataset=ds, passage_embeddings=states)
    assert trainer.data_collator.tokenize_passage is None
    groups = trainer.create_optimizer().param_groups
    assert [g["lr"] for g in groups if any(p is enc.passage_head.up.weight for p in g["params"])] == [1e-2]
    frozen = {k: v.clone() for k, v in enc.passage_model.state_dict().items()}
    trainer.train()
    assert all(torch.equal(v, enc.passage_model.state_dict()[k]) for k, v in frozen.items())
    assert enc.passage_head.up.weight.abs().sum() > 0
    # the trained head changes the vectors, and the saved model reproduces them from text
    texts = [toy_train.corpus[pid].full_text() for pid in states.ids]
    trained = enc.encode_cached_passages(states, states.ids)
    assert np.abs(trained - states.vectors).max() > 1e-4
    trainer.save_model(tmp_path / "final")
    loaded = DenseEncoder.from_pretrained(tmp_path / "final")
    np.testing.assert_allclose(loaded.encode_passages(texts, batch_size=3, show_progress=False), trained, atol=1e-5)
    # a plain vector table cannot train a head: one clear error
    with pytest.raises(TypeError, match="token states"):
        DistillTrainer(DenseEncoder.from_pretrained(tiny_bert_path, passage_head="gated"), args, train_dataset=ds,
                       passage_embeddings=(states.ids, states.vectors))


def test_pipeline_run_with_a_passage_head(tmp_path, toy_beir_dir, tiny_bert_path, capsys):
    from densekd.cli.main import main

    cfg = {
        "name": "toy_train-head", "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
        "encode_batch_size": 4, "data": {"root": str(toy_beir_dir)},
        "mining": {"depth": 8, "n_negatives": 3, "rank_range": [0, 8], "sampling": "top", "retrieval": "bm25"},
        "teacher": {"fusion": {"bm25": 1.0}, "rerank_depth": 4},
        "student": {"model": tiny_bert_path, "train_mode": "query_only", "passage_head": "gated",
                    "loss": {"kl": {"weight": 1.0}, "contrastive": {"weight": 1.0}}, "max_steps": 3, "batch_size": 2,
                    "group_size": 3, "passage_max_length": 32, "query_max_length": 16, "logging_steps": 1,
                    "eval_steps": 2},
    }
    path = tmp_path / "toy_train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path)]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert 0.0 <= metrics["rows"][metrics["student_row"]]["ndcg@10"] <= 1.0
    model = DenseEncoder.from_pretrained(tmp_path / "out" / "student" / "model")
    assert model.passage_head is not None and model.passage_head.up.weight.abs().sum() > 0
    assert (tmp_path / "out" / "sentence-transformers" / "modules.json").is_file()
    # a bad kind is refused before anything runs, naming the key
    assert main(["run", str(path), "--set", "student.passage_head=linear"]) == 2
    assert "student.passage_head" in capsys.readouterr().err
    # ADAM dark examples: their token states are encoded once beside the corpus's (which stay as they were)
    corpus_states = sorted(p.name for p in (tmp_path / "cache" / "token_states").iterdir())
    assert main(["run", str(path), "--set", "student.dark_examples.enabled=true",
                 "--set", f"output_dir={tmp_path / 'dark'}"]) == 0
    steps = json.loads((tmp_path / "dark" / "metrics.json").read_text())["steps"]
    assert steps["token-states:extra"]["cached"] is False and steps["token-states:student"]["cached"] is True
    assert sorted(p.name for p in (tmp_path / "cache" / "token_states").iterdir()) == corpus_states
    dark = DenseEncoder.from_pretrained(tmp_path / "dark" / "student" / "model")
    assert not torch.equal(dark.passage_head.up.weight, model.passage_head.up.weight)
