"""Classifier-stage methods on frozen features: decoupling, classifier design, feature augmentation.

Each method is a plain function or ``nn.Module`` with its paper and formula; ``TECHNIQUES`` is the
one name table (the run parameter ``technique``), with each method's display name, its family in
the survey's taxonomy (Zhang et al., *Deep Long-Tailed Learning: A Survey*, TPAMI 2023) and its
parameters with their defaults.  ``train_classifier`` runs a technique on the features of a
training set, given ``fit``, the run's training loop for a module (``run.py`` builds it from the
run's loss, sampler and optimiser; it selects the epoch on the validation split).

| name | method | family |
|---|---|---|
| ``none`` | the linear head as trained | - |
| ``lws`` | learnable weight scaling (Kang et al. 2020) | module improvement: decoupled training |
| ``weight_balancing`` | tuned weight decay + MaxNorm, two stages (Alshammari et al. 2022) | module improvement: classifier design |
| ``ncm`` | nearest class mean, L2-normalised features (Kang et al. 2020) | module improvement: classifier design |
| ``cosine_prototypes`` | cosine to centred class means (Wang et al. 2019, SimpleShot) | module improvement: classifier design |
| ``feature_calibration`` | tail distribution calibration (Yang et al. 2021) | information augmentation |

Post-hoc choices tuned on the validation split (``best_on_validation``): τ of τ-normalisation
(``tau_normalized``) and of post-hoc logit adjustment (``losses.logit_adjust``).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

#: the survey's three families (Zhang et al. 2023, Fig. 2), with the sub-family a method belongs to
RE_BALANCING = "class re-balancing"
AUGMENTATION = "information augmentation"
MODULE = "module improvement"


@dataclass(frozen=True)
class Technique:
    label: str             # display name (report, method labels)
    family: str            # the survey's family and sub-family
    params: dict = field(default_factory=dict)  # parameter -> default


TECHNIQUES: dict[str, Technique] = {
    "none": Technique("", ""),
    "lws": Technique("LWS", f"{MODULE}: decoupled training"),
    "weight_balancing": Technique("weight balancing", f"{MODULE}: classifier design",
                                  {"wd_grid": [5e-4, 5e-3, 2e-2], "max_norm": 1.0, "beta": 0.9999}),
    "ncm": Technique("NCM", f"{MODULE}: classifier design", {"scale": 16.0}),
    "cosine_prototypes": Technique("cosine prototypes", f"{MODULE}: classifier design", {"scale": 16.0}),
    "feature_calibration": Technique("tail calibration", f"{AUGMENTATION}: feature augmentation",
                                     {"tukey": 0.5, "k": 2, "alpha": 0.21, "base_min": 5}),
}


#: techniques that replace the trained classifier by class prototypes (no loss, no sampler)
PROTOTYPE_TECHNIQUES = ("ncm", "cosine_prototypes")


def technique_param_names(name: str) -> list[str]:
    return list(TECHNIQUES[name].params)


def technique_params(name: str, params: dict | None) -> dict:
    """The defaults of technique ``name`` updated with ``params``; unknown names raise ValueError."""
    if name not in TECHNIQUES:
        raise ValueError(f"unknown technique {name!r}; choose one of {', '.join(TECHNIQUES)}")
    bad = sorted(set(params or {}) - set(TECHNIQUES[name].params))
    if bad:
        raise ValueError(f"{bad} are not parameters of technique {name!r}; valid: "
                         f"{', '.join(TECHNIQUES[name].params) or '(none)'}")
    out = {**copy.deepcopy(TECHNIQUES[name].params), **(params or {})}
    if name == "weight_balancing":
        if not out["wd_grid"] or any(float(w) < 0 for w in out["wd_grid"]):
            raise ValueError(f"wd_grid={out['wd_grid']!r}: a non-empty list of weight decays >= 0")
        if not float(out["max_norm"]) > 0:
            raise ValueError(f"max_norm={out['max_norm']!r}: must be > 0")
    if name == "feature_calibration":
        if not (isinstance(out["k"], int) and out["k"] >= 1):
            raise ValueError(f"k={out['k']!r}: the number of base classes borrowed from, an integer >= 1")
        if float(out["alpha"]) < 0:
            raise ValueError(f"alpha={out['alpha']!r}: must be >= 0")
        if not (isinstance(out["base_min"], int) and out["base_min"] >= 2):
            raise ValueError(f"base_min={out['base_min']!r}: an integer >= 2 (a covariance needs two images)")
    if name in ("ncm", "cosine_prototypes") and not float(out["scale"]) > 0:
        raise ValueError(f"scale={out['scale']!r}: must be > 0")
    return out


# ============================================================================ decoupling

class LearnableWeightScaling(nn.Module):
    """LWS (Kang et al., *Decoupling Representation and Classifier for Long-Tailed Recognition*,
    ICLR 2020, Sec. 4): the trained classifier is frozen and a scale per class is learned,
    z_j = f_j · (w_j·x + b_j), with f initialised to 1 and trained with class-balanced sampling."""

    def __init__(self, head: nn.Module, num_classes: int):
        super().__init__()
        self.head = copy.deepcopy(head).requires_grad_(False)
        self.scales = nn.Parameter(torch.ones(num_classes))

    def forward(self, x):
        return self.head(x) * self.scales


def tau_normalized(head: nn.Module, tau: float) -> nn.Module:
    """τ-normalisation (Kang et al., ICLR 2020, eq. 3): w̃_j = w_j / ||w_j||^τ, bias dropped; a copy."""
    head = copy.deepcopy(head)
    with torch.no_grad():
        w = head.weight
        head.weight.copy_(w / w.norm(dim=1, keepdim=True).clamp_min(1e-12) ** tau)
        if getattr(head, "bias", None) is not None:
            head.bias.zero_()
    return head


# ============================================================================ weight balancing

@torch.no_grad()
def max_norm_(weight: torch.Tensor, threshold: float) -> torch.Tensor:
    """MaxNorm as projected gradient descent (Alshammari et al., *Long-Tailed Recognition via Weight
    Balancing*, CVPR 2022, eq. 5): after every optimiser step each class's weight vector is
    projected onto the ball ||w_j||_2 <= δ, w_j ← w_j · min(1, δ / ||w_j||).  In place."""
    norms = weight.norm(dim=1, keepdim=True)
    weight.mul_(torch.clamp(threshold / norms.clamp_min(1e-12), max=1.0))
    return weight


# ============================================================================ class prototypes

def class_means(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """μ_j = mean of the features of class j ([C, D]); a class without an image gets zeros."""
    x = x.float()
    sums = torch.zeros(num_classes, x.shape[1]).index_add_(0, y.long(), x)
    counts = torch.bincount(y.long(), minlength=num_classes).clamp_min(1).unsqueeze(1)
    return sums / counts


class NearestClassMean(nn.Module):
    """Nearest class mean on frozen features, as a module that outputs logits.

    - ``metric="euclidean"`` (Kang et al., ICLR 2020, Sec. 4, NCM): x̂ = x/||x||,
      μ_j = mean of the x̂ of class j, z_j = -s · ||x̂ - μ_j||².
    - ``metric="cosine"`` (cosine prototypes; centring as in Wang et al., *SimpleShot*, 2019):
      c = mean of the class means, z_j = s · cos(x - c, μ_j - c), μ_j the mean of the raw features.

    The scale s changes no prediction; it makes the outputs usable as logits (softmax, loss,
    calibration, logit adjustment).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, metric: str = "euclidean",
                 scale: float = 16.0):
        super().__init__()
        if metric not in ("euclidean", "cosine"):
            raise ValueError(f"metric={metric!r}: choose one of euclidean, cosine")
        self.metric, self.scale = metric, float(scale)
        x = x.float()
        if metric == "euclidean":
            means, center = class_means(F.normalize(x, dim=1), y, num_classes), torch.zeros(x.shape[1])
        else:
            means = class_means(x, y, num_classes)
            center = means.mean(0)
        self.register_buffer("means", means)
        self.register_buffer("center", center)

    def forward(self, x):
        x = x.float()
        if self.metric == "euclidean":
            return -self.scale * torch.cdist(F.normalize(x, dim=1), self.means).pow(2)
        return self.scale * F.normalize(x - self.center, dim=1) @ F.normalize(self.means - self.center, dim=1).t()


# ============================================================================ tail distribution calibration

def tukey(x: torch.Tensor, lam: float) -> torch.Tensor:
    """Tukey's ladder of powers (Yang et al., ICLR 2021, eq. 3): x^λ for λ ≠ 0, log x for λ = 0.
    Features must be non-negative (MobileNetV2's pooled ReLU6 features are)."""
    if (x < 0).any():
        raise ValueError("Tukey's transform needs non-negative features")
    return x.log() if lam == 0 else x.pow(lam)


def calibrated_samples(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, k: int = 2, alpha: float = 0.21,
                       base_min: int = 5, target: int | None = None, generator: torch.Generator | None = None):
    """Tail distribution calibration (Yang, Liu, Xu, *Free Lunch for Few-shot Learning:
    Distribution Calibration*, ICLR 2021, eqs. 4-6), on (already transformed) features.

    Base classes: those with at least ``base_min`` images, with mean μ_i and covariance Σ_i.  For
    every image x̃ of a class with fewer images, the k base classes whose means are nearest to x̃
    (S) give the calibrated Gaussian

        μ' = (Σ_{i∈S} μ_i + x̃) / (k + 1),      Σ' = Σ_{i∈S} Σ_i / k + α I,

    from which features are drawn until the class holds ``target`` images (default: as many as the
    largest class), spread evenly over its images.  Σ_i = D_iᵀD_i/(n_i-1) with the centred features
    D_i; a draw is μ' + Σ_{i∈S} D_iᵀ g_i / sqrt(k (n_i-1)) + sqrt(α) ε with g_i, ε standard normal,
    which has exactly the covariance Σ' without forming a D×D matrix.
    Returns (new features, their labels); the real images are not among them.
    """
    x, y = x.float(), y.long()
    counts = torch.bincount(y, minlength=num_classes)
    target = int(counts.max()) if target is None else int(target)
    base = [c for c in range(num_classes) if counts[c] >= base_min]
    if len(base) < k:
        raise ValueError(f"{len(base)} base classes (>= {base_min} images) for k={k}; lower base_min or k")
    base_x = [x[y == c] for c in base]
    base_mu = torch.stack([b.mean(0) for b in base_x])
    base_dev = [(b - b.mean(0)) / math.sqrt(k * (len(b) - 1)) for b in base_x]
    new_x, new_y = [], []
    for c in range(num_classes):
        n_c = int(counts[c])
        if n_c == 0 or n_c >= base_min or n_c >= target:
            continue
        images = x[y == c]
        per_image = [(target - n_c) // n_c + (i < (target - n_c) % n_c) for i in range(n_c)]
        for xi, m in zip(images, per_image):
            if m == 0:
                continue
            nearest = torch.cdist(xi[None], base_mu)[0].topk(k, largest=False).indices.tolist()
            mu = (base_mu[nearest].sum(0) + xi) / (k + 1)
            draw = mu.expand(m, -1).clone()
            for i in nearest:
                g = torch.randn(m, len(base_dev[i]), generator=generator)
                draw += g @ base_dev[i]
            if alpha > 0:
                draw += math.sqrt(alpha) * torch.randn(m, x.shape[1], generator=generator)
            new_x.append(draw)
            new_y.append(torch.full((m,), c, dtype=torch.long))
    if not new_x:
        return x[:0], y[:0]
    return torch.cat(new_x), torch.cat(new_y)


# ============================================================================ tuning on validation

def best_on_validation(candidates: dict, val_logits_of: Callable[[object], np.ndarray], val_labels,
                       num_classes: int) -> tuple[object, dict]:
    """The candidate (e.g. a τ) whose validation logits give the highest balanced accuracy (mean
    recall over the classes with a validation image); ties go to the first.  Returns (best, scores)."""
    from .metrics import per_class_accuracy
    val_labels = np.asarray(val_labels)
    if len(val_labels) == 0:
        raise ValueError("tuning on validation needs a validation split (val_source unused, or val_fraction > 0)")
    scores = {c: float(np.nanmean(per_class_accuracy(val_logits_of(c), val_labels, num_classes))) for c in candidates}
    best = max(scores, key=lambda c: (scores[c], -list(candidates).index(c)))
    return best, scores


# ============================================================================ the techniques as one call

def feature_transform(name: str, params: dict | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The map applied to every feature (training, validation, test) before the technique."""
    if name == "feature_calibration":
        lam = float(technique_params(name, params)["tukey"])
        return lambda x: tukey(x, lam)
    return lambda x: x


def train_classifier(name: str, params: dict | None, make_head: Callable[[], nn.Module], x: torch.Tensor,
                     y: torch.Tensor, num_classes: int, fit, *, seed: int = 0):
    """Train technique ``name`` on features ``x`` with labels ``y``; returns (module, history rows).

    ``fit(module, x, y, **overrides)`` trains ``module`` with the run's loss (built on the counts of
    ``y``), sampler and optimiser, loads the epoch chosen on the validation split, and returns
    (history rows, validation balanced accuracy of that epoch or None); overrides: ``loss`` and
    ``sampler`` (names), ``epochs`` (default: the run's), ``stage_epochs`` (the run's crt_epochs),
    ``weight_decay``, ``loss_params``, ``on_step`` (called with the module after each step).
    """
    p = technique_params(name, params)
    if name in PROTOTYPE_TECHNIQUES:
        return NearestClassMean(x, y, num_classes, "euclidean" if name == "ncm" else "cosine", p["scale"]), []
    if name == "feature_calibration":
        gen = torch.Generator().manual_seed(seed)
        extra_x, extra_y = calibrated_samples(x, y, num_classes, k=p["k"], alpha=float(p["alpha"]),
                                              base_min=p["base_min"], generator=gen)
        x, y = torch.cat([x, extra_x]), torch.cat([y, extra_y])
    if name == "weight_balancing":
        return _weight_balancing(p, make_head, x, y, fit)
    head = make_head()
    history, _ = fit(head, x, y)
    if name == "lws":  # stage 2: the head frozen, per-class scales, class-balanced sampling, CE
        lws = LearnableWeightScaling(head, num_classes)
        more, _ = fit(lws, x, y, loss="ce", sampler="class_balanced", stage_epochs=True)
        return lws, history + [{**r, "stage": "lws"} for r in more]
    return head, history


def _weight_balancing(p: dict, make_head, x, y, fit):
    """Alshammari et al., CVPR 2022: stage 1 trains the classifier with the run's loss, weight decay
    λ and MaxNorm; λ is chosen from ``wd_grid`` on the validation split.  Stage 2 fine-tunes the
    classifier of the chosen stage 1 with the class-balanced loss (Cui et al. 2019, ``beta``), the
    same λ and MaxNorm for ``crt_epochs``.  The paper tunes the MaxNorm radius δ too; the default
    ``max_norm`` 1.0 is about the mean class-weight norm of a plain CE head on the EU Moths features
    (measured: 0.9-2.9, mean 1.25), so MaxNorm caps the head classes' larger norms."""
    project = lambda m: max_norm_(m.weight.data, float(p["max_norm"]))  # noqa: E731
    best = None
    for wd in p["wd_grid"]:
        head = make_head()
        with torch.no_grad():
            max_norm_(head.weight, float(p["max_norm"]))
        history, score = fit(head, x, y, weight_decay=float(wd), on_step=project)
        score = -math.inf if score is None else score
        if best is None or score > best[0]:
            best = (score, wd, head, history)
    _, wd, head, history = best
    history = [{**r, "stage": f"wb1 wd={wd:g}"} for r in history]
    more, _ = fit(head, x, y, loss="class_balanced", loss_params={"beta": float(p["beta"])}, weight_decay=float(wd),
                  on_step=project, stage_epochs=True)
    return head, history + [{**r, "stage": "wb2"} for r in more]
