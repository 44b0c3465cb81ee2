"""``DistillTrainer``: the HF ``Trainer`` with a distillation ``compute_loss`` and densekd saving.

Data contract
-------------
* ``model``: a :class:`~densekd.encoders.dense.DenseEncoder`; ``args``: a
  :class:`~densekd.training.config.DistillConfig`; batches come from
  :class:`~densekd.training.collator.DistillCollator` (``query``, ``passage``, ``teacher_scores``,
  ``mask``, ``pids``, ``pid_keys``, ``positive_keys``); ``loss_fn`` is a :class:`densekd.losses.WeightedSum` (default:
  ``build_loss(args.loss)``) returning weighted components plus their total under ``"loss"``.
* Scores handed to the losses (:class:`densekd.losses.ScoreBatch`): ``student[B, G]`` = each query
  against its own group; with ``use_in_batch_negatives`` also ``in_batch[B, N]`` against every passage
  of the global batch (gathered across DDP ranks by :func:`densekd.losses.global_in_batch`) and
  ``in_batch_exclude[B, N]``, each query's labelled positives repeated in other groups (their keys
  gathered by :func:`densekd.losses.batch.in_batch_repeats`; these two are the only collectives of a
  loss step); ``teacher[B, G]`` raw logits; ``mask[B, G]``; and ``weights[B]`` when the batch carries
  instance weights (e.g. self-paced weight mode).
* Saving: every checkpoint and ``save_model`` folder is a :meth:`DenseEncoder.save_pretrained` folder
  (safetensors) plus ``training_args.json``; never a pickled model. Resuming and
  ``load_best_model_at_end`` load it strictly through the model class's ``from_pretrained``
  (:class:`~densekd.training.checkpointing.CheckpointTrainer`, the base of every densekd trainer).

Models with several score heads
-------------------------------
A model with ``compute_scores`` (e.g. :class:`~densekd.encoders.ernie.ErnieSearchModel`) scores the
batch itself: the trainer calls ``model(query=..., passage=..., group_size=G, mask=mask,
in_batch=use_in_batch_negatives)`` (through ``forward``, so DDP sees the pass) and gets
``{head: [B, G], f"{head}_in_batch": [B, B*G] local scores or an InBatchScores from global_in_batch}``.
The ``"dense"`` head becomes the :class:`ScoreBatch` every loss sees; the others go into
``ScoreBatch.heads`` with the same teacher scores and mask. Losses that need a head declare it in
``score_heads``; a missing one is an error before training starts. ``query_only`` works for such a
model when it has ``check_passage_cache(table)`` (validates and returns its own kind of table, e.g.
:class:`~densekd.index.token_states.PassageTokenStates` for ERNIE-Search): the trainer then passes
``table.lookup(pids, device)`` (e.g. cached token states) as ``passage`` instead of passage tokens.

``query_only`` mode
-------------------
The towers are untied (shared -> separate copies), the passage tower and the projection (shared by
both sides, so it must stay fixed for cached vectors to stay valid) are frozen, and passage vectors
come from ``passage_embeddings`` by id: no passage forward pass at all. The table must have been
computed with this encoder's passage side (e.g. :meth:`PassageEmbeddingTable.from_encoder` or an
``index.encode.EmbeddingStore``) and must cover every candidate id, extra passages included.
A student with a passage head (``DenseEncoder.passage_head``, :mod:`densekd.encoders.passage_head`)
instead reads the frozen tower's token states (a :class:`~densekd.index.token_states.PassageTokenStates`):
they go through ``model.forward`` as :class:`~densekd.encoders.cached_passages.CachedPassages`, so the
head trains (and DDP sees it) while the tower stays frozen.

Gradient accumulation and ``num_items_in_batch``
------------------------------------------------
HF counts ``num_items_in_batch`` (label tokens) only for models whose ``forward`` takes ``**kwargs``
or when a ``compute_loss_func`` is given; ``DenseEncoder.forward`` does neither, so it arrives as
``None`` and is ignored. Every densekd loss is a mean over the micro-batch's queries, so
``loss_is_scaled_for_ga = False``: the Trainer divides each micro-batch loss by the number of
accumulated micro-batches, which gives exactly the gradient of the mean over all their queries when
micro-batches have equal size (``dataloader_drop_last=True``) and the loss has no cross-query term.
In-batch negatives are such a term: a micro-batch only sees its own ``b * G`` passages as negatives,
so accumulating ``k`` micro-batches is *not* a ``k``-times larger contrastive batch (that needs
GradCache-style embedding caching, which densekd does not implement). Instance weights are
normalised per micro-batch for the same reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from densekd.encoders.cached_passages import PassageStateTable, check_state_table
from densekd.encoders.dense import CONFIG_NAME, DenseEncoder
from densekd.index.passage_table import PassageEmbeddingTable
from densekd.losses import InBatchScores, ScoreBatch, WeightedSum, build_loss, global_in_batch, group_scores
from densekd.losses.batch import in_batch_repeats
from densekd.losses.combine import TOTAL_KEY
from densekd.training.checkpointing import TRAINING_ARGS_JSON, CheckpointTrainer  # noqa: F401 (re-exported)
from densekd.training.collator import DistillCollator
from densekd.training.config import DistillConfig

#: the head of a multi-head model that single-head losses (and the deployed retriever) score
PRIMARY_HEAD = "dense"


def freeze_passage_side(encoder: DenseEncoder) -> None:
    """Untie shared towers, then freeze the passage tower and the (shared) projection."""
    encoder.untie()
    for param in encoder.passage_model.parameters():
        param.requires_grad_(False)
    if encoder.projection is not None:
        encoder.projection.requires_grad_(False)


def _check_dataset(args: DistillConfig, dataset: Any) -> None:
    """The dataset draws each group, so its ``group_size`` and ``negative_sampling`` are what training
    uses; a config saying otherwise would be read nowhere (a silent mismatch): one clear error instead."""
    for name in ("group_size", "negative_sampling"):
        have = getattr(dataset, name, None)
        if have is not None and have != getattr(args, name):
            raise ValueError(f"train_dataset.{name}={have!r} but args.{name}={getattr(args, name)!r}: build the "
                             f"dataset with the config's {name}")


class DistillTrainer(CheckpointTrainer):
    """HF ``Trainer`` that distils teacher scores into a :class:`DenseEncoder` (module docstring).

    Parameters
    ----------
    model
        The student encoder.
    args
        A :class:`DistillConfig`.
    loss_fn
        A :class:`densekd.losses.WeightedSum`; default ``build_loss(args.loss)`` (``args.loss`` is
        ignored when one is given).
    passage_embeddings
        ``query_only`` mode only: a :class:`PassageEmbeddingTable` (or what
        :meth:`PassageEmbeddingTable.coerce` accepts).
    data_collator
        Default: :meth:`DistillCollator.from_encoder` for the training mode.
    **kwargs
        Passed to ``transformers.Trainer`` (``train_dataset``, ``eval_dataset``, ``callbacks``, ...).
        ``processing_class`` and ``compute_loss_func`` are not supported.

    Examples
    --------
    >>> trainer = DistillTrainer(encoder, DistillConfig("out"), train_dataset=ds)   # doctest: +SKIP
    >>> trainer.train(); trainer.save_model("out/final")                           # doctest: +SKIP
    """

    checkpoint_marker = CONFIG_NAME

    def __init__(self, model: DenseEncoder, args: DistillConfig, loss_fn: WeightedSum | None = None,
                 passage_embeddings: Any = None, data_collator: Any = None, **kwargs: Any):
        if not isinstance(args, DistillConfig):
            raise TypeError(f"DistillTrainer needs a DistillConfig, got {type(args).__name__}")
        for unsupported in ("processing_class", "compute_loss_func", "model_init"):
            if kwargs.get(unsupported) is not None:
                raise ValueError(f"DistillTrainer does not support {unsupported}")
        query_only = args.train_mode == "query_only"
        self.multi_head = callable(getattr(model, "compute_scores", None))
        if self.multi_head and query_only and not callable(getattr(model, "check_passage_cache", None)):
            raise ValueError(f"{type(model).__name__} scores with several heads from passage tokens and has no "
                             "check_passage_cache: train_mode='query_only' is not supported for it")
        table = self._setup_mode(model, passage_embeddings, query_only)
        _check_dataset(args, kwargs.get("train_dataset"))
        if data_collator is None:
            data_collator = DistillCollator.from_encoder(model, query_only=query_only)
        elif query_only and getattr(data_collator, "tokenize_passage", None) is not None:
            raise ValueError("train_mode='query_only' reads passage vectors from the table: build the "
                             "collator with tokenize_passage=None")
        super().__init__(model, args, data_collator=data_collator, **kwargs)
        self.loss_fn = build_loss(args.loss) if loss_fn is None else loss_fn
        _check_score_heads(self.loss_fn, model)
        self.passage_table = table
        self._component_sums: dict[str, Tensor] = {}
        self._component_steps = 0

    @staticmethod
    def _setup_mode(model: DenseEncoder, passage_embeddings: Any, query_only: bool) -> Any:
        if not query_only:
            if passage_embeddings is not None:
                raise ValueError("passage_embeddings are only used with train_mode='query_only'")
            return None
        if passage_embeddings is None:
            raise ValueError("train_mode='query_only' needs passage_embeddings (a PassageEmbeddingTable)")
        if callable(getattr(model, "check_passage_cache", None)):
            # a multi-head model reads its own kind of table (ERNIE-Search: cached token states)
            table = model.check_passage_cache(passage_embeddings)
        elif getattr(model, "passage_head", None) is not None:
            # the passage head trains on the frozen tower's token states, not on finished vectors
            table = check_state_table(passage_embeddings, model.query_model.config.hidden_size, model.dim,
                                      "a student with a passage head")
        else:
            table = PassageEmbeddingTable.coerce(passage_embeddings)
            if table.dim != model.dim:
                raise ValueError(f"passage embeddings have dim {table.dim} but the encoder produces {model.dim}")
        freeze_passage_side(model)
        return table

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """HF's optimizer, with a passage head's parameters in their own group at ``args.head_learning_rate``."""
        optimizer = super().create_optimizer(model)
        head = getattr(self.model, "passage_head", None)
        if head is None or self.args.head_learning_rate is None:
            return optimizer
        ids = {id(p) for p in head.parameters()}
        for group in optimizer.param_groups:  # before the first step: no optimizer state to move
            group["params"] = [p for p in group["params"] if id(p) not in ids]
        optimizer.add_param_group({"params": [p for p in head.parameters() if p.requires_grad],
                                   "lr": self.args.head_learning_rate, "weight_decay": 0.0})
        return optimizer

    # ------------------------------------------------------------------------------------- loss
    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Tensor | int | None = None) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Encode, score and apply ``loss_fn``; ``num_items_in_batch`` is unused (module docstring).

        A multi-head model (``compute_scores``) scores the batch itself, one :class:`ScoreBatch` per head.
        """
        if self.passage_table is None and inputs["passage"] is None:
            raise ValueError("batch has no passage tokens: full training needs a collator with tokenize_passage")
        if self.multi_head:
            passage = inputs["passage"]
            if self.passage_table is not None:  # query_only: the table's cached passages replace the tokens
                flat = [pid for group in inputs["pids"] for pid in group]
                passage = self.passage_table.lookup(flat, inputs["query"]["input_ids"].device)
            heads = model(query=inputs["query"], passage=passage, group_size=len(inputs["pids"][0]),
                          mask=inputs.get("mask"), in_batch=self.args.use_in_batch_negatives)
            components = self.loss_fn(head_score_batch(heads, inputs.get("teacher_scores"), inputs.get("mask"),
                                                       inputs.get("weights"), inputs.get("label_mask"),
                                                       _keys(inputs)))
            if model.training:
                self._track_components(components)
            return (components[TOTAL_KEY], heads) if return_outputs else components[TOTAL_KEY]
        # through `model` (possibly DDP-wrapped), never model.module.encode_*: DDP must see the forward
        flat = [pid for group in inputs["pids"] for pid in group]
        states = self.passage_table is not None and isinstance(self.passage_table, PassageStateTable)
        passage = self.passage_table.lookup(flat, inputs["query"]["input_ids"].device) if states else inputs["passage"]
        vectors = model(query=inputs["query"], passage=passage)                # a passage head runs in forward
        q = vectors["query"]                                                   # [B, D]
        if self.passage_table is None or states:
            p = vectors["passage"]                                             # [B*G, D]
        else:
            p = self.passage_table.lookup(flat, q.device, q.dtype)             # [B*G, D], frozen
        components = self.loss_fn(self._score_batch(q, p, inputs))
        if model.training:
            self._track_components(components)
        loss = components[TOTAL_KEY]
        return (loss, {"query": q, "passage": p}) if return_outputs else loss

    def _score_batch(self, q: Tensor, p: Tensor, inputs: dict[str, Any]) -> ScoreBatch:
        group_size = len(inputs["pids"][0])
        mask = inputs.get("mask")
        extra: dict[str, Any] = {}
        if self.args.use_in_batch_negatives:
            in_batch = global_in_batch(q, p, mask)                             # scores [B, N_global]
            extra = {"in_batch": in_batch.scores, "in_batch_offset": in_batch.offset,
                     "in_batch_mask": in_batch.mask,
                     "in_batch_exclude": in_batch_repeats(_keys(inputs), in_batch.offset, group_size, True)}
        return ScoreBatch(student=group_scores(q, p, group_size), teacher=inputs.get("teacher_scores"),
                          weights=inputs.get("weights"), mask=mask, label_mask=inputs.get("label_mask"), **extra)

    def _track_components(self, components: dict[str, Tensor]) -> None:
        # detached tensors, no .item(): no host sync per micro-batch
        for name, value in components.items():
            if name != TOTAL_KEY:
                self._component_sums[name] = self._component_sums.get(name, 0.0) + value.detach().float()
        self._component_steps += 1

    # ------------------------------------------------------------------------------------- logging
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each loss component (``loss_<name>``) and pending callback metrics."""
        if "loss" in logs and self._component_steps:
            logs.update(self._pop_component_means())
        for callback in self.callback_handler.callbacks:
            pop = getattr(callback, "pop_pending_logs", None)
            if callable(pop):
                logs.update(pop())
        super().log(logs, start_time)

    def _pop_component_means(self) -> dict[str, float]:
        names = sorted(self._component_sums)
        means = torch.stack([self._component_sums[n] for n in names]) / self._component_steps
        if self.accelerator.num_processes > 1:  # same condition on every rank: training logs only
            means = self.accelerator.reduce(means, reduction="mean")
        self._component_sums, self._component_steps = {}, 0
        return {f"loss_{n}": round(float(v), 4) for n, v in zip(names, means.tolist())}


def _keys(inputs: Mapping[str, Any]) -> tuple[Tensor, Tensor] | None:
    """``(pid_keys[B, G], positive_keys[B, P])`` of a batch, or ``None`` when its collator gives none."""
    keys, positives = inputs.get("pid_keys"), inputs.get("positive_keys")
    return None if keys is None or positives is None else (keys, positives)


def head_score_batch(heads: Mapping[str, Any], teacher: Tensor | None, mask: Tensor | None,
                     weights: Tensor | None = None, label_mask: Tensor | None = None,
                     keys: tuple[Tensor, Tensor] | None = None) -> ScoreBatch:
    """One :class:`ScoreBatch` per head of ``compute_scores`` output: ``"dense"`` outside, others in ``heads``.

    ``teacher[B, G]``, ``mask[B, G]``, ``weights[B]`` and ``label_mask[B, G]`` apply to every head. ``f"{head}_in_batch"`` may
    be a local ``[B, B*G]`` tensor (mask derived from ``mask``) or the :class:`InBatchScores` of
    :func:`global_in_batch` (gathered columns, offset and mask). ``keys`` (the batch's ``pid_keys`` and
    ``positive_keys``) mark each query's positives repeated in other groups (:func:`in_batch_repeats`).
    """
    group_size = heads[PRIMARY_HEAD].shape[1] if PRIMARY_HEAD in heads else 0

    def one(name: str, **extra: Any) -> ScoreBatch:
        in_batch = heads.get(f"{name}_in_batch")
        if isinstance(in_batch, InBatchScores):
            extra.update(in_batch=in_batch.scores, in_batch_offset=in_batch.offset, in_batch_mask=in_batch.mask,
                         in_batch_exclude=in_batch_repeats(keys, in_batch.offset, group_size, True))
        elif in_batch is not None:
            extra.update(in_batch=in_batch, in_batch_exclude=in_batch_repeats(keys, 0, group_size, False))
        return ScoreBatch(student=heads[name], teacher=teacher, mask=mask, weights=weights, label_mask=label_mask,
                          **extra)

    names = [name for name in heads if not name.endswith("_in_batch")]
    if PRIMARY_HEAD not in names:
        raise ValueError(f"compute_scores returned heads {names}; the primary head {PRIMARY_HEAD!r} is missing")
    return one(PRIMARY_HEAD, heads={name: one(name) for name in names if name != PRIMARY_HEAD})


def _check_score_heads(loss_fn: Any, model: Any) -> None:
    """Fail before training when a loss needs a score head the model does not produce."""
    provided = set(getattr(model, "score_heads", ()))
    losses = getattr(loss_fn, "losses", {"loss": loss_fn})
    for name, loss in losses.items():
        missing = [h for h in getattr(loss, "score_heads", ()) if h not in provided]
        if missing:
            raise ValueError(f"loss {name!r} needs score heads {missing}, which {type(model).__name__} does not "
                             f"provide (it has {sorted(provided) or 'only dense vectors'}); use "
                             "densekd.encoders.ernie.ErnieSearchModel")
