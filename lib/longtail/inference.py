"""An inference-only copy of a model: the same outputs to float rounding, fewer passes over memory.

``engine.predict`` (every evaluation and feature extraction) runs the model through
:func:`for_inference`, which rewrites what an eval-mode forward does not need:

- **BatchNorm folded into the convolution before it.**  In eval mode BatchNorm is the per-channel
  affine map ``y = γ (z − μ) / sqrt(σ² + ε) + β`` of the running statistics (Ioffe & Szegedy,
  ICML 2015), so for ``z = W * x + b`` it is the convolution with ``W' = W · s`` and
  ``b' = (b − μ) · s + β``, ``s = γ / sqrt(σ² + ε)`` per output channel (:func:`fold_batchnorm`),
  exact up to float rounding.  Only the (convolution, BatchNorm) pairs of :func:`models.fold_pairs` are
  folded: pairs read off each class's ``forward``, where the convolution's output feeds the
  BatchNorm and nothing else (timm's EfficientNet family, MobileNetV2 included, and the CIFAR
  ResNet-32), and consecutive (Conv2d, BatchNorm2d) children of an ``nn.Sequential``.  Other
  models (ViT, ConvNeXt, the pre-activation ResNetV2) are used as they are.
- **The activation inside the convolution.**  A timm ``BatchNormAct2d``'s ReLU or ReLU6 (no
  dropout) runs as the convolution's oneDNN post-op on a CPU in float32 (no extra pass over the
  activation; ``torch.ops.mkldnn._convolution_pointwise``, the kernel ``torch.compile`` uses);
  elsewhere (GPU, autocast, other dtypes) as the plain convolution followed by the activation.
- **TF "SAME" convolutions without the padded copy.**  timm's ``Conv2dSame`` (``pad_type:
  same``, the CORAL MobileNetV2 weights) pads its input with ``F.pad`` on every call, a full copy
  of the activation.  Where the padding is asymmetric (one row or column more after than before:
  an even input with stride 2) the kernel gets one leading zero row or column instead and the
  convolution pads symmetrically; ``0 · x`` adds nothing, so the sums have the same terms.

MobileNetV2 (CORAL iNat insects weights) at 224 px on a CPU: ``bench/throughput.py --features``.
"""
from __future__ import annotations

import copy
import functools
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models import fold_pairs

ACTIVATIONS = {nn.ReLU: ("relu", []), nn.ReLU6: ("hardtanh", [0.0, 6.0])}  # oneDNN post-op and its scalars


def for_inference(model: nn.Module) -> nn.Module:
    """``model`` (in eval mode) with BatchNorm folded, activations fused and SAME convolutions
    rewritten, as a copy; ``model`` itself when there is nothing to rewrite.  The caller's model is
    never changed."""
    if model.training:
        raise ValueError("for_inference needs a model in eval mode (BatchNorm's running statistics); "
                         "call model.eval() first")
    if not any(_foldable(parent) for parent in model.modules()) and not any(
            _is_same_conv(m) and _convertible(m) for m in model.modules()):
        return model
    fast = copy.deepcopy(model)
    with torch.no_grad():
        for parent in list(fast.modules()):
            for conv_name, bn_name in _foldable(parent):
                conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
                rest, activation = _after_norm(bn), None  # rest: Identity, or (dropout, activation)
                if isinstance(rest, nn.Sequential) and isinstance(rest[0], nn.Identity):
                    if type(rest[1]) in ACTIVATIONS:
                        rest, activation = nn.Identity(), type(rest[1])
                    elif isinstance(rest[1], nn.Identity):
                        rest = nn.Identity()
                setattr(parent, conv_name, InferenceConv2d(fold_batchnorm(conv, bn), activation))
                setattr(parent, bn_name, rest)
        for parent in list(fast.modules()):
            for name, child in parent.named_children():
                if _is_same_conv(child) and _convertible(child):
                    setattr(parent, name, InferenceConv2d(child))
    return fast


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A copy of ``conv`` with the eval-mode ``bn`` after it folded in: ``W' = W·s``,
    ``b' = (b − μ)·s + β``, ``s = γ / sqrt(σ² + ε)`` (float64 arithmetic, the weight's dtype and
    memory layout kept)."""
    fused = copy.deepcopy(conv)
    with torch.no_grad():
        scale = bn.running_var.double().add(bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() if conv.bias is None else conv.bias.double() - bn.running_mean.double()
        shift = shift * scale + (bn.bias.double() if bn.bias is not None else 0.0)
        weight = (conv.weight.double() * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype)
        fused.weight = nn.Parameter(weight.contiguous(memory_format=_layout(conv.weight)), requires_grad=False)
        fused.bias = nn.Parameter(shift.to(conv.weight.dtype), requires_grad=False)
    return fused


class InferenceConv2d(nn.Module):
    """A convolution (eval only) with an optional ReLU / ReLU6 after it; for timm's ``Conv2dSame``
    the TF "SAME" padding is computed inside the convolution.

    "SAME" pads ``p = max((⌈i/s⌉ − 1)·s + k − i, 0)`` in all per spatial dimension, ``⌊p/2⌋``
    before and the rest after.  When the two differ (by one), the kernel gets one leading zero tap
    in that dimension and both sides are padded by the larger amount: output position ``o`` then
    reads inputs ``o·s − ⌊p/2⌋ + j`` for the original taps ``j``, as "SAME" does.

    On a CPU in float32 without autocast the convolution, bias and activation run as one oneDNN
    primitive (``torch.ops.mkldnn._convolution_pointwise``); elsewhere as ``F.conv2d`` and the
    activation."""

    def __init__(self, conv: nn.Conv2d, activation: type[nn.Module] | None = None):
        super().__init__()
        if not _convertible(conv):
            raise ValueError(f"InferenceConv2d takes an nn.Conv2d or timm Conv2dSame with zero padding given as "
                             f"numbers (dilation 1 for SAME), got {type(conv).__name__} with padding {conv.padding!r}, "
                             f"mode {conv.padding_mode!r}, dilation {conv.dilation}")
        self.same = _is_same_conv(conv)
        if activation is not None and activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation.__name__}; choose one of "
                             f"{', '.join(a.__name__ for a in ACTIVATIONS)}")
        self.weight, self.bias = conv.weight, conv.bias
        self.kernel_size, self.stride, self.groups = tuple(conv.kernel_size), list(conv.stride), conv.groups
        self.padding, self.dilation = list(conv.padding), list(conv.dilation)
        self.activation = activation
        self.post_op, self.post_op_scalars = ACTIVATIONS.get(activation, ("none", []))
        self._kernels: dict[tuple, torch.Tensor] = {}

    def _kernel(self, extra_h: int, extra_w: int) -> torch.Tensor:
        """The weight with ``extra_h`` leading zero rows and ``extra_w`` leading zero columns."""
        if (extra_h, extra_w) == (0, 0):
            return self.weight
        w = self.weight.detach()
        key = (extra_h, extra_w, w.dtype, w.device)  # the module may have been moved or cast since
        if key not in self._kernels:
            padded = w.new_zeros(w.shape[0], w.shape[1], w.shape[2] + extra_h, w.shape[3] + extra_w)
            padded[:, :, extra_h:, extra_w:] = w
            self._kernels[key] = padded.contiguous(memory_format=_layout(w))
        return self._kernels[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, padding = self.weight, self.padding
        if self.same:
            pads = [_same_pad(size, k, s) for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride)]
            weight = self._kernel(*(after - before for before, after in pads))  # 0 or 1 zero taps
            padding = [after for _, after in pads]
        if (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and _mkldnn()
                and not torch.is_autocast_enabled("cpu")):
            return torch.ops.mkldnn._convolution_pointwise(x, weight, self.bias, padding, self.stride, self.dilation,
                                                           self.groups, self.post_op, self.post_op_scalars, "")
        y = F.conv2d(x, weight, self.bias, self.stride, padding, self.dilation, self.groups)
        if self.activation is nn.ReLU6:
            return F.relu6(y)
        return F.relu(y) if self.activation is nn.ReLU else y


@functools.cache
def _mkldnn() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) of TF "SAME" padding (dilation 1), as timm's ``pad_same`` computes it."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _layout(w: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() \
        else torch.contiguous_format


def _is_same_conv(m: nn.Module) -> bool:
    """A timm Conv2dSame (timm's classes only where timm is imported: a model without them never needs timm)."""
    if "timm" not in sys.modules:
        return False
    from timm.layers import Conv2dSame
    return type(m) is Conv2dSame


def _convertible(conv) -> bool:
    """An nn.Conv2d or timm Conv2dSame that InferenceConv2d computes exactly: zero padding given as
    numbers, dilation 1 for SAME.  Not subclasses that change the forward (e.g. weight standardisation)."""
    return ((type(conv) is nn.Conv2d or _is_same_conv(conv)) and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and (not _is_same_conv(conv) or tuple(conv.dilation) == (1, 1)))


def _foldable(parent: nn.Module) -> list[tuple[str, str]]:
    """The (convolution, BatchNorm) attribute pairs of ``parent`` that can be folded."""
    if isinstance(parent, nn.Sequential):
        kids = list(parent.named_children())
        candidates = [(a, b) for (a, _), (b, _) in zip(kids, kids[1:])]
    else:
        candidates = fold_pairs().get(type(parent), ())
    return [(c, b) for c, b in candidates if _can_fold(getattr(parent, c, None), getattr(parent, b, None))]


def _norm_types() -> tuple[type, ...]:
    """The BatchNorm classes whose remainder after folding is known (:func:`_after_norm`)."""
    if "timm" not in sys.modules:
        return (nn.BatchNorm2d,)
    from timm.layers import BatchNormAct2d
    return nn.BatchNorm2d, BatchNormAct2d


def _can_fold(conv, bn) -> bool:
    return (_convertible(conv) and type(bn) in _norm_types() and not bn.training
            and bn.running_mean is not None and bn.running_var is not None and bn.num_features == conv.out_channels)


def _after_norm(bn: nn.Module) -> nn.Module:
    """What is left of ``bn`` once folded: nothing, or a timm BatchNormAct2d's dropout and activation."""
    if type(bn) is not nn.BatchNorm2d:  # timm's BatchNormAct2d
        return nn.Sequential(bn.drop, bn.act)
    return nn.Identity()
