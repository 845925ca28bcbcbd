"""The thesis's published results (Appendix A, Tables A.1–A.16) beside ours, and its findings checked
against our runs with verdicts computed from the numbers.

``reference()`` reads ``reference/thesis_appendix_a.csv`` (the published values, one a row; see the
thesis README: the long-tailed test set has 1,051 images, head / middle / tail partition it, so our
side uses the ``thesis`` evaluation protocol, the ``thesis_<split>`` metrics of every run).
``side_by_side`` puts the thesis's top-1 and ours next to each other for every thesis table whose
backbone / training set / loss the runs have; ``findings`` checks the thesis's claims;
``known_defects`` names the tables' defects, found in the data (missing values, a row that repeats
another training set's row, a collapse); ``class_balanced_ablation`` summarises
``params/class_balanced.yaml``.  Different data: the pattern can be compared, not the level.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .results import LOSS_LABELS, SPLIT_LABELS, SPLITS, format_mean_std

REFERENCE_FILE = Path(__file__).parent / "reference" / "thesis_appendix_a.csv"
#: the thesis's backbone names and our aliases (``models.ALIASES``)
BACKBONES = {"MobileNetV2": "mobilenetv2", "ResNet50V2": "resnet50v2", "ViT-B/16": "vit_b16",
             "ConvNeXt Base": "convnext_base"}
#: the ablation's criterion of a collapse (the issue's): balanced-test top-1 below 5 %
COLLAPSE_TOP1 = 0.05
#: the thesis's class-balanced collapse, as a rule: balanced-test top-1 below this fraction of Softmax's on
#: the same training set (thesis: 0.19-0.37 of it), with the head below the tail
COLLAPSE_FRACTION_OF_CE = 0.5
THESIS_LOSS_NAMES = {"ce": "Softmax", "focal": "Focal", "weighted_ce": "Weighted Softmax",
                     "class_balanced": "Class-balanced", "balanced_softmax": "Balanced Softmax",
                     "equalization": "Equalization", "ldam": "LDAM"}
TRAIN_SETS = ("balanced", "longtailed")


def reference() -> pd.DataFrame:
    """The published values: columns table, backbone (thesis name), alias, train_set, loss, split,
    metric, value (a fraction; NaN where the thesis prints ``data``)."""
    ref = pd.read_csv(REFERENCE_FILE)
    ref["alias"] = ref["backbone"].map(BACKBONES)
    return ref


def reference_wide(ref: pd.DataFrame | None = None, metric: str = "acc1") -> pd.DataFrame:
    """One row per (backbone, train_set, loss) in the thesis's order, one column per split: ``metric``
    (acc1 from the odd tables, which agree with the even ones), and the odd table's number."""
    ref = reference() if ref is None else ref
    sel = ref[(ref["metric"] == metric)]
    if metric == "acc1":
        sel = sel[sel["table"].map(_table_index) % 2 == 1]
    wide = sel.pivot_table(index=["backbone", "train_set", "loss"], columns="split", values="value", sort=False,
                           dropna=False)
    wide = wide.reindex(columns=list(SPLITS))
    tables = sel.groupby(["backbone", "train_set", "loss"], sort=False)["table"].first()
    wide["table"] = tables
    return wide


def _table_index(t: str) -> int:
    return int(str(t).split(".")[1])


def known_defects(ref: pd.DataFrame | None = None) -> dict[tuple[str, str, str], str]:
    """{(backbone, train_set, loss): text} for the rows with a defect, found in the data:
    values missing (the placeholder ``data``), a long-tailed row equal in every value to the balanced
    row of the same loss (a copy), and a collapse (``is_collapse`` against Softmax)."""
    ref = reference() if ref is None else ref
    full = ref.pivot_table(index=["backbone", "train_set", "loss"], columns=["split", "metric"], values="value",
                           sort=False, dropna=False, aggfunc="first")
    acc = reference_wide(ref)
    out = {}
    for (bb, ts, loss), row in full.iterrows():
        if row.isna().all():
            out[(bb, ts, loss)] = "missing in the thesis (printed 'data')"
        elif ts == "longtailed" and (bb, "balanced", loss) in full.index and \
                np.array_equal(row.to_numpy(), full.loc[(bb, "balanced", loss)].to_numpy(), equal_nan=True):
            bal = acc.loc[(bb, "balanced", loss), "table"]
            out[(bb, ts, loss)] = f"a copy of the balanced-training row ({bal}), not a result"
        elif (bb, ts, "ce") in acc.index and is_collapse(acc.loc[(bb, ts, loss), "balanced"],
                                                         acc.loc[(bb, ts, "ce"), "balanced"],
                                                         acc.loc[(bb, ts, loss), "head"], acc.loc[(bb, ts, loss), "tail"]):
            out[(bb, ts, loss)] = "collapse (balanced top-1 below half of Softmax's, head below tail)"
    return out


def is_collapse(top1, ce_top1, head, tail) -> bool:
    """The thesis's collapse as a rule: balanced-test top-1 below ``COLLAPSE_FRACTION_OF_CE`` of
    Softmax's on the same training set, and head top-1 below tail top-1 (the head starved)."""
    vals = [top1, ce_top1, head, tail]
    if any(v is None or not np.isfinite(v) for v in vals):
        return False
    return top1 < COLLAPSE_FRACTION_OF_CE * ce_top1 and head < tail


# ============================================================================ our side

def _ours(runs: pd.DataFrame) -> pd.DataFrame:
    """Our runs that match a thesis row: a thesis backbone, the plain loss label (``LDAM`` is plain LDAM,
    not LDAM-DRW; ``Class-balanced`` the softmax base)."""
    if not len(runs) or "backbone" not in runs:
        return runs.iloc[0:0]
    plain = {label: loss for loss, label in LOSS_LABELS.items() if loss in THESIS_LOSS_NAMES}
    sel = runs[runs["backbone"].isin(BACKBONES.values()) & runs["method"].isin(plain)]
    return sel.assign(thesis_loss=sel["method"].map(plain))


def _col(split: str) -> str:
    from .metrics import protocol_column
    return protocol_column("thesis", split, "acc1")


def side_by_side(runs: pd.DataFrame) -> pd.DataFrame:
    """For every thesis top-1 table (A.1, A.3, ...) whose backbone, training set and loss the runs have:
    per split the thesis's top-1 (%) and ours (mean ± std over seeds, thesis protocol), and the
    thesis row's known defect.  Index (Table, Training set, Loss); empty when nothing matches."""
    ours = _ours(runs)
    if not len(ours):
        return pd.DataFrame()
    ref, defects = reference_wide(), known_defects()
    rows = []
    for (bb, ts, loss), r in ref.iterrows():
        sub = ours[(ours["backbone"] == BACKBONES[bb]) & (ours["train_set"] == ts) & (ours["thesis_loss"] == loss)]
        if not len(sub):
            continue
        row = {"Table": r["table"], "Backbone": bb, "Training set": ts, "Loss": THESIS_LOSS_NAMES[loss]}
        for s in SPLITS:
            row[(SPLIT_LABELS[s], "Thesis")] = "data" if not np.isfinite(r[s]) else f"{100 * r[s]:.1f}"
            row[(SPLIT_LABELS[s], "Ours")] = format_mean_std(sub[_col(s)] if _col(s) in sub else [])
        row["Seeds"] = len(sub)
        row["Thesis row"] = defects.get((bb, ts, loss), "")
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    out = pd.DataFrame(rows).set_index(["Table", "Backbone", "Training set", "Loss"])
    out.columns = pd.MultiIndex.from_tuples([c if isinstance(c, tuple) else (c, "") for c in out.columns])
    return out


def _mean_of(frame: pd.DataFrame, alias: str, train_set: str, loss: str, split: str, ours: bool) -> float:
    if ours:
        sub = frame[(frame["backbone"] == alias) & (frame["train_set"] == train_set) & (frame["thesis_loss"] == loss)]
        col = _col(split)
        return float(sub[col].mean()) if len(sub) and col in sub else float("nan")
    name = {v: k for k, v in BACKBONES.items()}[alias]
    key = (name, train_set, loss)
    return float(frame.loc[key, split]) if key in frame.index else float("nan")


def _pp(x: float) -> str:
    return "–" if not np.isfinite(x) else f"{100 * x:+.1f}"


def range_verdict(x: float, lo: float, hi: float) -> str:
    """``holds`` inside [lo, hi]; ``same direction, smaller / larger`` outside it with the sign of the
    range; ``does not hold`` otherwise; ``no runs`` for NaN (all in the same unit)."""
    if not np.isfinite(x):
        return "no runs"
    if lo <= x <= hi:
        return "holds (within the thesis's range)"
    if (lo > 0 and x > 0) or (hi < 0 and x < 0):
        return "same direction, " + ("smaller" if abs(x) < min(abs(lo), abs(hi)) else "larger") + " than the thesis"
    return "does not hold"


def findings(runs: pd.DataFrame) -> pd.DataFrame:
    """The thesis's findings, each with the thesis's figure and ours per backbone that we ran, and a
    verdict computed from the two (columns Finding, Backbone, Thesis, Ours, Verdict).  Thesis figures
    are computed from the reference table too, over the backbones it has (a copied or missing row left
    out); points are percentage points of top-1 (thesis protocol)."""
    ours = _ours(runs)
    ref = reference_wide().copy()
    for key, text in known_defects().items():  # a copied or missing row is no result: left out of the figures
        if not text.startswith("collapse"):
            ref.loc[key, list(SPLITS)] = np.nan
    aliases = [a for a in BACKBONES.values() if len(ours) and (ours["backbone"] == a).any()]
    rows = []

    def stat(frame, is_ours, alias, fn):
        return fn(lambda ts, loss, split: _mean_of(frame, alias, ts, loss, split, is_ours))

    def thesis_values(fn):
        return [v for a in BACKBONES.values() if np.isfinite(v := stat(ref, False, a, fn))]

    def add(finding, fn, verdict_of, fmt=_pp):
        tv = thesis_values(fn)
        lo, hi = (min(tv), max(tv)) if tv else (float("nan"), float("nan"))
        for a in aliases:
            x = stat(ours, True, a, fn)
            rows.append({"Finding": finding, "Backbone": a,
                         "Thesis": f"{fmt(lo)} to {fmt(hi)}" if tv else "–", "Ours": fmt(x),
                         "Verdict": verdict_of(x, lo, hi, a)})

    def delta(loss, split="balanced"):
        return lambda m: m("longtailed", loss, split) - m("longtailed", "ce", split)

    add("Long-tailed training costs Softmax balanced-test top-1 (points)",
        lambda m: m("longtailed", "ce", "balanced") - m("balanced", "ce", "balanced"),
        lambda x, lo, hi, a: range_verdict(x, lo, hi))

    def bs_verdict(x, lo, hi, alias):
        gains = {loss: stat(ours, True, alias, delta(loss, "tail")) for loss in THESIS_LOSS_NAMES if loss != "ce"}
        gains = {k: v for k, v in gains.items() if np.isfinite(v)}
        if not np.isfinite(x) or not gains:
            return "no runs"
        head = stat(ours, True, alias, delta("balanced_softmax", "head"))
        best = max(gains, key=gains.get)
        largest = gains["balanced_softmax"] >= gains[best]
        return (("holds: the largest tail gain" if largest else f"does not hold: {THESIS_LOSS_NAMES[best]} gains more "
                 f"({_pp(gains[best])})") + f"; head {_pp(head)} points (thesis: "
                + f"{_pp(min(thesis_values(delta('balanced_softmax', 'head'))))} to "
                + f"{_pp(max(thesis_values(delta('balanced_softmax', 'head'))))})")
    add("Balanced softmax gives the largest tail gain over Softmax (points of tail top-1)",
        delta("balanced_softmax", "tail"), bs_verdict)
    add("Weighted softmax lowers balanced-test top-1 (points against Softmax)", delta("weighted_ce"),
        lambda x, lo, hi, a: range_verdict(x, lo, hi))
    add("LDAM lowers balanced-test top-1 (points against Softmax)", delta("ldam"),
        lambda x, lo, hi, a: "no runs" if not np.isfinite(x) else (
            "holds (lower)" if x < 0 else "does not hold (not lower)") + (
            "" if hi < 0 else f"; the thesis itself is not unanimous ({_pp(lo)} to {_pp(hi)})"))

    def focal_verdict(x, lo, hi, a):
        bound = max(abs(lo), abs(hi))
        return "no runs" if not np.isfinite(x) else (
            f"holds (|Δ| within the thesis's largest, {100 * bound:.1f})" if abs(x) <= bound
            else f"does not hold (|Δ| above the thesis's largest, {100 * bound:.1f})")
    add("Focal ≈ Softmax (balanced-test top-1, points against Softmax)", delta("focal"), focal_verdict)

    def cb_verdict(x, lo, hi, alias):
        m = lambda ts, loss, split: _mean_of(ours, alias, ts, loss, split, True)  # noqa: E731
        if not np.isfinite(x):
            return "no runs"
        collapsed = is_collapse(x, m("longtailed", "ce", "balanced"), m("longtailed", "class_balanced", "head"),
                                m("longtailed", "class_balanced", "tail"))
        return ("holds: collapses" if collapsed else "does not hold: no collapse") + (
            f" (Softmax {100 * m('longtailed', 'ce', 'balanced'):.1f} %, head "
            f"{100 * m('longtailed', 'class_balanced', 'head'):.1f} %, tail "
            f"{100 * m('longtailed', 'class_balanced', 'tail'):.1f} %)")
    add("Class-balanced collapses (balanced-test top-1, %)",
        lambda m: m("longtailed", "class_balanced", "balanced"), cb_verdict,
        fmt=lambda v: "–" if not np.isfinite(v) else f"{100 * v:.1f}")
    return pd.DataFrame(rows)


# ============================================================================ the class-balanced ablation

ABLATION_GRID = "class_balanced"  # the name in params/class_balanced.yaml


def class_balanced_ablation(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per variant of the class-balanced loss (``params/class_balanced.yaml``): beta, base,
    reduction, slip; top-1 (%, mean over seeds) on the balanced test set and on its head and tail
    classes, and two verdicts: ``top-1 < 5 %``
    (the ablation's collapse) and ``thesis-like`` (``is_collapse`` against the Softmax runs of any grid
    with the same data set, backbone, mode and imbalance factor:
    below half of its balanced top-1 with the head below the tail, the thesis's pattern)."""
    if not len(runs) or "loss" not in runs:
        return pd.DataFrame()
    lt = runs[runs["train_set"] == "longtailed"]
    cb = lt[(lt["loss"] == "class_balanced") & (lt["grid"] == ABLATION_GRID)]
    if not len(cb):
        return pd.DataFrame()
    same = [k for k in ("dataset", "backbone", "mode", "imbalance_factor") if k in lt]
    first = cb.iloc[0]
    ce = lt[(lt["loss"] == "ce") & np.logical_and.reduce([lt[k].astype(str) == str(first[k]) for k in same])]
    ce = ce[ce["method"] == "CE"]
    ce_top1 = float(ce["balanced/acc1"].mean()) if len(ce) else float("nan")
    from .results import _json
    rows = []
    for lp, sub in cb.groupby("loss_params", sort=False):
        p = _json(lp)
        slips = [s for s in ((None if p.get("normalize", True) else "unnormalised weights"),
                             (None if p.get("weight_order", "labels") == "labels"
                              else f"weights in {p['weight_order']} class order")) if s]
        bal, head, tail = (float(sub[f"{s}/acc1"].mean()) for s in ("balanced", "head", "tail"))
        rows.append({"beta": p.get("beta", 0.9999), "base": p.get("base", "softmax"),
                     "reduction": p.get("reduction", "batch"), "slip": ", ".join(slips) or "none",
                     "Balanced (%)": round(100 * bal, 1), "Head (%)": round(100 * head, 1),
                     "Tail (%)": round(100 * tail, 1), "Seeds": len(sub),
                     "top-1 < 5 %": bool(bal < COLLAPSE_TOP1), "thesis-like collapse": is_collapse(bal, ce_top1, head, tail)})
    out = pd.DataFrame(rows)
    out.attrs["ce_top1"] = ce_top1
    return out


def ablation_summary(table: pd.DataFrame) -> str:
    """What collapses and whether any setting reproduces the thesis's collapse, in sentences."""
    if not len(table):
        return "The class-balanced ablation (params/class_balanced.yaml) has no finished runs."
    n = len(table)
    below = table[table["top-1 < 5 %"]]
    like = table[table["thesis-like collapse"]]
    ref = reference_wide()
    cb = ref.xs(("longtailed", "class_balanced"), level=("train_set", "loss"))["balanced"].dropna()

    def names(t):
        return "; ".join(f"beta {r.beta:g}, {r.base}, reduction {r.reduction}, slip {r.slip} ({r['Balanced (%)']:.1f} %)"
                         for _, r in t.iterrows())
    text = [f"{len(below)} of {n} class-balanced settings collapse to a balanced-test top-1 below "
            f"{100 * COLLAPSE_TOP1:.0f} %" + (f": {names(below)}." if len(below) else "."),
            f"{len(like)} of {n} show the thesis's pattern (top-1 below half of Softmax's "
            f"{100 * table.attrs.get('ce_top1', float('nan')):.1f} %, head below tail)"
            + (f": {names(like)}." if len(like) else ".")]
    text.append(("The thesis's collapse (class-balanced balanced-test top-1 "
                 f"{100 * cb.min():.1f}–{100 * cb.max():.1f} % on the long-tailed training set) is "
                 + ("reproduced by the settings above." if len(like) else
                    "not reproduced by any setting of the ablation, the deliberate slips included.")))
    return "\n".join(text)
