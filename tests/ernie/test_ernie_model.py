"""ErnieSearchModel: one shared tower for both heads, gradients, dense view, save/load round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from densekd.encoders.dense import DenseEncoder
from densekd.encoders.ernie import ErnieSearchModel
from densekd.encoders.late_interaction import LateInteractionEncoder
from densekd.losses import ErnieSearchLoss
from densekd.training.trainer import head_score_batch

QUERIES = ["does aspirin prevent heart attacks", "who won super bowl 50"]
PASSAGES = ["Aspirin reduces the risk of heart attack.", "Paris is the capital of France.",
            "The Denver Broncos won Super Bowl 50.", "Coffee, tea, and water!"]


def _batches(model: ErnieSearchModel) -> tuple[dict, dict]:
    return model.tokenize_queries(QUERIES), model.tokenize_passages(PASSAGES)


def _grads(model: ErnieSearchModel, head: str) -> tuple[float, float]:
    """|grad| of a tower weight and of the ColBERT head after backpropagating one head's scores."""
    model.zero_grad(set_to_none=True)
    q, p = _batches(model)
    model.compute_scores(q, p, group_size=2)[head].sum().backward()
    tower = model.query_model.encoder.layer[0].attention.self.query.weight.grad
    colbert = model.colbert_head.linear.weight.grad
    return (0.0 if tower is None else tower.abs().sum().item(), 0.0 if colbert is None else colbert.abs().sum().item())


def test_ernie_shared_tower_gets_gradients_from_both_heads(ernie_model):
    assert ernie_model.passage_model is ernie_model.query_model  # one tower for both sides
    tower_dense, colbert_dense = _grads(ernie_model, "dense")
    tower_colbert, colbert_colbert = _grads(ernie_model, "colbert")
    assert tower_dense > 0 and tower_colbert > 0
    assert colbert_dense == 0.0 and colbert_colbert > 0  # the dense score never touches the ColBERT head


@pytest.mark.parametrize("detach", [True, False])
def test_ernie_detached_kl_sends_no_gradient_into_the_colbert_head(ernie_model, detach):
    q, p = _batches(ernie_model)
    heads = ernie_model(query=q, passage=p, group_size=2, in_batch=True)
    loss = ErnieSearchLoss(dense_contrastive_weight=0.0, colbert_contrastive_weight=0.0, ce_to_colbert_weight=0.0,
                           detach_colbert=detach)
    loss(head_score_batch(heads, None, None))["kl_colbert_to_dense"].backward()
    head_grad = ernie_model.colbert_head.linear.weight.grad
    assert (head_grad is None or head_grad.abs().sum().item() == 0.0) is detach
    assert ernie_model.query_model.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_ernie_dense_head_is_the_dense_encoder(ernie_model):
    q, p = _batches(ernie_model)
    with torch.no_grad():
        scores = ernie_model.compute_scores(q, p, group_size=2)
        qv, pv = ernie_model.encode_query(q), ernie_model.encode_passage(p)
    torch.testing.assert_close(scores["dense"], torch.stack([qv[0] @ pv[:2].T, qv[1] @ pv[2:].T]))
    torch.testing.assert_close(scores["dense_in_batch"].scores, qv @ pv.T)
    view = ernie_model.to_dense_encoder()
    assert type(view) is DenseEncoder and view.query_model is ernie_model.query_model
    np.testing.assert_allclose(view.encode_passages(PASSAGES, show_progress=False),
                               ernie_model.encode_passages(PASSAGES, show_progress=False), atol=1e-6)
    assert ernie_model(query=q)["query"].shape == (2, ernie_model.dim)  # plain DenseEncoder.forward
    assert set(ernie_model.compute_scores(q, p, group_size=2, in_batch=False)) == {"dense", "colbert"}


def test_ernie_save_load_gives_identical_scores_for_every_loader(ernie_model, tmp_path):
    ernie_model.save_pretrained(tmp_path / "m")
    files = {f.name for f in (tmp_path / "m").iterdir()}
    assert {"densekd_encoder.json", "densekd_late_interaction.json", "late_interaction_head.safetensors",
            "model.safetensors"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    loaded = ErnieSearchModel.from_pretrained(tmp_path / "m").eval()
    assert loaded.colbert_dim == 16 and loaded.skip_punctuation
    q, p = _batches(ernie_model)
    with torch.no_grad():
        before, after = ernie_model.compute_scores(q, p, 2), loaded.compute_scores(q, p, 2)
    for name in ("dense", "colbert", "colbert_in_batch"):
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)
    # the folder is also a plain dense retriever and a ColBERT model
    dense = DenseEncoder.from_pretrained(tmp_path / "m")
    np.testing.assert_array_equal(dense.encode_queries(QUERIES), ernie_model.encode_queries(QUERIES))
    colbert = LateInteractionEncoder.from_pretrained(tmp_path / "m")
    pairs = ([QUERIES[0]] * 4, PASSAGES)
    np.testing.assert_array_equal(colbert.score(*pairs), ernie_model.to_late_interaction_encoder().score(*pairs))
    with pytest.raises(ValueError, match="dim 16"):
        ErnieSearchModel.from_pretrained(tmp_path / "m", colbert_dim=32)


def test_ernie_model_starts_shared_and_unties_only_on_request(ernie_model, tiny_bert_path):
    with pytest.raises(ValueError, match="shared"):
        ErnieSearchModel.from_pretrained(tiny_bert_path, shared=False)
    ernie_model.untie()  # query_only training: a frozen passage copy, one ColBERT head for both sides
    assert ernie_model.passage_model is not ernie_model.query_model and not ernie_model.config.shared
