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


def test_group_thresholds_choose_the_groups_and_bad_ones_are_named():
    counts = np.array([9, 7, 6, 5, 3, 2, 1])
    assert list(class_groups(counts, "thresholds", 5, 2)) == ["head"] * 3 + ["middle"] * 3 + ["tail"]
    assert list(class_groups(counts, "auto", 5, 2)) == list(class_groups(counts, "thresholds", 5, 2))
    assert subsets.GROUP_THRESHOLDS == (100, 20)  # the survey's many / few shots
    assert subsets.group_thresholds_problem([100, 20]) is None and subsets.group_thresholds_problem([1, 0]) is None
    for bad in ([20, 20], [20, 100], [5, -1], [100], [100.0, 20], ["100", 20], [True, 0]):
        assert subsets.group_thresholds_problem(bad) is not None, bad
    assert "needs 0 <= few < many" in subsets.group_thresholds_problem([20, 100])
    with pytest.raises(ValueError, match=r"group thresholds \[2, 5\]: needs 0 <= few < many"):
        class_groups(counts, "thresholds", 2, 5)


def test_longtailed_test_rules_by_hand():
    # training counts 8, 7, 6, 2, 1, 1, 1, 1; two test images a class: r = min 2/n = 1/4.
    # at_least_one: round(r n) = 2, 2 (1.75), 2 (1.5), 0 -> 1, 0 -> 1 ... (banker's rounding, then the floor)
    # proportional: running sums of r n = 2, 3.75, 5.25, 5.75, 6, 6.25, 6.5, 6.75 rounded half up
    # = 2, 4, 5, 6, 6, 6, 7, 7: differences 2, 2, 1, 1, 0, 0, 1, 0 (7 images = r * 27 rounded)
    y = np.repeat(np.arange(8), 2)
    n = [8, 7, 6, 2, 1, 1, 1, 1]
    at_least_one = longtailed_test_indices(y, n, seed=0, rule="at_least_one")
    assert np.array_equal(at_least_one, longtailed_test_indices(y, n, seed=0))  # the default: unchanged
    assert class_counts(y[at_least_one], 8).tolist() == [2, 2, 2, 1, 1, 1, 1, 1]
    proportional = longtailed_test_indices(y, n, seed=0, rule="proportional")
    assert class_counts(y[proportional], 8).tolist() == [2, 2, 1, 1, 0, 0, 1, 0]
    with pytest.raises(ValueError, match="choose one of at_least_one, proportional"):
        longtailed_test_indices(y, n, rule="floor")


@given(n=st.lists(st.integers(0, 60), min_size=3, max_size=40), m=st.integers(1, 6), seed=st.integers(0, 3))
def test_proportional_rule_keeps_the_training_shares_of_every_group(n, m, seed):
    """Every class r·n_c rounded down or up, and every run of consecutive classes in descending count,
    so each group of thirds or thresholds, r times its training images to within one image."""
    n = np.array(n)
    y = np.repeat(np.arange(len(n)), m)  # a balanced test set: r = m / n_max
    k = class_counts(y[longtailed_test_indices(y, n, seed=seed, rule="proportional")], len(n))
    if n.max() == 0:
        assert k.sum() == 0
        return
    exact = m * n / n.max()
    assert (k >= np.floor(exact)).all() and (k <= np.ceil(exact)).all() and (k <= m).all()
    for scheme, thresholds in (("thirds", (100, 20)), ("thresholds", (30, 10)), ("thresholds", (5, 1))):
        groups = class_groups(n, scheme, *thresholds)
        for g, size in subsets.group_sizes(groups, n, k).items():
            assert abs(size["test_images"] - m * size["train_images"] / n.max()) < 1 + 1e-9, (scheme, g)


def test_proportional_rule_and_thresholds_reproduce_the_thesis_group_shares():
    """The thesis's long-tailed test set: 844 / 169 / 38 of 1,051 images (80.3 / 16.1 / 3.6 %), from a
    balanced test set of 5,000.  100 classes of 50 test images, an exponential training profile
    (n_max 500, IF 50) and group_thresholds [107, 28] give 1012 / 203 / 46 (80.3 / 16.1 / 3.6 %)."""
    from longtail import params, selection
    C = 100
    train_y = np.repeat(np.arange(C), 500)
    test_y = np.repeat(np.arange(C), 50)
    p = params.validate({"imbalance_factor": 50, "test_longtailed_rule": "proportional",
                         "group_scheme": "thresholds", "group_thresholds": [107, 28]})
    sets = selection.run_sets(p, train_y, None, test_y, None, C)
    groups = class_groups(sets.lt_counts, p["group_scheme"], *p["group_thresholds"])
    sizes = subsets.group_sizes(groups, sets.lt_counts, class_counts(test_y[sets.test_longtailed], C))
    assert [s["test_images"] for s in sizes.values()] == [1012, 203, 46]
    assert [s["classes"] for s in sizes.values()] == [39, 34, 27]
    shares = np.array([s["test_images"] for s in sizes.values()]) / len(sets.test_longtailed)
    assert np.abs(shares - np.array([844, 169, 38]) / 1051).max() < 0.001
    # the survey's default thresholds (100, 20) give another split of the same classes
    default = class_groups(sets.lt_counts, "thresholds", *params.DEFAULTS["group_thresholds"])
    assert list(default) != list(groups)


def test_unused_validation_excludes_copies_of_training_images():
    # images 0-3 of class 0 and 4-7 of class 1; image 6 is a copy of the used image 5 (equal keys)
    labels = np.repeat([0, 1], 4)
    keys = np.array(["a", "b", "c", "d", "e", "f", "f", "g"], dtype=object)
    used = np.array([0, 5])
    val = subsets.unused_validation_indices(labels, used, 2, per_class=4, seed=0, image_keys=keys)
    assert val.tolist() == [1, 2, 3, 4, 7]
    with pytest.raises(ValueError, match="no image is left to validate on"):
        subsets.fit_and_validation_indices(labels, np.arange(8), np.arange(4), 2, val_source="unused")
