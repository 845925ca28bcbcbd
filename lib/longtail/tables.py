"""The report's tables of finished runs (``results.collect_runs``): the thesis appendix tables
(``appendix_tables``: top-1 per split, and loss / top-1 / F1 per split, a row per method, mean ± std
over seeds, one pair per setting of ``results.settings``), one run's metrics (``run_metrics_table``),
the comparison with published numbers (``PUBLISHED``, ``published_comparison``) and what helps the
tail at what cost to the head (``tail_tradeoff``, ``tail_summary``).  Nothing here renders or plots.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pandas as pd

from . import rundir
from .metrics import PROTOCOL_TEXT, protocol_column
from .metrics import SPLITS
from .predictions import group_sizes
from .results import (SPLIT_LABELS, Table, base_method, format_mean_std, is_given, json_mapping, label_value,
                      method_order, setting_columns, setting_text, settings)

#: Published top-1 accuracy (%) for the same protocol (CIFAR-10-LT, exponential profile, ResNet-32 from
#: scratch; ``params/cifar10_lt.yaml``), one row per number, with its source.  Cao et al. report top-1
#: *error*; accuracy = 100 - error.  CE, focal and class-balanced focal in their Table 2 are the values of
#: Cui et al. 2019 (Table 2), which Cao et al. list as baselines.  Only numbers checked against the papers
#: are here.  Balanced softmax (Ren et al. 2020, NeurIPS, Table 2) is left out on purpose: its CIFAR-10-LT
#: numbers come from a different training recipe (their own softmax baseline is about 7 points above Cao
#: et al.'s), so they are not the same protocol.
PUBLISHED = pd.DataFrame([
    # source, imbalance factor, method, loss, DRW, class_balanced base, published top-1 error (%)
    ("Cao et al. 2019, NeurIPS, Table 2", 100, "CE", "ce", False, None, 29.64),
    ("Cao et al. 2019, NeurIPS, Table 2", 100, "Focal", "focal", False, None, 29.62),
    ("Cao et al. 2019, NeurIPS, Table 2", 100, "Class-balanced focal", "class_balanced", False, "focal", 25.43),
    ("Cao et al. 2019, NeurIPS, Table 2", 100, "LDAM-DRW", "ldam", True, None, 22.97),
    ("Cao et al. 2019, NeurIPS, Table 2", 10, "CE", "ce", False, None, 13.61),
    ("Cao et al. 2019, NeurIPS, Table 2", 10, "LDAM-DRW", "ldam", True, None, 11.84),
], columns=["source", "imbalance_factor", "method", "loss", "drw", "cb_base", "error"]).assign(
    dataset="cifar10", backbone="resnet32", top1=lambda d: (100 - d["error"]).round(2))
PUBLISHED_REFERENCES = {
    "Cao et al. 2019, NeurIPS, Table 2": "K. Cao, C. Wei, A. Gaidon, N. Arechiga, T. Ma. Learning Imbalanced "
    "Datasets with Label-Distribution-Aware Margin Loss. NeurIPS 2019 (Table 2: top-1 validation error, "
    "ResNet-32, long-tailed CIFAR-10).",
}


#: run_metrics_table's columns: (metric key, column name, scale); accuracies, F1 and ECE in %, as in the report
RUN_METRICS_COLUMNS = (("acc1", "top-1 (%)", 100), ("balanced_acc", "balanced acc. (%)", 100),
                       ("macro_f1", "macro F1 (%)", 100), ("ece", "ECE (%)", 100), ("loss", "loss", 1),
                       ("n", "test images", 1))


def run_metrics_table(metrics: dict) -> pd.DataFrame:
    """One run's ``metrics.json`` as a table: a row per test split and class group (those present),
    columns ``RUN_METRICS_COLUMNS`` (top-1, balanced accuracy, macro F1 and ECE in %, loss, images;
    the long-tailed split's "images" is the sum of its weights)."""
    labels = {**{s: SPLIT_LABELS[s] for s in SPLITS[:2]}, "longtailed_sampled": "Long-tailed (sampled)",
              **{s: SPLIT_LABELS[s] for s in SPLITS[2:]}}
    rows = {}
    for split, label in labels.items():
        if f"{split}/acc1" in metrics:
            rows[label] = {name: (None if metrics.get(f"{split}/{key}") is None else scale * metrics[f"{split}/{key}"])
                           for key, name, scale in RUN_METRICS_COLUMNS}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "test split"
    return frame


def save_runs(runs: pd.DataFrame, out_dir) -> Path:
    """``<out_dir>/tables/runs.csv``: the collected runs, one row each (all metrics and parameters)."""
    path = Path(out_dir) / "tables" / "runs.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    runs.to_csv(path, index=False)
    return path


def top1_table(runs: pd.DataFrame, protocol: str = "weighted") -> pd.DataFrame:
    """Rows: methods; columns: Balanced, Long-tailed, Head, Middle, Tail; cells: top-1 (%)
    mean ± std over the seeds (the thesis's Tables A.1, A.3, ...), under ``protocol``
    (``metrics.PROTOCOLS``)."""
    rows = {}
    for m in method_order(runs["method"]):
        sub = runs[runs["method"] == m]
        rows[m] = {SPLIT_LABELS[s]: format_mean_std(sub.get(protocol_column(protocol, s, "acc1"), pd.Series(dtype=float)))
                   for s in SPLITS}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "Method"
    frame["Seeds"] = [int((runs["method"] == m).sum()) for m in frame.index]
    return frame


def split_table(runs: pd.DataFrame, protocol: str = "weighted") -> pd.DataFrame:
    """Rows: methods; columns: (split, Loss / Acc1 / F1); loss to 2 decimals, top-1 and F1 in %
    (the thesis's Tables A.2, A.4, ...).  ``weighted``: cross-entropy and macro F1; ``thesis``: the
    method's own training loss and support-weighted F1 (``metrics.protocol_column``)."""
    rows = {}
    for m in method_order(runs["method"]):
        sub = runs[runs["method"] == m]
        row = {}
        for s in SPLITS:
            get = lambda what: sub.get(protocol_column(protocol, s, what), pd.Series(dtype=float))  # noqa: E731
            row[(SPLIT_LABELS[s], "Loss")] = format_mean_std(get("loss"), scale=1.0, decimals=2)
            row[(SPLIT_LABELS[s], "Acc1")] = format_mean_std(get("acc1"))
            row[(SPLIT_LABELS[s], "F1")] = format_mean_std(get("f1"))
        rows[m] = row
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    frame.index.name = "Method"
    return frame


def table_protocol(runs: pd.DataFrame) -> str:
    """The ``eval_protocol`` of a table's runs (``weighted`` for runs from before the parameter)."""
    values = runs["eval_protocol"].dropna().unique().tolist() if "eval_protocol" in runs else []
    if len(values) > 1:
        raise ValueError(f"the runs of one table use different eval_protocol values {values}; "
                         "report them from separate grids")
    return values[0] if values else "weighted"


def coinciding_rows(frame: pd.DataFrame) -> list[list[str]]:
    """Groups of rows (methods) of a formatted table that agree in every cell."""
    cells = frame.drop(columns=[c for c in frame.columns if c == "Seeds"]).astype(str)
    groups: dict[tuple, list[str]] = {}
    for method, row in cells.iterrows():
        groups.setdefault(tuple(row), []).append(method)
    return [g for g in groups.values() if len(g) > 1]


def coincidence_notes(frame: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    """A sentence for each group of rows that coincide in every digit, with the reason where it can
    be computed: an exactly balanced training set (every re-weighting is the identity), or
    class-balanced weights that equal inverse frequency to within the table's precision."""
    notes = []
    for group in coinciding_rows(frame):
        text = f"The rows {', '.join(group)} coincide in every digit."
        sub = runs[runs["method"].isin(group)]
        counts = _train_counts(sub.iloc[0]["run_dir"]) if len(sub) else None
        if counts is not None and counts.min() == counts.max():
            text += f" The training set is exactly balanced ({int(counts[0])} images a class), so every class weight is equal."
        elif counts is not None and {"Weighted CE", "Class-balanced"} <= set(group):
            from .losses import class_balanced_weights  # imports torch: only for this note
            cb = sub[sub["method"] == "Class-balanced"].iloc[0]
            beta = float(json_mapping(cb.get("loss_params")).get("beta", _loss_default("class_balanced", "beta")))
            w_cb = class_balanced_weights(counts, beta).double().numpy()
            w_inv = (1.0 / np.maximum(counts, 1)) / (1.0 / np.maximum(counts, 1)).mean()
            reduction = json_mapping(cb.get("loss_params")).get("reduction", _loss_default("class_balanced", "reduction"))
            text += (f" With beta = {beta:g} and at most {int(counts.max())} images a class, the class-balanced weights "
                     f"equal inverse frequency to {np.abs(w_cb - w_inv).max():.1e} (weights of mean 1)"
                     + (", and both losses take the weighted mean." if reduction == "weights" else "."))
        notes.append(text)
    return notes


def _train_counts(run_dir) -> np.ndarray | None:
    path = Path(run_dir) / rundir.CLASSES_FILE
    return pd.read_csv(path)["train_count"].to_numpy(dtype=float) if path.exists() else None


def _loss_default(loss: str, name: str):
    from .losses import LOSSES  # imports torch: only for a default the runs do not record
    return inspect.signature(LOSSES[loss].__init__).parameters[name].default


def recipe_text(runs: pd.DataFrame) -> str:
    """How a table's runs were trained, for its caption (the first run's parameters; a table's runs
    share them): ``linear probe on frozen features: 30 epochs, sgd lr 0.1`` or ``fine-tuned (finetune):
    30 epochs, adamw lr 0.001, backbone lr x 0.1, classifier from a linear probe (LP-FT), BatchNorm
    statistics frozen``; "" where the runs do not record them."""
    if not len(runs):
        return ""
    r = runs.iloc[0]

    def get(k, default=None):
        v = r.get(k)
        return v if is_given(v) else default
    if get("mode") is None or get("optimizer") is None:
        return ""
    sched = f"{label_value(get('epochs'))} epochs, {get('optimizer')} lr {label_value(get('lr'))}"
    if get("mode") == "linear":
        return f"linear probe on frozen features: {sched}"
    parts = [f"fine-tuned ({get('mode')}): {sched}"]
    if get("backbone_lr_scale", 1.0) not in (1, 1.0):
        parts.append(f"backbone lr x {label_value(get('backbone_lr_scale'))}")
    if get("head_init", "random") == "linear_probe":
        parts.append("classifier from a linear probe (LP-FT)")
    if get("freeze_bn", "none") != "none":
        parts.append({"stats": "BatchNorm statistics frozen", "all": "BatchNorm frozen"}.get(get("freeze_bn"),
                                                                                           str(get("freeze_bn"))))
    return ", ".join(parts)


def test_sizes(runs: pd.DataFrame, protocol: str) -> dict[str, int] | None:
    """Test images of each split and class group under ``protocol`` (``<split>/n`` or
    ``thesis_<split>/n`` of the first run's metrics; a table's runs share them); None where a run
    does not record them all."""
    if not len(runs):
        return None
    first = runs.iloc[0]
    n = {s: pd.to_numeric(pd.Series([first.get(protocol_column(protocol, s, "n"))]), errors="coerce").iloc[0]
         for s in SPLITS}
    return None if any(pd.isna(v) for v in n.values()) else {s: int(round(v)) for s, v in n.items()}


def split_sizes_text(runs: pd.DataFrame, protocol: str) -> str:
    """The sizes behind a table's numbers, for its caption: test images per split and class group
    under ``protocol`` (the thesis protocol's groups partition its long-tailed test set: their sum and
    the tail's share), and classes per group (``classes.csv`` of the first run); "" where unknown."""
    if not len(runs):
        return ""
    sizes, parts = test_sizes(runs, protocol), []
    if sizes:
        b, lt, h, m, t = (sizes[s] for s in SPLITS)
        if protocol == "thesis":
            parts.append(f"test images: balanced {b}, long-tailed {lt} = head {h} + middle {m} + tail {t} "
                         f"(tail {100 * t / lt:.1f} %)" if lt else f"test images: balanced {b}")
        else:
            parts.append(f"test images: balanced {b} (head {h}, middle {m}, tail {t}); long-tailed = the balanced "
                         "set weighted by the training prior")
    try:
        classes = group_sizes(runs.iloc[0]["run_dir"])["classes"]
        parts.append("classes: " + ", ".join(f"{g} {int(classes.get(g, 0))}" for g in SPLITS[2:]))
    except (OSError, KeyError, TypeError, ValueError):  # a run folder without (a full) classes.csv
        pass
    return "; ".join(parts)


def appendix_tables(df: pd.DataFrame) -> list[Table]:
    """The thesis's four tables per backbone (per setting without the training set): top-1 on the
    balanced training set, loss / top-1 / F1 on it, the same two on the long-tailed training set,
    numbered by the backbone's place in the thesis (``models.ALIASES``' order: MobileNetV2 A.1–A.4,
    ResNet50V2 A.5–A.8, ViT-B/16 A.9–A.12, ConvNeXt-Base A.13–A.16, whichever backbones have runs;
    several settings of one backbone share its numbers, their captions tell them apart), other
    backbones after them (A.17 on) in the grids' order; a training set without runs keeps its numbers
    free, as in the thesis.  Captions name the evaluation protocol; ``notes`` say where two rows coincide."""
    from .models import ALIASES  # imports torch (the report's own process never builds these tables)
    thesis_order = list(ALIASES)
    tables = []
    others = list(dict.fromkeys(tuple((k, str(v)) for k, v in st.key.items() if k != "train_set")
                                for st in settings(df) if st.key.get("backbone") not in thesis_order))
    for st in settings(df):
        key, runs, slug = st.key, st.runs, st.slug
        if key.get("backbone") in thesis_order:
            block = thesis_order.index(key["backbone"])
        else:
            block = len(thesis_order) + others.index(tuple((k, str(v)) for k, v in key.items() if k != "train_set"))
        n = 1 + 4 * block + 2 * {"balanced": 0, "longtailed": 1}.get(key.get("train_set"), 0)
        protocol = table_protocol(runs)
        seeds = runs.groupby("method").size()
        over = (f"mean ± standard deviation over {seeds.min()}–{seeds.max()} seeds" if seeds.max() > 1 and
                seeds.min() != seeds.max() else f"mean ± standard deviation over {seeds.max()} seeds"
                if seeds.max() > 1 else "one seed")
        loss_text = "the method's own training loss" if protocol == "thesis" else "cross-entropy"
        f1_text = "support-weighted F1" if protocol == "thesis" else "macro F1"
        top1 = top1_table(runs, protocol)
        split = split_table(runs, protocol)
        sizes = "".join(f"; {t}" for t in (recipe_text(runs), split_sizes_text(runs, protocol)) if t)
        tables.append(Table(f"top1_{slug}", f"Table A.{n}: Top-1 accuracy (%) per test split and class group; "
                            f"{setting_text(key)}; {over}; {PROTOCOL_TEXT[protocol]}{sizes}.", top1, key,
                            coincidence_notes(top1, runs)))
        tables.append(Table(f"splits_{slug}", f"Table A.{n + 1}: Loss ({loss_text}), top-1 accuracy (%) and "
                            f"{f1_text} (%) per test split; {setting_text(key)}; {over}; {PROTOCOL_TEXT[protocol]}"
                            f"{sizes}.", split, key, coincidence_notes(split, runs)))
    return tables


# ============================================================================ published numbers

def published_comparison(df: pd.DataFrame) -> pd.DataFrame:
    """``PUBLISHED`` beside our top-1 (balanced test, %) of the runs with the same protocol:
    dataset cifar10, backbone resnet32, long-tailed training set, the same imbalance factor, loss,
    DRW on/off (and the class-balanced loss's base).  Empty when no run matches."""
    need = ("dataset", "backbone", "train_set", "loss", "imbalance_factor", "balanced/acc1")
    if not len(df) or any(c not in df for c in need):
        return pd.DataFrame()
    df = df.assign(drw_epoch=df["drw_epoch"] if "drw_epoch" in df else None,
                   loss_params=df["loss_params"] if "loss_params" in df else "{}")
    rows = []
    for _, pub in PUBLISHED.iterrows():
        m = df[(df["dataset"] == pub["dataset"]) & (df["backbone"] == pub["backbone"])
               & (df["train_set"] == "longtailed") & (df["loss"] == pub["loss"])
               & (pd.to_numeric(df["imbalance_factor"], errors="coerce") == pub["imbalance_factor"])]
        m = m[m["drw_epoch"].apply(is_given) == pub["drw"]]
        if isinstance(pub["cb_base"], str):
            m = m[m["loss_params"].apply(lambda s: json_mapping(s).get("base")) == pub["cb_base"]]
        ours = m["balanced/acc1"] * 100 if len(m) else pd.Series(dtype=float)
        rows.append({"Imbalance factor": int(pub["imbalance_factor"]), "Method": pub["method"],
                     "Published top-1 (%)": f"{pub['top1']:.2f}", "Ours top-1 (%)": format_mean_std(ours, 1.0, 2),
                     "Ours − published": f"{ours.mean() - pub['top1']:+.2f}" if len(ours) else "–",
                     "Seeds": len(ours), "Source": pub["source"]})
    out = pd.DataFrame(rows)
    return out if (out["Seeds"] > 0).any() else pd.DataFrame()


# ============================================================================ what helps the tail

def tail_tradeoff(df: pd.DataFrame, baseline: str = "CE") -> pd.DataFrame:
    """For every setting with the long-tailed training set and a ``baseline`` run: per method the
    mean top-1 (%) of the tail, head and balanced test set and their change against the baseline
    (percentage points), sorted by tail gain.  Where grids ran the baseline in several variants (its
    label then names what differs, ``CE (val_source=split)``), each method is compared with the
    variant that agrees with it on every parameter the variants differ in, never with another."""
    rows = []
    cols = ("tail", "head", "balanced")
    for st in settings(df):
        key, runs = st.key, st.runs
        base_rows = runs[runs.apply(base_method, axis=1) == baseline]
        if key.get("train_set") != "longtailed" or not len(base_rows):
            continue
        mean = runs.groupby("method", sort=False)[[f"{s}/acc1" for s in cols]].mean() * 100
        variants = {m: sub.iloc[0] for m, sub in base_rows.groupby("method", sort=False)}
        differ = [c for c in setting_columns(base_rows) if base_rows[c].astype(str).nunique() > 1]
        for m, r in mean.iterrows():
            first = runs[runs["method"] == m].iloc[0]
            match = [v for v, row in variants.items() if all(str(row[c]) == str(first[c]) for c in differ)]
            if len(match) != 1:
                continue  # no variant of the baseline ran in this method's context
            b = mean.loc[match[0]]
            rows.append({"Setting": setting_text(key), "Loss": m, "Baseline": match[0],
                         "Tail (%)": r["tail/acc1"], "Δ tail (pp)": r["tail/acc1"] - b["tail/acc1"],
                         "Head (%)": r["head/acc1"], "Δ head (pp)": r["head/acc1"] - b["head/acc1"],
                         "Balanced (%)": r["balanced/acc1"],
                         "Δ balanced (pp)": r["balanced/acc1"] - b["balanced/acc1"],
                         "Seeds": int((runs["method"] == m).sum())})
    out = pd.DataFrame(rows)
    if len(out):
        out = out.sort_values(["Setting", "Δ tail (pp)"], ascending=[True, False], kind="stable")
        out = out.reset_index(drop=True).round(1)
    return out


def tail_summary(tradeoff: pd.DataFrame, baseline: str = "CE") -> str:
    """One sentence per setting: which loss helps the tail most, by how much, at what cost to the
    head and to the balanced test set."""
    if not len(tradeoff):
        return (f"No long-tailed training set with a {baseline} baseline among the finished runs, so no loss "
                f"can be compared against {baseline}.")
    lines = []
    for setting, t in tradeoff.groupby("Setting", sort=False):
        others = t[t["Loss"] != t["Baseline"]]
        if not len(others):
            lines.append(f"{setting}: only {baseline} ran, nothing to compare.")
            continue
        best = others.iloc[0]
        base = t[t["Loss"] == best["Baseline"]].iloc[0]
        if best["Δ tail (pp)"] <= 0:
            lines.append(f"{setting}: no loss improves the tail over {base['Loss']} (tail top-1 "
                         f"{base['Tail (%)']:.1f} %; the best, {best['Loss']}, changes it by "
                         f"{best['Δ tail (pp)']:+.1f} points).")
            continue
        head = best["Δ head (pp)"]
        vs = f"{best['Head (%)']:.1f} % vs {base['Head (%)']:.1f} %"
        head_txt = (f"and gains on the head too ({head:+.1f} points, {vs})" if head > 0 else
                    f"at no cost to the head ({vs})" if head == 0 else
                    f"at a cost of {-head:.1f} points on the head ({vs})")
        lines.append(f"{setting}: {best['Loss']} helps the tail most, {best['Δ tail (pp)']:+.1f} points of tail "
                     f"top-1 over {base['Loss']} ({best['Tail (%)']:.1f} % vs {base['Tail (%)']:.1f} %), {head_txt}; "
                     f"balanced test top-1 {best['Δ balanced (pp)']:+.1f} points.")
    return "\n".join(lines)


