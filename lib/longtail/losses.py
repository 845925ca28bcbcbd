"""Long-tailed classification losses, deferred re-weighting (DRW) and post-hoc logit adjustment.

Every loss is a small ``torch.nn.Module`` called as ``loss(logits, targets)`` with
``logits`` [N, C] (float32, float64, or bf16/fp16 from autocast) and ``targets`` [N] int64,
and returns the batch mean. Build them by name::

    loss = build_loss("ldam", class_counts, max_m=0.5, s=30)
    drw = DRWSchedule(class_counts, start_epoch=160)
    for epoch in range(epochs):
        drw.apply(loss, epoch)          # class weights None before 160, class-balanced after
        ...

| name               | loss (logits z, target y, counts n, prior pi = n / sum n)       | paper                     |
|--------------------|-----------------------------------------------------------------|---------------------------|
| ``ce``             | -log softmax(z)_y                                               |                           |
| ``focal``          | -(1 - p_y)^gamma log p_y, p = softmax(z)                        | Lin et al., ICCV 2017     |
| ``weighted_ce``    | CE with weights 1/n, 1/sqrt(n) or 1 + log(n_max/n)              |                           |
| ``class_balanced`` | weights (1-beta)/(1-beta^n) on a softmax/focal/sigmoid loss     | Cui et al., CVPR 2019     |
| ``balanced_softmax`` | CE on z + log n                                               | Ren et al., NeurIPS 2020  |
| ``equalization``   | softmax EQL: random tail negatives dropped from the denominator | Tan et al., CVPR 2020     |
| ``ldam``           | CE on s (z - m_y onehot_y), m ~ n^(-1/4)                        | Cao et al., NeurIPS 2019  |
| ``logit_adjusted`` | CE on z + tau log pi                                            | Menon et al., ICLR 2021   |
| ``label_aware_smoothing`` | label smoothing ε_y growing with n_y (MiSLAS)            | Zhong et al., CVPR 2021   |

Conventions shared by all losses:

* **Weights.** Per-class weights live in the buffer ``loss.class_weights`` (``None`` or a
  [C] tensor) and are changed with ``loss.set_class_weights(w)`` (what DRW does). A weighted
  batch mean follows ``F.cross_entropy(weight=w)``: sum_i w_{y_i} l_i / sum_i w_{y_i}, so the
  scale of the weights does not matter, only their ratios (a batch whose weights sum to 0
  gives 0, not NaN).
* **Zero counts.** Every count is clamped to at least 1 by one helper, :func:`clamp_counts`:
  a class absent from the training set is treated as a class with one sample. That keeps
  log n, n^(-1/4) and (1-beta)/(1-beta^n) finite (they would be -inf, inf and 0/0), and
  gives the absent class the most extreme value any real class could have: the largest
  re-weighting / margin, the lowest prior.
* **Precision.** Losses are computed with autocast disabled and in at least float32
  (bf16/fp16 logits are upcast; float64 stays float64 so gradcheck works), with
  log_softmax / logsumexp / logsigmoid, so logits of +-1e4 give finite values and gradients.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import taxonomy

__all__ = [
    "LOSSES",
    "LOSS_NAMES",
    "build_loss",
    "loss_param_names",
    "loss_class",
    "drw_eligible",
    "clamp_counts",
    "class_balanced_weights",
    "drw_weights",
    "DRWSchedule",
    "logit_adjust",
    "CrossEntropyLoss",
    "FocalLoss",
    "WeightedCrossEntropyLoss",
    "ClassBalancedLoss",
    "BalancedSoftmaxLoss",
    "EqualizationLoss",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "LabelAwareSmoothingLoss",
]

CountsLike = Sequence[float] | np.ndarray | torch.Tensor


# --------------------------------------------------------------------------- helpers


def clamp_counts(class_counts: CountsLike) -> torch.Tensor:
    """Per-class training counts as a float64 CPU tensor, each clamped to at least 1.

    The one place that decides what a zero count means for every loss here: a class with
    no training sample is treated as a class with one sample (see the module docstring).
    Raises ValueError for anything that is not a non-empty 1-D list of finite counts >= 0.
    """
    if isinstance(class_counts, torch.Tensor):
        counts = class_counts.detach().to("cpu", torch.float64)
    else:
        counts = torch.as_tensor(np.asarray(class_counts, dtype=np.float64))
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(f"class_counts must be a non-empty 1-D sequence, got shape {tuple(counts.shape)}")
    if not torch.isfinite(counts).all() or (counts < 0).any():
        raise ValueError("class_counts must be finite and >= 0")
    return counts.clamp_min(1.0)


def class_balanced_weights(class_counts: CountsLike, beta: float = 0.9999) -> torch.Tensor:
    """Class-balanced weights w_j = (1 - beta) / (1 - beta^{n_j}), normalised to sum C.

    Cui et al., "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019:
    (1 - beta^n) / (1 - beta) is the effective number of samples of a class. beta = 0 gives
    equal weights, beta -> 1 gives inverse-frequency weights. Counts are clamped to >= 1
    (n = 0 would give 0/0). This is also the DRW weighting (Cao et al. 2019), hence the
    alias :data:`drw_weights`. Returns a float32 [C] tensor on the CPU.
    """
    if not 0.0 <= float(beta) < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    n = clamp_counts(class_counts)
    # 1 - beta^n computed as -expm1(n log beta): exact for beta close to 1, and beta = 0
    # gives log 0 = -inf -> 1 without a special case.
    effective = -torch.expm1(n * math.log(beta)) if beta > 0 else torch.ones_like(n)
    w = (1.0 - beta) / effective
    return (w * (len(w) / w.sum())).float()


drw_weights = class_balanced_weights


def _log_prior(class_counts: CountsLike) -> torch.Tensor:
    """log pi_j = log(n_j / sum n), float64, counts clamped to >= 1."""
    n = clamp_counts(class_counts)
    return n.log() - n.sum().log()


def logit_adjust(logits, class_counts: CountsLike, tau: float = 1.0):
    """Post-hoc logit adjustment: logits - tau log pi, pi = counts / sum(counts).

    Menon et al., "Long-tail learning via logit adjustment", ICLR 2021 (eq. 9): applied at
    evaluation to a model trained with plain CE, it turns the argmax into an estimate of
    the balanced-error Bayes classifier. Works on torch tensors (same device and dtype as
    the logits) and on numpy arrays (returns numpy). Zero counts are clamped to 1.
    """
    shift = tau * _log_prior(class_counts)
    if isinstance(logits, torch.Tensor):
        if logits.shape[-1] != shift.numel():
            raise ValueError(f"logits have {logits.shape[-1]} classes, class_counts {shift.numel()}")
        dtype = logits.dtype if logits.is_floating_point() else torch.float32
        return logits.to(dtype) - shift.to(device=logits.device, dtype=dtype)
    arr = np.asarray(logits)
    if arr.shape[-1] != shift.numel():
        raise ValueError(f"logits have {arr.shape[-1]} classes, class_counts {shift.numel()}")
    dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64
    return (arr - shift.numpy()).astype(dtype, copy=False)


def _weighted_mean(per_sample: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Batch mean, or sum_i w_{y_i} l_i / sum_i w_{y_i} as F.cross_entropy(weight=...) does."""
    if weight is None:
        return per_sample.sum() / max(per_sample.numel(), 1)
    w = weight[targets]
    # clamp: a batch of zero-weight classes gives 0 rather than 0/0 = NaN
    return (w * per_sample).sum() / w.sum().clamp_min(torch.finfo(w.dtype).tiny)


# --------------------------------------------------------------------------- losses


class _LongTailLoss(nn.Module):
    """Base: class counts, the ``class_weights`` buffer, input checks, float32 compute.

    A loss declares what the rest of the package reads of it (results, the leaderboard, parameter
    checks), so that a new loss is one class here and its line in ``LOSSES``.  Readers without torch
    get these declarations from ``longtail.lossinfo``, which reads them from this file's source: state
    them as literals (``family`` as a name of ``taxonomy``)."""

    #: the display name in tables, figures and the report (the tables' row order is ``LOSSES``')
    label = ""
    #: its family in the survey's taxonomy (``longtail.taxonomy``); the baseline for plain CE
    family = taxonomy.BASELINE
    #: True for losses whose class weights *are* the method (weighted_ce, class_balanced): the one
    #: property that decides DRW eligibility (``DRWSchedule.apply``, ``drw_eligible``, params
    #: validation): DRW refuses them rather than silently replacing their weights, and their
    #: constructors take no ``weight``.
    owns_weights = False
    #: True for losses built for a normalised (cosine) classifier, whose logits are cosines in
    #: [-1, 1]; a run's ``cosine_head: null`` follows it.
    cosine_head = False

    @property
    def logit_scale(self) -> float:
        """The factor by which the loss multiplies the model's outputs before its softmax (LDAM's s;
        1 for the others): with a cosine head, cosines times this are the logits the loss sees, so
        test loss and calibration are computed on those."""
        return 1.0

    def __init__(self, class_counts: CountsLike | None = None, weight: CountsLike | None = None):
        super().__init__()
        counts = None if class_counts is None else clamp_counts(class_counts)
        self.num_classes = None if counts is None else counts.numel()
        # derived buffers are not persistent: a model checkpoint never depends on the loss
        self.register_buffer("class_counts", None if counts is None else counts.float(), persistent=False)
        self.register_buffer("class_weights", None, persistent=False)
        self.set_class_weights(weight)

    def set_class_weights(self, weight: CountsLike | None) -> None:
        """Set (a [C] tensor or sequence of finite weights >= 0) or clear (None) the class weights."""
        if weight is None:
            self.class_weights = None
            return
        w = torch.as_tensor(weight.detach() if isinstance(weight, torch.Tensor) else np.asarray(weight),
                            dtype=torch.float32)
        if w.dim() != 1 or (self.num_classes is not None and w.numel() != self.num_classes):
            raise ValueError(f"class weights must have shape ({self.num_classes},), got {tuple(w.shape)}")
        if not torch.isfinite(w).all() or (w < 0).any():
            raise ValueError("class weights must be finite and >= 0")
        device = self.class_counts.device if self.class_counts is not None else w.device
        self.class_weights = w.to(device)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if logits.dim() != 2 or targets.shape != logits.shape[:1]:
            raise ValueError(f"expected logits [N, C] and targets [N], "
                             f"got {tuple(logits.shape)} and {tuple(targets.shape)}")
        if self.num_classes is not None and logits.shape[1] != self.num_classes:
            raise ValueError(f"logits have {logits.shape[1]} classes, the loss was built for {self.num_classes}")
        # at least float32 whatever autocast produced; float64 kept for gradcheck
        z = logits.to(torch.promote_types(logits.dtype, torch.float32))
        w = None if self.class_weights is None else self.class_weights.to(device=z.device, dtype=z.dtype)
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._loss(z, targets.long(), w, **kwargs)

    def _loss(self, z: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _buffer(self, name: str, z: torch.Tensor) -> torch.Tensor:
        return getattr(self, name).to(device=z.device, dtype=z.dtype)


class CrossEntropyLoss(_LongTailLoss):
    """Softmax cross-entropy, -log softmax(z)_y, with optional label smoothing.

    Exactly ``F.cross_entropy(z, y, weight, label_smoothing)``: with smoothing eps the
    target is (1 - eps) onehot + eps / C (with weights, each term j weighted by w_j).

    Args:
        class_counts: per-class counts (only used to check C; may be None).
        label_smoothing: eps in [0, 1], default 0.
        weight: optional per-class weights (DRW).
    """

    label = "CE"

    def __init__(self, class_counts: CountsLike | None = None, label_smoothing: float = 0.0,
                 weight: CountsLike | None = None):
        super().__init__(class_counts, weight)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def _loss(self, z, y, w):
        total = F.cross_entropy(z, y, weight=w, label_smoothing=self.label_smoothing, reduction="sum")
        denom = z.new_tensor(float(max(len(y), 1))) if w is None else w[y].sum()
        return total / denom.clamp_min(torch.finfo(z.dtype).tiny)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"


class FocalLoss(_LongTailLoss):
    """Softmax focal loss, -(1 - p_y)^gamma log p_y with p = softmax(z).

    Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017 (here the multi-class
    softmax form, without the alpha balancing term: use ``weight`` for that). gamma = 0
    is CE. Default gamma = 2 is the paper's; long-tail code bases use other values: the
    BagofTricks-LT code base uses a *sigmoid* focal loss with gamma = 2 and gamma = 0.5 for
    its class-balanced focal loss, LDAM-DRW's CIFAR script uses gamma = 1. Set gamma
    explicitly when reproducing a particular survey table.

    log p_y comes from log_softmax and 1 - p_y = -expm1(log p_y), so no probability is
    ever logged; (1 - p_y) is clamped at a tiny value so gamma < 1 has a finite gradient
    when p_y rounds to 1.
    """

    label = "Focal"
    family = taxonomy.RE_WEIGHTING

    def __init__(self, class_counts: CountsLike | None = None, gamma: float = 2.0,
                 weight: CountsLike | None = None):
        super().__init__(class_counts, weight)
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def _loss(self, z, y, w):
        log_pt = F.log_softmax(z, dim=1).gather(1, y[:, None]).squeeze(1)
        if self.gamma == 0:
            per = -log_pt
        else:
            one_minus_pt = (-torch.expm1(log_pt)).clamp_min(1e-30)
            per = -one_minus_pt.pow(self.gamma) * log_pt
        return _weighted_mean(per, y, w)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"


class WeightedCrossEntropyLoss(CrossEntropyLoss):
    """Cross-entropy with fixed per-class weights computed from the counts.

    ``scheme``:
      * ``"inverse"`` (default): w_c = 1 / n_c (inverse class frequency);
      * ``"inverse_sqrt"``: w_c = 1 / sqrt(n_c) (e.g. Mahajan et al. 2018, softer);
      * ``"log"``: w_c = 1 + log(n_max / n_c), the survey's scheme.
    Weights are normalised to mean 1 (cosmetic: the weighted batch mean divides by
    sum w_y, so only ratios matter). Counts are clamped to >= 1, so an absent class gets
    the weight of a one-sample class, the largest. With equal counts every scheme is CE.
    """

    label = "Weighted CE"
    family = taxonomy.RE_WEIGHTING

    owns_weights = True
    SCHEMES = ("inverse", "inverse_sqrt", "log")

    def __init__(self, class_counts: CountsLike, scheme: str = "inverse"):
        super().__init__(class_counts)
        if scheme not in self.SCHEMES:
            raise ValueError(f"unknown weighted_ce scheme {scheme!r}; valid schemes: {', '.join(self.SCHEMES)}")
        self.scheme = scheme
        n = clamp_counts(class_counts)
        w = {"inverse": lambda: 1.0 / n,
             "inverse_sqrt": lambda: n.rsqrt(),
             "log": lambda: 1.0 + torch.log(n.max() / n)}[scheme]()
        self.set_class_weights(w / w.mean())

    def extra_repr(self) -> str:
        return f"scheme={self.scheme!r}"


class ClassBalancedLoss(_LongTailLoss):
    """Class-balanced loss: a base loss weighted by w_y = (1 - beta)/(1 - beta^{n_y}).

    Cui et al., "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019.
    Weights come from :func:`class_balanced_weights` (normalised to sum C, as in Cui et al.'s
    code; counts clamped to >= 1). Bases:

      * ``"softmax"`` (default): l = -log softmax(z)_y;
      * ``"sigmoid"``: l = sum_j BCE(z_j, onehot_j), one-vs-all sigmoid;
      * ``"focal"``: l = sum_j (1 - q_j)^gamma BCE(z_j, onehot_j), q_j = sigmoid(+-z_j) the
        probability of the correct binary label: the paper's sigmoid focal base (for a
        *softmax* focal loss with these weights use ``build_loss("focal", ..., weight=
        class_balanced_weights(counts, beta))``).

    ``reduction`` (the paper leaves it open; its code fixes it):

      * ``"batch"`` (default, Cui et al.'s code): sum_i w_{y_i} l_i / N;
      * ``"weights"``: sum_i w_{y_i} l_i / sum_i w_{y_i}, PyTorch's weighted mean
        (F.cross_entropy(weight=...)); it re-normalises every batch, so the step is N / sum w
        times smaller and the head / tail balance of a batch is partly undone.

    A sigmoid base (``sigmoid``, ``focal``) reads its probabilities as sigma(z_j)
    (``activation``), and Cui et al. initialise the classifier's bias to b = -log(C - 1)
    (``bias_init="prior"``: sigma(b) = 1/C, the prior of one class; the training run applies
    ``initial_bias``), so the C - 1 negative terms do not swamp the first steps. beta = 0.9999
    (default) is close to inverse frequency for counts << 1/(1-beta) = 10^4. gamma (default
    0.5, BagofTricks-LT's default for class-balanced focal) is used by the focal base only.

    Deliberate implementation slips, for the ablation of the thesis's collapse only
    (``params/class_balanced.yaml``): ``normalize=False`` keeps the raw weights
    (1 - beta)/(1 - beta^n) (not rescaled to sum C); ``weight_order="reversed"`` indexes the
    weights in the reverse class order (the largest class gets the smallest class's weight),
    ``"shuffled"`` in a fixed random order (seed 0), as when the weights are computed over one
    class order and the labels use another.
    """

    label = "Class-balanced"
    family = taxonomy.RE_WEIGHTING

    owns_weights = True
    BASES = ("softmax", "focal", "sigmoid")
    REDUCTIONS = ("batch", "weights")
    WEIGHT_ORDERS = ("labels", "reversed", "shuffled")
    BIAS_INITS = ("prior", "zero")

    def __init__(self, class_counts: CountsLike, beta: float = 0.9999, base: str = "softmax",
                 gamma: float = 0.5, reduction: str = "batch", bias_init: str = "prior",
                 normalize: bool = True, weight_order: str = "labels"):
        super().__init__(class_counts)
        for name, value, valid in (("base", base, self.BASES), ("reduction", reduction, self.REDUCTIONS),
                                   ("weight_order", weight_order, self.WEIGHT_ORDERS),
                                   ("bias_init", bias_init, self.BIAS_INITS)):
            if value not in valid:
                raise ValueError(f"unknown class_balanced {name} {value!r}; valid: {', '.join(valid)}")
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize must be true or false, got {normalize!r}")
        self.beta, self.base, self.gamma = float(beta), base, float(gamma)
        self.reduction, self.bias_init, self.normalize, self.weight_order = reduction, bias_init, normalize, weight_order
        w = class_balanced_weights(class_counts, beta).double()
        if not normalize:  # the raw (1 - beta)/(1 - beta^n): undo the rescaling to sum C
            n = clamp_counts(class_counts)
            raw = (1.0 - beta) / (-torch.expm1(n * math.log(beta))) if beta > 0 else torch.ones_like(n)
            w = raw
        if weight_order == "reversed":
            w = w.flip(0)
        elif weight_order == "shuffled":
            w = w[torch.as_tensor(np.random.default_rng(0).permutation(len(w)))]
        self.set_class_weights(w)

    @property
    def activation(self) -> str:
        """``"sigmoid"`` for the sigmoid and focal bases, ``"softmax"`` otherwise."""
        return "softmax" if self.base == "softmax" else "sigmoid"

    def initial_bias(self, num_classes: int) -> float | None:
        """Cui et al.'s classifier bias b = -log(C - 1) for a sigmoid base with ``bias_init="prior"``;
        None (leave the bias as built) for the softmax base or ``bias_init="zero"`` (then b = 0)."""
        if self.activation != "sigmoid":
            return None
        return -math.log(num_classes - 1) if self.bias_init == "prior" and num_classes > 1 else 0.0

    def _loss(self, z, y, w):
        if self.base == "softmax":
            per = -F.log_softmax(z, dim=1).gather(1, y[:, None]).squeeze(1)
        else:
            # signed logits: +z for the target column, -z elsewhere; log q = logsigmoid(signed)
            sign = 1.0 - 2.0 * (torch.arange(z.shape[1], device=z.device)[None, :] != y[:, None]).to(z.dtype)
            signed = sign * z
            bce = -F.logsigmoid(signed)
            if self.base == "focal" and self.gamma != 0:
                bce = torch.exp(self.gamma * F.logsigmoid(-signed)) * bce  # (1 - q)^gamma
            per = bce.sum(dim=1)
        if self.reduction == "batch":  # Cui et al.'s code: the weighted sum over the batch size N
            return (w[y] * per).sum() / max(len(y), 1)
        return _weighted_mean(per, y, w)

    def extra_repr(self) -> str:
        return (f"beta={self.beta}, base={self.base!r}, gamma={self.gamma}, reduction={self.reduction!r}"
                + ("" if self.normalize else ", normalize=False")
                + ("" if self.weight_order == "labels" else f", weight_order={self.weight_order!r}"))


class _ShiftedCE(_LongTailLoss):
    """CE on z + shift, with a fixed per-class shift buffer."""

    def __init__(self, class_counts: CountsLike, shift: torch.Tensor, weight: CountsLike | None):
        super().__init__(class_counts, weight)
        self.register_buffer("shift", shift.float(), persistent=False)

    def _loss(self, z, y, w):
        per = -F.log_softmax(z + self._buffer("shift", z), dim=1).gather(1, y[:, None]).squeeze(1)
        return _weighted_mean(per, y, w)


class BalancedSoftmaxLoss(_ShiftedCE):
    """Balanced softmax: CE on z_j + log n_j.

    Ren et al., "Balanced Meta-Softmax for Long-Tailed Visual Recognition", NeurIPS 2020:
    p_j = n_j e^{z_j} / sum_k n_k e^{z_k}. Train with it, predict with argmax z (no
    adjustment at test time). Counts are clamped to >= 1 (log 0 = -inf): an absent class
    is handled as a one-sample class.
    """

    label = "Balanced softmax"
    family = taxonomy.LOGIT_ADJUSTMENT

    def __init__(self, class_counts: CountsLike, weight: CountsLike | None = None):
        super().__init__(class_counts, clamp_counts(class_counts).log(), weight)


class LogitAdjustedLoss(_ShiftedCE):
    """Logit-adjusted CE: CE on z_j + tau log pi_j, pi = n / sum n.

    Menon et al., "Long-tail learning via logit adjustment", ICLR 2021 (eq. 10). tau = 1
    (default) equals balanced softmax (the shifts differ by the constant log sum n, to
    which softmax is invariant). Counts are clamped to >= 1.
    """

    label = "Logit-adjusted"
    family = taxonomy.LOGIT_ADJUSTMENT

    def __init__(self, class_counts: CountsLike, tau: float = 1.0, weight: CountsLike | None = None):
        if not math.isfinite(tau):
            raise ValueError(f"tau must be finite, got {tau}")
        super().__init__(class_counts, tau * _log_prior(class_counts), weight)
        self.tau = float(tau)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"


class LabelAwareSmoothingLoss(_LongTailLoss):
    """Label-aware smoothing (MiSLAS; Zhong, Cui, Liu, Jia, *Improving Calibration for Long-Tailed
    Recognition*, CVPR 2021, Sec. 3.2, eqs. 4-5): label smoothing whose strength grows with the
    class's training count, ε_y = f(n_y), so head classes (over-confident) are smoothed more:

        loss = (1 - ε_y) (-log p_y) + ε_y · (1/C) Σ_j (-log p_j),     p = softmax(z),

        concave: f(n) = ε_K + (ε_1 - ε_K) sin(π (n - n_K) / (2 (n_1 - n_K)))
        linear:  f(n) = ε_K + (ε_1 - ε_K) (n - n_K) / (n_1 - n_K)
        convex:  f(n) = ε_1 + (ε_1 - ε_K) sin(3π/2 + π (n - n_K) / (2 (n_1 - n_K)))

    with n_1, n_K the largest and smallest counts, ε_1 = ``smooth_head``, ε_K = ``smooth_tail``;
    the smoothing mass is spread over all C classes, the target's included, as in the authors'
    code (``LabelAwareSmoothing``, github.com/dvlab-research/MiSLAS).  Defaults: their ImageNet-LT
    and iNaturalist 2018 setting, ε_1 = 0.4, ε_K = 0.1, concave.  Counts are clamped to >= 1; when
    every class has the same count (n_1 = n_K) every class gets ε_1.  MiSLAS applies it in the
    classifier stage of decoupled training, as a linear probe on frozen features does."""

    label = "Label-aware smoothing"
    family = taxonomy.DECOUPLED_TRAINING
    SHAPES = ("concave", "linear", "convex")

    def __init__(self, class_counts: CountsLike, smooth_head: float = 0.4, smooth_tail: float = 0.1,
                 shape: str = "concave", weight: CountsLike | None = None):
        super().__init__(class_counts, weight)
        for name, v in (("smooth_head", smooth_head), ("smooth_tail", smooth_tail)):
            if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        if shape not in self.SHAPES:
            raise ValueError(f"shape={shape!r}: choose one of {', '.join(self.SHAPES)}")
        n = clamp_counts(class_counts)
        n1, nk = n.max(), n.min()
        r = (n - nk) / (n1 - nk) if n1 > nk else torch.ones_like(n)
        head, tail = float(smooth_head), float(smooth_tail)
        if shape == "concave":
            eps = tail + (head - tail) * torch.sin(r * math.pi / 2)
        elif shape == "linear":
            eps = tail + (head - tail) * r
        else:
            eps = head + (head - tail) * torch.sin(1.5 * math.pi + r * math.pi / 2)
        self.register_buffer("smoothing", eps.float(), persistent=False)
        self.smooth_head, self.smooth_tail, self.shape = head, tail, shape

    def _loss(self, z, y, w):
        logp = F.log_softmax(z, dim=1)
        eps = self._buffer("smoothing", z)[y]
        per = -(1 - eps) * logp.gather(1, y[:, None]).squeeze(1) - eps * logp.mean(1)
        return _weighted_mean(per, y, w)

    def extra_repr(self) -> str:
        return f"smooth_head={self.smooth_head}, smooth_tail={self.smooth_tail}, shape={self.shape!r}"


class EqualizationLoss(_LongTailLoss):
    """Softmax equalization loss (softmax EQL).

    Tan et al., "Equalization Loss for Long-Tailed Object Recognition", CVPR 2020, the
    softmax version for image classification (Sec. 4.3 / eq. 7-8):

        l = -log( e^{z_y} / sum_k w~_k e^{z_k} ),  w~_k = 1 - beta_k T_lambda(f_k) (1 - onehot_k)

    with f_k = n_k / sum n the class frequency, T_lambda(f) = 1 if f < lambda, and
    beta_k ~ Bernoulli(gamma) drawn per sample and class: a tail class's logit is dropped
    from the denominator of a sample of another class with probability gamma, which stops
    the head classes' samples from pushing tail logits down. The target is never dropped.

    Args:
        lam: frequency threshold lambda. ``None`` (default) derives it from the data:
            lambda = 1 / (2C), i.e. a class is "tail" when it has less than half of the
            share it would have in a balanced set. For C = 100 this is 5e-3, the fixed value
            of BagofTricks-LT's SEQL config (used there on CIFAR-100-LT). Resolved value:
            ``self.lam``; ``self.tail`` is the boolean tail mask.
        gamma: drop probability, default 0.9 (BagofTricks-LT's value). gamma = 0 is CE.
        weight: optional per-class weights (DRW).

    No dropping in eval mode (``loss.eval()``): the loss is then deterministic and equals
    CE. ``forward(logits, targets, drop_mask=...)`` takes explicit Bernoulli draws beta as a
    boolean [N, C] tensor instead of sampling them (for tests); as in the formula, only
    tail-class, non-target entries of it take effect.
    Counts are clamped to >= 1, so an absent class is a tail class for any lambda > 1/sum n.
    """

    label = "Equalization"
    family = taxonomy.RE_WEIGHTING

    def __init__(self, class_counts: CountsLike, lam: float | None = None, gamma: float = 0.9,
                 weight: CountsLike | None = None):
        super().__init__(class_counts, weight)
        n = clamp_counts(class_counts)
        if lam is None:
            lam = 1.0 / (2 * n.numel())
        if not lam >= 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        self.lam, self.gamma = float(lam), float(gamma)
        self.register_buffer("tail", (n / n.sum()) < self.lam, persistent=False)

    def sample_drop_mask(self, targets: torch.Tensor) -> torch.Tensor:
        """Bernoulli(gamma) drops of tail-class negatives, boolean [N, C] (True = dropped)."""
        tail = self.tail.to(targets.device)
        drop = torch.rand(len(targets), tail.numel(), device=targets.device) < self.gamma
        not_target = torch.arange(tail.numel(), device=targets.device)[None, :] != targets[:, None]
        return drop & tail[None, :] & not_target

    def _loss(self, z, y, w, drop_mask: torch.Tensor | None = None):
        if drop_mask is None and self.training and self.gamma > 0:
            drop_mask = self.sample_drop_mask(y)
        if drop_mask is None:
            per = torch.logsumexp(z, dim=1) - z.gather(1, y[:, None]).squeeze(1)
        else:
            # w~ = 1 - beta T(f) (1 - onehot): only tail classes, never the target
            not_target = torch.arange(z.shape[1], device=z.device)[None, :] != y[:, None]
            drop = drop_mask.to(device=z.device, dtype=torch.bool) & self.tail.to(z.device)[None, :] & not_target
            # -inf drops the term from logsumexp; the target keeps the row's max finite
            per = torch.logsumexp(z.masked_fill(drop, float("-inf")), dim=1) - z.gather(1, y[:, None]).squeeze(1)
        return _weighted_mean(per, y, w)

    def extra_repr(self) -> str:
        return f"lam={self.lam:.4g}, gamma={self.gamma}, tail_classes={int(self.tail.sum())}"


class LDAMLoss(_LongTailLoss):
    """Label-distribution-aware margin loss: CE on s (z - m_y onehot_y).

    Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss",
    NeurIPS 2019: m_j proportional to n_j^(-1/4), scaled so that the largest margin (the
    rarest class) is ``max_m`` (default 0.5); ``s`` (default 30) is the logit scale.

    LDAM pairs with a normalised (cosine) classifier: the logits are expected to be
    cosines in [-1, 1] (normalised features times normalised class weights), so a margin
    of 0.5 is meaningful and s restores a usable softmax temperature. With raw linear
    logits use a much smaller s (and max_m relative to the logit scale). The paper uses it
    with DRW (see :class:`DRWSchedule`); ``weight`` takes the DRW weights. Counts are
    clamped to >= 1 (0^(-1/4) = inf), so an absent class gets the largest margin.
    max_m = 0, s = 1 is CE.
    """

    label = "LDAM"
    family = taxonomy.RE_MARGINING

    cosine_head = True

    def __init__(self, class_counts: CountsLike, max_m: float = 0.5, s: float = 30.0,
                 weight: CountsLike | None = None):
        super().__init__(class_counts, weight)
        if not max_m >= 0:
            raise ValueError(f"max_m must be >= 0, got {max_m}")
        if not s > 0:
            raise ValueError(f"s must be > 0, got {s}")
        self.max_m, self.s = float(max_m), float(s)
        m = clamp_counts(class_counts).pow(-0.25)
        self.register_buffer("margins", (m * (max_m / m.max())).float(), persistent=False)

    def _loss(self, z, y, w):
        m = self._buffer("margins", z)
        onehot = F.one_hot(y, z.shape[1]).to(z.dtype)
        per = -F.log_softmax(self.s * (z - onehot * m[y][:, None]), dim=1).gather(1, y[:, None]).squeeze(1)
        return _weighted_mean(per, y, w)

    @property
    def logit_scale(self) -> float:
        return self.s

    def extra_repr(self) -> str:
        return f"max_m={self.max_m}, s={self.s}"


# --------------------------------------------------------------------------- DRW


class DRWSchedule:
    """Deferred re-weighting (Cao et al. 2019): no class weights before ``start_epoch``,
    class-balanced weights (:func:`class_balanced_weights`, sum C) from it on.

    Epochs are 0-based: ``apply(loss, epoch)`` with epoch >= start_epoch switches the
    weights on (LDAM-DRW's CIFAR recipe: 200 epochs, start_epoch = 160). The training
    engine calls ``apply`` at the start of every epoch. Losses whose weights are the
    method itself (weighted_ce, class_balanced) are refused.
    """

    def __init__(self, class_counts: CountsLike, start_epoch: int, beta: float = 0.9999):
        if start_epoch < 0:
            raise ValueError(f"start_epoch must be >= 0, got {start_epoch}")
        self.start_epoch, self.beta = int(start_epoch), float(beta)
        self.weights = class_balanced_weights(class_counts, beta)

    def weights_at(self, epoch: int) -> torch.Tensor | None:
        return self.weights.clone() if epoch >= self.start_epoch else None

    def apply(self, loss: nn.Module, epoch: int) -> torch.Tensor | None:
        """Set ``loss``'s class weights for ``epoch``; returns them (None before start)."""
        if not hasattr(loss, "set_class_weights"):
            raise TypeError(f"{type(loss).__name__} has no set_class_weights(); DRW needs a longtail loss")
        if getattr(loss, "owns_weights", False):  # the same property as drw_eligible
            raise ValueError(f"DRW re-weights an unweighted loss; {type(loss).__name__} already "
                             f"weights its classes (use {', '.join(n for n in LOSSES if drw_eligible(n))})")
        w = self.weights_at(epoch)
        loss.set_class_weights(w)
        return w

    def __repr__(self) -> str:
        return f"DRWSchedule(start_epoch={self.start_epoch}, beta={self.beta})"


# --------------------------------------------------------------------------- name table

LOSSES: dict[str, type[_LongTailLoss]] = {
    "ce": CrossEntropyLoss,
    "focal": FocalLoss,
    "weighted_ce": WeightedCrossEntropyLoss,
    "class_balanced": ClassBalancedLoss,
    "balanced_softmax": BalancedSoftmaxLoss,
    "equalization": EqualizationLoss,
    "ldam": LDAMLoss,
    "logit_adjusted": LogitAdjustedLoss,
    "label_aware_smoothing": LabelAwareSmoothingLoss,
}
LOSS_NAMES: tuple[str, ...] = tuple(LOSSES)


def loss_class(name: str) -> type[_LongTailLoss]:
    """The class of loss ``name``: what it declares about itself (``label``, ``family``, ``cosine_head``,
    ``owns_weights``) is read here before any loss is built.  ValueError listing the valid names for an unknown one."""
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LOSS_NAMES)}") from None


def loss_param_names(name: str) -> list[str]:
    """The keyword parameters ``build_loss(name, counts, **params)`` accepts, in order: a run's
    ``loss_params``.

    Read from the loss class's signature, so it cannot drift from the code.  The class weights
    (``weight``, set by DRW) are internal, not a method's parameter, and not listed.
    """
    params = inspect.signature(loss_class(name).__init__).parameters
    return [p for p in params if p not in ("self", "class_counts", "weight")]


def drw_eligible(name: str) -> bool:
    """Whether deferred re-weighting may re-weight loss ``name``: not when its weights are the method."""
    return not loss_class(name).owns_weights


def build_loss(name: str, class_counts: CountsLike, *, weight: CountsLike | None = None, **params: Any) -> nn.Module:
    """Build the loss ``name`` (one of :data:`LOSS_NAMES`) for the given training counts.

    ``weight``: initial per-class weights (internal: what DRW sets; refused by a loss whose weights
    are the method).  Raises ValueError for an unknown name (listing the valid names) and TypeError
    for an unknown parameter (naming it and listing the loss's valid parameters).
    """
    cls = loss_class(name)
    valid = loss_param_names(name)
    unknown = [k for k in params if k not in valid]
    if unknown:
        raise TypeError(f"unknown parameter(s) {', '.join(map(repr, unknown))} for loss {name!r}; "
                        f"valid parameters: {', '.join(valid) or '(none)'}")
    if weight is None:
        return cls(class_counts, **params)
    if cls.owns_weights:
        raise TypeError(f"loss {name!r} computes its own class weights (they are the method); it takes no weight")
    return cls(class_counts, weight=weight, **params)
