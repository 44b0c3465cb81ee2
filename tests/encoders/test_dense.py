"""DenseEncoder: pooling, towers, projection, save/load, sentence-transformers export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from densekd.data.io import DataFormatError
from densekd.data.types import Passage
from densekd.encoders.dense import DenseEncoder
from densekd.encoders.pooling import pool

TEXTS = [
    "Aspirin reduces the risk of heart attack.",
    "Paris is the capital of France and a very large city with many museums and people.",
    "short",
    "Vitamin C does not prevent colds.",
    "A much longer passage that keeps going, " * 8,
]


def test_mean_pool_ignores_padding():
    h = torch.tensor([[[1.0, 1.0], [3.0, 5.0], [1e6, -1e6]]])
    m = torch.tensor([[1, 1, 0]])
    assert pool(h, m, "mean").tolist() == [[2.0, 3.0]]
    assert pool(h, m, "max").tolist() == [[3.0, 5.0]]
    assert pool(h, m, "cls").tolist() == [[1.0, 1.0]]


def test_unknown_pooling_rejected():
    with pytest.raises(ValueError, match="pooling"):
        pool(torch.zeros(1, 1, 1), torch.ones(1, 1), "sum")


def test_batch_encoding_matches_one_by_one_and_order(tiny_bert_path):
    enc = DenseEncoder.from_pretrained(tiny_bert_path)
    batched = enc.encode_passages(TEXTS, batch_size=2, show_progress=False)
    single = np.stack([enc.encode_passages([t], batch_size=1, show_progress=False)[0] for t in TEXTS])
    # length-sorted batching must return rows in input order with the same values as unbatched
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert batched.dtype == np.float32 and batched.shape == (len(TEXTS), enc.dim)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_passage_records_use_title_and_text(tiny_bert_path):
    enc = DenseEncoder.from_pretrained(tiny_bert_path)
    rec = Passage("d1", "Aspirin reduces risk.", "Aspirin")
    a = enc.encode_passages([rec], show_progress=False)
    b = enc.encode_passages(["Aspirin. Aspirin reduces risk."], show_progress=False)
    np.testing.assert_array_equal(a, b)


def test_inference_matches_training_forward(tiny_bert_path):
    enc = DenseEncoder.from_pretrained(tiny_bert_path).eval()
    with torch.no_grad():
        fwd = enc.encode_query(enc.tokenize_queries(TEXTS[:3])).numpy()
    np.testing.assert_allclose(enc.encode_queries(TEXTS[:3]), fwd, atol=1e-5)


@pytest.mark.parametrize("shared,projection_dim,pooling", [(True, None, "mean"), (False, 8, "cls")])
def test_save_load_roundtrip(tiny_bert_path, tmp_path, shared, projection_dim, pooling):
    enc = DenseEncoder.from_pretrained(tiny_bert_path, shared=shared, projection_dim=projection_dim,
                                       pooling=pooling)
    if not shared:  # make the towers differ so a mix-up on load would show
        with torch.no_grad():
            for p in enc.passage_model.parameters():
                p.add_(0.01)
    enc.save_pretrained(tmp_path / "m")
    back = DenseEncoder.from_pretrained(tmp_path / "m")
    assert back.config == enc.config
    np.testing.assert_array_equal(back.encode_queries(TEXTS), enc.encode_queries(TEXTS))
    np.testing.assert_array_equal(back.encode_passages(TEXTS, show_progress=False),
                                  enc.encode_passages(TEXTS, show_progress=False))
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in (tmp_path / "m").rglob("*"))


def test_separate_towers_give_different_vectors(tiny_bert_path):
    enc = DenseEncoder.from_pretrained(tiny_bert_path, shared=False)
    with torch.no_grad():
        next(enc.passage_model.parameters()).add_(1.0)
    assert not np.allclose(enc.encode_queries(TEXTS[:2]), enc.encode_passages(TEXTS[:2], show_progress=False))


def test_untie_copies_weights(tiny_bert_path):
    enc = DenseEncoder.from_pretrained(tiny_bert_path)
    assert enc.passage_model is enc.query_model
    enc.untie()
    assert enc.passage_model is not enc.query_model and not enc.config.shared
    np.testing.assert_array_equal(enc.encode_queries(TEXTS[:2]),
                                  enc._encode_texts(TEXTS[:2], "query", 8, False))


def test_folder_without_weights_is_a_clear_error(tiny_bert_path, tmp_path):
    import shutil

    bad = tmp_path / "noweights"
    shutil.copytree(tiny_bert_path, bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(DataFormatError, match="no weights"):
        DenseEncoder.from_pretrained(bad)


def test_unknown_override_rejected(tiny_bert_path):
    with pytest.raises(ValueError, match="unknown"):
        DenseEncoder.from_pretrained(tiny_bert_path, poolin="mean")


def test_gradients_flow_to_tower_and_projection(tiny_bert_path):
    enc = DenseEncoder.from_pretrained(tiny_bert_path, projection_dim=4)
    q = enc.encode_query(enc.tokenize_queries(["a query"]))
    p = enc.encode_passage(enc.tokenize_passages(["a passage"]))
    (q * p).sum().backward()
    assert enc.projection.weight.grad is not None
    assert enc.query_model.embeddings.word_embeddings.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("projection_dim", [None, 8])
def test_sentence_transformers_export_tiny(tiny_bert_path, tmp_path, projection_dim):
    from sentence_transformers import SentenceTransformer

    enc = DenseEncoder.from_pretrained(tiny_bert_path, projection_dim=projection_dim)
    enc.export_sentence_transformers(tmp_path / "st")
    st = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    np.testing.assert_allclose(st.encode(TEXTS), enc.encode_passages(TEXTS, show_progress=False), atol=1e-5)


@pytest.mark.parametrize("pooling,projection_dim,normalize", [("cls", 8, True), ("max", None, False)])
def test_an_exported_sentence_transformers_folder_reads_back_as_the_same_encoder(tiny_bert_path, tmp_path, pooling,
                                                                                projection_dim, normalize):
    """sentence-transformers >= 6 writes pooling_mode: "cls" and the length in the tokenizer files; the
    folder must come back with its pooling, projection, normalisation and length, not as a mean-pooled model."""
    enc = DenseEncoder.from_pretrained(tiny_bert_path, pooling=pooling, projection_dim=projection_dim,
                                       normalize=normalize, passage_max_length=24)
    enc.export_sentence_transformers(tmp_path / "st")
    back = DenseEncoder.from_pretrained(tmp_path / "st")
    assert (back.config.pooling, back.config.projection_dim, back.config.normalize,
            back.config.passage_max_length) == (pooling, projection_dim, normalize, 24)
    np.testing.assert_allclose(back.encode_passages(TEXTS, show_progress=False),
                               enc.encode_passages(TEXTS, show_progress=False), atol=1e-5)


def test_a_sentence_transformers_folder_densekd_cannot_reproduce_is_refused(tiny_bert_path, tmp_path):
    import json

    from densekd.data.io import DataFormatError

    DenseEncoder.from_pretrained(tiny_bert_path, pooling="cls").export_sentence_transformers(tmp_path / "st")
    pooling = next((tmp_path / "st").glob("*_Pooling")) / "config.json"
    cfg = json.loads(pooling.read_text())
    pooling.write_text(json.dumps({**cfg, "pooling_mode": "lasttoken"}))
    with pytest.raises(DataFormatError, match="lasttoken"):
        DenseEncoder.from_pretrained(tmp_path / "st")


def test_sentence_transformers_export_separate_towers_routes_query_and_document(tiny_bert_path, tmp_path):
    """A query-only student (untied towers, the query side changed) exports as a Router whose query and
    document routes reproduce the two towers: the towers differ, so a mix-up would be caught."""
    import torch
    from sentence_transformers import SentenceTransformer

    enc = DenseEncoder.from_pretrained(tiny_bert_path)
    enc.untie()
    with torch.no_grad():
        for param in enc.query_model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    queries, passages = enc.encode_queries(TEXTS), enc.encode_passages(TEXTS, show_progress=False)
    assert np.abs(queries - passages).max() > 1e-3  # the towers really differ
    enc.export_sentence_transformers(tmp_path / "st")
    st = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    np.testing.assert_allclose(st.encode_query(TEXTS), queries, atol=1e-5)
    np.testing.assert_allclose(st.encode_document(TEXTS), passages, atol=1e-5)
    assert not any(p.name.startswith("_") for p in (tmp_path / "st").iterdir())  # no leftover tower copies


@pytest.mark.integration
def test_real_minilm_matches_sentence_transformers_and_export(minilm_path, tmp_path):
    from sentence_transformers import SentenceTransformer

    enc = DenseEncoder.from_pretrained(minilm_path)
    assert enc.config.pooling == "mean" and enc.config.normalize and enc.config.passage_max_length == 256
    ours = enc.encode_passages(TEXTS, show_progress=False)
    reference = SentenceTransformer(minilm_path, device="cpu").encode(TEXTS)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    enc.export_sentence_transformers(tmp_path / "st")
    exported = SentenceTransformer(str(tmp_path / "st"), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(exported, ours, atol=1e-6)
    # and the semantics are right: the aspirin query is closest to the aspirin passage
    q = enc.encode_queries(["does aspirin prevent heart attacks"])
    assert int(np.argmax(q @ ours.T)) == 0
