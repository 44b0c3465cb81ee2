"""Cross-attention aggregation on hand-built tensors: masking, token choice, reductions, softmax."""

from __future__ import annotations

import math

import pytest
import torch

from densekd.teachers.fid import PRESETS, FiDScoring, aggregate_cross_attention, attention_probs

# 2 passages of L=3 tokens; passage 0 has 2 real tokens, passage 1 has 3.
MASK = torch.tensor([[[1, 1, 0], [1, 1, 1]]])
PAD = 1000.0  # what sits on padding: any leak shows up at once


def _attention() -> torch.Tensor:
    """``[layers=2, B=1, heads=2, T=2, k*L=6]``: token 0 / token 1 rows; layers and heads scale by +-."""
    first = torch.tensor([1.0, 3.0, PAD, 2.0, 4.0, 6.0])
    second = torch.tensor([10.0, 20.0, PAD, 0.0, 0.0, 3.0])
    base = torch.stack([first, second])                                   # [T, S]
    # heads: base +- 1 and layers: +- 2, so averaging over them gives back `base`
    heads = torch.stack([base + 1, base - 1])                             # [heads, T, S]
    return torch.stack([heads + 2, heads - 2])[:, None]                   # [layers, 1, heads, T, S]


def test_reader_aggregation_first_token_mean_excludes_padding():
    scores = aggregate_cross_attention(_attention(), MASK)
    assert scores.shape == (1, 2)
    # passage 0: mean(1, 3) = 2 (the pad 1000 is ignored); passage 1: mean(2, 4, 6) = 4
    assert scores.tolist() == [[2.0, 4.0]]


def test_reader_aggregation_all_tokens_and_target_mask():
    scores = aggregate_cross_attention(_attention(), MASK, tokens="all")
    # token mean first: passage 0 -> (1+10)/2, (3+20)/2 -> mean 8.5; passage 1 -> 1, 2, 4.5 -> 2.5
    assert scores.tolist() == [[8.5, 2.5]]
    # a padded output token is left out: only token 0 remains, i.e. the "first" result
    only_first = aggregate_cross_attention(_attention(), MASK, tokens="all", target_mask=torch.tensor([[1, 0]]))
    assert only_first.tolist() == [[2.0, 4.0]]


def test_reader_aggregation_max_and_sum():
    assert aggregate_cross_attention(_attention(), MASK, reduce="max").tolist() == [[3.0, 6.0]]
    assert aggregate_cross_attention(_attention(), MASK, reduce="sum").tolist() == [[4.0, 12.0]]
    # max is taken after the head/layer mean (here head/layer offsets cancel, so the max is of `base`)
    assert aggregate_cross_attention(_attention(), MASK, tokens="all", reduce="max").tolist() == [[11.5, 4.5]]


def test_reader_aggregation_value_norms_weight_each_key():
    att = torch.ones(1, 1, 1, 1, 6)
    norms = torch.tensor([2.0, 4.0, PAD, 1.0, 1.0, 7.0]).view(1, 1, 1, 6)
    assert aggregate_cross_attention(att, MASK, reduce="sum", value_norms=norms).tolist() == [[6.0, 9.0]]


def test_reader_aggregation_empty_passage_scores_minus_inf_and_batches_are_independent():
    att = torch.arange(12.0).view(1, 2, 1, 1, 6)                          # B=2
    mask = torch.tensor([[[1, 1, 1], [0, 0, 0]], [[1, 0, 0], [1, 1, 0]]])
    scores = aggregate_cross_attention(att, mask)
    assert scores[0, 0] == 1.0 and scores[0, 1] == float("-inf")
    assert scores[1].tolist() == [6.0, 9.5]
    assert aggregate_cross_attention(att, mask, reduce="max")[0, 1] == float("-inf")


def test_reader_aggregation_post_softmax_can_rank_differently_from_pre_softmax():
    # passage 0: one peaked token among low ones; passage 1: uniformly medium tokens
    pre = torch.tensor([8.0, 0.0, 0.0, 3.0, 3.0, 3.0]).view(1, 1, 1, 1, 6)
    mask = torch.ones(1, 2, 3, dtype=torch.long)
    pre_scores = aggregate_cross_attention(pre, mask)                     # mean logits: 8/3 vs 3
    assert pre_scores[0, 0] < pre_scores[0, 1]
    probs = attention_probs(pre, mask.view(1, 6))
    z = math.exp(8) + 2 + 3 * math.exp(3)
    expected = [(math.exp(8) + 2) / z, 3 * math.exp(3) / z]               # attention mass per passage
    post = aggregate_cross_attention(probs, mask, reduce="sum")
    assert post[0].tolist() == pytest.approx(expected, rel=1e-5)
    assert post[0, 0] > post[0, 1]


def test_reader_aggregation_attention_probs_ignore_padded_keys():
    pre = torch.tensor([1.0, 2.0, 50.0, 0.5, 0.5, 0.5]).view(1, 1, 1, 1, 6)
    probs = attention_probs(pre, MASK.view(1, 6))
    assert probs[..., 2].item() == 0.0
    assert probs.sum().item() == pytest.approx(1.0)
    assert aggregate_cross_attention(probs, MASK, reduce="sum").sum().item() == pytest.approx(1.0)


def test_reader_aggregation_rejects_bad_shapes_and_options():
    with pytest.raises(ValueError, match="passage_mask"):
        aggregate_cross_attention(torch.zeros(1, 1, 1, 1, 5), MASK)
    with pytest.raises(ValueError, match="layers"):
        aggregate_cross_attention(torch.zeros(1, 1, 1, 6), MASK)
    with pytest.raises(ValueError, match="tokens"):
        aggregate_cross_attention(torch.zeros(1, 1, 1, 1, 6), MASK, tokens="last")
    with pytest.raises(ValueError, match="target_mask"):
        aggregate_cross_attention(torch.zeros(1, 1, 1, 2, 6), MASK, tokens="all", target_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="scores='post'"):
        FiDScoring(value_weighted=True)
    assert PRESETS["fid-kd"] == FiDScoring(signal="attention", scores="pre", tokens="first", reduce="mean")
