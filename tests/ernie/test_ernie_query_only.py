"""ERNIE-Search ``query_only``: cached passage token states, equal scores, gradients, training, pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from densekd.data.io import DataFormatError
from densekd.encoders.dense import DenseEncoder
from densekd.encoders.ernie import ErnieSearchModel
from densekd.encoders.late_interaction import token_mask
from densekd.index.late_interaction import late_interaction_search
from densekd.index.token_states import PassageTokenStates, encode_token_states
from densekd.training import DistillConfig, DistillTrainer, TrainGroupDataset
from densekd.training.trainer import freeze_passage_side

QUERIES = ["does aspirin prevent heart attacks", "who won super bowl 50"]
PIDS = ["d1", "d7", "d8", "d5"]  # group-major: 2 queries x 2 candidates


def _states(model, corpus, tmp_path: Path, dtype: str = "float32") -> PassageTokenStates:
    return encode_token_states(model, corpus, tmp_path / f"states-{dtype}", batch_size=3, dtype=dtype,
                               fingerprint="tiny", show_progress=False)


def test_ernie_token_cache_round_trips_ids_masks_and_ragged_offsets(ernie_model, toy_train, tmp_path):
    corpus = toy_train.corpus
    states = _states(ernie_model, corpus, tmp_path)
    texts = [p.full_text() for p in corpus.values()]
    tok = ernie_model.tokenizer(texts, truncation=True, max_length=ernie_model.config.passage_max_length)
    assert states.ids == list(corpus) and len(states) == 8
    np.testing.assert_array_equal(np.diff(states.offsets), [len(ids) for ids in tok["input_ids"]])
    assert states.offsets[0] == 0 and states.hidden.shape == (states.offsets[-1], 32)  # ragged, no padding
    np.testing.assert_array_equal(states.token_ids, np.concatenate(tok["input_ids"]))
    # the pooled vectors are the encoder's own passage embeddings (same batch size: same batches)
    np.testing.assert_allclose(states.vectors, ernie_model.encode_passages(texts, batch_size=3, show_progress=False),
                               atol=1e-6)
    with torch.no_grad():  # one passage alone (no padding) -> its stored rows
        alone = ernie_model.query_model(**ernie_model.tokenize_passages([texts[3]])).last_hidden_state[0]
    np.testing.assert_allclose(states.hidden[states.offsets[3]:states.offsets[4]], alone.numpy(), atol=1e-5)

    # a padded lookup reproduces the tokeniser's batch: ids, attention mask and the punctuation mask
    cached = states.lookup(PIDS)
    batch = ernie_model.tokenize_passages([corpus[p].full_text() for p in PIDS])
    torch.testing.assert_close(cached.input_ids, batch["input_ids"])
    torch.testing.assert_close(cached.attention_mask, batch["attention_mask"])
    skip = ernie_model.skip_ids
    torch.testing.assert_close(token_mask(cached.batch(), skip), token_mask(batch, skip))
    assert cached.hidden.shape == (4, batch["input_ids"].shape[1], 32) and not cached.hidden.requires_grad
    with pytest.raises(KeyError, match="nope"):
        states.lookup(["d1", "nope"])

    # reloaded from disk: the same arrays, hidden states memory-mapped; same key -> no re-encoding
    again = PassageTokenStates.load(tmp_path / "states-float32")
    assert isinstance(again.hidden, np.memmap) and again.ids == states.ids
    np.testing.assert_array_equal(again.offsets, states.offsets)
    mtime = (tmp_path / "states-float32" / "hidden.npy").stat().st_mtime_ns
    _states(ernie_model, corpus, tmp_path)
    assert (tmp_path / "states-float32" / "hidden.npy").stat().st_mtime_ns == mtime
    # float16 storage: half the bytes, close values
    half = _states(ernie_model, corpus, tmp_path, "float16")
    assert half.hidden.dtype == np.float16
    np.testing.assert_allclose(np.asarray(half.hidden, np.float32), states.hidden, atol=2e-2, rtol=1e-2)
    # a damaged folder is one clear error
    np.save(tmp_path / "states-float32" / "offsets.npy", states.offsets[:-1])
    with pytest.raises(DataFormatError, match="states-float32"):
        PassageTokenStates.load(tmp_path / "states-float32")


def test_ernie_query_only_scores_equal_full_mode_scores(ernie_model, toy_train, tmp_path):
    states = _states(ernie_model, toy_train.corpus, tmp_path)
    q = ernie_model.tokenize_queries(QUERIES)
    p = ernie_model.tokenize_passages([toy_train.corpus[pid].full_text() for pid in PIDS])
    with torch.no_grad():
        full = ernie_model.compute_scores(q, p, group_size=2)
        freeze_passage_side(ernie_model)  # what the trainer does: untie, freeze the passage tower
        assert ernie_model.passage_model is not ernie_model.query_model and not ernie_model.config.shared
        cached = ernie_model.compute_scores(q, states.lookup(PIDS), group_size=2)
        untied_full = ernie_model.compute_scores(q, p, group_size=2)  # the frozen copy = the old tower
    for name in ("dense", "colbert", "colbert_in_batch"):
        torch.testing.assert_close(cached[name], full[name], rtol=0, atol=1e-5)
        torch.testing.assert_close(untied_full[name], full[name], rtol=0, atol=1e-6)
    torch.testing.assert_close(cached["dense_in_batch"].scores, full["dense_in_batch"].scores, rtol=0, atol=1e-5)
    # the corpus ColBERT store built from the cache scores like the model (MaxSim over kept tokens)
    store = states.colbert_store(ernie_model.colbert_head, ernie_model.skip_ids)
    q_tokens = ernie_model.encode_query_tokens(QUERIES)
    rows = [states.row_of[pid] for pid in PIDS]
    np.testing.assert_allclose(store.maxsim(q_tokens[0], rows[:2]), full["colbert"][0].numpy(), atol=1e-5)
    np.testing.assert_allclose(store.maxsim(q_tokens[1], rows[2:]), full["colbert"][1].numpy(), atol=1e-5)


def _trainer(model, data, groups, out: Path, states, **config) -> DistillTrainer:
    config = {"output_dir": str(out), "max_steps": 8, "per_device_train_batch_size": 2, "learning_rate": 1e-3,
              "logging_steps": 1, "save_strategy": "no", "use_cpu": True, "disable_tqdm": True, "group_size": 4,
              "loss": {"ernie": {"ce_to_dense_weight": 0.5}}, "train_mode": "query_only", **config}
    args = DistillConfig(**config)
    ds = TrainGroupDataset(groups, data.queries, data.corpus, group_size=args.group_size, seed=args.seed)
    return DistillTrainer(model, args, train_dataset=ds, passage_embeddings=states)


def test_ernie_query_only_trains_the_query_side_and_colbert_head_only(ernie_model, toy_train, toy_groups, tmp_path):
    states = _states(ernie_model, toy_train.corpus, tmp_path)
    trainer = _trainer(ernie_model, toy_train, toy_groups, tmp_path / "out", states)
    assert trainer.data_collator.tokenize_passage is None  # no passage is ever tokenised
    assert not any(p.requires_grad for p in ernie_model.passage_model.parameters())
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    ernie_model.train()
    trainer.compute_loss(ernie_model, batch).backward()
    assert all(p.grad is None for p in ernie_model.passage_model.parameters())
    assert ernie_model.query_model.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert ernie_model.colbert_head.linear.weight.grad.abs().sum() > 0
    # the ColBERT projection of the cached passage states is part of the graph too
    assert ernie_model.embed_cached(states.lookup(PIDS)).tokens.requires_grad

    ernie_model.zero_grad(set_to_none=True)
    frozen = {k: v.clone() for k, v in ernie_model.passage_model.state_dict().items()}
    head = ernie_model.colbert_head.linear.weight.detach().clone()
    trainer.train()
    assert all(torch.equal(v, ernie_model.passage_model.state_dict()[k]) for k, v in frozen.items())
    assert not torch.equal(head, ernie_model.colbert_head.linear.weight)
    assert any("loss_ernie/kl_ce_to_colbert" in r for r in trainer.state.log_history)

    # saved: an untied dense retriever whose passage vectors are still the cached (base) ones
    trainer.save_model(tmp_path / "final")
    dense = DenseEncoder.from_pretrained(tmp_path / "final")
    texts = [p.full_text() for p in toy_train.corpus.values()]
    assert not dense.config.shared
    np.testing.assert_allclose(dense.encode_passages(texts, batch_size=3, show_progress=False), states.vectors,
                               atol=1e-6)
    loaded = ErnieSearchModel.from_pretrained(tmp_path / "final").eval()
    torch.testing.assert_close(loaded.colbert_head.linear.weight, ernie_model.colbert_head.linear.weight)
    with pytest.raises(ValueError, match="colbert_store"):
        loaded.to_late_interaction_encoder()
    # its ColBERT head reranks over the cached states (the model is the query-token encoder)
    store = states.colbert_store(loaded.colbert_head, loaded.skip_ids)
    run = late_interaction_search(loaded, store, {qid: toy_train.queries[qid] for qid in ("q1", "q4")}, k=3)
    assert [len(docs) for docs in run.values()] == [3, 3]


def test_ernie_passage_head_corrects_the_dense_head_only_and_trains_query_only(tiny_bert_path, toy_train,
                                                                                toy_groups, tmp_path):
    """A passage head on an ERNIE-Search student: a fresh one changes no score; a trained one moves the dense
    head's passage vectors (cached or from text alike), never the ColBERT scores; it trains in query_only
    mode and is saved with the model."""
    torch.manual_seed(0)
    plain = ErnieSearchModel.from_pretrained(tiny_bert_path, colbert_dim=16).eval()
    headed = ErnieSearchModel.from_pretrained(tiny_bert_path, colbert_dim=16, passage_head="gated").eval()
    headed.colbert_head.load_state_dict(plain.colbert_head.state_dict())  # the head's init draws from the RNG too
    states = _states(plain, toy_train.corpus, tmp_path)
    q = plain.tokenize_queries(QUERIES)
    with torch.no_grad():
        a, b = plain.compute_scores(q, states.lookup(PIDS), 2), headed.compute_scores(q, states.lookup(PIDS), 2)
        for name in ("dense", "colbert", "colbert_in_batch"):
            torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5)
        for p in headed.passage_head.parameters():
            p.normal_(0.0, 0.2)
        c = headed.compute_scores(q, states.lookup(PIDS), 2)
        texts = headed.tokenize_passages([toy_train.corpus[pid].full_text() for pid in PIDS])
        torch.testing.assert_close(headed.embed(texts, passage=True).vector,
                                   headed.embed_cached(states.lookup(PIDS)).vector, rtol=0, atol=1e-5)
    torch.testing.assert_close(c["colbert"], a["colbert"], rtol=0, atol=1e-5)
    assert (c["dense"] - a["dense"]).abs().max() > 1e-3
    # query_only training moves the head (own lr group); the saved dense view reproduces its vectors
    trainer = _trainer(headed, toy_train, toy_groups, tmp_path / "out", states, head_learning_rate=1e-2)
    before = headed.passage_head.up.weight.detach().clone()
    trainer.train()
    assert not torch.equal(before, headed.passage_head.up.weight)
    trainer.save_model(tmp_path / "final")
    dense = DenseEncoder.from_pretrained(tmp_path / "final")
    assert dense.passage_head is not None
    np.testing.assert_allclose(dense.encode_cached_passages(states, states.ids),
                               headed.encode_cached_passages(states, states.ids), atol=1e-6)
    assert ErnieSearchModel.from_pretrained(tmp_path / "final").passage_head is not None


def test_ernie_query_only_refusals(ernie_model, toy_train, toy_groups, tiny_bert_path, tmp_path):
    with pytest.raises(ValueError, match="needs passage_embeddings"):
        _trainer(ernie_model, toy_train, toy_groups, tmp_path, None)
    with pytest.raises(TypeError, match="PassageTokenStates"):
        _trainer(ernie_model, toy_train, toy_groups, tmp_path, (["d1"], np.zeros((1, 32), np.float32)))
    other = ErnieSearchModel.from_pretrained(tiny_bert_path, colbert_dim=16, projection_dim=8)
    with pytest.raises(ValueError, match="vector dim 32"):
        other.check_passage_cache(_states(ernie_model, toy_train.corpus, tmp_path))
    with pytest.raises(ValueError, match="untie"):
        ErnieSearchModel.from_pretrained(tiny_bert_path, shared=False)


def test_ernie_query_only_pipeline_run(tmp_path, toy_beir_dir, tiny_bert_path, capsys):
    from densekd.cli.main import main

    cfg = {
        "name": "toy-ernie-qo", "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
        "encode_batch_size": 4, "data": {"root": str(toy_beir_dir)},
        "mining": {"depth": 8, "n_negatives": 3, "rank_range": [0, 8], "sampling": "top"},
        "teacher": {"model": tiny_bert_path, "max_steps": 2, "batch_size": 2, "group_size": 3, "max_length": 32,
                    "rerank_depth": 4},
        "student": {"model": tiny_bert_path, "train_mode": "query_only", "architecture": "ernie", "colbert_dim": 8,
                    "loss": {"ernie": {"ce_to_dense_weight": 0.5}}, "max_steps": 3, "batch_size": 2,
                    "group_size": 3, "passage_max_length": 32, "query_max_length": 16, "logging_steps": 1},
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path)]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["steps"]["token-states:student"]["cached"] is False
    assert 0.0 <= metrics["rows"][metrics["student_row"]]["ndcg@10"] <= 1.0
    assert [p.name for p in (tmp_path / "cache" / "token_states").iterdir()]
    model = ErnieSearchModel.from_pretrained(tmp_path / "out" / "student" / "model")
    assert model.colbert_dim == 8 and not model.config.shared
    # ADAM dark examples and a passage head on the dense side: the heads read the dark texts' cached token
    # states, stacked on the corpus's; the head is trained and saved
    assert main(["run", str(path), "--set", "student.dark_examples.enabled=true", "--set", "student.passage_head=gated",
                 "--set", f"output_dir={tmp_path / 'dark'}"]) == 0
    steps = json.loads((tmp_path / "dark" / "metrics.json").read_text())["steps"]
    assert steps["token-states:extra"]["cached"] is False and steps["token-states:student"]["cached"] is True
    headed = ErnieSearchModel.from_pretrained(tmp_path / "dark" / "student" / "model")
    assert headed.passage_head is not None and headed.passage_head.up.weight.abs().sum() > 0
