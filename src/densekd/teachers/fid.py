"""FiD reader as a teacher: passage relevance from the decoder's cross-attention (or likelihood).

Izacard & Grave (ICLR 2021) score passage ``p`` of question ``q`` by the reader's cross-attention:
the **pre-softmax** scores ``q_t . k_j / sqrt(d)`` of the **first** decoded token ``t = 0``, averaged
over heads, layers and the passage's non-padding tokens ``j``; the retriever is trained towards the
softmax of these scores over the question's passages (:mod:`densekd.losses.kl`, teacher = reader).

Data contracts
--------------
* :func:`aggregate_cross_attention` (pure): ``attention[layers, B, heads, T_out, k*L]`` (pre- or
  post-softmax; fused key axis passage-major, as :meth:`FiDReader.encode
  <densekd.encoders.reader.FiDReader.encode>` builds it) + token mask ``[B, k, L]`` -> ``[B, k]``.
  Order: optional value-norm weighting, mean over layers and heads, (masked) mean over the chosen
  output tokens, then ``mean``/``sum``/``max`` over the passage's real tokens. A passage with no
  real token scores ``-inf``.
* How pre-softmax scores are obtained: transformers only returns post-softmax attention (and only
  with ``attn_implementation="eager"``). :class:`CrossAttentionRecorder` registers forward hooks on
  each decoder cross-attention's query and key projections (``nn.Linear``), splits the captured
  ``[B, T, heads*d]`` / ``[B, S, heads*d]`` outputs into heads and computes ``q k^T * scaling``
  itself (``scaling`` is the module's own: ``d**-0.5`` for BERT/BART, 1 for T5, whose
  cross-attention has no position bias). Mask and softmax are *not* included;
  :func:`attention_probs` applies them and reproduces ``output_attentions`` (tested). A hook on the
  value projection gives ``||v_j||`` per head for Atlas' ADist. Works with any attention kernel.
* :class:`FiDTeacher.score_passages` returns ``np.float32[k]`` **raw** scores, in input order:
  - ``scores="pre"`` (``fid-kd``, ``attention-all``, ``attention-max``): logits-like (dot products);
    softmax over passages gives the reader's distribution. Feed as teacher logits.
  - ``scores="post"`` (``attention-post``, ``adist``): non-negative attention *mass* (probability
    units; times ``||v||`` for ADist). Atlas softmaxes such scores with a small temperature
    (``temperature_gold=0.01``); ``np.log(score)`` instead gives the distribution proportional to the
    mass. Rank-only losses (margin ranking, RankNet) can use them as they are.
  - ``signal="pdist"`` (Atlas PDist): mean per-token log-likelihood (nats) of the answer given the
    question and that passage alone; logits-like (softmax = Atlas' ``p(d) ∝ p(a|q,d)^(1/|a|)``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from densekd.encoders.reader import IGNORE_INDEX, FiDReader, PassageLike
from densekd.teachers.base import CandidateList, fingerprint_parts, fingerprint_state_dict
from densekd.teachers.model_fingerprint import CachedFingerprint, tokenizer_state

TOKEN_MODES = ("first", "all")
REDUCTIONS = ("mean", "sum", "max")


def aggregate_cross_attention(attention: Tensor, passage_mask: Tensor, *, tokens: str = "first",
                              reduce: str = "mean", target_mask: Tensor | None = None,
                              value_norms: Tensor | None = None) -> Tensor:
    """One score per passage from fused cross-attention (module docstring).

    Parameters
    ----------
    attention
        ``float[layers, B, heads, T_out, k*L]`` pre-softmax scores or attention probabilities.
    passage_mask
        ``[B, k, L]`` bool/0-1, True = real token of a real passage.
    tokens
        ``"first"``: output token 0 only (FiD-KD); ``"all"``: mean over the output tokens.
    reduce
        Over a passage's real tokens: ``"mean"`` (FiD-KD), ``"sum"`` (attention mass), ``"max"``.
    target_mask
        ``[B, T_out]`` real output tokens for ``tokens="all"`` (e.g. ``labels != -100``); None = all.
    value_norms
        Optional ``[layers, B, heads, k*L]`` value-vector norms; each attention entry is multiplied
        by the norm of the value it attends to (Atlas ADist) before any averaging.

    Returns
    -------
    Tensor
        ``float[B, k]``.

    Examples
    --------
    >>> att = torch.tensor([1.0, 3.0, 5.0, 7.0]).view(1, 1, 1, 1, 4)   # k=2 passages of L=2 tokens
    >>> mask = torch.tensor([[[1, 1], [1, 0]]])                          # 2nd passage: 1 real token
    >>> aggregate_cross_attention(att, mask).tolist()
    [[2.0, 5.0]]
    >>> aggregate_cross_attention(att, mask, reduce="max").tolist()
    [[3.0, 5.0]]
    """
    if tokens not in TOKEN_MODES or reduce not in REDUCTIONS:
        raise ValueError(f"tokens must be one of {TOKEN_MODES} and reduce one of {REDUCTIONS}, "
                         f"got {tokens!r}, {reduce!r}")
    if attention.ndim != 5:
        raise ValueError(f"attention must be [layers, B, heads, T_out, k*L], got {tuple(attention.shape)}")
    b, k, length = passage_mask.shape
    if attention.shape[1] != b or attention.shape[-1] != k * length:
        raise ValueError(f"attention {tuple(attention.shape)} does not match passage_mask [B, k, L]={(b, k, length)}")
    att = attention.float()
    if value_norms is not None:
        if value_norms.shape != (*att.shape[:3], att.shape[-1]):
            raise ValueError(f"value_norms must be [layers, B, heads, k*L], got {tuple(value_norms.shape)}")
        att = att * value_norms.float()[:, :, :, None, :]
    att = att.mean(dim=(0, 2))                                        # [B, T_out, k*L]
    if tokens == "first":
        per_token = att[:, 0]                                         # [B, k*L]
    else:
        w = torch.ones(att.shape[:2], device=att.device) if target_mask is None else target_mask.float()
        if w.shape != att.shape[:2]:
            raise ValueError(f"target_mask must be [B, T_out]={tuple(att.shape[:2])}, got {tuple(w.shape)}")
        per_token = (att * w[:, :, None]).sum(dim=1) / w.sum(dim=1, keepdim=True).clamp_min(1.0)
    per_token = per_token.view(b, k, length)
    real = passage_mask.bool()
    count = real.sum(dim=-1)
    if reduce == "max":
        scores = per_token.masked_fill(~real, float("-inf")).amax(dim=-1)
    else:
        scores = per_token.masked_fill(~real, 0.0).sum(dim=-1)      # a fill, not a multiply: no inf * 0
        if reduce == "mean":
            scores = scores / count.clamp_min(1)
    return scores.masked_fill(count == 0, float("-inf"))


def attention_probs(scores: Tensor, key_mask: Tensor) -> Tensor:
    """Softmax of pre-softmax ``scores[..., B, heads, T, S]`` over real keys (``key_mask[B, S]``), float32."""
    mask = key_mask.bool()[:, None, None, :]
    return torch.softmax(scores.float().masked_fill(~mask, float("-inf")), dim=-1)


@dataclass(frozen=True)
class CrossAttentionLayer:
    """The projections of one decoder cross-attention module."""

    query: nn.Module
    key: nn.Module
    value: nn.Module
    num_heads: int
    scaling: float


_PROJECTIONS = (("query", "key", "value"), ("q", "k", "v"), ("q_proj", "k_proj", "v_proj"))
_HEAD_ATTRS = ("num_attention_heads", "n_heads", "num_heads")


def find_cross_attention(model: nn.Module) -> list[CrossAttentionLayer]:
    """The decoder's cross-attention layers, in layer order (BERT/RoBERTa-like, T5 and BART-like names)."""
    found, matched = [], []
    for name, module in model.get_decoder().named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if not (type(module).__name__.endswith("CrossAttention") or leaf in ("EncDecAttention", "encoder_attn")):
            continue
        matched.append(f"{name} ({type(module).__name__})")
        names = next((n for n in _PROJECTIONS if all(hasattr(module, a) for a in n)), None)
        heads = next((getattr(module, a) for a in _HEAD_ATTRS if hasattr(module, a)), None)
        if names is None or heads is None:
            continue  # a wrapper (T5LayerCrossAttention): the attention itself is one of its children
        q, k, v = (getattr(module, a) for a in names)
        scaling = getattr(module, "scaling", (q.out_features // heads) ** -0.5)
        found.append(CrossAttentionLayer(q, k, v, int(heads), float(scaling)))
    if not found:
        raise ValueError(f"no supported decoder cross-attention in {type(model).__name__} "
                         f"(candidates: {matched[:4]}); expected query/key/value, q/k/v or q_proj/k_proj/v_proj")
    return found


def _heads(x: Tensor, n: int) -> Tensor:
    """``[B, S, n*d] -> [B, n, S, d]``."""
    return x.view(*x.shape[:2], n, -1).transpose(1, 2)


class CrossAttentionRecorder:
    """Context manager capturing cross-attention projections of one forward pass through hooks.

    Use one ``with`` block per teacher-forced forward (``use_cache=False``); during cached
    generation the per-step queries are concatenated and the keys of the first step are used.

    Examples
    --------
    >>> with CrossAttentionRecorder(reader.model, values=True) as rec:         # doctest: +SKIP
    ...     reader(**batch)
    >>> rec.scores().shape, rec.value_norms().shape                            # doctest: +SKIP
    (torch.Size([layers, B, heads, T, S]), torch.Size([layers, B, heads, S]))
    """

    def __init__(self, model: nn.Module, values: bool = False):
        self.layers = find_cross_attention(model)
        self.values = values
        self._handles: list[Any] = []

    def __enter__(self) -> CrossAttentionRecorder:
        n = len(self.layers)
        self._q: list[list[Tensor]] = [[] for _ in range(n)]
        self._k: list[Tensor | None] = [None] * n
        self._v: list[Tensor | None] = [None] * n
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.query.register_forward_hook(partial(self._keep_query, i)))
            self._handles.append(layer.key.register_forward_hook(partial(self._keep_first, self._k, i)))
            if self.values:
                self._handles.append(layer.value.register_forward_hook(partial(self._keep_first, self._v, i)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _keep_query(self, i: int, module: nn.Module, args: Any, output: Tensor) -> None:
        self._q[i].append(output.detach())

    @staticmethod
    def _keep_first(store: list[Tensor | None], i: int, module: nn.Module, args: Any, output: Tensor) -> None:
        if store[i] is None:  # later calls are cache-less recomputations of the same keys
            store[i] = output.detach()

    def scores(self) -> Tensor:
        """Pre-softmax ``q k^T * scaling``, ``float32[layers, B, heads, T_out, S]`` (no mask applied)."""
        out = []
        for i, layer in enumerate(self.layers):
            if not self._q[i] or self._k[i] is None:
                raise RuntimeError("nothing recorded: run the reader's forward inside the `with` block")
            q = _heads(torch.cat(self._q[i], dim=1).float(), layer.num_heads)
            k = _heads(self._k[i].float(), layer.num_heads)
            out.append(torch.matmul(q, k.transpose(-1, -2)) * layer.scaling)
        return torch.stack(out)

    def value_norms(self) -> Tensor:
        """L2 norms of the value vectors, ``float32[layers, B, heads, S]`` (needs ``values=True``)."""
        if not self.values or any(v is None for v in self._v):
            raise RuntimeError("value vectors were not recorded (CrossAttentionRecorder(values=True))")
        return torch.stack([_heads(v.float(), layer.num_heads).norm(dim=-1) for v, layer in zip(self._v, self.layers)])


@dataclass(frozen=True)
class FiDScoring:
    """How :class:`FiDTeacher` turns the reader into passage scores (units in the module docstring).

    Attributes
    ----------
    signal
        ``"attention"`` (cross-attention aggregation) or ``"pdist"`` (per-passage answer likelihood).
    scores
        ``"pre"`` (pre-softmax dot products) or ``"post"`` (attention probabilities).
    tokens, reduce
        As :func:`aggregate_cross_attention`.
    value_weighted
        Multiply probabilities by value norms (Atlas ADist); needs ``scores="post"``.
    """

    signal: str = "attention"
    scores: str = "pre"
    tokens: str = "first"
    reduce: str = "mean"
    value_weighted: bool = False

    def __post_init__(self) -> None:
        if self.signal not in ("attention", "pdist") or self.scores not in ("pre", "post"):
            raise ValueError(f"signal must be attention|pdist and scores pre|post, "
                             f"got {self.signal!r}, {self.scores!r}")
        if self.tokens not in TOKEN_MODES or self.reduce not in REDUCTIONS:
            raise ValueError(f"tokens must be one of {TOKEN_MODES}, reduce one of {REDUCTIONS}")
        if self.value_weighted and self.scores != "post":
            raise ValueError("value_weighted weights attention probabilities: it needs scores='post'")

    @property
    def needs_answer(self) -> bool:
        """Whether the score conditions on the answer tokens (else only on the decoder start)."""
        return self.signal == "pdist" or self.tokens == "all"


#: Named scorings: the paper's default, its variants, and Atlas' ADist / PDist.
PRESETS: dict[str, FiDScoring] = {
    "fid-kd": FiDScoring(),
    "attention-all": FiDScoring(tokens="all"),
    "attention-max": FiDScoring(reduce="max"),
    "attention-post": FiDScoring(scores="post", reduce="sum"),
    "adist": FiDScoring(scores="post", tokens="all", reduce="sum", value_weighted=True),
    "pdist": FiDScoring(signal="pdist"),
}


class FiDTeacher:
    """Scores a question's passages *jointly* with a trained :class:`FiDReader`; a
    :class:`~densekd.teachers.base.Teacher` (``score_candidates`` + ``fingerprint``).

    Parameters
    ----------
    reader
        The reader (put in eval mode while scoring).
    scoring
        A :data:`PRESETS` name or a :class:`FiDScoring`.
    batch_size
        Passages per forward for ``pdist`` (each passage is read alone).

    Examples
    --------
    >>> teacher = FiDTeacher(FiDReader.from_pretrained("out/reader"), "fid-kd")      # doctest: +SKIP
    >>> teacher.score_passages("who won super bowl 50?", passages, "Denver Broncos")  # doctest: +SKIP
    array([ 1.93, -0.41, 0.12], dtype=float32)
    """

    def __init__(self, reader: FiDReader, scoring: str | FiDScoring = "fid-kd", batch_size: int = 16):
        if isinstance(scoring, str):
            if scoring not in PRESETS:
                raise ValueError(f"unknown scoring {scoring!r}; presets: {sorted(PRESETS)}")
            scoring = PRESETS[scoring]
        self.reader = reader
        self.scoring = scoring
        self.batch_size = int(batch_size)
        self._fingerprint = CachedFingerprint()

    @property
    def fingerprint(self) -> str:
        """Stable id of the reader weights, tokenizer, input and generation settings and the scoring (a
        cache key; hashed once until a weight or setting changes). Generation matters: without a given
        answer the scores are those of the reader's own greedy answer."""
        c = self.reader.config
        generation = json.dumps({k: v for k, v in self.reader.model.generation_config.to_diff_dict().items()
                                 if k != "transformers_version"}, sort_keys=True, default=str)  # hashable
        settings = (c.passage_max_length, c.answer_max_length, self.scoring, generation)
        return self._fingerprint.get(self.reader.model, settings, lambda state: fingerprint_parts(
            "fid-teacher", fingerprint_state_dict(state), tokenizer_state(self.reader.tokenizer), *settings))

    def score_candidates(self, lists: Sequence[CandidateList], batch_size: int | None = None,
                         show_progress: bool = False) -> list[np.ndarray]:
        """:meth:`score_passages` of each list (its passages read together, with its ``answer``).

        ``batch_size`` is unused: a question's passages are one FiD input (``pdist`` reads them in
        chunks of the constructor's ``batch_size``).
        """
        return [self.score_passages(item.query, item.passages, item.answer)
                for item in tqdm(lists, desc="reader teacher", unit="query", disable=not show_progress)]

    @torch.inference_mode()
    def score_passages(self, question: str, passages: Sequence[PassageLike], answer: str | None = None) -> np.ndarray:
        """Raw scores ``np.float32[k]`` for all ``k`` passages (read together, none truncated).

        ``answer`` is needed when the scoring conditions on it (``tokens="all"``, ``pdist``); when it
        is ``None`` there, the reader's own greedy answer is used.
        """
        if not passages:
            return np.zeros(0, dtype=np.float32)
        reader, k = self.reader, len(passages)
        if self.scoring.needs_answer and answer is None:
            answer = reader.generate([question], [list(passages)], n_passages=k)[0]
        batch = reader.tokenize([question], [list(passages)], [answer] if self.scoring.needs_answer else None,
                                n_passages=k)
        was_training = reader.training
        reader.eval()
        try:
            if self.scoring.signal == "pdist":
                scores = self._pdist(batch)
            else:
                scores = self._attention(batch)[0]
        finally:
            reader.train(was_training)
        return scores.float().cpu().numpy().astype(np.float32)

    def _attention(self, batch: dict[str, Tensor]) -> Tensor:
        reader, s = self.reader, self.scoring
        labels = batch.pop("labels", None)
        start = None
        if labels is None:
            # the first decoded position only sees the decoder start token: no answer needed
            start_id = reader.model.generation_config.decoder_start_token_id
            start = torch.full((batch["input_ids"].shape[0], 1), int(start_id), device=reader.device)
        with CrossAttentionRecorder(reader.model, values=s.value_weighted) as rec:
            reader(**batch, labels=labels, decoder_input_ids=start)
        att = rec.scores()                                            # [layers, B, heads, T, k*L]
        b, k, length = batch["input_ids"].shape
        mask = batch["attention_mask"] * batch["passage_mask"][:, :, None]
        if s.scores == "post":
            att = attention_probs(att, mask.view(b, k * length))
        return aggregate_cross_attention(
            att, mask, tokens=s.tokens, reduce=s.reduce,
            target_mask=None if labels is None else labels != IGNORE_INDEX,
            value_norms=rec.value_norms() if s.value_weighted else None)

    def _pdist(self, batch: dict[str, Tensor]) -> Tensor:
        # every passage becomes its own one-passage FiD input: [1, k, L] -> [k, 1, L]
        ids, att, labels = batch["input_ids"][0, :, None], batch["attention_mask"][0, :, None], batch["labels"]
        out = []
        for i in range(0, ids.shape[0], self.batch_size):
            chunk = slice(i, i + self.batch_size)
            rep = labels.expand(ids[chunk].shape[0], -1)
            ll = self.reader.log_likelihood(ids[chunk], att[chunk], rep)
            out.append(ll / (rep != IGNORE_INDEX).sum(dim=-1))      # Atlas: per-token mean
        return torch.cat(out)
