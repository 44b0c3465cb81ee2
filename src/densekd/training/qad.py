"""Quantisation-aware distillation (QAD): fine-tune an encoder so that its int8 version keeps its quality.

Why
---
Post-training dynamic int8 (backend ``onnx-int8``) rounds every Linear weight and input; the vectors
drift and retrieval quality can drop. QAD distils the encoder from *its own fp32 self*: a student copy
runs with that rounding simulated (:mod:`densekd.encoders.fake_quant`, straight-through gradients)
and learns to reproduce the frozen fp32 teacher's embeddings
(:func:`densekd.losses.embedding.embedding_distillation_loss`: cosine + in-batch score KL). The
weights move to where rounding costs little. No labels are needed: any sample of the corpus (and
queries) to be encoded is the training set.

Data contract
-------------
:func:`quantization_aware_distill` takes a :class:`~densekd.encoders.dense.DenseEncoder` and texts
(``passages``; ``queries`` optional) and returns a new ``DenseEncoder`` with plain fp32 ``nn.Linear``
layers (the fake-quant wrappers are removed): save it with ``save_pretrained`` and serve it with
backend ``onnx-int8``. The input encoder is not modified. Passage texts train the passage tower,
query texts the query tower (one tower when they are tied); dropout is off in the student, since the
target is a deterministic function.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer

from densekd.encoders.dense import DenseEncoder
from densekd.encoders.fake_quant import add_fake_quant, strip_fake_quant
from densekd.losses.embedding import embedding_distillation_loss
from densekd.training.arguments import DensekdArguments


@dataclass
class QadConfig(DensekdArguments):
    """Training arguments of :func:`quantization_aware_distill` (the shared densekd base + QAD settings).

    Defaults changed further: a small learning rate (the student starts at the
    teacher: only the rounding error is to be undone), a fixed number of steps, no checkpoints
    (the result is saved by the caller), nothing reported anywhere.
    """

    output_dir: str | None = field(default=None, metadata={"help": "Trainer scratch folder (logs only)."})
    temperature: float = field(default=0.05, metadata={"help": "In-batch score softmax temperature."})
    score_weight: float = field(default=1.0, metadata={"help": "Weight of the in-batch score KL term (0 = cosine only)."})
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate."})
    max_steps: int = field(default=200, metadata={"help": "Optimizer steps."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Texts per step (per device)."})
    warmup_steps: float = field(default=0.1, metadata={"help": "Warm-up steps (a fraction < 1 of max_steps)."})
    logging_steps: float = field(default=20, metadata={"help": "Log every X optimizer steps."})
    save_strategy: str = field(default="no", metadata={"help": "No Trainer checkpoints: the caller saves."})

    def validate(self) -> None:
        """QAD's own fields (the base calls this after its shared checks)."""
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if not self.score_weight >= 0:
            raise ValueError(f"score_weight must be >= 0, got {self.score_weight!r}")


class _SelfDistillModel(nn.Module):
    """Student (fake-quant) and frozen fp32 teacher; ``forward`` returns ``{"loss", ...}`` for the Trainer."""

    def __init__(self, student: DenseEncoder, teacher: DenseEncoder, config: QadConfig):
        super().__init__()
        self.student, self.teacher, self.cfg = student, teacher, config
        self.teacher.requires_grad_(False)
        self.teacher.eval()

    def train(self, mode: bool = True) -> _SelfDistillModel:
        # the Trainer calls model.train(): the teacher must stay in eval mode, or its dropout turns the
        # targets into noise that the student can never match
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, query: dict[str, Tensor] | None = None,
                passage: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        parts, sizes = [], []
        for side, batch in (("query", query), ("passage", passage)):
            if batch is None:
                continue
            with torch.no_grad():
                t = self.teacher(**{side: batch})[side]                 # [B_side, D]
            s = self.student(**{side: batch})[side]                     # [B_side, D]
            parts.append(embedding_distillation_loss(s, t, temperature=self.cfg.temperature,
                                                     score_weight=self.cfg.score_weight))
            sizes.append(len(s))
        total = sum(sizes)
        # each side's loss weighted by its share of the texts: a query-light batch is mostly passages
        return {k: sum(p[k] * n for p, n in zip(parts, sizes)) / total for k in parts[0]}


class _TextCollator:
    """Items ``{"text", "side"}`` -> ``{"query": tokens | None, "passage": tokens | None}``."""

    def __init__(self, encoder: DenseEncoder):
        self.encoder = encoder

    def __call__(self, items: list[dict[str, str]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for side, tokenize in (("query", self.encoder.tokenize_queries), ("passage", self.encoder.tokenize_passages)):
            texts = [it["text"] for it in items if it["side"] == side]
            if texts:
                out[side] = tokenize(texts)
        return out


def _no_dropout(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0


def fake_quant_copy(encoder: DenseEncoder) -> DenseEncoder:
    """A deep copy of ``encoder`` with every Linear of its towers (and projection) fake-quantised."""
    student = copy.deepcopy(encoder)
    # the whole module: both towers (a tied pair is one module, wrapped once) and the projection
    wrapped = add_fake_quant(student)
    if wrapped == 0:
        raise ValueError("the encoder has no nn.Linear layer to quantise (is it a transformer tower?)")
    _no_dropout(student)
    return student


def quantization_aware_distill(encoder: DenseEncoder, passages: list[str], config: QadConfig,
                               queries: list[str] | None = None) -> DenseEncoder:
    """Train a fake-quant copy of ``encoder`` to reproduce ``encoder``'s own fp32 embeddings.

    Parameters
    ----------
    encoder
        The fp32 encoder; left unchanged (it is the teacher).
    passages, queries
        Unlabelled training texts for the passage and query towers.
    config
        Steps, batch size, learning rate, loss settings.

    Returns
    -------
    DenseEncoder
        The trained fp32 weights (fake-quant removed), ready for ``save_pretrained`` / ``onnx-int8``.
    """
    items = [{"text": t, "side": "passage"} for t in passages] + [{"text": t, "side": "query"} for t in queries or []]
    if not items:
        raise ValueError("quantization_aware_distill needs at least one training text")
    teacher = copy.deepcopy(encoder).eval()
    student = fake_quant_copy(encoder)
    model = _SelfDistillModel(student, teacher, config)
    trainer = Trainer(model=model, args=config, train_dataset=items, data_collator=_TextCollator(encoder))
    trainer.train()
    student = model.student.eval()
    strip_fake_quant(student)
    return student


def int8_cosine(encoder: DenseEncoder, reference: DenseEncoder, texts: list[str], batch_size: int = 32) -> Tensor:
    """Per-text cosine ``[N]`` between ``encoder`` under simulated int8 and ``reference`` in fp32 (passage side).

    A cheap check of what QAD bought, without an ONNX export: 1.0 means rounding changes nothing.
    """
    fq = fake_quant_copy(encoder).eval()
    a = torch.from_numpy(fq.encode_passages(texts, batch_size=batch_size))
    b = torch.from_numpy(reference.encode_passages(texts, batch_size=batch_size))
    return nn.functional.cosine_similarity(a, b, dim=-1)
