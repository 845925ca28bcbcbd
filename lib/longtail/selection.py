"""Which images a run trains and tests on: derived from one base set, or given as they are.

| set                     | derived (``train/`` + ``test/``, EU Moths, CIFAR)  | given (``data.GIVEN_SETS``)             |
|-------------------------|----------------------------------------------------|-----------------------------------------|
| long-tailed training    | the base training set subsampled by the profile    | ``train_longtailed`` as it is, else     |
|                         | (``subsets.longtailed_indices``)                   | ``train_balanced`` subsampled            |
| balanced training       | ``subsets.balanced_indices`` (matched or full)     | ``train_balanced`` as it is             |
| balanced test           | the test split                                     | ``test_balanced``                       |
| physical long-tailed    | the balanced test set subsampled by the profile    | ``test_longtailed`` as it is, else      |
| test                    | (``subsets.longtailed_test_indices``)              | sampled from ``test_balanced``          |

The long-tailed training counts (``lt_counts``) define, for both training sets, the head / middle /
tail groups and the long-tailed test distribution.  With a given long-tailed training set, n_max,
the imbalance factor and the profile play no part.  A sampled long-tailed test set follows
``test_longtailed_rule`` (``subsets.longtailed_test_indices``).

Validation (``validation_fraction``): ``val_fraction`` null (the default) holds out
``DERIVED_VAL_FRACTION`` of each class of a derived training set, and nothing of given sets, which
are used as they are: their run keeps its last epoch unless ``val_fraction`` or ``val_source:
unused`` asks for a validation split.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import subsets

#: the validation split of a derived training set when ``val_fraction`` is null: 10 % of each class
DERIVED_VAL_FRACTION = 0.1


@dataclass
class RunSets:
    """Indices into the run's training split (``train``, ``longtailed``) and test split
    (``test_balanced``, ``test_longtailed``), and what was given."""
    train: np.ndarray            # the training set of the run (before any validation split)
    longtailed: np.ndarray       # the long-tailed training set (defines lt_counts and the groups)
    lt_counts: np.ndarray
    test_balanced: np.ndarray
    test_longtailed: np.ndarray  # the physical long-tailed test set
    given: tuple[str, ...] = ()

    def describe(self) -> str:
        derived = [s for s in ("train_balanced", "train_longtailed", "test_balanced", "test_longtailed")
                   if s not in self.given]
        return (f"given: {', '.join(self.given)}; derived: {', '.join(derived) or 'none'}" if self.given
                else "all sets derived from the base training and test splits")


def run_sets(p: dict, train_labels, train_part, test_labels, test_part, num_classes: int) -> RunSets:
    """The sets of a run with parameters ``p`` (``train_set``, ``imbalance_factor``, ``profile``,
    ``n_max``, ``class_order``, ``balanced_size``, ``subset_seed``, ``subset_method``,
    ``test_longtailed_rule``).  ``train_part`` / ``test_part``:
    the given set of every image (``ImageSplit.part``), or None for derived sets."""
    train_labels, test_labels = np.asarray(train_labels, dtype=np.int64), np.asarray(test_labels, dtype=np.int64)
    C, seed = num_classes, p["subset_seed"]
    given: tuple[str, ...] = ()
    if train_part is None:
        base = np.arange(len(train_labels))
        given_lt = None
    else:
        train_part, test_part = np.asarray(train_part), np.asarray(test_part)
        given = tuple(g for g in ("train_balanced", "train_longtailed") if (train_part == g).any()) + tuple(
            g for g in ("test_balanced", "test_longtailed") if (test_part == g).any())
        base = np.flatnonzero(train_part == "train_balanced")
        given_lt = np.flatnonzero(train_part == "train_longtailed") if "train_longtailed" in given else None
    if given_lt is not None:
        lt_idx = given_lt
    else:
        lt_idx = base[subsets.longtailed_indices(train_labels[base], C, p["imbalance_factor"], profile=p["profile"],
                                                 n_max=p["n_max"], class_order=p["class_order"], seed=seed,
                                                 method=p["subset_method"])]
    lt_counts = subsets.class_counts(train_labels[lt_idx], C)
    if p["train_set"] == "longtailed":
        train = lt_idx
    elif train_part is not None:
        if not len(base):
            raise ValueError(f"train_set='balanced' needs a given train_balanced set; given: {', '.join(given)}")
        train = base  # as it is
    else:
        total = len(lt_idx) if p["balanced_size"] == "matched" else None
        train = base[subsets.balanced_indices(train_labels[base], C, total, seed=seed)]
    if test_part is None:
        test_bal = np.arange(len(test_labels))
    else:
        test_bal = np.flatnonzero(test_part == "test_balanced")
    if "test_longtailed" in given:
        test_lt = np.flatnonzero(test_part == "test_longtailed")
    else:
        test_lt = test_bal[subsets.longtailed_test_indices(test_labels[test_bal], lt_counts, seed=seed,
                                                           rule=p["test_longtailed_rule"])]
    return RunSets(train, lt_idx, lt_counts, test_bal, test_lt, given)


def validation_fraction(val_fraction, val_source: str, given: bool) -> float:
    """The fraction of each training class held out for validation: ``val_fraction`` where set;
    when null, none for ``val_source: unused`` (it validates on images outside the training sets)
    and for ``given`` sets (used as they are), else ``DERIVED_VAL_FRACTION``."""
    if val_fraction is not None:
        return float(val_fraction)
    return 0.0 if val_source == "unused" or given else DERIVED_VAL_FRACTION
