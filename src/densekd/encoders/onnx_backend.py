"""ONNX Runtime inference backends for :class:`~densekd.encoders.dense.DenseEncoder`: fp32 and int8.

Backends (``BACKENDS``)
-----------------------
* ``"torch"``: the PyTorch fp32 path of ``DenseEncoder`` itself (default; nothing here is used);
* ``"onnx"``: the tower + pooling (+ projection, normalisation) exported with ``torch.onnx`` and
  run by ONNX Runtime in fp32. For BERT-type towers the graph goes through ONNX Runtime's
  transformer optimiser (fused attention, GELU and layer norms), which is where the speed comes
  from; embeddings match the torch path to float precision;
* ``"onnx-int8"``: that graph with dynamic int8 quantisation (``quantize_dynamic``: per-channel
  int8 weights of every MatMul / fused Attention, activations quantised on the fly). Embedding
  tables, layer norms and pooling stay fp32;

Static (calibrated QDQ) int8 was tried and is not offered: on the fused graph ONNX Runtime's static
quantiser cannot type the fused ops' activations and ends up quantising weights only (fp32 compute,
no speed-up); on the unfused graph full QDQ ran ~10x slower than fp32 on this CPU with cosine to fp32
down to 0.91 (MiniLM, SciFact passages). Dynamic int8 kept cosine >= 0.99 and was the fastest.

Data contract
-------------
:class:`OnnxDenseEncoder` has the inference API of ``DenseEncoder``: ``encode_queries(texts,
batch_size, show_progress)`` and ``encode_passages(texts_or_passages, batch_size, show_progress)``
return ``np.float32[N, D]`` in input order, with the same tokenisation and length-sorted batching
(:func:`~densekd.encoders.tokenize.length_sorted_batches`); plus ``config``, ``tokenizer``, ``dim``
and ``cache_fingerprint()`` (what corpus-embedding caches are keyed by).

Export cache
------------
``<checkpoint>/onnx/<key>/model.onnx`` (+ ``export.json``), or ``~/.cache/densekd/onnx/<key>/``
(``$DENSEKD_ONNX_CACHE``) when the checkpoint folder is read-only or inside an installed package
(the bundled MiniLM). ``key`` hashes the tower's weights, the pooling/projection/normalisation
settings, the backend, the opset, the export version and the onnxruntime version: a changed model re-exports, an unchanged one is loaded, never
re-exported. Folders are written under a temporary name and renamed, so a killed export leaves
no half-written model behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from densekd.data.hashing import weights_digest
from densekd.data.types import Passage
from densekd.encoders.deps import MissingDependencyError, require
from densekd.encoders.tokenize import length_sorted_batches, tokenize_texts

__all__ = ["BACKENDS", "MissingDependencyError", "OnnxDenseEncoder", "load_encoder", "require", "with_backend"]

BACKENDS = ("torch", "onnx", "onnx-int8")
OPSET = 17
# Bumped whenever the export recipe changes, so older cached exports are not reused.
EXPORT_VERSION = 1
MODEL_FILE = "model.onnx"
META_FILE = "export.json"


class _Embedder(nn.Module):
    """Tower -> pooled, projected, normalised vectors: the graph that is exported."""

    def __init__(self, encoder: Any, tower: nn.Module, input_names: Sequence[str]):
        super().__init__()
        self.encoder, self.tower, self.input_names = encoder, tower, list(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        batch = dict(zip(self.input_names, inputs))
        hidden = self.tower(**batch).last_hidden_state                    # [B, L, H]
        return self.encoder.vectors_from_hidden(hidden, batch["attention_mask"])  # [B, D]


def export_key(encoder: Any, tower: nn.Module, backend: str) -> str:
    """Cache key of one tower's export (see "Export cache" in the module docstring)."""
    ort = require("onnxruntime", f"backend {backend!r}")
    cfg = encoder.config
    h = hashlib.blake2b(digest_size=12)
    settings = {"backend": backend, "opset": OPSET, "version": EXPORT_VERSION, "ort": ort.__version__,
                "pooling": cfg.pooling, "normalize": cfg.normalize, "projection_dim": cfg.projection_dim,
                "weights": weights_digest(m.state_dict() for m in (tower, encoder.projection) if m is not None)}
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def default_export_root(source: str | os.PathLike | None) -> Path:
    """``<source>/onnx`` for a writable checkpoint folder, else the user cache folder."""
    if source is not None:
        root = Path(source)
        installed = any(part in ("site-packages", "dist-packages") for part in root.resolve().parts)
        if root.is_dir() and not installed and os.access(root, os.W_OK):
            return root / "onnx"
    env = os.environ.get("DENSEKD_ONNX_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "densekd" / "onnx"


def _export_fp32(encoder: Any, tower: nn.Module, path: Path) -> None:
    """``torch.onnx`` export of tower + pooling with dynamic batch and sequence axes."""
    sample = tokenize_texts(encoder.tokenizer, ["a short text", "a slightly longer second text"], "", 16)
    names = list(sample)
    # Eager attention: ONNX Runtime's optimiser fuses its pattern into one Attention op; the SDPA
    # graph of recent transformers is not recognised and would stay unfused (slower).
    prev = getattr(tower.config, "_attn_implementation", None)
    if hasattr(tower, "set_attn_implementation"):
        tower.set_attn_implementation("eager")
    was_training = tower.training
    tower.eval()
    try:
        with torch.no_grad():
            torch.onnx.export(_Embedder(encoder, tower, names), tuple(sample[n] for n in names), str(path),
                              input_names=names, output_names=["embeddings"], opset_version=OPSET,
                              dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names}, dynamo=False)
    finally:
        if prev is not None and hasattr(tower, "set_attn_implementation"):
            tower.set_attn_implementation(prev)
        tower.train(was_training)
    cfg = tower.config
    if getattr(cfg, "model_type", "") in ("bert", "roberta", "xlm-roberta", "distilbert"):
        from onnxruntime.transformers.optimizer import optimize_model

        opt = optimize_model(str(path), model_type="bert", num_heads=cfg.num_attention_heads,
                             hidden_size=cfg.hidden_size, opt_level=1)
        opt.save_model_to_file(str(path))


def _quantize(fp32: Path, out: Path) -> None:
    """Dynamic int8: per-channel int8 weights of every MatMul and fused Attention; Gather (embedding
    tables), layer norms and pooling stay fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The fused BERT ops come from the com.microsoft domain, where shape inference does not type
    # every output; the quantiser needs a default type for those tensors.
    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Attention"],
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def export_tower(encoder: Any, tower: nn.Module, backend: str, root: Path) -> Path:
    """The ONNX file of ``tower`` for ``backend`` under ``root``: loaded if cached, else exported.

    Returns
    -------
    Path
        ``root/<key>/model.onnx``.
    """
    key = export_key(encoder, tower, backend)
    final = root / key
    require("onnx", f"backend {backend!r}")  # the optimiser and the quantisers read ONNX protobufs
    if (final / MODEL_FILE).is_file() and (final / META_FILE).is_file():
        return final / MODEL_FILE
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        fp32 = tmp / ("model_fp32.onnx" if backend != "onnx" else MODEL_FILE)
        _export_fp32(encoder, tower, fp32)
        if backend != "onnx":
            _quantize(fp32, tmp / MODEL_FILE)
            fp32.unlink()
        meta = {"backend": backend, "opset": OPSET, "version": EXPORT_VERSION, "key": key}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp makes it private; the published export is readable like its checkpoint
        try:
            tmp.rename(final)
        except OSError:  # another process published the same key first: theirs is equivalent
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final / MODEL_FILE


class OnnxDenseEncoder:
    """A ``DenseEncoder``'s inference API served by ONNX Runtime (see the module docstring).

    Parameters
    ----------
    encoder
        The fp32 :class:`~densekd.encoders.dense.DenseEncoder` (gives weights, tokenizer, config).
    backend
        One of ``BACKENDS`` other than ``"torch"``.
    export_root
        Where exports are cached; default :func:`default_export_root` of ``encoder.source_path``.
    num_threads
        ONNX Runtime intra-op threads; default ``torch.get_num_threads()`` (same as the torch path).
    """

    def __init__(self, encoder: Any, backend: str = "onnx", export_root: str | os.PathLike | None = None,
                 num_threads: int | None = None):
        if backend not in BACKENDS or backend == "torch":
            raise ValueError(f"backend must be one of {BACKENDS[1:]}, got {backend!r}")
        if getattr(encoder, "passage_head", None) is not None:  # the exported towers would silently skip it
            raise ValueError("the ONNX backends export the towers only: an encoder with a passage head runs on torch")
        ort = require("onnxruntime", f"backend {backend!r}")
        self.backend, self.config, self.tokenizer, self.dim = backend, encoder.config, encoder.tokenizer, encoder.dim
        root = Path(export_root) if export_root else default_export_root(getattr(encoder, "source_path", None))
        towers = {"query": encoder.query_model, "passage": encoder.passage_model}
        self.model_paths = {side: export_tower(encoder, t, backend, root)
                            for side, t in towers.items()}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads or torch.get_num_threads()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sessions: dict[Path, Any] = {}
        for p in set(self.model_paths.values()):  # shared towers: one session
            sessions[p] = ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
        self._sessions = {side: sessions[p] for side, p in self.model_paths.items()}
        self._inputs = {side: {i.name for i in s.get_inputs()} for side, s in self._sessions.items()}

    def cache_fingerprint(self) -> str:
        """Key for corpus-embedding caches: backend, settings and the exported passage model."""
        return f"OnnxDenseEncoder:{self.backend}:{self.config!r}:{self.model_paths['passage'].parent.name}"

    def _encode(self, texts: list[str], side: str, batch_size: int, show_progress: bool) -> np.ndarray:
        cfg = self.config
        prefix, max_len = ((cfg.query_prefix, cfg.query_max_length) if side == "query"
                           else (cfg.passage_prefix, cfg.passage_max_length))
        session, names = self._sessions[side], self._inputs[side]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        bar = tqdm(total=len(texts), desc=f"encode {side}s ({self.backend})", unit="text", disable=not show_progress)
        for idx, batch in length_sorted_batches(self.tokenizer, texts, prefix, max_len, batch_size):
            feed = {k: v.numpy().astype(np.int64, copy=False) for k, v in batch.items() if k in names}
            out[idx] = session.run(None, feed)[0]
            bar.update(len(idx))
        bar.close()
        return out

    def encode_queries(self, texts: list[str], batch_size: int = 128, show_progress: bool = False) -> np.ndarray:
        """Query vectors ``np.float32[N, D]``, in input order."""
        return self._encode(list(texts), "query", batch_size, show_progress)

    def encode_passages(self, texts: list[str] | list[Passage], batch_size: int = 32,
                        show_progress: bool = True) -> np.ndarray:
        """Passage vectors ``np.float32[N, D]``, in input order; ``Passage`` records use ``full_text()``."""
        texts = [t.full_text() if isinstance(t, Passage) else t for t in texts]
        return self._encode(texts, "passage", batch_size, show_progress)


def with_backend(encoder: Any, backend: str = "torch", **kwargs: Any) -> Any:
    """``encoder`` itself for ``"torch"``, else an :class:`OnnxDenseEncoder` over it (``kwargs`` go there)."""
    if backend == "torch":
        return encoder
    return OnnxDenseEncoder(encoder, backend, **kwargs)


def load_encoder(path: str | os.PathLike | None = None, backend: str = "torch",
                 export_root: str | os.PathLike | None = None, **overrides: Any) -> Any:
    """``DenseEncoder.from_pretrained(path, **overrides)`` served by ``backend``.

    Raises
    ------
    MissingDependencyError
        For an ONNX backend when ``onnxruntime`` is not installed.
    """
    from densekd.encoders.dense import DenseEncoder

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "torch":  # fail before loading weights
        require("onnxruntime", f"backend {backend!r}")
    encoder = DenseEncoder.from_pretrained(path, **overrides)
    return with_backend(encoder, backend, export_root=export_root)

