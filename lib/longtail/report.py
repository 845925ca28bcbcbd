"""Analysis of finished runs, and the rendered HTML report.

| part            | what                                                                              |
|-----------------|-----------------------------------------------------------------------------------|
| collection      | ``collect_runs(sources)``: one row per finished run of one or more grids           |
| tables          | the thesis appendix layout: ``appendix_tables`` (top-1 per split, and loss / top-1 / |
|                 | F1 per split, a row per loss, mean ± std over seeds), ``published_comparison``,     |
|                 | ``tail_tradeoff`` / ``tail_summary`` (what helps the tail, at what cost to the head) |
| per class       | ``per_class_frame``, ``pooled_predictions`` (from ``predictions.npz``)              |
| data set        | ``class_table``, ``set_summary``, ``sample_images``, ``image_sizes`` (explore.py)   |
| files           | ``save_table`` (LaTeX + CSV), ``save_figure`` (PDF + PNG), named for ``\\input``    |
| report          | ``build_report``: papermill runs ``notebooks/explore.py`` and ``analysis.py``,    |
|                 | nbconvert renders ``<out>/index.html`` (code hidden) with a provenance header and |
|                 | links to every run's notebook, rendered to ``<out>/runs/<grid>/<id>.html``         |

Command line (``make report``)::

    python -m longtail.report params/default.yaml [params/cifar10_lt.yaml ...] [--out report]

A source is a grid's parameter file (its runs, in ``<output_root>/<id>``), a folder of run folders,
or one run folder.  Only finished runs (``metrics.json`` present) are analysed.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import config

SPLITS = ("balanced", "longtailed", "head", "middle", "tail")
SPLIT_LABELS = {"balanced": "Balanced", "longtailed": "Long-tailed", "head": "Head", "middle": "Middle",
                "tail": "Tail"}
GROUPS = ("head", "middle", "tail")
TRAIN_SET_LABELS = {"balanced": "balanced", "longtailed": "long-tailed"}
LOSS_LABELS = {"ce": "CE", "focal": "Focal", "weighted_ce": "Weighted CE", "class_balanced": "Class-balanced",
               "balanced_softmax": "Balanced softmax", "equalization": "Equalization", "ldam": "LDAM",
               "logit_adjusted": "Logit-adjusted"}
LOSS_ORDER = tuple(LOSS_LABELS)
#: a table per value of these (the file name names them: ``top1_<backbone>_<train_set>``) ...
TABLE_KEYS = ("dataset", "backbone", "train_set")
#: ... and per value of these where they differ between the collected runs
EXTRA_TABLE_KEYS = ("imbalance_factor", "profile", "n_max", "class_order", "balanced_size", "group_scheme",
                    "pretrained", "mode", "image_size", "dataset_params", "val_fraction")
#: repetitions: averaged over (mean ± standard deviation)
REPLICATE_KEYS = ("seed", "subset_seed")
#: where and how fast, not what: never distinguishes two methods
_NOT_A_VARIANT = ("output_dir", "data_root", "weights_dir", "save_checkpoints", "device", "precision",
                  "eval_batch_size", "channels_last", "compile", "on_error")
RESULT_FILE = "metrics.json"
RUN_NOTEBOOK = "train.ipynb"
NOTEBOOKS = {"explore": "notebooks/explore.py", "analysis": "notebooks/analysis.py"}
KERNEL = "longtail"
#: the explore notebook's data-set parameters, taken from the first grid's first run
EXPLORE_KEYS = ("dataset", "data_root", "dataset_params", "imbalance_factor", "profile", "group_scheme", "n_max",
                "subset_seed", "class_order", "val_fraction", "balanced_size")

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


# ============================================================================ collection of runs

def project_path(path) -> Path:
    """``path`` as given when absolute or present, else relative to the project root (so that a
    notebook opened from ``notebooks/`` finds ``params/...`` and writes to ``<project>/report``)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() or p.exists() else config.PROJECT_ROOT / p


def _source_runs(source) -> tuple[str, list[Path]]:
    """(grid name, run folders) of a parameter file, a folder of run folders, or one run folder."""
    p = project_path(source)
    if p.suffix in (".yaml", ".yml"):
        from .grid import load_grid
        grid = load_grid(p, check_backbone=False)
        return grid.name, [Path(r["output_dir"]) for r in grid.runs]
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: neither a parameter file (.yaml) nor a folder of runs")
    if (p / "params.json").exists():
        return p.parent.name, [p]
    return p.name, sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))


def _cell(v):
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v


def collect_runs(sources) -> pd.DataFrame:
    """One row per finished run (``metrics.json`` present) of every source, in the sources' order.

    Columns: every metric of ``metrics.json`` (``balanced/acc1``, ``tail/macro_f1``, ...), every
    parameter of ``params.json`` (dicts and lists as JSON text), and ``grid``, ``run_id``,
    ``run_dir``, ``notebook`` (the executed ``train.ipynb`` or None), ``method`` (a readable name
    of the loss and whatever else tells two runs of one table apart, see ``method_labels``).
    ``df.attrs["unfinished"]`` lists the run folders without results.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    rows, unfinished = [], []
    for source in sources:
        grid, dirs = _source_runs(source)
        for d in dirs:
            if not (d / RESULT_FILE).exists():  # not run yet, running, or failed
                unfinished.append(str(d))
                continue
            params = json.loads((d / "params.json").read_text()) if (d / "params.json").exists() else {}
            metrics = json.loads((d / RESULT_FILE).read_text())
            row = {k: _cell(v) for k, v in params.items()}
            row.update({k: _cell(v) for k, v in metrics.items()})
            nb = d / RUN_NOTEBOOK
            row.update(grid=grid, run_id=d.name, run_dir=str(d), notebook=str(nb) if nb.exists() else None)
            rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df["method"] = method_labels(df)
    df.attrs["unfinished"] = unfinished
    return df


def base_method(row) -> str:
    """The loss's readable name, with DRW, a non-instance sampler and a post-hoc adjustment."""
    loss = row.get("loss")
    name = LOSS_LABELS.get(loss, str(loss))
    params = _json(row.get("loss_params"))
    if loss == "class_balanced" and params.get("base") not in (None, "softmax"):
        name = f"Class-balanced {params['base']}"
    if _given(row.get("drw_epoch")):
        name += "-DRW"
    if row.get("sampler") not in (None, "instance") and not _isnan(row.get("sampler")):
        name += f" + {str(row['sampler']).replace('_', '-')} sampling"
    if row.get("posthoc") not in (None, "none") and not _isnan(row.get("posthoc")):
        name += {"tau_norm": " + τ-norm", "logit_adjust": " + logit adjustment"}.get(row["posthoc"],
                                                                                    f" + {row['posthoc']}")
    return name


def method_labels(df: pd.DataFrame) -> pd.Series:
    """``base_method`` of every run, plus ``key=value`` of each parameter that differs between runs
    of one table with the same base name (e.g. two focal runs with gamma 1 and 2)."""
    base = df.apply(base_method, axis=1)
    keys = table_keys(df)
    fixed = set(keys) | set(REPLICATE_KEYS) | set(_NOT_A_VARIANT) | {
        "loss", "grid", "run_id", "run_dir", "notebook", "method"}
    params = [c for c in df.columns if "/" not in c and c not in fixed and not _is_metric_col(c)]
    labels = base.copy()
    for _, idx in df.groupby([df[k].astype(str) for k in keys] + [base], sort=False).groups.items():
        sub = df.loc[idx]
        varying = [c for c in params if sub[c].astype(str).nunique() > 1]
        for i in idx:
            extra = []
            for c in varying:
                v = _json(sub.at[i, c]) if c.endswith("_params") else sub.at[i, c]
                extra += ([f"{k}={_short(x)}" for k, x in v.items()] if isinstance(v, dict)
                          else [f"{c}={_short(v)}"])
            if extra:
                labels.at[i] = f"{base.at[i]} ({', '.join(extra)})"
    return labels


# Metric-like columns of metrics.json that are not parameters (they never tell two methods apart)
_METRIC_COLS = ("best_epoch", "train_images", "num_classes", "wall_s", "image_size")


def _is_metric_col(c: str) -> bool:
    return c in _METRIC_COLS


def table_keys(df: pd.DataFrame) -> list[str]:
    """``TABLE_KEYS`` plus the ``EXTRA_TABLE_KEYS`` whose value differs between runs of one
    (dataset, backbone, training set), e.g. two imbalance factors of CIFAR-10-LT."""
    base = [k for k in TABLE_KEYS if k in df.columns]
    if not len(df):
        return base
    groups = df.groupby([df[k].astype(str) for k in base], sort=False) if base else [(None, df)]
    extra = [k for k in EXTRA_TABLE_KEYS if k in df.columns
             and any(sub[k].astype(str).nunique() > 1 for _, sub in groups)]
    return base + extra


def method_order(methods) -> list[str]:
    """CE first, then the losses in ``LOSS_ORDER``; variants after their base name."""
    def key(m):
        for i, name in enumerate(LOSS_LABELS.values()):
            if m == name or m.startswith(name + " ") or m.startswith(name + "-") or (
                    name == "Class-balanced" and m.startswith("Class-balanced")):
                return (i, m)
        return (len(LOSS_LABELS), m)
    return sorted(set(methods), key=key)


# ============================================================================ formatting

def format_mean_std(values, scale: float = 100.0, decimals: int = 1) -> str:
    """``"83.1 ± 0.4"``: mean ± sample standard deviation (ddof 1) of the finite values times
    ``scale``; the mean alone for one value; ``"–"`` for none."""
    v = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float) * scale
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.{decimals}f}"
    return f"{v.mean():.{decimals}f} ± {v.std(ddof=1):.{decimals}f}"


def _setting_slug(key: dict, keys: list[str], df: pd.DataFrame) -> str:
    """``mobilenetv2_longtailed``; the dataset joins in where the runs have several, and the
    extra table keys (``if100``) where they are table keys."""
    parts = [f"{_abbrev(k)}{_short(key[k])}" if k not in TABLE_KEYS else _short(key[k]) for k in keys
             if k != "dataset" or df[k].astype(str).nunique() > 1]
    return "_".join(re.sub(r"[^A-Za-z0-9._]+", "-", p).strip("-") for p in parts)


def _abbrev(k: str) -> str:
    return {"imbalance_factor": "if", "pretrained": "pt", "mode": "", "image_size": "px", "n_max": "nmax",
            "profile": "", "class_order": "", "balanced_size": "", "group_scheme": "", "val_fraction": "val",
            "dataset_params": "dp"}.get(k, k)


def setting_text(key: dict) -> str:
    """``eu_moths, mobilenetv2, long-tailed training set`` (+ the extra keys)."""
    parts = [str(key.get("dataset")), str(key.get("backbone"))]
    if "train_set" in key:
        parts.append(f"{TRAIN_SET_LABELS.get(key['train_set'], key['train_set'])} training set")
    parts += [f"{k} {_short(v)}" for k, v in key.items() if k not in TABLE_KEYS]
    return ", ".join(parts)


# ============================================================================ the appendix tables

@dataclass
class Table:
    """A formatted table: ``name`` is the file stem (``top1_mobilenetv2_longtailed``)."""
    name: str
    caption: str
    frame: pd.DataFrame
    setting: dict | None = None


@dataclass
class Setting:
    """The runs of one table: ``key`` (table key values), ``slug`` (for file names), ``text``."""
    key: dict
    runs: pd.DataFrame
    slug: str
    text: str


def settings(df: pd.DataFrame, by_train_set: bool = True) -> list[Setting]:
    """The settings of the collected runs (one per value of ``table_keys``), in a stable order
    (dataset, backbone, ..., the balanced before the long-tailed training set).  With
    ``by_train_set=False`` both training sets of a backbone form one setting (for figures that
    compare them)."""
    if not len(df):
        return []
    keys = [k for k in table_keys(df) if by_train_set or k != "train_set"]
    out = []
    for _, sub in df.groupby([df[k].astype(str) for k in keys], sort=False):
        key = {k: sub.iloc[0][k] for k in keys}
        out.append(Setting(key, sub, _setting_slug(key, keys, df), setting_text(key)))
    order = {"balanced": 0, "longtailed": 1}
    out.sort(key=lambda s: tuple((order.get(s.key[k], 9), "") if k == "train_set" else (0, str(s.key[k]))
                                 for k in keys))
    return out


def save_runs(runs: pd.DataFrame, out_dir) -> Path:
    """``<out_dir>/tables/runs.csv``: the collected runs, one row each (all metrics and parameters)."""
    path = Path(out_dir) / "tables" / "runs.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    runs.to_csv(path, index=False)
    return path


def top1_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Rows: methods; columns: Balanced, Long-tailed, Head, Middle, Tail; cells: top-1 (%)
    mean ± std over the seeds (the thesis's Tables A.1, A.3, ...)."""
    rows = {}
    for m in method_order(runs["method"]):
        sub = runs[runs["method"] == m]
        rows[m] = {SPLIT_LABELS[s]: format_mean_std(sub.get(f"{s}/acc1", pd.Series(dtype=float))) for s in SPLITS}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "Method"
    frame["Seeds"] = [int((runs["method"] == m).sum()) for m in frame.index]
    return frame


def split_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Rows: methods; columns: (split, Loss / Acc1 / F1); loss to 2 decimals, top-1 and macro F1 in %
    (the thesis's Tables A.2, A.4, ...)."""
    rows = {}
    for m in method_order(runs["method"]):
        sub = runs[runs["method"] == m]
        row = {}
        for s in SPLITS:
            get = lambda name: sub.get(f"{s}/{name}", pd.Series(dtype=float))  # noqa: E731
            row[(SPLIT_LABELS[s], "Loss")] = format_mean_std(get("loss"), scale=1.0, decimals=2)
            row[(SPLIT_LABELS[s], "Acc1")] = format_mean_std(get("acc1"))
            row[(SPLIT_LABELS[s], "F1")] = format_mean_std(get("macro_f1"))
        rows[m] = row
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    frame.index.name = "Method"
    return frame


def appendix_tables(df: pd.DataFrame, first_number: int = 1) -> list[Table]:
    """For every setting (backbone, training set, ...): the top-1 table and the loss / top-1 / F1
    table, numbered A.1, A.2, A.3, ... in that order."""
    tables, n = [], first_number
    for st in settings(df):
        key, runs, slug = st.key, st.runs, st.slug
        seeds = runs.groupby("method").size()
        over = (f"mean ± standard deviation over {seeds.min()}–{seeds.max()} seeds" if seeds.max() > 1 and
                seeds.min() != seeds.max() else f"mean ± standard deviation over {seeds.max()} seeds"
                if seeds.max() > 1 else "one seed")
        tables.append(Table(f"top1_{slug}", f"Table A.{n}: Top-1 accuracy (%) per test split and class group; "
                            f"{setting_text(key)}; {over}.", top1_table(runs), key))
        tables.append(Table(f"splits_{slug}", f"Table A.{n + 1}: Loss (cross-entropy), top-1 accuracy (%) and "
                            f"macro F1 (%) per test split; {setting_text(key)}; {over}.", split_table(runs), key))
        n += 2
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
        m = m[m["drw_epoch"].apply(_given) == pub["drw"]]
        if isinstance(pub["cb_base"], str):
            m = m[m["loss_params"].apply(lambda s: _json(s).get("base")) == pub["cb_base"]]
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
    (percentage points), sorted by tail gain."""
    rows = []
    for st in settings(df):
        key, runs = st.key, st.runs
        if key.get("train_set") != "longtailed" or baseline not in set(runs["method"]):
            continue
        mean = runs.groupby("method")[[f"{s}/acc1" for s in ("tail", "head", "balanced")]].mean() * 100
        b = mean.loc[baseline]
        for m, r in mean.iterrows():
            rows.append({"Setting": setting_text(key), "Loss": m,
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
        others = t[t["Loss"] != baseline]
        if not len(others):
            lines.append(f"{setting}: only {baseline} ran, nothing to compare.")
            continue
        best = others.iloc[0]
        base = t[t["Loss"] == baseline].iloc[0]
        if best["Δ tail (pp)"] <= 0:
            lines.append(f"{setting}: no loss improves the tail over {baseline} (tail top-1 "
                         f"{base['Tail (%)']:.1f} %; the best, {best['Loss']}, changes it by "
                         f"{best['Δ tail (pp)']:+.1f} points).")
            continue
        head = best["Δ head (pp)"]
        vs = f"{best['Head (%)']:.1f} % vs {base['Head (%)']:.1f} %"
        head_txt = (f"and gains on the head too ({head:+.1f} points, {vs})" if head > 0 else
                    f"at no cost to the head ({vs})" if head == 0 else
                    f"at a cost of {-head:.1f} points on the head ({vs})")
        lines.append(f"{setting}: {best['Loss']} helps the tail most, {best['Δ tail (pp)']:+.1f} points of tail "
                     f"top-1 over {baseline} ({best['Tail (%)']:.1f} % vs {base['Tail (%)']:.1f} %), {head_txt}; "
                     f"balanced test top-1 {best['Δ balanced (pp)']:+.1f} points.")
    return "\n".join(lines)


# ============================================================================ per class (predictions.npz)

def load_predictions(run_dir) -> dict:
    """``logits``, ``labels``, ``lt_weight``, ``ids`` of a run's test set, and ``classes`` (classes.csv)."""
    d = Path(run_dir)
    with np.load(d / "predictions.npz") as z:
        out = {k: z[k] for k in z.files}
    out["classes"] = pd.read_csv(d / "classes.csv")
    return out


def per_class_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, class): its training count, group, test count and top-1 accuracy (%)."""
    from .metrics import per_class_accuracy
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


def confusion_subsets(runs: pd.DataFrame, methods: list[str], k: int = 12) -> list[tuple[str, np.ndarray, list[str]]]:
    """Confusion matrices (counts, summed over the seeds) of each method restricted to the ``k``
    largest and the ``k`` smallest training classes: (title, matrix [k, k], class names)."""
    from .metrics import confusion
    panels = []
    for m in methods:
        p = pooled_predictions(runs[runs["method"] == m])
        cls = p["classes"].sort_values(["train_count", "class"], ascending=[False, True], kind="stable")
        cm = confusion(p["logits"], p["labels"], len(cls))
        parts = ((("all classes", cls),) if len(cls) <= 2 * k else
                 (("largest classes", cls.head(k)), ("tail (smallest classes)", cls.tail(k))))
        for part, sel in parts:
            idx = sel["class"].to_numpy()
            panels.append((f"{m}: {part}", cm[np.ix_(idx, idx)], sel["name"].tolist()))
    return panels


def reliability_by_method(runs: pd.DataFrame, methods: list[str] | None = None, split: str = "balanced"):
    """Reliability bins and ECE of each method's test predictions (seeds pooled) on the balanced
    test set (``split="longtailed"``: weighted by the long-tailed test weights)."""
    from .metrics import expected_calibration_error, log_softmax, reliability_bins
    bins, ece = {}, {}
    for m in methods or method_order(runs["method"]):
        preds = [load_predictions(d) for d in runs.loc[runs["method"] == m, "run_dir"]]
        probs = np.exp(log_softmax(np.concatenate([p["logits"] for p in preds])))
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


# ============================================================================ the data set (explore.py)

def class_table(ds, *, imbalance_factor: float, profile: str = "exp", n_max=None, class_order: str = "given",
                subset_seed: int = 0, val_fraction: float = 0.1, group_scheme: str = "auto",
                balanced_size: str = "matched") -> pd.DataFrame:
    """Per class: the images the long-tailed and the balanced training sets train on (after the
    validation split, as a run's ``classes.csv``), the head / middle / tail group (of the
    long-tailed set), and the test images: the balanced test set, the physically sampled
    long-tailed one, and the effective images of the weighted long-tailed split (Σ w)."""
    from . import subsets
    y, C = np.asarray(ds.train.labels), ds.num_classes
    lt = subsets.longtailed_indices(y, C, imbalance_factor, profile=profile, n_max=n_max, class_order=class_order,
                                    seed=subset_seed)
    bal = subsets.balanced_indices(y, C, len(lt) if balanced_size == "matched" else None, seed=subset_seed)

    def fit_counts(idx):
        fit, _ = subsets.stratified_split(y[idx], val_fraction, seed=subset_seed)
        return subsets.class_counts(y[idx][fit], C)

    lt_counts, bal_counts = fit_counts(lt), fit_counts(bal)
    test_y = np.asarray(ds.test.labels)
    sampled = subsets.longtailed_test_indices(test_y, lt_counts, seed=subset_seed)
    w = subsets.longtailed_test_weights(test_y, lt_counts)
    return pd.DataFrame({
        "class": np.arange(C), "name": ds.class_names, "group": subsets.class_groups(lt_counts, group_scheme),
        "longtailed": lt_counts, "balanced": bal_counts,
        "test_balanced": subsets.class_counts(test_y, C),
        "test_longtailed_sampled": subsets.class_counts(test_y[sampled], C),
        "test_longtailed_weighted": np.bincount(test_y, weights=w, minlength=C).round(1)})


def set_summary(classes: pd.DataFrame) -> pd.DataFrame:
    """Per training / test set: images, classes, largest and smallest class, realised imbalance
    factor, and the share of classes and images of each group."""
    rows = {}
    for col, label in (("longtailed", "long-tailed training"), ("balanced", "balanced training"),
                       ("test_balanced", "balanced test"), ("test_longtailed_sampled", "long-tailed test (sampled)")):
        n = classes[col]
        row = {"images": int(n.sum()), "classes": int((n > 0).sum()), "largest": int(n.max()),
               "smallest": int(n.min()), "imbalance": round(float(n.max() / max(n.min(), 1)), 1)}
        for g in GROUPS:
            sel = classes["group"] == g
            row[f"{g} classes"] = int(sel.sum())
            row[f"{g} images %"] = round(100 * float(n[sel].sum() / max(n.sum(), 1)), 1)
        rows[label] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def sample_images(ds, classes: pd.DataFrame, per_group: int = 6, size: int = 96, seed: int = 0):
    """One training image of each of ``per_group`` classes per group (spread over the group, from its
    largest to its smallest class), decoded at ``size`` px through the image cache.
    Returns (images uint8 [N, size, size, 3], table: group, class, name, train count)."""
    from .data import split_images
    rng = np.random.default_rng(seed)
    labels = np.asarray(ds.train.labels)
    pick, rows = [], []
    for g in GROUPS:
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


# ============================================================================ files for the thesis

def _latex_escape(s: str) -> str:
    s = str(s)
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                 ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        s = s.replace(a, b)
    return s.replace("±", r"$\pm$").replace("−", "$-$").replace("Δ", r"$\Delta$").replace("τ", r"$\tau$")


def save_table(table: Table | pd.DataFrame, out_dir, name: str | None = None, caption: str | None = None) -> list[Path]:
    """``<out_dir>/tables/<name>.tex`` (a ``table`` environment with caption and label
    ``tab:<name>``, for ``\\input``) and ``<name>.csv`` (the same cells)."""
    if isinstance(table, Table):
        frame, name, caption = table.frame, name or table.name, caption or table.caption
    else:
        frame = table
    folder = Path(out_dir) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / f"{name}.csv")
    esc = frame.copy()
    if not isinstance(esc.index, pd.RangeIndex):  # the index as the first column(s)
        esc.index = esc.index.set_names([n if n else "" for n in esc.index.names])
        esc = esc.reset_index()
    if isinstance(esc.columns, pd.MultiIndex):
        esc.columns = pd.MultiIndex.from_tuples([tuple(_latex_escape(x) for x in c) for c in esc.columns])
    else:
        esc.columns = [_latex_escape(c) for c in esc.columns]
    esc = esc.map(lambda v: _latex_escape(v) if isinstance(v, str) else v)
    cap = _latex_escape(re.sub(r"^Table A\.\d+: ", "", caption or name))
    tex = esc.to_latex(index=False, escape=False, caption=cap, label=f"tab:{name}", position="htbp", multicolumn_format="c",
                       float_format=lambda x: f"{x:.10g}")  # as rounded
    (folder / f"{name}.tex").write_text(tex)
    return [folder / f"{name}.tex", folder / f"{name}.csv"]


def save_figure(fig, out_dir, name: str, dpi: int = 150) -> list[Path]:
    """``<out_dir>/figures/<name>.pdf`` and ``.png``."""
    folder = Path(out_dir) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.pdf", folder / f"{name}.png"]
    fig.savefig(paths[0], bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight", dpi=dpi)
    return paths


def show_table(table: Table | pd.DataFrame, out_dir=None, name: str | None = None, caption: str | None = None):
    """Save (when ``out_dir``) and return a styled table for the notebook, its caption above."""
    if out_dir is not None:
        save_table(table, out_dir, name, caption)
    frame, caption = (table.frame, caption or table.caption) if isinstance(table, Table) else (table, caption)
    if frame.index.nlevels == 1 and frame.index.name:  # the index name in the header row, not a row of its own
        frame = frame.copy()
        names = [None] * (frame.columns.nlevels - 1) + [frame.index.name]
        frame.index.name = None
        frame.columns = frame.columns.set_names(names)
    style = frame.style
    if caption:
        style = style.set_caption(caption)
    fmt = {c: "{:.1f}" for c in frame.columns if pd.api.types.is_float_dtype(frame[c])}
    return style.format(fmt, na_rep="–").set_table_styles(
        [{"selector": "caption", "props": "caption-side: top; text-align: left; font-weight: bold; "
                                          "padding-bottom: 0.4em;"}])


# ============================================================================ provenance and rendering

def provenance(sources, runs: pd.DataFrame | None = None) -> dict:
    """What made this report: git commit (and whether the tree had changes), the parameter files'
    content, package versions, hardware (CPU count, GPU), date, and the runs' own hardware."""
    import importlib.metadata as md
    import platform
    import subprocess
    git = lambda *a: subprocess.run(["git", *a], cwd=config.PROJECT_ROOT, capture_output=True, text=True,  # noqa: E731
                                    timeout=10).stdout.strip()
    try:
        commit, dirty = git("rev-parse", "HEAD") or None, bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    versions = {}
    for pkg in ("longtail", "torch", "torchvision", "timm", "numpy", "pandas", "scikit-learn", "matplotlib", "seaborn",
                "papermill", "nbconvert", "jupytext"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    gpu = None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        gpu = ", ".join(sorted(set(out.stdout.split("\n")) - {""})) or None
    except (OSError, subprocess.SubprocessError):
        pass
    files = {}
    for s in sources:
        p = project_path(s)
        files[str(s)] = p.read_text() if p.is_file() else f"(a folder of runs: {p.resolve()})"
    info = {"git_commit": commit, "git_dirty": dirty, "parameter_files": files, "packages": versions,
            "python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "gpu": gpu, "date": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    if runs is not None and len(runs):
        hw = []
        for d in runs["run_dir"]:
            env = Path(d) / "environment.json"
            if env.exists():
                e = json.loads(env.read_text())
                hw.append(e.get("gpu") or f"CPU ({e.get('cpu_count')} cores)")
        info["runs"] = {"finished": len(runs), "unfinished": len(runs.attrs.get("unfinished", [])),
                        "hardware": sorted(set(hw)), "run_wall_s": round(float(runs.get("wall_s", pd.Series()).sum()), 1)}
    return info


def _html_escape(s) -> str:
    import html
    return html.escape(str(s))


def header_html(info: dict, wall_s: float | None, sections: list[tuple[str, str]]) -> str:
    """The report's first cell: title, contents, provenance (the parameter files folded)."""
    e = _html_escape
    commit = info.get("git_commit") or "unknown"
    commit_txt = f"{commit[:12]}{' (with uncommitted changes)' if info.get('git_dirty') else ''}"
    pk = ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v)
    runs = info.get("runs", {})
    rows = [("Date", info["date"]), ("Git commit", commit_txt),
            ("Parameter files", ", ".join(info["parameter_files"])),
            ("Runs", f"{runs.get('finished', 0)} finished, {runs.get('unfinished', 0)} without results; trained on "
                     f"{', '.join(runs.get('hardware', [])) or 'unknown'}; training wall time "
                     f"{runs.get('run_wall_s', 0) / 60:.1f} min in total"),
            ("Report machine", f"{info['cpu_count']} CPU cores, GPU: {info.get('gpu') or 'none'}; "
                               f"Python {info['python']} on {info['platform']}"),
            ("Packages", pk)]
    if wall_s is not None:
        rows.append(("Report wall time", f"{wall_s:.1f} s (executing the notebooks and rendering)"))
    table = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
    files = "".join(f"<details><summary><code>{e(k)}</code></summary><pre>{e(v)}</pre></details>"
                    for k, v in info["parameter_files"].items())
    toc = " · ".join(f'<a href="#{a}">{e(t)}</a>' for a, t in sections)
    return (f'<div class="lt-header"><h1>Deep long-tailed image recognition: results</h1>'
            f'<p class="lt-toc">{toc}</p><table class="lt-prov">{table}</table>{files}</div>')


def runs_html(runs: pd.DataFrame, links: dict[str, str]) -> str:
    """A table of every finished run with a link to its executed notebook (when rendered)."""
    e = _html_escape
    if not len(runs):
        return "<p>No finished runs.</p>"
    rank = {m: i for i, m in enumerate(method_order(runs["method"]))}
    runs = runs.assign(_m=runs["method"].map(rank)).sort_values(
        ["grid", "dataset", "backbone", "train_set", "_m", "seed"], kind="stable")
    head = ["grid", "run", "dataset", "backbone", "training set", "loss", "seed", "balanced top-1", "tail top-1",
            "notebook"]
    body = []
    for _, r in runs.iterrows():
        link = links.get(r["run_dir"])
        cells = [r["grid"], r["run_id"], r["dataset"], r["backbone"], r["train_set"], r["method"], r.get("seed"),
                 f"{100 * r['balanced/acc1']:.1f} %", f"{100 * r['tail/acc1']:.1f} %"]
        row = "".join(f"<td>{e(c)}</td>" for c in cells)
        row += f'<td><a href="{e(link)}">train.ipynb</a></td>' if link else "<td>–</td>"
        body.append(f"<tr>{row}</tr>")
    unfinished = runs.attrs.get("unfinished", [])
    note = (f"<p>{len(unfinished)} run(s) of the grids have no results (not run yet or failed; "
            f"<code>python -m longtail.grid PARAMS --dry-run</code> lists them).</p>" if unfinished else "")
    return (f'<table class="lt-runs"><thead><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>{note}')


_CSS = """
body.jp-Notebook { max-width: 1400px; margin: 0 auto; }
.lt-header h1 { margin-top: 0.2em; }
.lt-prov th { text-align: left; padding-right: 1em; vertical-align: top; white-space: nowrap; }
.lt-prov td { text-align: left; }
.lt-header details { margin: 0.3em 0; }
.lt-header pre { background: #f6f6f6; padding: 0.5em; font-size: 85%; max-height: 24em; overflow: auto; }
.lt-runs { margin-left: 0 !important; }
.lt-runs td, .lt-runs th { padding: 0.15em 0.6em; text-align: left; }
.jp-RenderedHTMLCommon table caption { caption-side: top; text-align: left; font-weight: bold; }
.jp-OutputArea-output td, .jp-OutputArea-output th { white-space: nowrap !important; font-size: 11.5px;
  padding: 0.2em 0.45em !important; }
.jp-OutputArea-output th[colspan] { text-align: center !important; }
.lt-prov td { white-space: normal !important; }
"""

# nbconvert's lab template without the scripts it loads from CDNs (require.js, MathJax, mermaid): the
# report is self-contained, opens offline and logs no network errors.
_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{% block extra_css %}<style type="text/css">""" + _CSS + """</style>{% endblock extra_css %}
"""


def html_exporter(exclude_input: bool = True):
    import jinja2
    from nbconvert import HTMLExporter
    return HTMLExporter(template_name="lab", extra_loaders=[jinja2.DictLoader({"lt_report.html.j2": _TEMPLATE})],
                        template_file="lt_report.html.j2", exclude_input=exclude_input,
                        exclude_input_prompt=True, exclude_output_prompt=True, embed_images=True)


def render_run_pages(runs: pd.DataFrame, out_dir, log=print) -> dict[str, str]:
    """Each run's executed notebook as ``<out>/runs/<grid>/<id>.html`` (code shown; redone only when
    the notebook is newer).  Returns {run_dir: link relative to <out>}."""
    import nbformat
    exporter, links = None, {}
    for _, r in runs.iterrows():
        if not isinstance(r.get("notebook"), str):
            continue
        rel = Path("runs") / str(r["grid"]) / f"{r['run_id']}.html"
        target = Path(out_dir) / rel
        if not target.exists() or target.stat().st_mtime < Path(r["notebook"]).stat().st_mtime:
            exporter = exporter or html_exporter(exclude_input=False)
            body, _ = exporter.from_notebook_node(nbformat.read(r["notebook"], as_version=4),
                                                  resources={"metadata": {"name": f"run {r['run_id']}"}})
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(body)
        links[r["run_dir"]] = rel.as_posix()
    return links


def _execute(name: str, parameters: dict, out_dir: Path, kernel_name: str):
    """Execute ``NOTEBOOKS[name]`` (jupytext → an in-memory notebook) into ``<out>/<name>.ipynb``;
    returns (the executed notebook, the error or None)."""
    import jupytext
    import nbformat
    import papermill
    logging.getLogger("papermill").setLevel(logging.ERROR)
    nb = jupytext.read(config.PROJECT_ROOT / NOTEBOOKS[name])
    target = out_dir / f"{name}.ipynb"
    error, t0 = None, time.time()
    try:
        papermill.execute_notebook(nb, str(target), parameters=parameters, kernel_name=kernel_name,
                                   cwd=str(config.PROJECT_ROOT), progress_bar=False, log_output=False,
                                   # CRITICAL: jupyter_client interrupts the kernel before shutting it down,
                                   # which ipykernel logs at ERROR ("KeyboardInterrupt caught in kernel")
                                   extra_arguments=["--IPKernelApp.log_level=CRITICAL"])
    except Exception as exc:  # a failed cell: the executed notebook (with the error) is still rendered
        error = exc
    if not target.exists():
        raise RuntimeError(f"{name}: papermill wrote no notebook ({error!r})") from error
    return nbformat.read(target, as_version=4), error, round(time.time() - t0, 2)


def _explore_parameters(sources, out_dir: Path) -> dict | None:
    for s in sources:
        _, dirs = _source_runs(s)
        for d in dirs:
            pj = d / "params.json"
            if pj.exists():
                p = json.loads(pj.read_text())
                break
        else:
            if Path(s).suffix in (".yaml", ".yml"):
                from .grid import load_grid
                runs = load_grid(project_path(s), check_backbone=False).runs
                if not runs:
                    continue
                p = runs[0]
            else:
                continue
        return {**{k: p.get(k) for k in EXPLORE_KEYS}, "out_dir": str(out_dir)}
    return None


def build_report(sources, out_dir="report", *, kernel_name: str = KERNEL, explore: bool = True,
                 run_pages: bool = True, log=print) -> Path:
    """Render ``<out_dir>/index.html`` from the runs of ``sources``; see the module docstring.
    Figures and tables go to ``<out_dir>/figures`` and ``<out_dir>/tables``, the executed notebooks
    to ``<out_dir>/explore.ipynb`` and ``analysis.ipynb``.  Raises RuntimeError, after rendering,
    when a notebook failed."""
    from concurrent.futures import ThreadPoolExecutor

    import jupyter_client.kernelspec  # noqa: F401  (imported here: imports racing in threads can deadlock)
    import jupytext  # noqa: F401
    import nbconvert  # noqa: F401
    import nbformat
    import papermill  # noqa: F401
    t0 = time.time()
    sources = [str(s) for s in ([sources] if isinstance(sources, (str, os.PathLike)) else sources)]
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    runs = collect_runs(sources)
    log(f"report: {len(runs)} finished runs ({len(runs.attrs['unfinished'])} without results) from "
        f"{', '.join(sources)}")
    jobs = {"analysis": {"grids": [str(project_path(s).resolve()) for s in sources], "out_dir": str(out)}}
    if explore and (ep := _explore_parameters(sources, out)):
        jobs = {"explore": ep, **jobs}
    # the two kernels run at once (each mostly waits on its own imports); run pages render meanwhile
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {name: pool.submit(_execute, name, params, out, kernel_name) for name, params in jobs.items()}
        t_pages = time.time()
        links = render_run_pages(runs, out, log) if run_pages else {}
        t_pages = time.time() - t_pages
        executed = {name: f.result() for name, f in futures.items()}
    errors = {name: err for name, (_, err, _) in executed.items() if err is not None}
    timings = {f"{name}.py": t for name, (_, _, t) in executed.items()} | {"run pages": round(t_pages, 2)}

    sections = [(name, {"explore": "The data set", "analysis": "Results"}[name]) for name in executed]
    sections.append(("runs", "Runs"))
    cells = []
    for name, (nb, _, _) in executed.items():
        cells.append(nbformat.v4.new_markdown_cell(f'<a id="{name}"></a>'))
        cells += [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])
                  and "parameters" not in c.metadata.get("tags", [])]
    cells.append(nbformat.v4.new_markdown_cell('<a id="runs"></a>\n\n## Runs\n\nEvery finished run, with its '
                                               'executed training notebook (parameters, log, learning curves).\n\n'
                                               + runs_html(runs, links)))
    info = provenance(sources, runs)
    info["report_timings_s"] = timings
    wall = time.time() - t0
    cells.insert(0, nbformat.v4.new_markdown_cell(header_html(info, wall, sections)))
    report_nb = nbformat.v4.new_notebook(cells=cells, metadata=next(iter(executed.values()))[0].metadata)
    body, _ = html_exporter().from_notebook_node(report_nb, resources={"metadata": {"name": "Long-tailed recognition: report"}})
    (out / "index.html").write_text(body)
    (out / "provenance.json").write_text(json.dumps({**info, "report_wall_s": round(time.time() - t0, 2)}, indent=2))
    log(f"report: {out / 'index.html'} ({time.time() - t0:.1f} s; "
        + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + ")")
    if errors:
        raise RuntimeError("; ".join(f"{n}.py failed: {str(e).strip().splitlines()[-1] if str(e).strip() else e!r}"
                                     for n, e in errors.items()) + f" (rendered anyway: {out / 'index.html'})")
    return out / "index.html"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m longtail.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="+", help="parameter files (params/*.yaml) or folders of runs")
    ap.add_argument("--out", default=str(config.PROJECT_ROOT / "report"), help="report folder (default: %(default)s)")
    ap.add_argument("--kernel", default=KERNEL, help="Jupyter kernel (default: %(default)s)")
    ap.add_argument("--no-explore", action="store_true", help="leave out the data-set notebook")
    ap.add_argument("--no-run-pages", action="store_true", help="do not render the runs' notebooks")
    args = ap.parse_args(argv)
    try:
        build_report(args.sources, args.out, kernel_name=args.kernel, explore=not args.no_explore,
                     run_pages=not args.no_run_pages)
    except (RuntimeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


# ============================================================================ small helpers

def _json(v) -> dict:
    if isinstance(v, dict):
        return v
    if isinstance(v, str) and v.strip().startswith("{"):
        return json.loads(v)
    return {}


def _isnan(v) -> bool:
    return isinstance(v, float) and np.isnan(v)


def _given(v) -> bool:
    return v is not None and not _isnan(v)


def _short(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)


if __name__ == "__main__":
    sys.exit(main())
