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
| ``weight_balancing`` | CE + weight decay, then CB loss + weight decay + MaxNorm (Alshammari et al. 2022) | module improvement: classifier design |
| ``ncm`` | nearest class mean, L2-normalised features (Kang et al. 2020) | module improvement: classifier design |
| ``cosine_prototypes`` | cosine to centred class means (Wang et al. 2019, SimpleShot) | module improvement: classifier design |
| ``feature_calibration`` | tail distribution calibration (Yang et al. 2021) | information augmentation |
| ``lbfgs_probe`` | full-batch L-BFGS on the run's loss + L2 (multinomial logistic regression), C tuned | module improvement: classifier design |
| ``knn`` | k nearest neighbours, cosine on L2-normalised features, weighted votes (Wu et al. 2018) | module improvement: classifier design |

Before any technique, ``prepare_features`` maps every feature (Tukey's power transform, then
standardisation with the fitting images' statistics): the run parameters ``feature_power`` and
``feature_standardize``, combinable with every head.

Every hyperparameter a technique tunes (the ``*_grid`` parameters) is chosen on the run's
validation split, never on the test fold: the candidate whose trained classifier has the highest
validation balanced accuracy, ties to the first (``best_on_validation`` for post-hoc choices: τ of
τ-normalisation, ``tau_normalized``, swept over ``TAU_NORM_GRID``, and of post-hoc logit
adjustment, ``losses.logit_adjust``).
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

from .metrics import balanced_accuracy
from .taxonomy import CLASSIFIER_DESIGN, DECOUPLED_TRAINING, FEATURE_AUGMENTATION



@dataclass(frozen=True)
class Technique:
    label: str             # display name (report, method labels)
    family: str            # the survey's family and sub-family
    params: dict = field(default_factory=dict)  # parameter -> default


TECHNIQUES: dict[str, Technique] = {
    "none": Technique("", ""),
    "lws": Technique("LWS", DECOUPLED_TRAINING),
    # stage 1's and stage 2's weight decays and the MaxNorm thresholds are tuned on validation
    # (``_weight_balancing``); 0.1 is the authors' CIFAR-100-LT threshold, 5e-3 their stage-1 decay
    "weight_balancing": Technique("weight balancing", CLASSIFIER_DESIGN,
                                  {"stage1_wd_grid": [5e-4, 5e-3, 2e-2], "stage2_wd_grid": [5e-4, 5e-3, 2e-2, 1e-1],
                                   "max_norm_grid": [0.0, 0.1, 0.3, 0.6, 1.0], "beta": 0.9999}),
    # renormalize_means chosen on validation: on the techniques grid's validation split (EU Moths,
    # IF 8, 389 images; NCM depends on no seed) balanced top-1 71.6 % renormalised against 67.1 %
    # for Kang et al.'s released NCM (false: the mean of the normalised features as it is)
    "ncm": Technique("NCM", CLASSIFIER_DESIGN, {"scale": 16.0, "renormalize_means": True}),
    "cosine_prototypes": Technique("cosine prototypes", CLASSIFIER_DESIGN, {"scale": 16.0}),
    # k and α tuned on validation (``_feature_calibration``); the grids hold the paper's
    # miniImageNet values k = 2, α = 0.21, and smaller α: on the EU Moths features (tukey 0.5) the
    # base classes' mean per-dimension variance is 0.050, so α = 0.21 adds about 4 times it
    "feature_calibration": Technique("tail calibration", FEATURE_AUGMENTATION,
                                     {"tukey": 0.5, "log_eps": 1e-6, "k_grid": [1, 2, 3],
                                      "alpha_grid": [0.0, 0.01, 0.05, 0.21], "base_min": 5}),
    # C = the inverse L2 strength in scikit-learn's convention, tuned on validation; 100 L-BFGS
    # iterations (scikit-learn's default max_iter) from zero weights, so the seed plays no part
    "lbfgs_probe": Technique("L-BFGS probe", CLASSIFIER_DESIGN,
                             {"c_grid": [0.1, 0.3, 1.0, 3.0, 10.0], "max_iter": 100}),
    # k tuned on validation; T = 0.07, the temperature of Wu et al.'s weighted kNN
    "knn": Technique("kNN", CLASSIFIER_DESIGN, {"k_grid": [1, 3, 5, 10, 20], "temperature": 0.07}),
}

#: τ of τ-normalisation as Kang et al. sweep it (their tau_norm.py: np.linspace(0, 2, 21)), for
#: ``posthoc_tau_grid`` (params/techniques.yaml states it; tests/test_methods.py checks it is this)
TAU_NORM_GRID = [round(0.1 * i, 1) for i in range(21)]


#: techniques that replace the trained classifier by class prototypes or stored neighbours (no loss, no sampler)
PROTOTYPE_TECHNIQUES = ("ncm", "cosine_prototypes", "knn")


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
        for key in ("stage1_wd_grid", "stage2_wd_grid"):
            _check_grid(key, out[key], "weight decays >= 0", lambda v: _is_real(v) and v >= 0)
        _check_grid("max_norm_grid", out["max_norm_grid"], "MaxNorm thresholds >= 0 (0: the smallest class-weight "
                    "norm of stage 1, 1: the largest)", lambda v: _is_real(v) and v >= 0)
        if not (_is_real(out["beta"]) and 0 <= out["beta"] < 1):
            raise ValueError(f"beta={out['beta']!r}: the class-balanced loss's beta, in [0, 1)")
    if name == "feature_calibration":
        if not (_is_real(out["tukey"]) and out["tukey"] >= 0):
            raise ValueError(f"tukey={out['tukey']!r}: Tukey's λ, a number >= 0 (a negative power maps the exact "
                             "zeros of ReLU features to infinity)")
        if not (_is_real(out["log_eps"]) and out["log_eps"] > 0):
            raise ValueError(f"log_eps={out['log_eps']!r}: the ε of log(x + ε) (tukey 0), a number > 0")
        _check_grid("k_grid", out["k_grid"], "numbers of base classes borrowed from, integers >= 1",
                    lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1)
        _check_grid("alpha_grid", out["alpha_grid"], "spreads α >= 0", lambda v: _is_real(v) and v >= 0)
        if not (isinstance(out["base_min"], int) and out["base_min"] >= 2):
            raise ValueError(f"base_min={out['base_min']!r}: an integer >= 2 (a covariance needs two images)")
    if name == "lbfgs_probe":
        _check_grid("c_grid", out["c_grid"], "inverse L2 strengths C > 0", lambda v: _is_real(v) and v > 0)
        if not (isinstance(out["max_iter"], int) and not isinstance(out["max_iter"], bool) and out["max_iter"] >= 1):
            raise ValueError(f"max_iter={out['max_iter']!r}: L-BFGS iterations, an integer >= 1")
    if name == "knn":
        _check_grid("k_grid", out["k_grid"], "numbers of neighbours, integers >= 1",
                    lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1)
        if not (_is_real(out["temperature"]) and out["temperature"] > 0):
            raise ValueError(f"temperature={out['temperature']!r}: the vote's temperature T, a number > 0")
    if name in ("ncm", "cosine_prototypes") and not (_is_real(out["scale"]) and out["scale"] > 0):
        raise ValueError(f"scale={out['scale']!r}: must be > 0")
    if name == "ncm" and not isinstance(out["renormalize_means"], bool):
        raise ValueError(f"renormalize_means={out['renormalize_means']!r}: choose one of true, false")
    return out


def tuned_on_validation(name: str, params: dict | None) -> list[str]:
    """The parameters of technique ``name`` that offer more than one candidate: chosen on the
    validation split, so the run needs one."""
    p = technique_params(name, params)
    return [k for k, v in p.items() if k.endswith("_grid") and len(v) > 1]


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_grid(key: str, values, what: str, valid: Callable[[object], bool]) -> None:
    if not isinstance(values, list) or not values:
        raise ValueError(f"{key}={values!r}: a non-empty list of {what}")
    bad = [v for v in values if not valid(v)]
    if bad:
        raise ValueError(f"{key}={values!r}: {bad} invalid; a non-empty list of {what}")


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
    """τ-normalisation (Kang et al., *Decoupling Representation and Classifier for Long-Tailed
    Recognition*, ICLR 2020, eq. 3): w̃_j = w_j / ||w_j||^τ, bias dropped (their tau_norm.py scores
    with the weights alone); a copy.  τ = 0 is the head without its bias, τ = 1 unit-norm weights;
    the paper picks τ on validation from 0 to 2 (``TAU_NORM_GRID`` with ``best_on_validation``)."""
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
    Balancing*, CVPR 2022): min_Θ F(Θ) s.t. ||w_j||_2 <= δ for every class j, solved by
    projecting each class's weight vector onto the ball after an optimiser step,
    w_j ← w_j · min(1, δ / ||w_j||).  In place."""
    norms = weight.norm(dim=1, keepdim=True)
    weight.mul_(torch.clamp(threshold / norms.clamp_min(1e-12), max=1.0))
    return weight


def max_norm_radius(norms: torch.Tensor, threshold: float) -> float:
    """The MaxNorm radius δ of a relative threshold t, as the authors' code sets it
    (``MaxNorm_via_PGD.setPerLayerThresh``, github.com/ShadeAlsha/LTR-weight-balancing) from the
    class-weight norms of the classifier stage 2 starts from: δ = min_j ||w_j|| + t (max_j ||w_j|| -
    min_j ||w_j||).  t = 0 caps every class at the smallest norm, t = 1 at the largest; a relative t
    carries over between feature spaces where an absolute δ does not (their CIFAR-100-LT demo: 0.1)."""
    lo, hi = float(norms.min()), float(norms.max())
    return lo + float(threshold) * (hi - lo)


# ============================================================================ class prototypes

def class_means(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """μ_j = mean of the features of class j ([C, D]); a class without an image gets zeros."""
    x = x.float()
    sums = torch.zeros(num_classes, x.shape[1]).index_add_(0, y.long(), x)
    counts = torch.bincount(y.long(), minlength=num_classes).clamp_min(1).unsqueeze(1)
    return sums / counts


class NearestClassMean(nn.Module):
    """Nearest class mean on frozen features, as a module that outputs logits.

    - ``metric="euclidean"`` (NCM; Kang et al., *Decoupling Representation and Classifier for
      Long-Tailed Recognition*, ICLR 2020, Sec. 4): x̂ = x/||x||, μ_j = mean of the x̂ of class j,
      z_j = -s · ||x̂ - μ_j||².  The paper's "Euclidean distance computed on L2 normalized mean
      features" leaves open whether μ_j is normalised again; their code (KNNClassifier, ``l2n``
      centroids) does not (``renormalize_means=False``, this module's default).
      ``renormalize_means=True`` uses μ_j/||μ_j||: then ||x̂ - μ_j||² = 2 - 2 cos(x, μ_j), so the
      mean's length (which shrinks with the spread of a class's features, and so differs between
      head and tail classes) no longer counts.  The technique ``ncm`` renormalises by default,
      chosen on validation (``TECHNIQUES``).
    - ``metric="cosine"`` (cosine prototypes; centring as in Wang et al., *SimpleShot*, 2019):
      c = mean of the class means, z_j = s · cos(x - c, μ_j - c), μ_j the mean of the raw features.

    The scale s changes no prediction; it makes the outputs usable as logits (softmax, loss,
    calibration, logit adjustment).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, metric: str = "euclidean",
                 scale: float = 16.0, renormalize_means: bool = False):
        super().__init__()
        if metric not in ("euclidean", "cosine"):
            raise ValueError(f"metric={metric!r}: choose one of euclidean, cosine")
        if renormalize_means and metric != "euclidean":
            raise ValueError("renormalize_means=True is an option of metric 'euclidean' (cosine ignores lengths)")
        self.metric, self.scale = metric, float(scale)
        x = x.float()
        if metric == "euclidean":
            means, center = class_means(F.normalize(x, dim=1), y, num_classes), torch.zeros(x.shape[1])
            if renormalize_means:
                means = F.normalize(means, dim=1)  # a class without an image keeps its zero mean
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

def tukey(x: torch.Tensor, lam: float, eps: float = 1e-6) -> torch.Tensor:
    """Tukey's ladder of powers (Yang et al., *Free Lunch for Few-shot Learning: Distribution
    Calibration*, ICLR 2021, eq. 3): x^λ for λ ≠ 0, and for λ = 0 log(x + ε) where the paper writes
    log x.  ReLU features hold exact zeros, whose log x is -inf (and a whole calibrated class
    non-finite); ε (the ``log_eps`` parameter, default 1e-6) keeps them finite at log ε and moves
    a feature of 0.01 or more by at most 1e-4 in log space.  Features must be non-negative
    (MobileNetV2's pooled ReLU6 features are), λ >= 0 (a negative power maps zeros to infinity).
    On EU Moths 54 % of those features are exact zeros: with λ = 0 they all sit at log ε, far
    below the nonzero values (log 0.1 = -2.3), so ε shapes that space; the default λ = 0.5 needs
    no ε."""
    if (x < 0).any():
        raise ValueError("Tukey's transform needs non-negative features")
    if lam < 0:
        raise ValueError(f"tukey λ={lam!r}: must be >= 0 (a negative power maps zeros to infinity)")
    return (x + eps).log() if lam == 0 else x.pow(lam)


def prepare_features(*arrays: torch.Tensor, fit_rows, power: float = 1.0, standardize: bool = False,
                     eps: float = 1e-6) -> list[torch.Tensor]:
    """Every feature mapped before the head (the run parameters ``feature_power``, ``feature_standardize``):

    1. Tukey's power transform x ↦ x^λ (λ = ``power``; ``tukey``: Tukey, *Exploratory Data
       Analysis*, 1977, as Yang et al., ICLR 2021, eq. 3 apply it to CNN features; λ = 1 leaves
       them as they are, λ = 0 is log(x + ε)); λ < 1 shrinks large activations and spreads small
       ones, making the per-class feature distributions closer to Gaussian;
    2. standardisation z = (x - μ) / σ per dimension, μ and σ (ddof 0) from rows ``fit_rows`` of the
       first array alone, the images the head is fitted on (never the validation or test images);
       a dimension constant on them keeps σ = 1 (it is centred only), so it cannot blow up on
       other images.

    Returns the ``arrays`` mapped (a list)."""
    arrays = list(arrays)
    if power != 1.0:
        arrays = [tukey(a.float(), float(power), eps) for a in arrays]
    if standardize:
        fit_x = arrays[0][torch.as_tensor(np.asarray(fit_rows))].float()
        mu, sd = fit_x.mean(0), fit_x.std(0, unbiased=False)
        sd = torch.where(sd > 0, sd, torch.ones_like(sd))
        arrays = [(a.float() - mu) / sd for a in arrays]
    return arrays


def base_classes(counts: torch.Tensor, base_min: int, k: int) -> list[int]:
    """The classes with at least ``base_min`` images, which calibration borrows statistics from;
    a ValueError when fewer than ``k`` of them exist."""
    base = [c for c in range(len(counts)) if counts[c] >= base_min]
    if len(base) < k:
        raise ValueError(f"{len(base)} base classes (>= {base_min} images) for k={k}; lower base_min or k")
    return base


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
    base = base_classes(counts, base_min, k)
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


# ============================================================================ a strong probe, nearest neighbours

def lbfgs_fit(head: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module, c: float,
              max_iter: int = 100) -> nn.Module:
    """Multinomial logistic regression by full-batch L-BFGS (Liu & Nocedal, *On the limited memory
    BFGS method for large scale optimization*, Math. Programming 1989; the probe of scikit-learn's
    ``LogisticRegression(solver="lbfgs")``), on the run's loss: the head's weights W minimise

        (1/n) Σ_i ℓ(W x_i + b, y_i) + ||W||² / (2 C n),

    scikit-learn's objective C Σ ℓ + ||W||²/2 divided by C n (the bias unpenalised, as theirs).
    With ℓ the logit-adjusted loss, balanced softmax or a smoothed CE the probe is long-tail
    aware.  Starts from zero weights and bias, so the result depends on no seed; strong-Wolfe line
    search; ``max_iter`` iterations at most.  In place; returns ``head``."""
    x, y = x.float(), y.long()
    with torch.no_grad():
        head.weight.zero_()
        if getattr(head, "bias", None) is not None:
            head.bias.zero_()
    params = [q for q in head.parameters() if q.requires_grad]
    opt = torch.optim.LBFGS(params, max_iter=int(max_iter), line_search_fn="strong_wolfe", history_size=10,
                            tolerance_grad=1e-6, tolerance_change=1e-9)
    penalty = 1.0 / (2.0 * float(c) * len(y))

    def closure():
        opt.zero_grad()
        loss = loss_fn(head(x), y) + penalty * head.weight.pow(2).sum()
        loss.backward()
        return loss
    loss_fn.train()
    opt.step(closure)
    return head


class NearestNeighbours(nn.Module):
    """Weighted k nearest neighbours on L2-normalised features (Wu, Xiong, Yu, Lin, *Unsupervised
    Feature Learning via Non-Parametric Instance Discrimination*, CVPR 2018, Sec. 3.4; the kNN
    evaluation of DINO, Caron et al. 2021): with s_i = cos(x, x_i) over the k training images
    N_k(x) most similar to x, the vote of class c is

        v_c = Σ_{i ∈ N_k(x), y_i = c} exp(s_i / T),    z_c = log max(v_c, 1e-30),

    so that the outputs are logits (softmax gives the normalised votes; a class without a
    neighbour gets -69, below any vote).  No training."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, k: int, temperature: float = 0.07):
        super().__init__()
        self.k, self.temperature, self.num_classes = min(int(k), len(y)), float(temperature), num_classes
        self.register_buffer("bank", F.normalize(x.float(), dim=1))
        self.register_buffer("labels", y.long())

    def forward(self, x):
        sim = F.normalize(x.float(), dim=1) @ self.bank.t()
        top, idx = sim.topk(self.k, dim=1)
        votes = torch.zeros(len(x), self.num_classes, dtype=sim.dtype, device=sim.device)
        votes.scatter_add_(1, self.labels[idx], (top / self.temperature).exp())
        return votes.clamp_min(1e-30).log()


# ============================================================================ tuning on validation

def best_on_validation(candidates: dict, val_logits_of: Callable[[object], np.ndarray], val_labels,
                       num_classes: int) -> tuple[object, dict]:
    """The candidate (e.g. a τ) whose validation logits give the highest balanced accuracy (mean
    recall over the classes with a validation image); ties go to the first.  Returns (best, scores)."""
    val_labels = np.asarray(val_labels)
    if len(val_labels) == 0:
        raise ValueError("tuning on validation needs a validation split (val_source unused, or val_fraction > 0)")
    scores = {c: balanced_accuracy(val_logits_of(c), val_labels, num_classes) for c in candidates}
    best = max(scores, key=lambda c: (scores[c], -list(candidates).index(c)))
    return best, scores


# ============================================================================ the techniques as one call

def feature_transform(name: str, params: dict | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The map applied to every feature (training, validation, test) before the technique."""
    if name == "feature_calibration":
        p = technique_params(name, params)
        lam, eps = float(p["tukey"]), float(p["log_eps"])
        return lambda x: tukey(x, lam, eps)
    return lambda x: x


def train_classifier(name: str, params: dict | None, make_head: Callable[[], nn.Module], x: torch.Tensor,
                     y: torch.Tensor, num_classes: int, fit, *, seed: int = 0):
    """Train technique ``name`` on features ``x`` with labels ``y``; returns (module, history rows).

    ``fit(module, x, y, **overrides)`` trains ``module`` with the run's loss (built on the counts of
    ``y``), sampler and optimiser, loads the epoch chosen on the validation split, and returns
    (history rows, validation balanced accuracy of that epoch or None); overrides: ``loss`` and
    ``sampler`` (names), ``epochs`` (default: the run's), ``stage_epochs`` (the run's crt_epochs),
    ``weight_decay``, ``loss_params``, ``on_step`` (called with the module after each step).
    A technique with ``*_grid`` parameters trains one classifier per candidate and keeps the one
    with the best validation score (``_best_candidate``).
    """
    p = technique_params(name, params)
    if name == "knn":  # k by the validation score of the votes (``fit.val_score``)
        def neighbours(k):
            module = NearestNeighbours(x, y, num_classes, k, p["temperature"])
            return module, [], fit.val_score(module)
        return _best_candidate(list(p["k_grid"]), neighbours)[1], []
    if name == "lbfgs_probe":
        return _lbfgs_probe(p, make_head, x, y, fit)
    if name in PROTOTYPE_TECHNIQUES:
        if name == "ncm":
            return NearestClassMean(x, y, num_classes, "euclidean", p["scale"], p["renormalize_means"]), []
        return NearestClassMean(x, y, num_classes, "cosine", p["scale"]), []
    if name == "feature_calibration":
        return _feature_calibration(p, make_head, x, y, num_classes, fit, seed)
    if name == "weight_balancing":
        return _weight_balancing(p, make_head, x, y, fit)
    head = make_head()
    history, _ = fit(head, x, y)
    if name == "lws":  # stage 2: the head frozen, per-class scales, class-balanced sampling, CE
        lws = LearnableWeightScaling(head, num_classes)
        more, _ = fit(lws, x, y, loss="ce", sampler="class_balanced", stage_epochs=True)
        return lws, history + [{**r, "stage": "lws"} for r in more]
    return head, history


def _best_candidate(candidates: list, train: Callable[[object], tuple]) -> tuple:
    """Train every candidate (``train(c)`` -> (module, history rows, validation score or None)) and
    keep the one with the highest validation score, ties to the first; returns (candidate, module,
    history, scores).  The run's ``fit`` writes its checkpoints after each training, so when the
    best candidate was not the last one trained it is trained again (the same seeds: the same
    module), leaving its checkpoints on disk."""
    best, scores = None, {}
    for c in candidates:
        module, history, score = train(c)
        scores[c] = -math.inf if score is None else float(score)
        if best is None or scores[c] > scores[best[0]]:
            best = (c, module, history)
    if len(candidates) > 1 and best[0] != candidates[-1]:
        module, history, _ = train(best[0])
        best = (best[0], module, history)
    return (*best, scores)


def _weight_balancing(p: dict, make_head, x, y, fit):
    """Weight balancing (Alshammari, Wang, Ramanan, Kong, *Long-Tailed Recognition via Weight
    Balancing*, CVPR 2022), on frozen features:

    1. the classifier trained with the run's loss (the paper's: cross-entropy, the default) and
       weight decay λ₁ ∈ ``stage1_wd_grid``, without MaxNorm: min_Θ Σ ℓ_CE + λ₁ ||Θ||²;
    2. that classifier fine-tuned for ``crt_epochs`` with the class-balanced loss (Cui et al. 2019,
       ``beta``), weight decay λ₂ ∈ ``stage2_wd_grid`` and MaxNorm ||w_j||_2 <= δ (``max_norm_``
       after every step), δ from a relative threshold t ∈ ``max_norm_grid`` (``max_norm_radius``:
       δ = min + t (max - min) of the stage-1 class-weight norms, as the authors' code sets it).

    λ₁ is chosen on the validation split, then (λ₂, t) jointly, each by the validation balanced
    accuracy of its trained classifier.  MaxNorm caps the class weight vectors w_j only, not the
    bias: the paper's constraint is on the per-class weights, and the authors' code gives the bias
    an infinite threshold (``perLayerThresh`` is inf for 1-D parameters).  Their code projects once
    an epoch; here the projection follows every step, the projected gradient descent of the paper."""
    beta = float(p["beta"])

    def stage1(wd):
        head = make_head()
        history, score = fit(head, x, y, weight_decay=float(wd))
        return head, history, score

    wd1, head1, history1, _ = _best_candidate(list(p["stage1_wd_grid"]), stage1)
    norms = head1.weight.detach().norm(dim=1)

    def stage2(candidate):
        wd, t = candidate
        delta = max_norm_radius(norms, t)
        head = copy.deepcopy(head1)
        history, score = fit(head, x, y, loss="class_balanced", loss_params={"beta": beta}, weight_decay=float(wd),
                             on_step=lambda m: max_norm_(m.weight.data, delta), stage_epochs=True)
        return head, history, score

    grid2 = [(wd, t) for wd in p["stage2_wd_grid"] for t in p["max_norm_grid"]]
    (wd2, t), head, history2, _ = _best_candidate(grid2, stage2)
    return head, ([{**r, "stage": f"wb1 wd={wd1:g}"} for r in history1]
                  + [{**r, "stage": f"wb2 wd={wd2:g} max_norm={t:g}"} for r in history2])


def _feature_calibration(p: dict, make_head, x, y, num_classes: int, fit, seed: int):
    """Tail distribution calibration (Yang et al., ICLR 2021; ``calibrated_samples``): the run's
    classifier trained on the real features and the calibrated draws, for every k ∈ ``k_grid`` and
    α ∈ ``alpha_grid``; the pair whose classifier has the best validation balanced accuracy is kept
    (the paper fixes k = 2, α = 0.21 for miniImageNet features; their scale is not this one's).
    Every candidate draws from a generator seeded with the run's seed."""
    base_classes(torch.bincount(y.long(), minlength=num_classes), p["base_min"], max(p["k_grid"]))  # before training

    def train(candidate):
        k, alpha = candidate
        extra_x, extra_y = calibrated_samples(x, y, num_classes, k=k, alpha=float(alpha), base_min=p["base_min"],
                                              generator=torch.Generator().manual_seed(seed))
        head = make_head()
        history, score = fit(head, torch.cat([x, extra_x]), torch.cat([y, extra_y]))
        return head, history, score

    (k, alpha), head, history, _ = _best_candidate([(k, a) for k in p["k_grid"] for a in p["alpha_grid"]], train)
    return head, [{**r, "stage": f"calibrated k={k} alpha={alpha:g}"} for r in history]


def _lbfgs_probe(p: dict, make_head, x, y, fit):
    """``lbfgs_fit`` with the run's loss (``fit.loss_on(y)``) for every C ∈ ``c_grid``; the C whose
    probe has the best validation balanced accuracy (``fit.val_score``) is kept.  One history row
    per candidate (its C and validation score), ``stage`` lbfgs."""
    def train(c):
        head = lbfgs_fit(make_head(), x, y, fit.loss_on(y), c, p["max_iter"])
        return head, [], fit.val_score(head)

    c, head, _, scores = _best_candidate(list(p["c_grid"]), train)
    return head, [{"epoch": i, "stage": f"lbfgs C={cand:g}", "val_balanced_acc": score,
                   "best_epoch": list(scores).index(c)} for i, (cand, score) in enumerate(scores.items())]
