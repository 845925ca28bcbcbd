"""Long-tailed and balanced training subsets, long-tailed test splits, head/middle/tail groups.

Class order: class i of the profile is class i of the data set ("given", the CIFAR-LT
convention of Cao et al. 2019) unless ``class_order="random"``, which draws a permutation of
the classes from the subset seed.  Within a class the kept images are the first n_i of a
permutation drawn from the subset seed, so a subset is a pure function of
(labels, profile, imbalance factor, n_max, class order, seed).
"""
from __future__ import annotations

import math

import numpy as np

PROFILES = ("exp", "step", "zipf")
CLASS_ORDERS = ("given", "random")
SUBSET_METHODS = ("permutation", "reference")
GROUP_SCHEMES = ("auto", "thresholds", "thirds")
GROUP_NAMES = ("head", "middle", "tail")
#: (many, few): head classes have more than ``many`` training images, tail classes fewer than ``few``;
#: the many-/medium-/few-shot split of Zhang et al., Deep Long-Tailed Learning: A Survey (TPAMI 2023),
#: which follows Liu et al. (OLTR, CVPR 2019)
GROUP_THRESHOLDS = (100, 20)
VAL_SOURCES = ("split", "unused")
#: how the physical long-tailed test set is drawn from the balanced one (``longtailed_test_indices``)
LT_TEST_RULES = ("at_least_one", "proportional")


def longtail_counts(n_max: int, num_classes: int, imbalance_factor: float, profile: str = "exp") -> list[int]:
    """Per-class image counts of a long-tailed profile, largest first.

    - ``exp`` (Cao et al. 2019, Cui et al. 2019): n_i = int(n_max * IF^(-i/(C-1)))
    - ``step`` (Buda et al. 2018): the first half of the classes n_max, the rest int(n_max/IF)
    - ``zipf``: n_i = int(n_max / (i+1)^a) with a = log(IF)/log(C), so n_{C-1} = n_max/IF

    Every count is at least 1.  CIFAR-10 (n_max 5000) at IF 100 gives 12,406 images, at IF 10, 20,431.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if imbalance_factor < 1:
        raise ValueError(f"imbalance_factor must be >= 1, got {imbalance_factor}")
    if num_classes < 1 or n_max < 1:
        raise ValueError(f"need num_classes >= 1 and n_max >= 1, got {num_classes} and {n_max}")
    if num_classes == 1:
        return [int(n_max)]
    i = np.arange(num_classes)
    if profile == "exp":
        counts = [int(n_max * imbalance_factor ** (-k / (num_classes - 1))) for k in i]
    elif profile == "step":
        half = num_classes // 2
        counts = [n_max if k < half else int(n_max / imbalance_factor) for k in i]
    else:
        a = math.log(imbalance_factor) / math.log(num_classes)
        counts = [int(n_max / (k + 1) ** a) for k in i]
    return [max(1, c) for c in counts]


def class_counts(labels, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)


def _class_permutations(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]


def longtailed_indices(labels, num_classes: int, imbalance_factor: float, *, profile: str = "exp",
                       n_max: int | None = None, class_order: str = "given", seed: int = 0,
                       method: str = "permutation") -> np.ndarray:
    """Indices (sorted) of a long-tailed subset of ``labels``.

    ``n_max`` defaults to the smallest class size, so that the profile is realised exactly;
    a larger n_max caps each class at what it has (the realised counts are what the run saves).

    ``method="reference"`` draws the kept images as Cao et al.'s LDAM-DRW code does
    (``IMBALANCECIFAR10.gen_imbalanced_data``): ``np.random.seed(seed)``, then for each class in
    class order one legacy ``np.random.shuffle`` of its indices, the first n_c kept.  On CIFAR-10
    with the images of a class in CIFAR's own order this is their subset image for image.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if class_order not in CLASS_ORDERS:
        raise ValueError(f"unknown class_order {class_order!r}; choose one of {', '.join(CLASS_ORDERS)}")
    if method not in SUBSET_METHODS:
        raise ValueError(f"unknown subset method {method!r}; choose one of {', '.join(SUBSET_METHODS)}")
    if method == "reference":
        if class_order != "given":
            raise ValueError("subset method 'reference' keeps the given class order; use class_order='given'")
        available = class_counts(labels, num_classes)
        target = longtail_counts(int(available.min()) if n_max is None else n_max, num_classes, imbalance_factor, profile)
        legacy = np.random.RandomState(seed)
        keep = []
        for c in range(num_classes):
            idx = np.flatnonzero(labels == c)
            legacy.shuffle(idx)
            keep.append(idx[: target[c]])
        return np.sort(np.concatenate(keep))
    available = class_counts(labels, num_classes)
    if n_max is None:
        n_max = int(available.min())
    if n_max < 1:
        raise ValueError("a class has no training image; cannot build a long-tailed subset")
    rng = np.random.default_rng(seed)
    order = np.arange(num_classes) if class_order == "given" else rng.permutation(num_classes)
    target = longtail_counts(n_max, num_classes, imbalance_factor, profile)
    per_class = _class_permutations(labels, num_classes, rng)
    keep = [per_class[c][: target[rank]] for rank, c in enumerate(order)]
    return np.sort(np.concatenate(keep))


def balanced_indices(labels, num_classes: int, total: int | None = None, *, seed: int = 0) -> np.ndarray:
    """Indices of a balanced subset: ``total`` images spread evenly over the classes
    (the first ``total % C`` classes get one more), or the full set when ``total`` is None."""
    labels = np.asarray(labels, dtype=np.int64)
    if total is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    base, extra = divmod(int(total), num_classes)
    per_class = _class_permutations(labels, num_classes, rng)
    keep = [idx[: base + (c < extra)] for c, idx in enumerate(per_class)]
    return np.sort(np.concatenate(keep))


def stratified_split(labels, fraction: float, *, seed: int = 0, min_keep: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, held_out) with round(fraction * n_c) of each class held out,
    always leaving at least ``min_keep`` images of a class in ``rest``."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = min(int(round(fraction * len(idx))), max(0, len(idx) - min_keep))
        held.append(idx[:k])
    held = np.sort(np.concatenate(held)) if held else np.array([], dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(labels)), held)
    return rest, held


def group_thresholds_problem(thresholds) -> str | None:
    """What is wrong with ``thresholds`` as (many, few) group thresholds, or None: two integers with
    0 <= few < many (few = 0: no tail class; many = few would leave the middle group empty)."""
    ok = (isinstance(thresholds, (list, tuple)) and len(thresholds) == 2
          and all(isinstance(t, int) and not isinstance(t, bool) for t in thresholds))
    if not ok:
        return "must be [many, few], two integers (head: more than many training images, tail: fewer than few)"
    many, few = thresholds
    if few < 0 or many <= few:
        return (f"needs 0 <= few < many (head: more than many={many} training images, tail: fewer than "
                f"few={few}); e.g. the survey's {list(GROUP_THRESHOLDS)}")
    return None


def class_groups(train_counts, scheme: str = "auto", many: int = GROUP_THRESHOLDS[0],
                 few: int = GROUP_THRESHOLDS[1]) -> np.ndarray:
    """Head / middle / tail group of every class from its training count.

    - ``thresholds`` (the survey's many/medium/few shots): head > ``many``, tail < ``few``, middle
      the rest (``GROUP_THRESHOLDS``: the survey's 100 and 20).
    - ``thirds``: classes sorted by count (largest first, ties by class index) cut into three
      near-equal parts (``np.array_split``).
    - ``auto``: thresholds where they give three non-empty groups, else thirds (as on CIFAR-10-LT
      or EU Moths, whose counts are all below 100).
    """
    counts = np.asarray(train_counts)
    if scheme not in GROUP_SCHEMES:
        raise ValueError(f"unknown group scheme {scheme!r}; choose one of {', '.join(GROUP_SCHEMES)}")
    if (problem := group_thresholds_problem([many, few])) is not None:
        raise ValueError(f"group thresholds {[many, few]}: {problem}")
    by_threshold = np.where(counts > many, "head", np.where(counts < few, "tail", "middle")).astype(object)
    if scheme == "thresholds" or (scheme == "auto" and len(set(by_threshold)) == 3):
        return by_threshold
    order = np.argsort(-counts, kind="stable")
    groups = np.empty(len(counts), dtype=object)
    for name, part in zip(GROUP_NAMES, np.array_split(order, 3)):
        groups[part] = name
    return groups


def longtailed_test_weights(test_labels, train_counts) -> np.ndarray:
    """Sample weights that turn a test set into the long-tailed one: w_i = n_train[y_i] / m_test[y_i]
    (m_test[c]: the test images of class c), normalised to mean 1.

    Each class then carries a total weight proportional to its training count, whatever its number
    of test images, so a metric weighted so is the exact expectation under a test set drawn with the
    training prior.  On a balanced test set (m constant) this is w ∝ n_train[y]."""
    test_labels = np.asarray(test_labels, dtype=np.int64)
    n = np.asarray(train_counts, dtype=np.float64)
    m = np.bincount(test_labels, minlength=len(n)).astype(np.float64)
    w = n[test_labels] / m[test_labels]
    return w / w.mean()


def longtailed_test_indices(test_labels, train_counts, *, seed: int = 0, rule: str = "at_least_one") -> np.ndarray:
    """A physically subsampled long-tailed test set (sorted indices into ``test_labels``).

    Scale r = min_c m_c / n_c over the classes with test images and training count (m_c: its test
    images, n_c: its training count): the largest at which every class has r·n_c test images.
    Class c keeps k_c images, the first of a permutation of its test images drawn from ``seed``:

    - ``at_least_one``: k_c = round(r·n_c), at least one where the class has any.  Every class is
      tested, but the tail is over-represented where r·n_c < 1/2 (EU Moths at IF 8: r = 1/4, the
      66 one-image tail classes keep one test image each, 29 % of the 228 against 11 % of the
      training images).
    - ``proportional``: the training prior without a floor, by cumulative rounding: the classes in
      descending training count (ties by class index, the order of ``class_groups``' thirds),
      k_c = R(S_c) - R(S_{c-1}) with S_c the running sum of r·n and R rounding half up.  Every k_c is
      r·n_c rounded down or up, and every run of consecutive classes in that order (each head /
      middle / tail group, by thresholds or thirds) holds r times its training images to within one
      image, so the long-tailed test set's group shares are those of the training set.  A class
      may keep no test image.

    On a balanced test set (m constant) r = m / n_max.
    """
    if rule not in LT_TEST_RULES:
        raise ValueError(f"unknown long-tailed test rule {rule!r}; choose one of {', '.join(LT_TEST_RULES)}")
    test_labels = np.asarray(test_labels, dtype=np.int64)
    train_counts = np.asarray(train_counts)
    m = np.bincount(test_labels, minlength=len(train_counts))
    usable = (m > 0) & (train_counts > 0)
    if rule == "at_least_one":
        n = train_counts.astype(np.float64)
        r = (m[usable] / n[usable]).min() if usable.any() else 0.0
        k = [min(m_c, max(1, int(round(r * n_c)))) if m_c else 0 for m_c, n_c in zip(m, n)]
    else:
        k = _cumulative_rounding(np.where(usable, train_counts, 0).astype(np.int64), m)
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(test_labels == c))[:k_c] for c, k_c in enumerate(k)]
    return np.sort(np.concatenate(keep)) if keep else np.array([], dtype=np.int64)


def _cumulative_rounding(n: np.ndarray, m: np.ndarray) -> list[int]:
    """k_c of the ``proportional`` rule in exact integer arithmetic: r = m_j / n_j for the class j
    of smallest m/n, so S·n_j is an integer and R(S) = floor((2·S·n_j + n_j) / (2·n_j))."""
    k = [0] * len(n)
    if not (n > 0).any():
        return k
    ratio_classes = np.flatnonzero(n > 0)
    j = ratio_classes[np.argmin([m[c] / n[c] for c in ratio_classes])]
    num, den = int(m[j]), int(n[j])
    running, previous = 0, 0
    for c in np.argsort(-n, kind="stable"):
        running += num * int(n[c])  # S_c · den
        rounded = (2 * running + den) // (2 * den)
        k[c], previous = rounded - previous, rounded
    return k


def group_sizes(groups, train_counts, test_counts) -> dict[str, dict[str, int]]:
    """Per group (``GROUP_NAMES``): ``classes``, ``train_images`` (of ``train_counts``, the counts that
    define the groups) and ``test_images`` (of ``test_counts``, e.g. the long-tailed test set's)."""
    groups = np.asarray(groups)
    train_counts, test_counts = np.asarray(train_counts), np.asarray(test_counts)
    return {g: {"classes": int((groups == g).sum()), "train_images": int(train_counts[groups == g].sum()),
                "test_images": int(test_counts[groups == g].sum())} for g in GROUP_NAMES}


def unused_validation_indices(labels, used, num_classes: int, per_class: int = 2, *, seed: int = 0,
                              image_keys=None) -> np.ndarray:
    """A balanced validation split from the training-fold images that no training subset uses.

    ``used``: indices (into ``labels``) of the training images (the long-tailed subset and, for a
    balanced run, its own subset too).  Class c gets min(``per_class``, its unused images) images,
    the first ones of a permutation drawn from ``seed``, so the split is disjoint from ``used`` by
    construction and from the test fold because ``labels`` is the training fold.  ``image_keys``: an
    identity of every image (given sets: ``ImageSplit.content_keys``, equal for files of equal
    content), so that a copy of a used image, e.g. a given long-tailed set copied out of the given
    balanced one, counts as used too.  A class without
    a spare image (on EU Moths at IF 8 one head class) has no validation image: balanced accuracy on
    the split then averages over the classes that have one (``metrics.per_class_accuracy`` gives
    NaN for the others).  ImageNet-LT keeps such a balanced validation set (Liu et al., CVPR 2019).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class={per_class!r}: must be a positive integer")
    used = np.asarray(used, dtype=np.int64)
    spare = np.ones(len(labels), dtype=bool)
    spare[used] = False
    if image_keys is not None:
        keys = np.asarray(image_keys, dtype=object)
        spare &= ~np.isin(keys, list(set(keys[used])))
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero((labels == c) & spare))[:per_class] for c in range(num_classes)]
    return np.sort(np.concatenate(keep)) if keep else np.array([], dtype=np.int64)


def fit_and_validation_indices(labels, train, longtailed, num_classes: int, *, val_source: str = "split",
                               val_fraction: float = 0.1, val_per_class: int = 2,
                               seed: int = 0, image_keys=None) -> tuple[np.ndarray, np.ndarray]:
    """The images a run fits on and its validation split, as indices into ``labels`` (the training fold).

    ``train``: the run's training set (long-tailed or balanced), ``longtailed``: the long-tailed set
    (the same for a long-tailed run).
    - ``val_source="split"``: ``val_fraction`` of each class of ``train`` held out
      (:func:`stratified_split`, seeded by ``seed``); the run fits on the rest.
    - ``"unused"``: the run fits on all of ``train``; the validation split is
      :func:`unused_validation_indices` (``val_per_class`` a class) of the images neither training
      set uses (``image_keys``: their identities, see there).  None left (a balanced set that is
      the whole training fold, as a given ``train_balanced`` is for a balanced run) is an error:
      the run would silently select its last epoch.
    The one definition of the split, for a run (``longtail.run``) and the data summary
    (``longtail.datasummary``).
    """
    train = np.asarray(train, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if val_source == "unused":
        val = unused_validation_indices(labels, np.union1d(train, np.asarray(longtailed, dtype=np.int64)),
                                        num_classes, val_per_class, seed=seed, image_keys=image_keys)
        if not len(val) and len(train):
            raise ValueError("val_source 'unused': every training-fold image is in a training set (a given "
                             "train_balanced for a balanced run, balanced_size 'full', or a given train_longtailed "
                             "holding copies of them), so no image is left to validate on; use val_source split "
                             "with val_fraction > 0, or val_fraction 0 without validation (the last epoch is kept)")
        return train, val
    if val_source == "split":
        fit, held = stratified_split(labels[train], val_fraction, seed=seed)
        return train[fit], train[held]
    raise ValueError(f"unknown val_source {val_source!r}; choose one of {', '.join(VAL_SOURCES)}")
