"""The data set as the runs see it, for ``notebooks/explore.py``: per class the long-tailed and
balanced training counts, the head / middle / tail group and the test counts (``class_table``), a
summary per training and test set (``set_summary``), a few training images per group
(``sample_images``), and the sizes of the original images (``image_sizes``, ``size_summary``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import selection, subsets
from .data import split_images


def class_table(ds, *, imbalance_factor: float, profile: str = "exp", n_max=None, class_order: str = "given",
                subset_seed: int = 0, val_fraction: float | None = None, val_source: str = "split",
                val_per_class: int = 2, group_scheme: str = "auto", group_thresholds=subsets.GROUP_THRESHOLDS,
                balanced_size: str = "matched", subset_method: str = "permutation",
                test_longtailed_rule: str = "at_least_one") -> pd.DataFrame:
    """Per class: the images the long-tailed and the balanced training sets train on (after the
    validation split, ``subsets.fit_and_validation_indices`` as in a run: the ``train_count`` of its
    ``classes.csv``), the head / middle / tail group and the long-tailed test weights (of the whole
    long-tailed set, before any validation split, as in a run), and the test images: the balanced test set, the physical long-tailed one
    (given, or sampled), and the effective images of the weighted long-tailed split (Σ w); sets
    derived or given as in a run (``selection.run_sets``)."""
    y, C = np.asarray(ds.train.labels), ds.num_classes
    test_y = np.asarray(ds.test.labels)
    p = dict(imbalance_factor=imbalance_factor, profile=profile, n_max=n_max, class_order=class_order,
             subset_seed=subset_seed, balanced_size=balanced_size, subset_method=subset_method,
             test_longtailed_rule=test_longtailed_rule)
    sets = selection.run_sets({**p, "train_set": "longtailed"}, y, ds.train.part, test_y, ds.test.part, C)
    lt = sets.train
    try:  # given sets without train_balanced have no balanced training set
        bal = selection.run_sets({**p, "train_set": "balanced"}, y, ds.train.part, test_y, ds.test.part, C).train
    except ValueError:
        bal = np.array([], dtype=np.int64)

    fraction = selection.validation_fraction(val_fraction, val_source, bool(sets.given))

    def fit_counts(idx):
        if not len(idx):
            return np.zeros(C, dtype=np.int64)
        fit, _ = subsets.fit_and_validation_indices(y, idx, lt, C, val_source=val_source, val_fraction=fraction,
                                                    val_per_class=val_per_class, seed=subset_seed,
                                                    image_keys=ds.train.content_keys)
        return subsets.class_counts(y[fit], C)

    lt_counts, bal_counts = fit_counts(lt), fit_counts(bal)
    test_bal = test_y[sets.test_balanced]
    w = subsets.longtailed_test_weights(test_bal, sets.lt_counts)
    return pd.DataFrame({
        "class": np.arange(C), "name": ds.class_names,
        "group": subsets.class_groups(sets.lt_counts, group_scheme, *group_thresholds),
        "longtailed": lt_counts, "balanced": bal_counts,
        "test_balanced": subsets.class_counts(test_bal, C),
        "test_longtailed_sampled": subsets.class_counts(test_y[sets.test_longtailed], C),
        "test_longtailed_weighted": np.bincount(test_bal, weights=w, minlength=C).round(1)})


def set_summary(classes: pd.DataFrame) -> pd.DataFrame:
    """Per training / test set: images, classes, largest and smallest class, realised imbalance
    factor, and the share of classes and images of each group."""
    rows = {}
    for col, label in (("longtailed", "long-tailed training"), ("balanced", "balanced training"),
                       ("test_balanced", "balanced test"), ("test_longtailed_sampled", "long-tailed test (sampled)")):
        n = classes[col]
        row = {"images": int(n.sum()), "classes": int((n > 0).sum()), "largest": int(n.max()),
               "smallest": int(n.min()), "imbalance": round(float(n.max() / max(n.min(), 1)), 1)}
        for g in subsets.GROUP_NAMES:
            sel = classes["group"] == g
            row[f"{g} classes"] = int(sel.sum())
            row[f"{g} images %"] = round(100 * float(n[sel].sum() / max(n.sum(), 1)), 1)
        rows[label] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def sample_images(ds, classes: pd.DataFrame, per_group: int = 6, size: int = 96, seed: int = 0):
    """One training image of each of ``per_group`` classes per group (spread over the group, from its
    largest to its smallest class), decoded at ``size`` px through the image cache.
    Returns (images uint8 [N, size, size, 3], table: group, class, name, train count)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(ds.train.labels)
    pick, rows = [], []
    for g in subsets.GROUP_NAMES:
        cls = classes[classes["group"] == g].sort_values("longtailed", ascending=False, kind="stable")
        if not len(cls):
            continue
        chosen = cls.iloc[np.unique(np.linspace(0, len(cls) - 1, min(per_group, len(cls))).round().astype(int))]
        for _, c in chosen.iterrows():
            pick.append(int(rng.choice(np.flatnonzero(labels == c["class"]))))
            rows.append({"group": g, "class": int(c["class"]), "name": c["name"], "train_count": int(c["longtailed"])})
    images, kept = split_images(ds.train.subset(pick), size, on_error="skip", progress=False)
    return np.asarray(images), pd.DataFrame(rows).iloc[kept].reset_index(drop=True)


def image_sizes(ds, max_files: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Width and height of the original images (header only, through PIL) of up to ``max_files``
    files, drawn at random from both splits; for an in-memory data set its array shape.
    Columns: split, width, height (and path for files)."""
    from PIL import Image
    rows = []
    for split_name, split in (("train", ds.train), ("test", ds.test)):
        if split.paths is None:
            n, h, w = split.images.shape[:3]
            rows.append(pd.DataFrame({"split": split_name, "width": [w] * n, "height": [h] * n}))
            continue
        rows.append(pd.DataFrame({"split": split_name, "path": split.paths}))
    df = pd.concat(rows, ignore_index=True)
    if "path" not in df:
        return df
    files = df[df["path"].notna()]
    if len(files) > max_files:
        files = files.sample(max_files, random_state=seed)
    sizes = []
    for p in files["path"]:
        try:
            with Image.open(p) as im:  # reads the header only
                sizes.append(im.size)
        except OSError:
            sizes.append((np.nan, np.nan))
    files = files.assign(width=[s[0] for s in sizes], height=[s[1] for s in sizes])
    return pd.concat([files, df[df["path"].isna()]], ignore_index=True)[["split", "width", "height", "path"]]


def size_summary(sizes: pd.DataFrame) -> pd.DataFrame:
    """Distribution of width, height, aspect ratio (width / height) and megapixels."""
    s = sizes.assign(aspect=sizes["width"] / sizes["height"], megapixels=sizes["width"] * sizes["height"] / 1e6)
    out = s[["width", "height", "aspect", "megapixels"]].describe(percentiles=[0.05, 0.5, 0.95]).T
    return out.rename(columns={"count": "images"}).round(2)

