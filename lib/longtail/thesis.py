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

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .lossinfo import loss_labels
from .metrics import protocol_column
from .results import (SPLIT_LABELS, SPLITS, base_method, format_mean_std, json_mapping, setting_differences,
                      setting_groups)
from .tables import test_sizes

REFERENCE_FILE = Path(__file__).parent / "reference" / "thesis_appendix_a.csv"
#: the thesis's backbone names and our aliases (``models.ALIASES``)
BACKBONES = {"MobileNetV2": "mobilenetv2", "ResNet50V2": "resnet50v2", "ViT-B/16": "vit_b16",
             "ConvNeXt Base": "convnext_base"}
#: the class-balanced ablation's criterion of a collapse: balanced-test top-1 below 5 % (near chance)
COLLAPSE_TOP1 = 0.05
#: the thesis's class-balanced collapse, as a rule: balanced-test top-1 below this fraction of Softmax's on
#: the same training set (thesis: 0.19-0.37 of it), with the head below the tail
COLLAPSE_FRACTION_OF_CE = 0.5
THESIS_LOSS_NAMES = {"ce": "Softmax", "focal": "Focal", "weighted_ce": "Weighted Softmax",
                     "class_balanced": "Class-balanced", "balanced_softmax": "Balanced Softmax",
                     "equalization": "Equalization", "ldam": "LDAM"}


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

#: the parameters that make a thesis row (backbone, training set, loss and the loss's own settings,
#: which a grid's overrides set per loss); every other parameter is the *setting* a row is run in
ROW_KEYS = ("backbone", "train_set", "loss", "loss_params", "drw_epoch", "drw_beta", "cosine_head")


def _ours(runs: pd.DataFrame) -> pd.DataFrame:
    """Our runs that match a thesis row: a thesis backbone, the plain loss label (``LDAM`` is plain LDAM,
    not LDAM-DRW; ``Class-balanced`` the softmax base)."""
    if not len(runs) or "backbone" not in runs:
        return runs.iloc[0:0]
    plain = {label: loss for loss, label in loss_labels().items() if loss in THESIS_LOSS_NAMES}
    # the run's own ingredients (``base_method``), not its label among the collected runs, which other
    # grids' runs can lengthen ("CE (val_source=split)"): their parameters make separate settings instead
    base = runs.apply(base_method, axis=1)
    sel = runs[runs["backbone"].isin(BACKBONES.values()) & base.isin(plain)]
    return sel.assign(thesis_loss=base[sel.index].map(plain))


def _col(split: str) -> str:
    return protocol_column("thesis", split, "acc1")


@dataclass
class OurSetting:
    """The runs of one setting (``results.setting_groups``: every parameter but the seeds equal) that
    match one thesis row; ``label`` names what tells this setting from the others ("" for one)."""
    backbone: str      # our alias
    train_set: str
    loss: str          # the thesis loss
    context: str       # the setting's parameters other than ``ROW_KEYS``, as a key
    label: str
    runs: pd.DataFrame


def our_settings(runs: pd.DataFrame) -> list[OurSetting]:
    """Every setting of our thesis-matching runs, each on its own: never pooled across settings (a
    linear probe and a fine-tuned run of one backbone and loss are two settings, two rows)."""
    ours = _ours(runs)
    groups = setting_groups(ours, exclude=("thesis_loss",))
    contexts = [{k: v for k, v in key.items() if k not in ROW_KEYS} for key, _ in groups]
    labels = setting_differences(contexts)
    out = []
    for (key, sub), ctx, label in zip(groups, contexts, labels):
        out.append(OurSetting(str(sub.iloc[0]["backbone"]), str(sub.iloc[0]["train_set"]),
                              str(sub.iloc[0]["thesis_loss"]), json.dumps(ctx, sort_keys=True, default=str),
                              label, sub))
    # two settings of one row in one context differ in the loss's own parameters: say so
    by_row = {}
    for s in out:
        by_row.setdefault((s.backbone, s.train_set, s.loss, s.context), []).append(s)
    for same in (v for v in by_row.values() if len(v) > 1):
        for s, extra in zip(same, setting_differences([{k: s.runs.iloc[0].get(k) for k in ROW_KEYS} for s in same])):
            s.label = ", ".join(x for x in (s.label, extra) if x)
    return out


def _split_sizes(sub: pd.DataFrame) -> str:
    """Test images of the thesis protocol's splits (``tables.test_sizes``), as ``552 / 228 (95 + 67 + 66)``;
    "" where the runs do not record them."""
    v = test_sizes(sub, "thesis")
    return f"{v['balanced']} / {v['longtailed']} ({v['head']} + {v['middle']} + {v['tail']})" if v else ""


def side_by_side(runs: pd.DataFrame) -> pd.DataFrame:
    """For every thesis top-1 table (A.1, A.3, ...) whose backbone, training set and loss the runs have:
    per split the thesis's top-1 (%) and ours (mean ± std over the seeds of *one setting*, thesis
    protocol), the thesis row's known defect, and our test split sizes.  One row per setting of ours
    (``our_settings``): index (Table, Backbone, Training set, Loss, Setting); empty when nothing matches."""
    settings_ = our_settings(runs)
    if not settings_:
        return pd.DataFrame()
    ref, defects = reference_wide(), known_defects()
    rows = []
    for (bb, ts, loss), r in ref.iterrows():
        for s in settings_:
            if (s.backbone, s.train_set, s.loss) != (BACKBONES[bb], ts, loss):
                continue
            row = {"Table": r["table"], "Backbone": bb, "Training set": ts, "Loss": THESIS_LOSS_NAMES[loss],
                   "Setting": s.label or "–"}
            for sp in SPLITS:
                row[(SPLIT_LABELS[sp], "Thesis")] = "data" if not np.isfinite(r[sp]) else f"{100 * r[sp]:.1f}"
                row[(SPLIT_LABELS[sp], "Ours")] = format_mean_std(s.runs[_col(sp)] if _col(sp) in s.runs else [])
            row["Seeds"] = len(s.runs)
            row["Test images: balanced / long-tailed (head + middle + tail)"] = _split_sizes(s.runs) or "–"
            row["Thesis row"] = defects.get((bb, ts, loss), "")
            rows.append(row)
    if not rows:
        return pd.DataFrame()
    out = pd.DataFrame(rows).set_index(["Table", "Backbone", "Training set", "Loss", "Setting"])
    out.columns = pd.MultiIndex.from_tuples([c if isinstance(c, tuple) else (c, "") for c in out.columns])
    return out


# --------------------------------------------------------------------------- readings of the thesis's tables

@dataclass(frozen=True)
class Estimate:
    """A mean over seeds and its standard error (NaN with fewer than two seeds)."""
    mean: float
    se: float

    def __sub__(self, other: "Estimate") -> "Estimate":  # independent seeds: the variances add
        return Estimate(self.mean - other.mean, math.hypot(self.se, other.se))


def _estimate(values) -> Estimate:
    v = pd.to_numeric(pd.Series(values), errors="coerce").dropna().to_numpy(dtype=float)
    if not len(v):
        return Estimate(float("nan"), float("nan"))
    return Estimate(float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan"))


def _pp(x: float) -> str:
    return "–" if not np.isfinite(x) else f"{100 * x:+.1f}"


def _pp_se(e: Estimate) -> str:
    if not np.isfinite(e.mean):
        return "–"
    return _pp(e.mean) + (f" ± {100 * e.se:.1f}" if np.isfinite(e.se) else " (one seed)")


def direction(e: Estimate) -> int:
    """+1 or −1 when the difference exceeds its standard error in that direction; 0 when it does not
    (or there is no standard error: one seed)."""
    if not (np.isfinite(e.mean) and np.isfinite(e.se)) or abs(e.mean) <= e.se:
        return 0
    return 1 if e.mean > 0 else -1


def range_verdict(e: Estimate, thesis_values: list[float]) -> str:
    """A difference against the thesis's per-backbone values: ``holds`` when it exceeds its standard
    error in the thesis's direction (all its values of one sign), then where it lies against them;
    ``does not hold`` beyond the standard error the other way; ``undetermined`` within it."""
    if not np.isfinite(e.mean):
        return "no runs"
    if not np.isfinite(e.se):
        return "undetermined (one seed: no standard error)"
    sign = direction(e)
    if sign == 0:
        return "undetermined (within one standard error of 0)"
    tv = [v for v in thesis_values if np.isfinite(v)]
    thesis_sign = 1 if tv and min(tv) > 0 else -1 if tv and max(tv) < 0 else 0
    if thesis_sign == 0:
        return "the thesis is not unanimous; ours " + ("positive" if sign > 0 else "negative")
    if sign != thesis_sign:
        return "does not hold"
    lo, hi = min(tv), max(tv)
    where = "within the thesis's range" if lo <= e.mean <= hi else (
        "smaller than the thesis's" if abs(e.mean) < min(abs(lo), abs(hi)) else "larger than the thesis's")
    return f"holds ({where})"


def findings(runs: pd.DataFrame) -> pd.DataFrame:
    """Our readings of the thesis's tables (what its numbers show; the thesis states them in words, we
    read them off Tables A.1–A.16), each checked against every setting of ours on its own.  Columns:
    Reading, Backbone, Setting, Thesis (each backbone's value; a copied or missing row left out),
    Ours (mean ± standard error over seeds), Verdict: "holds" only where our difference exceeds its
    standard error (``direction``).  Points are percentage points of top-1 (thesis protocol).  A
    reading a setting lacks the runs for is left out."""
    settings_ = our_settings(runs)
    ref = reference_wide().copy()
    for key, text in known_defects().items():  # a copied or missing row is no result: left out of the figures
        if not text.startswith("collapse"):
            ref.loc[key, list(SPLITS)] = np.nan
    contexts = list(dict.fromkeys((s.backbone, s.context) for s in settings_))
    rows = []

    def thesis_m(bb):
        return lambda ts, loss, split: float(ref.loc[(bb, ts, loss), split]) if (bb, ts, loss) in ref.index else float("nan")

    def tm(fn):  # the thesis's value of every backbone (``BACKBONES``' order)
        return [fn(lambda ts, loss, split: Estimate(thesis_m(bb)(ts, loss, split), 0.0)).mean for bb in BACKBONES]

    for alias, ctx in contexts:
        mine = {(s.train_set, s.loss): s for s in settings_ if (s.backbone, s.context) == (alias, ctx)}
        label = next(s.label for s in mine.values()) if mine else ""

        def m(ts, loss, split):
            s = mine.get((ts, loss))
            return _estimate(s.runs[_col(split)]) if s is not None and _col(split) in s.runs else _estimate([])

        def add(reading, fn, verdict, ours_text=None, fmt=_pp):
            e = fn(m)
            rows.append({"Reading of the thesis's tables": reading, "Backbone": alias, "Setting": label or "–",
                         "Thesis": "; ".join(f"{bb} {fmt(v)}" for bb, v in zip(BACKBONES, tm(fn))),
                         "Ours": ours_text(e) if ours_text else _pp_se(e), "Verdict": verdict(e)})

        def delta(loss, split="balanced"):
            return lambda mm: mm("longtailed", loss, split) - mm("longtailed", "ce", split)

        cost = lambda mm: mm("longtailed", "ce", "balanced") - mm("balanced", "ce", "balanced")  # noqa: E731
        add("Long-tailed training costs Softmax balanced-test top-1 (points)", cost, lambda e: range_verdict(e, tm(cost)))

        def bs_verdict(e):
            gains = {loss: delta(loss, "tail")(m) for loss in THESIS_LOSS_NAMES if loss not in ("ce", "balanced_softmax")}
            gains = {k: v for k, v in gains.items() if np.isfinite(v.mean)}
            if not np.isfinite(e.mean) or not gains:
                return "no runs"
            best = max(gains, key=lambda k: gains[k].mean)
            margin = m("longtailed", "balanced_softmax", "tail") - m("longtailed", best, "tail")
            sign = direction(margin)
            head = delta("balanced_softmax", "head")(m)
            verdict = ("holds: the largest tail gain" if sign > 0 else
                       f"does not hold: {THESIS_LOSS_NAMES[best]} gains more" if sign < 0 else
                       f"undetermined: within one standard error of {THESIS_LOSS_NAMES[best]}'s gain")
            return f"{verdict} (margin {_pp_se(margin)}); head {_pp_se(head)} points"
        add("Balanced softmax gives the largest tail gain over Softmax (points of tail top-1)",
            delta("balanced_softmax", "tail"), bs_verdict)
        add("Weighted softmax lowers balanced-test top-1 (points against Softmax)", delta("weighted_ce"),
            lambda e: range_verdict(e, tm(delta("weighted_ce"))))
        add("LDAM lowers balanced-test top-1 (points against Softmax)", delta("ldam"),
            lambda e: range_verdict(e, tm(delta("ldam"))))

        def focal_verdict(e):
            bound = max(abs(v) for v in tm(delta("focal")) if np.isfinite(v))
            if not np.isfinite(e.mean):
                return "no runs"
            if not np.isfinite(e.se):
                return "undetermined (one seed: no standard error)"
            if abs(e.mean) + e.se <= bound:
                return f"holds (|Δ| and its standard error within the thesis's largest, {100 * bound:.1f})"
            if abs(e.mean) - e.se > bound:
                return f"does not hold (|Δ| above the thesis's largest, {100 * bound:.1f}, by more than its standard error)"
            return f"undetermined (the thesis's largest |Δ|, {100 * bound:.1f}, is within one standard error)"
        add("Focal ≈ Softmax (balanced-test top-1, points against Softmax)", delta("focal"), focal_verdict)

        def cb_verdict(e):
            if not np.isfinite(e.mean):
                return "no runs"
            ce, head, tail = (m("longtailed", lo, sp).mean for lo, sp in
                              (("ce", "balanced"), ("class_balanced", "head"), ("class_balanced", "tail")))
            collapsed = is_collapse(e.mean, ce, head, tail)
            return ("holds: collapses" if collapsed else "does not hold: no collapse") + (
                f" (Softmax {100 * ce:.1f} %, head {100 * head:.1f} %, tail {100 * tail:.1f} %)")
        pct = lambda v: "–" if not np.isfinite(v) else f"{100 * v:.1f}"  # noqa: E731
        add("Class-balanced collapses (balanced-test top-1, %)", lambda mm: mm("longtailed", "class_balanced", "balanced"),
            cb_verdict, ours_text=lambda e: pct(e.mean) + (f" ± {100 * e.se:.1f}" if np.isfinite(e.se) else ""), fmt=pct)
    out = pd.DataFrame(rows)
    return out[out["Verdict"] != "no runs"].reset_index(drop=True) if len(out) else out


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
    rows = []
    for lp, sub in cb.groupby("loss_params", sort=False):
        p = json_mapping(lp)
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
