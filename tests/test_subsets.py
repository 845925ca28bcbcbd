import numpy as np
import pytest
from hypothesis import given, strategies as st

from longtail import subsets
from longtail.subsets import (balanced_indices, class_counts, class_groups, longtail_counts,
                              longtailed_indices, longtailed_test_indices, longtailed_test_weights,
                              stratified_split)


def test_cifar10_lt_published_sizes():
    # Cao et al. 2019 / Cui et al. 2019: CIFAR-10-LT sizes
    assert sum(longtail_counts(5000, 10, 100)) == 12406
    assert sum(longtail_counts(5000, 10, 10)) == 20431
    assert longtail_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


@given(n_max=st.integers(1, 5000), C=st.integers(2, 300), IF=st.floats(1, 500), profile=st.sampled_from(["exp", "step", "zipf"]))
def test_profiles_are_monotone_and_bounded(n_max, C, IF, profile):
    counts = longtail_counts(n_max, C, IF, profile)
    assert len(counts) == C and counts[0] == n_max
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    assert min(counts) >= max(1, int(n_max / IF) - 1)


def test_bad_profile_names_choices():
    with pytest.raises(ValueError, match="exp, step, zipf"):
        longtail_counts(10, 3, 2, "linear")


def _labels(per_class=(50, 40, 60, 55, 45)):
    return np.repeat(np.arange(len(per_class)), per_class)


def test_longtailed_subset_realises_profile_and_is_deterministic():
    y = _labels()
    idx = longtailed_indices(y, 5, 10, seed=3)
    assert class_counts(y[idx], 5).tolist() == longtail_counts(40, 5, 10)  # n_max = smallest class (40)
    assert np.array_equal(idx, longtailed_indices(y, 5, 10, seed=3))
    assert not np.array_equal(idx, longtailed_indices(y, 5, 10, seed=4))
    shuffled = longtailed_indices(y, 5, 10, seed=3, class_order="random")
    assert sorted(class_counts(y[shuffled], 5).tolist()) == sorted(longtail_counts(40, 5, 10))


def test_balanced_subset_matches_total():
    y = _labels()
    lt = longtailed_indices(y, 5, 10)
    bal = balanced_indices(y, 5, len(lt), seed=0)
    counts = class_counts(y[bal], 5)
    assert counts.sum() == len(lt) and counts.max() - counts.min() <= 1
    assert len(balanced_indices(y, 5, None)) == len(y)


def test_stratified_split_keeps_every_class():
    y = np.repeat(np.arange(4), [10, 3, 1, 20])
    rest, held = stratified_split(y, 0.2, seed=0)
    assert len(np.intersect1d(rest, held)) == 0 and len(rest) + len(held) == len(y)
    assert class_counts(y[held], 4).tolist() == [2, 1, 0, 4]
    assert set(y[rest]) == {0, 1, 2, 3}


def test_groups_thresholds_thirds_auto():
    survey = np.array([500, 150, 101, 100, 50, 20, 19, 5])
    assert list(class_groups(survey, "thresholds")) == ["head"] * 3 + ["middle"] * 3 + ["tail"] * 2
    assert list(class_groups(survey, "auto")) == list(class_groups(survey, "thresholds"))
    cifar_lt = np.array(longtail_counts(5000, 10, 100))  # no "middle" by thresholds: thirds
    assert list(class_groups(cifar_lt, "auto")) == ["head"] * 4 + ["middle"] * 3 + ["tail"] * 3
    shuffled = np.array([3, 9, 1, 7, 5, 8])
    assert list(class_groups(shuffled, "thirds")) == ["tail", "head", "tail", "middle", "middle", "head"]


def test_weighted_longtailed_accuracy_equals_replicated_test_set():
    rng = np.random.default_rng(0)
    train_counts = np.array([40, 20, 9, 4, 2])
    y = np.repeat(np.arange(5), 10)
    pred = np.where(rng.random(len(y)) < 0.7, y, (y + 1) % 5)
    w = longtailed_test_weights(y, train_counts)
    weighted = np.average(pred == y, weights=w)
    replicated = np.concatenate([np.repeat(pred[i] == y[i], train_counts[y[i]]) for i in range(len(y))]).mean()
    assert weighted == pytest.approx(replicated, abs=1e-12)
    assert w.mean() == pytest.approx(1.0)


def test_physically_subsampled_longtailed_test():
    y = np.repeat(np.arange(3), 10)
    idx = longtailed_test_indices(y, [100, 50, 1], seed=0)
    assert class_counts(y[idx], 3).tolist() == [10, 5, 1]


def test_reference_subset_is_cao_et_al_draw():
    # IMBALANCECIFAR10.gen_imbalanced_data: np.random.seed(0); per class in order, shuffle its
    # indices (legacy generator) and keep the first n_c; re-implemented here with the global state
    labels = np.repeat(np.arange(4), 50)[np.random.default_rng(1).permutation(200)]
    counts = subsets.longtail_counts(50, 4, 10.0)
    np.random.seed(0)
    expected = []
    for c in range(4):
        idx = np.where(labels == c)[0]
        np.random.shuffle(idx)
        expected.append(idx[:counts[c]])
    got = subsets.longtailed_indices(labels, 4, 10.0, n_max=50, seed=0, method="reference")
    assert np.array_equal(got, np.sort(np.concatenate(expected)))
    ours = subsets.longtailed_indices(labels, 4, 10.0, n_max=50, seed=0)
    assert np.array_equal(np.bincount(labels[ours]), np.bincount(labels[got])) and not np.array_equal(ours, got)
    with pytest.raises(ValueError, match="choose one of permutation, reference"):
        subsets.longtailed_indices(labels, 4, 10.0, method="first")


def test_longtailed_weights_on_an_unbalanced_test_set_by_hand():
    # training counts 8, 4, 1; test images 2, 4, 1: by hand, w = n/m = 4, 1, 1 per image
    # (class totals 2*4 = 8, 4*1 = 4, 1*1 = 1, proportional to the training counts), mean over
    # the 7 images (2*4 + 4*1 + 1) / 7 = 13/7, so w = 28/13, 7/13, 7/13.
    y = np.array([0, 0, 1, 1, 1, 1, 2])
    w = longtailed_test_weights(y, [8, 4, 1])
    assert w.tolist() == pytest.approx([28 / 13] * 2 + [7 / 13] * 4 + [7 / 13])
    totals = np.bincount(y, weights=w)
    assert (totals / totals.sum()).tolist() == pytest.approx([8 / 13, 4 / 13, 1 / 13])


def test_physically_subsampled_longtailed_test_on_an_unbalanced_test_set():
    # test images 10, 4, 6; training counts 100, 20, 10: r = min(10/100, 4/20, 6/10) = 0.1,
    # so k = 10, 2, 1 (proportional to the training counts, not to m * n)
    y = np.repeat(np.arange(3), [10, 4, 6])
    idx = longtailed_test_indices(y, [100, 20, 10], seed=0)
    assert class_counts(y[idx], 3).tolist() == [10, 2, 1]


def test_fit_and_validation_indices_for_both_sources():
    labels = np.repeat(np.arange(3), [10, 6, 4])                        # the training fold
    lt = np.array([0, 1, 2, 3, 4, 5, 10, 11, 12, 16])                  # 6 / 3 / 1 images a class
    bal = np.array([6, 7, 8, 13, 14, 17, 18])
    fit, val = subsets.fit_and_validation_indices(labels, lt, lt, 3, val_source="split", val_fraction=0.34, seed=0)
    rest, held = subsets.stratified_split(labels[lt], 0.34, seed=0)   # split: held out of the training set
    assert fit.tolist() == lt[rest].tolist() and val.tolist() == lt[held].tolist()
    assert class_counts(labels[val], 3).tolist() == [2, 1, 0]          # round(0.34 n), one image always kept
    for train in (lt, bal):                                             # unused: fit on all, validate on the rest
        fit, val = subsets.fit_and_validation_indices(labels, train, lt, 3, val_source="unused", val_per_class=2, seed=0)
        assert fit.tolist() == train.tolist()
        assert not set(val) & (set(lt) | set(bal) if train is bal else set(lt))
        assert class_counts(labels[val], 3).tolist() == ([2, 2, 2] if train is lt else [1, 1, 1])
    with pytest.raises(ValueError, match="val_source 'holdout'.*split, unused"):
        subsets.fit_and_validation_indices(labels, lt, lt, 3, val_source="holdout")
