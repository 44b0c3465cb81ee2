"""ADAM dark examples: exact token fractions, determinism, order independence, teacher scoring."""

from __future__ import annotations

import random

import numpy as np
import pytest

from densekd.data.beir import load_beir
from densekd.data.types import TrainGroup
from densekd.mining.dark_examples import (
    DarkExampleConfig,
    add_dark_examples,
    add_dark_examples_with_stats,
    mask_tokens,
    mix_tokens,
)
from densekd.teachers.annotate import annotate


def _toks(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


CASES = [(length, f, span, seed) for length in (1, 7, 40, 200) for f in (0.1, 0.3, 0.5, 0.9)
         for span in (1, 3, 8) for seed in range(3)]


@pytest.mark.parametrize("length,fraction,span,seed", CASES)
def test_mix_replace_overwrites_exactly_the_fraction_and_keeps_the_rest(length, fraction, span, seed):
    neg, pos = _toks("n", length), _toks("p", 13)
    out, n = mix_tokens(neg, pos, fraction, "replace", span, random.Random(seed))
    assert n == round(fraction * length)
    assert len(out) == length
    replaced = [i for i, t in enumerate(out) if t.startswith("p")]
    assert len(replaced) == n                                   # count tokens changed
    assert all(out[i] == neg[i] for i in range(length) if i not in replaced)  # the rest in place
    assert set(out) - set(neg) <= set(pos)


@pytest.mark.parametrize("length,fraction,span,seed", CASES)
def test_mix_insert_gives_the_positive_the_requested_share(length, fraction, span, seed):
    neg, pos = _toks("n", length), _toks("p", 5)
    out, n = mix_tokens(neg, pos, fraction, "insert", span, random.Random(seed))
    assert n == round(fraction * length / (1 - fraction))
    assert len(out) == length + n
    assert sum(t.startswith("p") for t in out) == n
    assert [t for t in out if t.startswith("n")] == neg        # the negative is intact, in order
    assert abs(n / len(out) - fraction) <= 1 / len(out)


@pytest.mark.parametrize("mode,fraction", [("replace", 0.08), ("insert", 0.074)])
def test_mix_moves_a_contiguous_span_of_the_positive(mode, fraction):
    pos = _toks("p", 50)
    for seed in range(5):
        out, n = mix_tokens(_toks("n", 100), pos, fraction, mode, 8, random.Random(seed))
        assert n == 8  # one span of 8
        moved = [t for t in out if t.startswith("p")]
        first = pos.index(moved[0])
        assert moved == pos[first:first + 8]
        start = out.index(moved[0])
        assert out[start:start + 8] == moved                         # one run, not scattered


@pytest.mark.parametrize("mode", ["mask", "delete"])
@pytest.mark.parametrize("length,fraction,seed", [(L, f, s) for L in (1, 10, 77) for f in (0.15, 0.3, 0.8)
                                                  for s in range(3)])
def test_mask_tokens_changes_exactly_the_fraction(mode, length, fraction, seed):
    tokens = _toks("t", length)
    out, n = mask_tokens(tokens, fraction, mode, "[MASK]", random.Random(seed))
    assert n == round(fraction * length)
    if mode == "mask":
        assert len(out) == length and out.count("[MASK]") == n
        assert all(o == t for o, t in zip(out, tokens) if o != "[MASK]")
    else:
        assert len(out) == length - n
        assert [t for t in tokens if t in set(out)] == out       # a subsequence, order kept


def test_pure_helpers_are_deterministic_under_their_rng():
    neg, pos = _toks("n", 60), _toks("p", 30)
    a = mix_tokens(neg, pos, 0.3, "replace", 4, random.Random(5))
    assert a == mix_tokens(neg, pos, 0.3, "replace", 4, random.Random(5))
    assert a != mix_tokens(neg, pos, 0.3, "replace", 4, random.Random(6))
    m = mask_tokens(pos, 0.3, "mask", "[MASK]", random.Random(5))
    assert m == mask_tokens(pos, 0.3, "mask", "[MASK]", random.Random(5))
    assert m != mask_tokens(pos, 0.3, "mask", "[MASK]", random.Random(6))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="fraction"):
        mix_tokens(["a"], ["b"], 1.0, "insert", 1, random.Random(0))
    with pytest.raises(ValueError, match="mode"):
        mix_tokens(["a"], ["b"], 0.5, "swap", 1, random.Random(0))
    with pytest.raises(ValueError, match="mask token"):
        mask_tokens(["a", "b"], 0.5, "mask", None, random.Random(0))
    for bad in ({"mix_fraction": 0.0}, {"mask_fraction": 1.0}, {"mix_mode": "x"}, {"mask_mode": "x"},
                {"span_length": 0}, {"n_mixup": -1}, {"max_tokens": 0}):
        with pytest.raises(ValueError):
            DarkExampleConfig(**bad)


# --- groups, with the real MiniLM word-piece tokenizer ----------------------------------------------

@pytest.fixture(scope="module")
def toy(toy_beir_dir):
    data = load_beir(toy_beir_dir, "train")
    groups = []
    for i, qid in enumerate(data.qrels):
        pos = [p for p, r in data.qrels[qid].items() if r > 0]
        neg = [p for p in data.corpus if p not in pos][i % 3:i % 3 + 4]
        groups.append(TrainGroup(qid, pos, neg))
    return data, groups


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert_path)


def test_groups_get_dark_candidates_appended_to_their_negatives(toy, tokenizer):
    data, groups = toy
    before = [g.to_json() for g in groups]
    cfg = DarkExampleConfig(n_mixup=2, n_masked=3, seed=1)
    out, stats = add_dark_examples_with_stats(groups, data.queries, data.corpus, tokenizer, cfg)
    assert [g.to_json() for g in groups] == before                   # inputs untouched
    for g, o in zip(groups, out):
        dark = [f"dark:mix:{g.qid}:{k}" for k in range(2)] + [f"dark:mask:{g.qid}:{k}" for k in range(3)]
        assert o.qid == g.qid and o.pos_ids == g.pos_ids
        assert o.neg_ids == g.neg_ids + dark                          # candidates, not positives
        assert set(o.extra_passages) == set(dark) and o.teacher_scores is None
    assert stats.mixup == 2 * len(groups) and stats.masked == 3 * len(groups)


def test_masked_examples_mask_the_requested_fraction_of_word_pieces(toy, tokenizer):
    data, groups = toy
    out = add_dark_examples(groups, data.queries, data.corpus, tokenizer,
                            DarkExampleConfig(n_mixup=0, n_masked=2, mask_fraction=0.4))
    for g in out:
        pos_len = len(tokenizer.tokenize(data.corpus[g.pos_ids[0]].full_text()))
        for k in range(2):
            pieces = tokenizer.tokenize(g.extra_passages[f"dark:mask:{g.qid}:{k}"])
            n = round(0.4 * pos_len)
            # [MASK] is split off first when the text is re-tokenised, so the count survives exactly;
            # a "##" piece after a mask re-splits on its own, so the length only approximately
            assert pieces.count("[MASK]") == n
            assert pos_len <= len(pieces) <= pos_len + n


def test_realised_fractions_match_the_config(toy, tokenizer):
    data, groups = toy
    cfg = DarkExampleConfig(n_mixup=3, n_masked=3, mix_fraction=0.5, mask_fraction=0.3, span_length=2,
                            mask_mode="delete")
    _, stats = add_dark_examples_with_stats(groups, data.queries, data.corpus, tokenizer, cfg)
    # exact per example up to rounding to whole tokens; toy passages are ~10-15 pieces long
    assert stats.mixup_tokens_changed / stats.mixup_tokens == pytest.approx(0.5, abs=0.05)
    assert stats.masked_tokens_changed / stats.masked_tokens == pytest.approx(0.3, abs=0.05)


class _WhitespaceTokenizer:
    """Word pieces = whitespace words: token lists round-trip through text exactly."""

    mask_token = "[M]"

    def tokenize(self, text):
        return text.split()

    def convert_tokens_to_string(self, tokens):
        return " ".join(tokens)


def test_max_tokens_cuts_before_editing(toy):
    data, groups = toy
    tok = _WhitespaceTokenizer()
    out = add_dark_examples(groups, data.queries, data.corpus, tok,
                            DarkExampleConfig(n_mixup=2, n_masked=2, max_tokens=4, mix_fraction=0.5))
    for g in out:
        heads = {w for pid in g.pos_ids + g.neg_ids if pid in data.corpus
                 for w in data.corpus[pid].full_text().split()[:4]}
        for text in g.extra_passages.values():
            words = text.split()
            assert len(words) == 4                                     # replace / mask keep the cut length
            assert set(words) <= heads | {"[M]"}                      # nothing from beyond the cut


def test_deterministic_per_seed_and_independent_of_group_order(toy, tokenizer):
    data, groups = toy
    cfg = DarkExampleConfig(n_mixup=2, n_masked=2, seed=3)
    a = add_dark_examples(groups, data.queries, data.corpus, tokenizer, cfg)
    b = add_dark_examples(groups, data.queries, data.corpus, tokenizer, cfg)
    assert [g.to_json() for g in a] == [g.to_json() for g in b]
    shuffled = add_dark_examples(groups[::-1], data.queries, data.corpus, tokenizer, cfg)
    assert {g.qid: g.to_json() for g in shuffled} == {g.qid: g.to_json() for g in a}
    alone = add_dark_examples(groups[2:3], data.queries, data.corpus, tokenizer, cfg)  # other queries absent
    assert alone[0].to_json() == a[2].to_json()
    other = add_dark_examples(groups, data.queries, data.corpus, tokenizer,
                              DarkExampleConfig(n_mixup=2, n_masked=2, seed=4))
    assert [g.extra_passages for g in other] != [g.extra_passages for g in a]


def test_groups_without_negatives_get_masked_examples_only(toy, tokenizer):
    data, groups = toy
    bare = [TrainGroup(groups[0].qid, groups[0].pos_ids, [])]
    out, stats = add_dark_examples_with_stats(bare, data.queries, data.corpus, tokenizer, DarkExampleConfig())
    assert all(pid.startswith("dark:mask:") for pid in out[0].neg_ids) and len(out[0].neg_ids) == 2
    assert stats.mixup_no_negative == 2


def test_bad_groups_fail_before_any_work(toy, tokenizer):
    data, groups = toy
    with pytest.raises(ValueError, match="not in the queries"):
        add_dark_examples([TrainGroup("nope", ["d1"])], data.queries, data.corpus, tokenizer, DarkExampleConfig())
    once = add_dark_examples(groups, data.queries, data.corpus, tokenizer, DarkExampleConfig())
    with pytest.raises(ValueError, match="already has dark examples"):
        add_dark_examples(once, data.queries, data.corpus, tokenizer, DarkExampleConfig())


class _LengthTeacher:
    """Scores a pair by its passage's length: lets the test see which text was scored."""

    fingerprint = "length-teacher"

    def score(self, pairs, batch_size=64, show_progress=False):
        return np.array([float(len(p)) for _, p in pairs], dtype=np.float32)


class _NoScoring(_LengthTeacher):
    def score(self, pairs, batch_size=64, show_progress=False):
        raise AssertionError("cached scores should have been reused")


def test_dark_examples_are_scored_offline_by_annotate(toy, tokenizer, tmp_path):
    data, groups = toy
    out = add_dark_examples(groups, data.queries, data.corpus, tokenizer, DarkExampleConfig())
    scored = annotate(out, data.queries, data.corpus, _LengthTeacher(), tmp_path / "s.jsonl", show_progress=False)
    for g in scored:
        g.validate()
        for pid, text in g.extra_passages.items():
            assert g.teacher_scores[pid] == float(len(text))
    # cached: a second call by the same teacher fingerprint scores nothing
    again = annotate(out, data.queries, data.corpus, _NoScoring(), tmp_path / "s.jsonl", show_progress=False)
    assert [g.to_json() for g in again] == [g.to_json() for g in scored]
