"""Per-class views of finished runs, from each run's ``predictions.npz`` (``rundir.PREDICTIONS_FILE``):
per-class accuracy, the class groups' sizes, confusion matrices of the most confused classes,
reliability (calibration) and qualitative examples.  Nothing here renders or plots.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from . import rundir
from .metrics import confusion, expected_calibration_error, per_class_accuracy, probabilities, reliability_bins
from .results import method_order, settings
from .subsets import group_sizes as sizes_of

def group_sizes(run_dir) -> pd.DataFrame:
    """The head / middle / tail groups of a run folder (its ``classes.csv``), a row each and ``all``:
    ``classes`` and ``train_images`` (of the long-tailed training set, whose counts define the
    groups), ``test_images`` of the physical long-tailed test set (the thesis protocol's, which the
    groups partition), ``test_share`` (%, of that set's images) and ``balanced_test_images`` (the
    balanced test set's, on which the weighted protocol's groups are measured)."""
    cls = pd.read_csv(Path(run_dir) / rundir.CLASSES_FILE)
    table = pd.DataFrame.from_dict(sizes_of(cls["group"], cls["longtailed_count"], cls["test_longtailed_count"]),
                                   orient="index")
    table["balanced_test_images"] = [int(cls.loc[cls["group"] == g, "test_count"].sum()) for g in table.index]
    table.loc["all"] = table.sum()
    table["test_share"] = 100 * table["test_images"] / max(int(table.loc["all", "test_images"]), 1)
    return table


def group_sizes_text(run_dir) -> str:
    """``head / middle / tail: 67 / 67 / 66 classes; long-tailed test set 228 images, 95 / 67 / 66
    (tail 28.9 %)``: a run folder's group sizes for a caption."""
    t = group_sizes(run_dir)
    g = [n for n in t.index if n != "all"]
    return (f"{' / '.join(g)}: {' / '.join(str(int(t.loc[n, 'classes'])) for n in g)} classes; long-tailed test set "
            f"{int(t.loc['all', 'test_images'])} images, {' / '.join(str(int(t.loc[n, 'test_images'])) for n in g)} "
            f"(tail {t.loc['tail', 'test_share']:.1f} %)")


def load_predictions(run_dir) -> dict:
    """``logits``, ``labels``, ``lt_weight``, ``ids`` of a run's test set, and ``classes`` (classes.csv)."""
    d = Path(run_dir)
    with np.load(d / rundir.PREDICTIONS_FILE) as z:
        out = {k: z[k] for k in z.files}
    out["classes"] = pd.read_csv(d / rundir.CLASSES_FILE)
    return out


def per_class_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, class): its training count, group, test count and top-1 accuracy (%)."""
    parts = []
    for _, run in df.iterrows():
        p = load_predictions(run["run_dir"])
        cls = p["classes"].copy()
        cls["acc1"] = per_class_accuracy(p["logits"], p["labels"], len(cls)) * 100
        for k in ("run_id", "method", "train_set", "backbone", "dataset", "seed"):
            cls[k] = run[k]
        parts.append(cls)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def pooled_predictions(runs: pd.DataFrame) -> dict:
    """``logits`` and ``labels`` of several runs (e.g. the seeds of one method) stacked, and the
    ``classes`` table of the first."""
    preds = [load_predictions(d) for d in runs["run_dir"]]
    return {"logits": np.concatenate([p["logits"] for p in preds]), "labels": np.concatenate([p["labels"] for p in preds]),
            "classes": preds[0]["classes"], "ids": preds[0]["ids"], "first": preds[0]}


def focus_runs(df: pd.DataFrame, baseline: str = "CE") -> tuple[dict, pd.DataFrame, list[str]] | None:
    """The setting the figures of single runs look at (the first with a long-tailed training set),
    its runs, and the methods to show: the baseline and the one with the best tail top-1."""
    cands = [s for s in settings(df) if s.key.get("train_set") == "longtailed"] or settings(df)
    if not cands:
        return None
    key, runs = cands[0].key, cands[0].runs
    tail = runs.groupby("method")["tail/acc1"].mean().sort_values(ascending=False)
    methods = [m for m in ([baseline] if baseline in tail.index else []) + [tail.index[0]]]
    return key, runs, list(dict.fromkeys(methods))


def confusion_subsets(runs: pd.DataFrame, methods: list[str], k: int = 12,
                      extra_columns: int | None = None) -> list[tuple[str, np.ndarray, list[str], list[str]]]:
    """Confusion matrices (counts, summed over the seeds) of each method for the ``k`` largest and
    the ``k`` smallest training classes: (title, counts [rows, columns], row names, column names).
    Rows are the chosen classes; columns are the same classes, then the ``extra_columns`` other
    classes (default ``k``) that received most of their wrong predictions, then "other classes"
    (the rest), so each row sums to the class's test images and no wrong prediction is hidden."""
    extra_columns = k if extra_columns is None else extra_columns
    panels = []
    for m in methods:
        p = pooled_predictions(runs[runs["method"] == m])
        cls = p["classes"].sort_values(["train_count", "class"], ascending=[False, True], kind="stable")
        cm = confusion(p["logits"], p["labels"], len(cls))
        names = p["classes"].set_index("class")["name"]
        parts = ((("all classes", cls),) if len(cls) <= 2 * k else
                 (("largest classes", cls.head(k)), ("tail (smallest classes)", cls.tail(k))))
        for part, sel in parts:
            rows = sel["class"].to_numpy()
            outside = np.setdiff1d(np.arange(cm.shape[1]), rows)
            received = cm[np.ix_(rows, outside)].sum(axis=0)
            order = np.argsort(-received, kind="stable")
            extra = outside[order[:extra_columns]][received[order[:extra_columns]] > 0]
            cols = np.r_[rows, extra].astype(int)
            block = cm[np.ix_(rows, cols)]
            col_names = sel["name"].tolist() + [names[c] for c in extra]
            rest = cm[rows].sum(axis=1) - block.sum(axis=1)
            if rest.any():
                block = np.c_[block, rest]
                col_names.append("other classes")
            panels.append((f"{m}: {part}", block, sel["name"].tolist(), col_names))
    return panels


def reliability_by_method(runs: pd.DataFrame, methods: list[str] | None = None, split: str = "balanced"):
    """Reliability bins and ECE of each method's test predictions (seeds pooled; sigmoid probabilities
    for a model trained with a sigmoid loss) on the balanced test set (``split="longtailed"``: weighted by the long-tailed test weights)."""
    bins, ece = {}, {}
    for m in methods or method_order(runs["method"]):
        preds = [load_predictions(d) for d in runs.loc[runs["method"] == m, "run_dir"]]
        # a sigmoid-trained model's own probabilities (predictions.npz says which; softmax before it did)
        probs = np.concatenate([probabilities(p["logits"], str(p.get("activation", "softmax"))) for p in preds])
        labels = np.concatenate([p["labels"] for p in preds])
        w = np.concatenate([p["lt_weight"] for p in preds]) if split == "longtailed" else None
        bins[m] = reliability_bins(probs, labels, sample_weight=w)
        ece[m] = expected_calibration_error(probs, labels, sample_weight=w)
    return bins, ece


def qualitative_examples(runs: pd.DataFrame, n: int = 6, seed: int = 0) -> tuple[pd.DataFrame, str | None]:
    """Up to ``n`` correctly and ``n`` wrongly classified tail-class test images of the first run:
    columns path, true, predicted, correct.  When the test images are not files (in-memory data
    sets such as synthetic) the table is empty and the note says so."""
    run = runs.iloc[0]
    p = load_predictions(run["run_dir"])
    ids = p["ids"].astype(str)
    if not len(ids) or not os.path.isfile(ids[0]):
        return pd.DataFrame(), (f"The test images of {run['dataset']} are held in memory, not read from files "
                                "(predictions.npz stores their indices), so no examples are shown.")
    names = p["classes"]["name"].to_numpy()
    tail = set(p["classes"].loc[p["classes"]["group"] == "tail", "class"])
    pred = p["logits"].argmax(1)
    rng = np.random.default_rng(seed)
    rows = []
    for correct in (True, False):
        idx = np.flatnonzero(np.isin(p["labels"], list(tail)) & ((pred == p["labels"]) == correct))
        for i in rng.permutation(idx)[:n]:
            rows.append({"path": ids[i], "true": names[p["labels"][i]], "predicted": names[pred[i]],
                         "correct": correct})
    return pd.DataFrame(rows), None


