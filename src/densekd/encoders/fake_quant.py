"""Simulated dynamic int8 (fake quantisation) of an encoder's ``nn.Linear`` layers.

What is simulated
-----------------
The ``onnx-int8`` backend (:mod:`densekd.encoders.onnx_backend`) runs ONNX Runtime's *dynamic*
quantisation: every weight MatMul gets

* weights rounded to int8, symmetric, one scale per output channel (``per_channel=True``,
  ``QInt8``);
* its input rounded to uint8 per tensor at run time, asymmetric, with a range that always contains
  0 (``DynamicQuantizeLinear``: scale = (max(x, 0) - min(x, 0)) / 255).

:class:`FakeQuantLinear` applies the same two roundings in float (``torch.fake_quantize_*``), so a
forward pass sees the error int8 will make, and gradients pass straight through the rounding
(the straight-through estimator built into the fake-quant ops). Embedding tables, layer norms and
pooling stay fp32, as in the backend. The match is not bit-exact (ONNX Runtime fuses attention and
accumulates in int32), only close enough to train against.

Used by quantisation-aware distillation (:mod:`densekd.training.qad`); :func:`strip_fake_quant`
returns the plain fp32 layers, so the trained weights save and export as any other checkpoint.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

INT8_MAX = 127    # symmetric int8 weights: [-127, 127] * scale (ORT keeps -128 unused when symmetric)
UINT8_MAX = 255   # asymmetric uint8 activations


def fake_quant_weight(w: Tensor) -> Tensor:
    """``w[out, in]`` rounded to symmetric per-output-channel int8 (straight-through gradient)."""
    scale = (w.detach().abs().amax(dim=1).clamp_min(1e-12) / INT8_MAX).float()
    zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -INT8_MAX, INT8_MAX)


def fake_quant_activation(x: Tensor) -> Tensor:
    """``x`` rounded to uint8 over its own range including 0, as ``DynamicQuantizeLinear`` does."""
    lo = x.detach().min().clamp(max=0.0)
    hi = x.detach().max().clamp(min=0.0)
    scale = ((hi - lo) / UINT8_MAX).clamp_min(1e-12).float().reshape(1)
    zero = torch.round(-lo / scale).clamp(0, UINT8_MAX).to(torch.int32).reshape(1)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, UINT8_MAX)


class FakeQuantLinear(nn.Module):
    """An ``nn.Linear`` whose input and weight are fake-quantised as dynamic int8 would round them.

    Holds the original layer (``.linear``), so its parameters stay the ones being trained.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x: Tensor) -> Tensor:
        """``x[..., in] -> [..., out]`` through int8-rounded input and weight, fp32 bias."""
        return nn.functional.linear(fake_quant_activation(x), fake_quant_weight(self.linear.weight),
                                    self.linear.bias)


def add_fake_quant(module: nn.Module) -> int:
    """Wrap every ``nn.Linear`` below ``module`` in :class:`FakeQuantLinear`, in place.

    Returns
    -------
    int
        The number of layers wrapped (0 means nothing would be quantised: usually a wrong module).
    """
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, FakeQuantLinear(child))
                count += 1
    return count


def strip_fake_quant(module: nn.Module) -> nn.Module:
    """Undo :func:`add_fake_quant` in place: every wrapper is replaced by its plain ``nn.Linear``."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FakeQuantLinear):
                setattr(parent, name, child.linear)
    return module
