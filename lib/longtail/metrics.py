"""Classification metrics on numpy arrays (``logits`` [N, C] float, ``labels`` [N] int), and the
thesis's evaluation splits of one balanced test set.

| split        | what is measured                                                                |
|--------------|---------------------------------------------------------------------------------|
| ``balanced`` | the plain (balanced) test set                                                   |
| ``longtailed`` | the same test set weighted by the training prior, w ∝ n_train[y]: the exact  |
|              | expectation of every metric under a test set drawn like the training set        |
| ``head`` / ``middle`` / ``tail`` | the test samples whose true class is in the group; a         |
|              | prediction outside the group counts as wrong                                    |

Metrics of a split (``METRIC_NAMES``): ``n`` (samples), ``loss`` (mean cross-entropy), ``acc1``,
``macro_f1``, ``weighted_f1``, ``balanced_acc`` (mean per-class recall), ``ece`` (15 bins).
A model trained with a sigmoid loss (``activation="sigmoid"``) is scored with its own
probabilities p_j = σ(z_j): loss = the one-vs-all binary cross-entropy, ECE on max_j σ(z_j).

Two evaluation protocols (``PROTOCOLS``; every run computes both, ``eval_protocol`` chooses
what the tables show, ``protocol_column`` names the columns):

- ``weighted`` (``evaluate``, the splits above): the balanced test set weighted by the training
  prior; groups on the balanced test set; macro F1; cross-entropy.
- ``thesis`` (``evaluate_physical``, splits ``thesis_<split>``): a *physical* long-tailed test set
  (given, or sampled from the balanced one by the training profile, ``test_longtailed_rule``:
  ``subsets.longtailed_test_indices``); head / middle / tail
  partition it (the thesis: 844 + 169 + 38 = 1,051 images); support-weighted F1 over the
  classes of the split; the loss column is the method's own training loss (``train_loss``),
  cross-entropy kept beside it (``loss``).
Every weighted metric equals the unweighted one on the test set with each sample replicated
w times (for integer w), which the tests check.

Plain numpy throughout (F1, the confusion matrix and log-softmax equal scikit-learn's and SciPy's,
which the tests check): importing ``sklearn.metrics`` costs a training run's kernel about as much
as importing torch (measured in ``bench/papermill_overhead.py``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .subsets import GROUP_NAMES, longtailed_test_weights

METRIC_NAMES = ("n", "loss", "acc1", "macro_f1", "weighted_f1", "balanced_acc", "ece")
SPLITS = ("balanced", "longtailed", *GROUP_NAMES)
ECE_BINS = 15
ACTIVATIONS = ("softmax", "sigmoid")
PROTOCOLS = ("thesis", "weighted")
THESIS_PREFIX = "thesis_"
#: the metric behind each table column, per protocol
_PROTOCOL_METRICS = {"weighted": {"loss": "loss", "acc1": "acc1", "f1": "macro_f1", "n": "n"},
                     "thesis": {"loss": "train_loss", "acc1": "acc1", "f1": "weighted_f1", "n": "n"}}
PROTOCOL_TEXT = {
    "weighted": "evaluation protocol 'weighted': the balanced test set weighted by the long-tailed training "
                "prior, groups on the balanced test set, macro F1, loss = cross-entropy",
    "thesis": "evaluation protocol 'thesis': a physical long-tailed test set, head / middle / tail partition it, "
              "support-weighted F1, loss = the method's own training loss",
}


def protocol_column(protocol: str, split: str, measure: str) -> str:
    """The metrics column of ``measure`` (``loss`` | ``acc1`` | ``f1`` | ``n``) of ``split`` under ``protocol``:
    ``protocol_column("thesis", "tail", "f1") == "thesis_tail/weighted_f1"``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown eval_protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    prefix = THESIS_PREFIX if protocol == "thesis" else ""
    return f"{prefix}{split}/{_PROTOCOL_METRICS[protocol][measure]}"


def _weights(sample_weight, n: int) -> np.ndarray:
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},), got {w.shape}")
    if (w < 0).any():
        raise ValueError("sample_weight must be non-negative")
    return w


def _preds(logits_or_preds) -> np.ndarray:
    x = np.asarray(logits_or_preds)
    return x.argmax(axis=1) if x.ndim == 2 else x.astype(np.int64)


def log_sigmoid(x) -> np.ndarray:
    """log σ(x) = -log(1 + e^{-x}), stable for large |x|."""
    x = np.asarray(x, dtype=np.float64)
    return -np.logaddexp(0.0, -x)


def probabilities(logits, activation: str = "softmax") -> np.ndarray:
    """Class probabilities of logits: softmax, or per-class sigmoid σ(z_j) for a model trained with
    a sigmoid (one-vs-all) loss, whose rows need not sum to 1."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    return np.exp(log_softmax(logits) if activation == "softmax" else log_sigmoid(logits))


def log_softmax(logits) -> np.ndarray:
    """Row-wise log-probabilities, stable for large logits: (z - m) - log Σ_j e^{z_j - m} with m the
    row maximum (as scipy.special.log_softmax)."""
    logits = np.asarray(logits, dtype=np.float64)
    m = logits.max(axis=1, keepdims=True) if logits.size else np.zeros((len(logits), 1))
    shifted = logits - np.where(np.isfinite(m), m, 0.0)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def reliability_bins(probs, labels, n_bins: int = ECE_BINS, sample_weight=None) -> pd.DataFrame:
    """Equal-width confidence bins ((m−1)/M, m/M] of the top-1 confidence, for reliability diagrams.

    Columns: ``bin``, ``lower``, ``upper``, ``confidence`` and ``accuracy`` (weighted means in the
    bin; NaN for an empty bin), ``count`` (samples), ``mass`` (the bin's share of the total weight).
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    w = _weights(sample_weight, len(labels))
    conf, correct = probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left" puts a confidence equal to an edge m/M into the bin it closes, as (·, m/M] says.
    bins = np.searchsorted(edges[1:-1], conf, side="left")
    weight = np.bincount(bins, weights=w, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(bins, weights=w * conf, minlength=n_bins) / weight
        accuracy = np.bincount(bins, weights=w * correct, minlength=n_bins) / weight
    nonempty = weight > 0
    return pd.DataFrame({
        "bin": np.arange(n_bins), "lower": edges[:-1], "upper": edges[1:],
        "confidence": np.where(nonempty, confidence, np.nan),
        "accuracy": np.where(nonempty, accuracy, np.nan),
        "count": np.bincount(bins, minlength=n_bins),
        "mass": weight / weight.sum() if weight.sum() > 0 else np.full(n_bins, np.nan),
    })


def expected_calibration_error(probs, labels, n_bins: int = ECE_BINS, sample_weight=None) -> float:
    """ECE (Guo et al. 2017): Σ_bins mass · |accuracy − confidence| over equal-width bins of (0, 1]."""
    if len(labels) == 0:
        return float("nan")
    b = reliability_bins(probs, labels, n_bins, sample_weight)
    b = b[b["mass"] > 0]
    return float((b["mass"] * (b["accuracy"] - b["confidence"]).abs()).sum()) if len(b) else float("nan")


def balanced_accuracy(logits_or_preds, labels, num_classes: int) -> float:
    """Mean recall over the classes with at least one image (``per_class_accuracy``'s non-NaN
    entries): the validation score every model selection and tuning uses."""
    return float(np.nanmean(per_class_accuracy(logits_or_preds, labels, num_classes)))


def per_class_accuracy(logits_or_preds, labels, num_classes: int, sample_weight=None) -> np.ndarray:
    """Recall of every class (top-1 accuracy on its test samples); NaN for a class with none."""
    preds, labels = _preds(logits_or_preds), np.asarray(labels, dtype=np.int64)
    w = _weights(sample_weight, len(labels))
    total = np.bincount(labels, weights=w, minlength=num_classes)
    hits = np.bincount(labels, weights=w * (preds == labels), minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, hits / total, np.nan)


def confusion(preds, labels, num_classes: int) -> np.ndarray:
    """Confusion matrix [C, C]: rows true class, columns predicted class (sklearn's convention).
    Takes predictions or logits; a label or prediction outside 0..C-1 is not counted (as sklearn's
    ``labels=range(C)``)."""
    labels, preds = np.asarray(labels, dtype=np.int64), _preds(preds)
    inside = (labels >= 0) & (labels < num_classes) & (preds >= 0) & (preds < num_classes)
    cells = labels[inside] * num_classes + preds[inside]
    return np.bincount(cells, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def f1_scores(labels, preds, classes, sample_weight=None) -> tuple[float, float]:
    """(macro F1, support-weighted F1) over ``classes``, as sklearn's ``f1_score(labels, preds,
    labels=classes, average="macro" | "weighted", sample_weight=w, zero_division=0)``.

    Per class c, with weighted counts tp_c, fp_c, fn_c: F1_c = 2 tp_c / (2 tp_c + fp_c + fn_c), 0
    where the denominator is 0 (van Rijsbergen's F-measure with β = 1).  Macro: the mean of F1_c;
    weighted: Σ_c s_c F1_c / Σ_c s_c with the support s_c = tp_c + fn_c (0 when all s_c are 0).
    A prediction of a class outside ``classes`` is a false negative of the true class only.
    """
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    classes = np.asarray(classes, dtype=np.int64)
    w = _weights(sample_weight, len(labels))
    if len(classes) == 0:
        return 0.0, 0.0
    size = int(max(classes.max(), labels.max(initial=-1), preds.max(initial=-1))) + 1
    tp = np.bincount(labels[preds == labels], weights=w[preds == labels], minlength=size)[classes]
    support = np.bincount(labels, weights=w, minlength=size)[classes]  # tp + fn
    predicted = np.bincount(preds, weights=w, minlength=size)[classes]  # tp + fp
    denominator = support + predicted
    f1 = np.divide(2 * tp, denominator, out=np.zeros(len(classes)), where=denominator > 0)
    weighted = float(np.average(f1, weights=support)) if support.sum() > 0 else 0.0
    return float(f1.mean()), weighted


def _empty_metrics() -> dict:
    return {name: (0 if name == "n" else float("nan")) for name in METRIC_NAMES}


def split_metrics(logits, labels, num_classes: int, sample_weight=None, classes=None,
                  activation: str = "softmax") -> dict:
    """All metrics of one split (keys ``METRIC_NAMES``), weighted by ``sample_weight``.

    ``classes`` restricts macro / weighted F1 and balanced accuracy to those label values (a
    head / middle / tail group); predictions outside them still count as wrong (they are false
    negatives of the true class and false positives of none).  By default, and always, only
    classes with test weight are averaged over: a class without test sample has no recall.

    ``activation="sigmoid"``: loss = Σ_j BCE(z_j, onehot_j) = -log σ(z_y) - Σ_{j≠y} log σ(-z_j)
    (Cui et al. 2019's sigmoid loss), ECE on the confidence max_j σ(z_j); the prediction argmax_j z_j
    is the same under both activations.

    Balanced accuracy is the mean per-class recall.  Weights enter it, but for the long-tailed
    split they are constant within a class, so they cancel and it equals the balanced split's.
    """
    labels = np.asarray(labels, dtype=np.int64)
    w = _weights(sample_weight, len(labels))
    if len(labels) == 0 or w.sum() <= 0:
        return _empty_metrics() | {"n": len(labels)}
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    log_p = log_softmax(logits) if activation == "softmax" else log_sigmoid(logits)
    if log_p.shape != (len(labels), num_classes):
        raise ValueError(f"logits must have shape ({len(labels)}, {num_classes}), got {log_p.shape}")
    preds = log_p.argmax(axis=1)
    present = np.unique(labels[w > 0])
    classes = present if classes is None else np.intersect1d(np.asarray(classes, dtype=np.int64), present)
    if len(classes) == 0:  # no test sample of the asked classes: nothing to average over
        return _empty_metrics() | {"n": len(labels)}
    nll = -log_p[np.arange(len(labels)), labels]
    if activation == "sigmoid":  # the negatives' terms -log σ(-z_j) = -log(1 - σ(z_j))
        negatives = log_sigmoid(-np.asarray(logits, dtype=np.float64))
        negatives[np.arange(len(labels)), labels] = 0.0
        nll = nll - negatives.sum(axis=1)
    macro_f1, weighted_f1 = f1_scores(labels, preds, classes, w)
    return {
        "n": len(labels),
        "loss": float(np.average(nll, weights=w)),
        "acc1": float(np.average(preds == labels, weights=w)),
        "macro_f1": macro_f1,
        "weighted_f1": weighted_f1,
        "balanced_acc": float(per_class_accuracy(preds, labels, num_classes, w)[classes].mean()),
        "ece": expected_calibration_error(np.exp(log_p), labels, ECE_BINS, w),
    }


def evaluate(logits, labels, train_counts, groups, activation: str = "softmax") -> dict[str, dict]:
    """Metrics of every split in ``SPLITS`` of one balanced test set.

    ``train_counts``: training images per class (the long-tailed prior); ``groups``: 'head' /
    'middle' / 'tail' per class (``subsets.class_groups``).  A group with no class, or no test
    sample, gives NaN metrics with n = 0.
    """
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    num_classes, groups = len(train_counts), np.asarray(groups)
    results = {
        "balanced": split_metrics(logits, labels, num_classes, activation=activation),
        "longtailed": split_metrics(logits, labels, num_classes, activation=activation,
                                    sample_weight=longtailed_test_weights(labels, train_counts)),
    }
    for group in GROUP_NAMES:
        classes = np.flatnonzero(groups == group)
        keep = np.isin(labels, classes)
        results[group] = split_metrics(logits[keep], labels[keep], num_classes, classes=classes,
                                       activation=activation)
    return results


def evaluate_physical(logits, labels, longtailed, groups, activation: str = "softmax", own_loss=None,
                      lt_logits=None, lt_labels=None) -> dict[str, dict]:
    """The thesis's protocol: metrics of the balanced test set (``logits``, ``labels``) and of a
    physical long-tailed test set, split by head / middle / tail, keys ``thesis_<split>``.

    The long-tailed test set is ``lt_logits``/``lt_labels`` (given images) or, when they are None,
    the rows ``longtailed`` (indices) of the balanced test set.  Head, middle and tail are the
    long-tailed test images whose true class is in the group, so they partition it, and its top-1
    is their image-weighted mean.  ``own_loss(logits, labels) -> float``: the method's own training
    loss on a split (``train_loss``; NaN without it).  F1 of the thesis is ``weighted_f1``.
    """
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if lt_logits is None:
        idx = np.asarray(longtailed, dtype=np.int64)
        lt_logits, lt_labels = logits[idx], labels[idx]
    lt_logits, lt_labels = np.asarray(lt_logits, dtype=np.float64), np.asarray(lt_labels, dtype=np.int64)
    num_classes, groups = logits.shape[1], np.asarray(groups)

    def one(z, y, classes=None):
        m = split_metrics(z, y, num_classes, classes=classes, activation=activation)
        m["train_loss"] = float(own_loss(z, y)) if own_loss is not None and len(y) else float("nan")
        return m

    results = {f"{THESIS_PREFIX}balanced": one(logits, labels), f"{THESIS_PREFIX}longtailed": one(lt_logits, lt_labels)}
    for group in GROUP_NAMES:
        classes = np.flatnonzero(groups == group)
        keep = np.isin(lt_labels, classes)
        results[f"{THESIS_PREFIX}{group}"] = one(lt_logits[keep], lt_labels[keep], classes)
    return results


def flatten(results: dict[str, dict]) -> dict[str, float]:
    """``{"balanced": {"acc1": …}, …}`` → ``{"balanced/acc1": …, …}``: one row for a JSON / DataFrame."""
    return {f"{split}/{name}": value for split, metrics in results.items() for name, value in metrics.items()}


#: the test interval's level and bootstrap resamples (``bootstrap_interval``)
INTERVAL_LEVEL = 0.95
BOOTSTRAP_SAMPLES = 2000


def bootstrap_interval(correct, level: float = INTERVAL_LEVEL, samples: int = BOOTSTRAP_SAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap interval (Efron & Tibshirani 1993, ch. 13) of a top-1 accuracy over the
    test images: ``correct`` is (seeds, images) booleans (one row per seed, the same images in every
    row); each resample draws the images with replacement and takes the mean over seeds and images.
    This is the interval of the test fold's sampling, which the seeds' spread leaves out (every seed
    is scored on the same images): with 552 images and 70 % top-1 it is about ±3.8 points
    (1.96·sqrt(0.7·0.3/552)).  (nan, nan) without images."""
    c = np.atleast_2d(np.asarray(correct, dtype=np.float64))
    n = c.shape[1]
    if n == 0:
        return float("nan"), float("nan")
    per_image = c.mean(axis=0)  # the mean over seeds of each image: resampling images resamples these
    rng = np.random.default_rng(seed)
    means = per_image[rng.integers(0, n, size=(samples, n))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))
