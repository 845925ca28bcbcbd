"""An inference-only copy of a model: the same outputs to float rounding, fewer passes over memory.

``engine.predict`` (every evaluation and feature extraction) runs the model through
:func:`for_inference`, which rewrites two things an eval-mode forward does not need:

- **BatchNorm folded into the convolution before it.**  In eval mode BatchNorm is the per-channel
  affine map ``y = γ (z − μ) / sqrt(σ² + ε) + β`` of the running statistics (Ioffe & Szegedy,
  ICML 2015), so for ``z = W * x + b`` it is the convolution with
  ``W' = W · s`` and ``b' = (b − μ) · s + β``, ``s = γ / sqrt(σ² + ε)`` (per output channel),
  exact up to float rounding (computed in float64, stored in the weight's dtype).  A timm
  ``BatchNormAct2d`` keeps its dropout and activation.  Only the (convolution, BatchNorm) pairs of
  :func:`fold_pairs` are folded: pairs read off each class's ``forward``, where the convolution's
  output feeds the BatchNorm and nothing else (timm's EfficientNet family, MobileNetV2 included,
  and the CIFAR ResNet-32), plus consecutive (Conv2d, BatchNorm2d) children of an ``nn.Sequential``.
  Other models (ViT, ConvNeXt, pre-activation ResNetV2) are used as they are.
- **TF "SAME" convolutions without the padded copy.**  timm's ``Conv2dSame`` (``pad_type:
  same``, the CORAL MobileNetV2 weights) pads its input with ``F.pad`` on every call, a full copy
  of the activation.  Where the padding is asymmetric (one row and column more after than before:
  an even input with stride 2), :class:`SamePadConv2d` gives the kernel one leading zero row or
  column instead and pads symmetrically inside the convolution; ``0 · x`` adds nothing, so the
  sums are the same terms.  Where the padding is symmetric it is the convolution's own padding.

MobileNetV2 (CORAL iNat insects weights) at 224 px on a CPU: ``bench/throughput.py --features``.
"""
from __future__ import annotations

import copy
import functools
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


def fold_pairs() -> dict[type, tuple[tuple[str, str], ...]]:
    """(convolution, BatchNorm) attribute pairs per module class, as each class's forward runs them.
    timm's classes only once timm is imported (a model without them never needs timm)."""
    return _fold_pairs("timm" in sys.modules)


@functools.cache
def _fold_pairs(with_timm: bool) -> dict[type, tuple[tuple[str, str], ...]]:
    from . import models
    pairs = {models.CifarResNet: (("conv1", "bn1"),),
             models._BasicBlock: (("conv1", "bn1"), ("conv2", "bn2"))}
    if with_timm:
        from timm.models import _efficientnet_blocks as eb
        from timm.models.efficientnet import EfficientNet
        pairs.update({
            EfficientNet: (("conv_stem", "bn1"), ("conv_head", "bn2")),
            eb.ConvBnAct: (("conv", "bn1"),),
            eb.DepthwiseSeparableConv: (("conv_s2d", "bn_s2d"), ("conv_dw", "bn1"), ("conv_pw", "bn2")),
            eb.InvertedResidual: (("conv_s2d", "bn_s2d"), ("conv_pw", "bn1"), ("conv_dw", "bn2"),
                                  ("conv_pwl", "bn3")),
            eb.EdgeResidual: (("conv_exp", "bn1"), ("conv_pwl", "bn2")),
        })
    return pairs


def for_inference(model: nn.Module) -> nn.Module:
    """``model`` (in eval mode) with BatchNorm folded and SAME convolutions rewritten, as a copy;
    ``model`` itself when there is nothing to rewrite.  The caller's model is never changed."""
    if model.training:
        raise ValueError("for_inference needs a model in eval mode (BatchNorm's running statistics); "
                         "call model.eval() first")
    if not any(_foldable(parent) for parent in model.modules()) and not any(
            isinstance(m, _conv2d_same()) and SamePadConv2d.supports(m) for m in model.modules()):
        return model
    fast = copy.deepcopy(model)
    with torch.no_grad():
        for parent in list(fast.modules()):
            for conv_name, bn_name in _foldable(parent):
                conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
                setattr(parent, conv_name, fold_batchnorm(conv, bn))
                setattr(parent, bn_name, _after_norm(bn))
        for parent in list(fast.modules()):
            for name, child in parent.named_children():
                if isinstance(child, _conv2d_same()) and SamePadConv2d.supports(child):
                    setattr(parent, name, SamePadConv2d(child))
    return fast


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A copy of ``conv`` with the eval-mode ``bn`` after it folded in: ``W' = W·s``,
    ``b' = (b − μ)·s + β``, ``s = γ / sqrt(σ² + ε)`` (float64 arithmetic, the weight's dtype and
    memory layout kept)."""
    fused = copy.deepcopy(conv)
    with torch.no_grad():
        w = conv.weight.double()
        scale = bn.running_var.double().add(bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() if conv.bias is None else conv.bias.double() - bn.running_mean.double()
        shift = shift * scale + (bn.bias.double() if bn.bias is not None else 0.0)
        layout = torch.channels_last if conv.weight.is_contiguous(memory_format=torch.channels_last) \
            and not conv.weight.is_contiguous() else torch.contiguous_format
        fused.weight = nn.Parameter((w * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype).contiguous(memory_format=layout),
                                    requires_grad=False)
        fused.bias = nn.Parameter(shift.to(conv.weight.dtype), requires_grad=False)
    return fused


class SamePadConv2d(nn.Module):
    """timm's ``Conv2dSame`` (TF "SAME" padding) with the padding inside the convolution.

    Per spatial dimension "SAME" pads ``p = max((⌈i/s⌉ − 1)·s + k − i, 0)`` in all, ``⌊p/2⌋`` before
    and the rest after.  When the two differ (by one), the kernel gets one leading zero tap in that
    dimension and both sides are padded by the larger amount: output position ``o`` then reads
    inputs ``o·s − ⌊p/2⌋ + j`` for the original taps ``j``, as "SAME" does.  Dilation 1 only
    (:meth:`supports`)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not self.supports(conv):
            raise ValueError(f"SamePadConv2d needs dilation 1 and zero padding, got dilation {conv.dilation}, "
                             f"padding mode {conv.padding_mode!r}")
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.groups = conv.stride, conv.groups
        self.kernel_size = conv.kernel_size
        self._kernels: dict[tuple[int, int], torch.Tensor] = {}

    @staticmethod
    def supports(conv: nn.Conv2d) -> bool:
        return tuple(conv.dilation) == (1, 1) and conv.padding_mode == "zeros"

    def _kernel(self, extra_h: int, extra_w: int) -> torch.Tensor:
        """The weight with ``extra_h`` leading zero rows and ``extra_w`` leading zero columns."""
        if (extra_h, extra_w) == (0, 0):
            return self.weight
        key = (extra_h, extra_w)
        if key not in self._kernels:
            w = self.weight.detach()
            padded = w.new_zeros(w.shape[0], w.shape[1], w.shape[2] + extra_h, w.shape[3] + extra_w)
            padded[:, :, extra_h:, extra_w:] = w
            layout = torch.channels_last if w.is_contiguous(memory_format=torch.channels_last) \
                and not w.is_contiguous() else torch.contiguous_format
            self._kernels[key] = padded.contiguous(memory_format=layout)
        return self._kernels[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = [_same_pad(size, k, s) for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride)]
        extra = [after - before for before, after in pads]  # 0 or 1
        return F.conv2d(x, self._kernel(*extra), self.bias, self.stride, [after for _, after in pads], 1, self.groups)


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) of TF "SAME" padding (dilation 1), as timm's ``pad_same`` computes it."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _conv2d_same() -> tuple[type, ...]:
    """timm's Conv2dSame where timm is imported (a model without it never needs timm)."""
    if "timm" not in sys.modules:
        return ()
    from timm.layers import Conv2dSame
    return (Conv2dSame,)


def _foldable(parent: nn.Module) -> list[tuple[str, str]]:
    """The (convolution, BatchNorm) attribute pairs of ``parent`` that can be folded."""
    if isinstance(parent, nn.Sequential):
        kids = list(parent.named_children())
        candidates = [(a, b) for (a, _), (b, _) in zip(kids, kids[1:])]
    else:
        candidates = fold_pairs().get(type(parent), ())
    return [(c, b) for c, b in candidates
            if _can_fold(getattr(parent, c, None), getattr(parent, b, None))]


def _norm_types() -> tuple[type, ...]:
    """The BatchNorm classes whose remainder after folding is known (:func:`_after_norm`)."""
    if "timm" not in sys.modules:
        return (nn.BatchNorm2d,)
    from timm.layers import BatchNormAct2d
    return nn.BatchNorm2d, BatchNormAct2d


def _can_fold(conv, bn) -> bool:
    return (isinstance(conv, nn.Conv2d) and type(bn) in _norm_types() and not bn.training
            and bn.running_mean is not None and bn.running_var is not None
            and bn.num_features == conv.out_channels)


def _after_norm(bn: nn.Module) -> nn.Module:
    """What is left of ``bn`` once folded: nothing, or a timm BatchNormAct2d's dropout and activation."""
    if type(bn) is not nn.BatchNorm2d:  # timm's BatchNormAct2d
        return nn.Sequential(bn.drop, bn.act)
    return nn.Identity()
