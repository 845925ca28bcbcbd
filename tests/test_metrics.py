import math

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from sklearn.metrics import balanced_accuracy_score, log_loss

from longtail.metrics import (METRIC_NAMES, SPLITS, confusion, evaluate, expected_calibration_error, f1_scores,
                              flatten, log_softmax, per_class_accuracy, reliability_bins, split_metrics)

# Six samples, three classes; confidences kept off the 15-bin edges (k/15) so the bins are unambiguous.
PROBS = np.array([
    [0.70, 0.20, 0.10],  # y=0, pred 0, conf .70 (bin 10)
    [0.28, 0.62, 0.10],  # y=0, pred 1, conf .62 (bin 9)
    [0.09, 0.82, 0.09],  # y=1, pred 1, conf .82 (bin 12)
    [0.05, 0.90, 0.05],  # y=1, pred 1, conf .90 (bin 13)
    [0.20, 0.17, 0.63],  # y=2, pred 2, conf .63 (bin 9)
    [0.50, 0.10, 0.40],  # y=2, pred 0, conf .50 (bin 7)
])
LABELS = np.array([0, 0, 1, 1, 2, 2])
PREDS = np.array([0, 1, 1, 1, 2, 0])
LOGITS = np.log(PROBS) + 3.0  # softmax(log p + const) = p
F1 = {0: 2 * .5 * .5 / (.5 + .5),  # tp 1, fp 1 (sample 5), fn 1
      1: 2 * (2 / 3) * 1 / (2 / 3 + 1),  # tp 2, fp 1 (sample 1), fn 0
      2: 2 * 1 * .5 / (1 + .5)}  # tp 1, fp 0, fn 1
ECE = (1 * abs(0 - .50) + 2 * abs(.5 - (.62 + .63) / 2) + 1 * abs(1 - .70) + 1 * abs(1 - .82) + 1 * abs(1 - .90)) / 6


def test_hand_computed_case():
    m = split_metrics(LOGITS, LABELS, 3)
    assert m["n"] == 6
    assert m["acc1"] == pytest.approx(4 / 6)
    assert m["loss"] == pytest.approx(-np.mean(np.log([.70, .28, .82, .90, .63, .40])))
    assert m["macro_f1"] == pytest.approx((F1[0] + F1[1] + F1[2]) / 3)
    assert m["weighted_f1"] == pytest.approx((F1[0] + F1[1] + F1[2]) / 3)  # equal supports
    assert m["balanced_acc"] == pytest.approx((1 / 2 + 2 / 2 + 1 / 2) / 3)
    assert m["ece"] == pytest.approx(ECE)
    assert expected_calibration_error(PROBS, LABELS) == pytest.approx(ECE)


def test_hand_computed_weighted_case():
    w = np.array([1, 1, 1, 1, 2, 2])  # class 2 counts double
    m = split_metrics(LOGITS, LABELS, 3, sample_weight=w)
    assert m["acc1"] == pytest.approx((1 + 0 + 1 + 1 + 2 + 0) / 8)
    # class 2: tp 2, fn 2 -> P 1, R 1/2; class 0: tp 1, fp 2 (sample 5 at weight 2), fn 1 -> P 1/3, R 1/2
    f1_0, f1_2 = 2 * (1 / 3) * .5 / (1 / 3 + .5), 2 / 3
    assert m["macro_f1"] == pytest.approx((f1_0 + F1[1] + f1_2) / 3)
    assert m["weighted_f1"] == pytest.approx((2 * f1_0 + 2 * F1[1] + 4 * f1_2) / 8)
    assert m["balanced_acc"] == pytest.approx(2 / 3)  # per-class constant weights cancel


def test_against_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(300, 7)) * 3, rng.integers(0, 7, 300)
    m = split_metrics(logits, labels, 7)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert m["loss"] == pytest.approx(log_loss(labels, p, labels=range(7)))
    assert m["balanced_acc"] == pytest.approx(balanced_accuracy_score(labels, logits.argmax(1)))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 60), st.integers(2, 9), st.booleans())
def test_f1_and_confusion_equal_sklearn(seed, n, num_classes, weighted):
    """The numpy F1 and confusion matrix equal sklearn's on random labels, predictions, weights
    (zeros included) and class subsets, also with predictions outside the subset."""
    from sklearn.metrics import confusion_matrix, f1_score
    rng = np.random.default_rng(seed)
    labels, preds = rng.integers(0, num_classes, n), rng.integers(0, num_classes, n)
    w = rng.choice([0.0, 0.5, 1.0, 3.0], n) if weighted else None
    assume(w is None or w.sum() > 0)  # sklearn refuses all-zero weights
    classes = np.sort(rng.choice(num_classes, rng.integers(1, num_classes + 1), replace=False))
    macro, weighted_f1 = f1_scores(labels, preds, classes, w)
    for average, ours in (("macro", macro), ("weighted", weighted_f1)):
        ref = f1_score(labels, preds, labels=classes, average=average, sample_weight=w, zero_division=0)
        assert ours == pytest.approx(ref, abs=1e-12), average
    assert np.array_equal(confusion(preds, labels, num_classes),
                          confusion_matrix(labels, preds, labels=np.arange(num_classes)))


def test_log_softmax_equals_scipy_at_extremes():
    from scipy.special import log_softmax as scipy_log_softmax
    x = np.array([[1.0, 2.0, 3.0], [1e4, -1e4, 0.0], [-1e308, -1e308, -1e308], [-np.inf, 0.0, 1.0],
                  [700.0, 710.0, 720.0]])
    assert np.allclose(log_softmax(x), scipy_log_softmax(x, axis=1), rtol=1e-14, atol=0)
    assert np.isneginf(log_softmax(x)[3, 0]) and log_softmax(x)[2] == pytest.approx(np.full(3, -np.log(3)))


def test_loss_is_stable_for_large_logits():
    m = split_metrics(LOGITS * 1e4, LABELS, 3)
    assert math.isfinite(m["loss"]) and m["loss"] > 1e3
    assert split_metrics(LOGITS + 1e6, LABELS, 3)["loss"] == pytest.approx(split_metrics(LOGITS, LABELS, 3)["loss"])


def test_classes_restriction_counts_outside_predictions_as_wrong():
    keep = LABELS > 0  # labels [1, 1, 2, 2], preds [1, 1, 2, 0]
    m = split_metrics(LOGITS[keep], LABELS[keep], 3, classes=[1, 2])
    assert m["acc1"] == pytest.approx(3 / 4)
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3) / 2)  # class 2: tp 1, fn 1 (the 0), no fp
    assert m["balanced_acc"] == pytest.approx((1 + 1 / 2) / 2)


def test_ece_calibrated_and_overconfident():
    # every sample at confidence .7, 7 of 10 right: perfectly calibrated
    probs = np.tile([0.7, 0.3], (10, 1))
    labels = np.array([0] * 7 + [1] * 3)
    assert expected_calibration_error(probs, labels) == pytest.approx(0, abs=1e-12)
    # the same confidence with 6 of 10 right: overconfident by .1; at .9 with 6 right, by .3
    assert expected_calibration_error(probs, np.array([0] * 6 + [1] * 4)) == pytest.approx(0.1)
    assert expected_calibration_error(np.tile([0.9, 0.1], (10, 1)), np.array([0] * 6 + [1] * 4)) == pytest.approx(0.3)
    # statistical: correct ~ Bernoulli(confidence) over 200k samples gives ECE ~ 0
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 200_000)
    correct = rng.random(conf.size) < conf
    probs = np.stack([conf, 1 - conf], 1)
    assert expected_calibration_error(probs, np.where(correct, 0, 1)) < 0.005


def test_reliability_bins():
    probs = np.array([[0.5, 0.5], [0.6, 0.4], [1.0, 0.0], [0.2, 0.8]])
    labels = np.array([0, 1, 0, 1])
    b = reliability_bins(probs, labels, n_bins=4)
    assert list(b.columns) == ["bin", "lower", "upper", "confidence", "accuracy", "count", "mass"]
    # 0.5 falls in (0.25, 0.5]; 0.6 in (0.5, 0.75]; 0.8 and 1.0 in (0.75, 1]
    assert b["count"].tolist() == [0, 1, 1, 2]
    assert b["mass"].tolist() == [0, .25, .25, .5]
    assert np.isnan(b.loc[0, "confidence"]) and np.isnan(b.loc[0, "accuracy"])
    assert b.loc[3, "confidence"] == pytest.approx(0.9) and b.loc[3, "accuracy"] == 1.0
    assert b.loc[2, "accuracy"] == 0.0
    assert expected_calibration_error(probs, labels, 4) == pytest.approx(.25 * .5 + .25 * .6 + .5 * .1)


def test_per_class_accuracy_and_confusion():
    acc = per_class_accuracy(PREDS[:4], LABELS[:4], 4)
    assert acc[:2].tolist() == [0.5, 1.0] and np.isnan(acc[2:]).all()
    assert np.array_equal(per_class_accuracy(LOGITS, LABELS, 3), [0.5, 1.0, 0.5])
    cm = confusion(PREDS, LABELS, 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert np.array_equal(confusion(LOGITS, LABELS, 3), cm[:3, :3])


def test_evaluate_splits_and_groups():
    train_counts = np.array([100, 30, 5])
    res = evaluate(LOGITS, LABELS, train_counts, np.array(["head", "tail", "tail"]))
    assert tuple(res) == SPLITS and all(tuple(m) == METRIC_NAMES for m in res.values())
    assert res["balanced"] == split_metrics(LOGITS, LABELS, 3)
    # long-tailed accuracy of a balanced test set = Σ n_c recall_c / Σ n_c
    assert res["longtailed"]["acc1"] == pytest.approx((100 * .5 + 30 * 1 + 5 * .5) / 135)
    assert res["longtailed"]["balanced_acc"] == pytest.approx(res["balanced"]["balanced_acc"])
    assert res["head"]["n"] == 2 and res["head"]["acc1"] == pytest.approx(.5)
    assert res["head"]["macro_f1"] == pytest.approx(2 / 3)  # class 0: tp 1, fn 1; the fp of sample 5 is outside
    assert res["tail"]["n"] == 4 and res["tail"]["macro_f1"] == pytest.approx((1 + 2 / 3) / 2)
    # a group with no class: NaN metrics, n = 0
    assert res["middle"]["n"] == 0
    assert all(math.isnan(v) for k, v in res["middle"].items() if k != "n")


def test_group_with_classes_but_no_test_sample_is_nan():
    res = evaluate(LOGITS[:4], LABELS[:4], [10, 5, 1], np.array(["head", "middle", "tail"]))
    assert res["tail"]["n"] == 0 and math.isnan(res["tail"]["acc1"]) and math.isnan(res["tail"]["ece"])


def test_flatten():
    flat = flatten(evaluate(LOGITS, LABELS, [3, 2, 1], np.array(["head", "middle", "tail"])))
    assert len(flat) == len(SPLITS) * len(METRIC_NAMES)
    assert {"balanced/acc1", "longtailed/loss", "tail/macro_f1", "middle/n"} <= set(flat)
    assert flat["balanced/acc1"] == pytest.approx(4 / 6)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 40), num_classes=st.integers(2, 6))
def test_longtailed_weighting_equals_replicated_test_set(data, n, num_classes):
    seed = data.draw(st.integers(0, 2**32 - 1))
    train_counts = np.array(data.draw(st.lists(st.integers(0, 6), min_size=num_classes, max_size=num_classes)))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    assume(train_counts[labels].sum() > 0)
    # round the logits so that ties and shared confidences (bins) occur too
    logits = np.round(rng.normal(size=(n, num_classes)) * 2, 1)
    weighted = evaluate(logits, labels, train_counts, np.array(["head"] * num_classes))["longtailed"]
    # the long-tailed test set: class c's m_c test images stand for its n_c training images, so each
    # image is replicated n_c * L / m_c times (L: a common multiple of the test counts m)
    m = np.bincount(labels, minlength=num_classes)
    common = math.lcm(*[int(v) for v in m if v > 0])
    reps = train_counts[labels] * (common // m[labels])
    replicated = split_metrics(np.repeat(logits, reps, axis=0), np.repeat(labels, reps), num_classes)
    for name in ("loss", "acc1", "macro_f1", "weighted_f1", "balanced_acc", "ece"):
        assert weighted[name] == pytest.approx(replicated[name], rel=1e-9, abs=1e-12), name


def test_sigmoid_metrics_against_a_float64_loop():
    """Loss and ECE of a sigmoid-trained model from per-class sigmoid probabilities, computed here
    with math.exp / math.log element by element."""
    from longtail.metrics import probabilities
    rng = np.random.default_rng(3)
    logits, labels = rng.normal(size=(40, 5)) * 2 - 1, rng.integers(0, 5, 40)
    m = split_metrics(logits, labels, 5, activation="sigmoid")
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    bce = [sum(-math.log(sig(logits[i, j])) if j == labels[i] else -math.log(1.0 - sig(logits[i, j]))
               for j in range(5)) for i in range(40)]
    assert m["loss"] == pytest.approx(sum(bce) / 40, rel=1e-12)
    conf = [max(sig(v) for v in row) for row in logits]
    hit = [float(np.argmax(row) == y) for row, y in zip(logits, labels)]
    bins = {}
    for c, h in zip(conf, hit):
        b = min(int(math.ceil(c * 15)) - 1, 14)
        bins.setdefault(b, []).append((c, h))
    ece = sum(len(v) / 40 * abs(sum(h for _, h in v) / len(v) - sum(c for c, _ in v) / len(v)) for v in bins.values())
    assert m["ece"] == pytest.approx(ece, rel=1e-12)
    assert m["acc1"] == split_metrics(logits, labels, 5)["acc1"]  # same argmax
    assert m["loss"] != pytest.approx(split_metrics(logits, labels, 5)["loss"])
    assert probabilities(logits, "sigmoid")[0, 0] == pytest.approx(sig(logits[0, 0]))
    with pytest.raises(ValueError, match="activation 'tanh'.*softmax, sigmoid"):
        split_metrics(logits, labels, 5, activation="tanh")


def test_physical_longtailed_protocol_partitions_the_longtailed_test_set():
    from longtail.metrics import evaluate_physical, protocol_column
    # balanced test set LOGITS / LABELS; the long-tailed test set = rows 0, 1, 2, 4 (classes 0, 0, 1, 2)
    groups = np.array(["head", "middle", "tail"])
    own = lambda z, y: float(len(y))  # noqa: E731  (a stand-in loss that shows which rows it saw)
    res = evaluate_physical(LOGITS, LABELS, [0, 1, 2, 4], groups, own_loss=own)
    assert res["thesis_balanced"]["acc1"] == pytest.approx(4 / 6)
    assert res["thesis_longtailed"]["n"] == 4 and res["thesis_longtailed"]["acc1"] == pytest.approx(3 / 4)
    assert [res[f"thesis_{g}"]["n"] for g in ("head", "middle", "tail")] == [2, 1, 1]
    assert [res[f"thesis_{g}"]["acc1"] for g in ("head", "middle", "tail")] == [0.5, 1.0, 1.0]
    parts = sum(res[f"thesis_{g}"]["n"] * res[f"thesis_{g}"]["acc1"] for g in ("head", "middle", "tail"))
    assert parts / 4 == pytest.approx(res["thesis_longtailed"]["acc1"])  # the image-weighted mean
    assert res["thesis_head"]["train_loss"] == 2.0 and res["thesis_balanced"]["train_loss"] == 6.0
    # support-weighted F1 of the long-tailed set: class 0 (support 2): tp 1 fn 1 fp 0 -> 2/3; class 1 (1): P 1/2
    # R 1 -> 2/3; class 2 (1): 1 -> (2 * 2/3 + 2/3 + 1) / 4
    assert res["thesis_longtailed"]["weighted_f1"] == pytest.approx((2 * 2 / 3 + 2 / 3 + 1) / 4)
    given = evaluate_physical(LOGITS, LABELS, None, groups, lt_logits=LOGITS[[5]], lt_labels=LABELS[[5]])
    assert given["thesis_longtailed"]["n"] == 1 and given["thesis_tail"]["acc1"] == 0.0
    assert protocol_column("thesis", "tail", "f1") == "thesis_tail/weighted_f1"
    assert protocol_column("weighted", "tail", "f1") == "tail/macro_f1"
    with pytest.raises(ValueError, match="eval_protocol 'x'"):
        protocol_column("x", "tail", "f1")
