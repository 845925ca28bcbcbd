"""Finished runs and everything computed from them: the analysis behind the report's tables.

``collect_runs(sources)`` reads one row per finished run (``rundir.status`` done) of one or more
grids (a grid's parameter file, a folder of run folders, or one run folder; relative paths against
the project root, ``project_path``) and names each run's method (``method_labels``, ordered by
``method_order``).  From these rows: the thesis appendix
tables (``appendix_tables``: top-1 per split, and loss / top-1 / F1 per split, a row per method,
mean ± std over seeds, one pair per setting of ``settings``), the comparison with published numbers
(``PUBLISHED``, ``published_comparison``), what helps the tail at what cost to the head
(``tail_tradeoff``, ``tail_summary``), and, from each run's ``predictions.npz``, per-class accuracy,
confusion matrices, reliability and qualitative examples.  Nothing here renders or plots.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import config, rundir
from .gridspec import value_text
from .metrics import SPLITS
from .params import TRAIN_SETS

#: display names of the test splits (``metrics.SPLITS``) and the training sets (``params.TRAIN_SETS``)
SPLIT_LABELS = dict(zip(SPLITS, ("Balanced", "Long-tailed", "Head", "Middle", "Tail"), strict=True))
TRAIN_SET_LABELS = dict(zip(TRAIN_SETS, ("long-tailed", "balanced"), strict=True))
#: display names of the losses, in ``losses.LOSS_NAMES``' order, which is the tables' row order (a test
#: holds the two together: naming them here keeps reading results free of torch, which ``losses`` imports)
LOSS_LABELS = {"ce": "CE", "focal": "Focal", "weighted_ce": "Weighted CE", "class_balanced": "Class-balanced",
               "balanced_softmax": "Balanced softmax", "equalization": "Equalization", "ldam": "LDAM",
               "logit_adjusted": "Logit-adjusted", "label_aware_smoothing": "Label-aware smoothing"}
#: a table per value of these (the file name names them: ``top1_<backbone>_<train_set>``) ...
TABLE_KEYS = ("dataset", "backbone", "train_set")
#: ... and per value of these where they differ between the collected runs
EXTRA_TABLE_KEYS = ("imbalance_factor", "profile", "n_max", "class_order", "balanced_size", "group_scheme",
                    "group_thresholds", "test_longtailed_rule", "pretrained", "mode", "image_size", "dataset_params",
                    "val_fraction")
#: repetitions: averaged over (mean ± standard deviation)
REPLICATE_KEYS = ("seed", "subset_seed")
#: where and how fast, not what: never distinguishes two methods
_NOT_A_VARIANT = ("output_dir", "data_root", "weights_dir", "save_checkpoints", "device", "precision",
                  "eval_batch_size", "channels_last", "compile", "cuda_graph", "on_error", "eval_protocol", "label")
RESULT_FILE = rundir.RESULT_FILE
RUN_NOTEBOOK = rundir.NOTEBOOK_FILE

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


def source_runs(source) -> tuple[str, list[Path]]:
    """(grid name, run folders) of a parameter file, a folder of run folders, or one run folder."""
    p = project_path(source)
    if p.suffix in (".yaml", ".yml"):
        from .gridspec import run_folders
        return run_folders(p)
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: neither a parameter file (.yaml) nor a folder of runs")
    if (p / rundir.PARAMS_FILE).exists():
        return p.parent.name, [p]
    from .slurm import LOG_FOLDER  # the grid's SLURM logs beside its runs: not a run
    return p.name, sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name != LOG_FOLDER)


def _source_folders(source) -> tuple[str, dict[Path, dict]]:
    """(grid name, {run folder: what it shows}) of a source (``source_runs``): for a parameter file, the
    ``rundir.SHOWN_NOT_COMPUTED`` values its grid sets (``gridspec.shown_parameters``, one expansion of
    the grid); nothing for a folder of runs."""
    p = project_path(source)
    if p.suffix in (".yaml", ".yml"):
        from .gridspec import shown_parameters
        return shown_parameters(p)
    grid, dirs = source_runs(source)
    return grid, {d: {} for d in dirs}


def _cell(v):
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v


def collect_runs(sources) -> pd.DataFrame:
    """One row per finished run (``rundir.status`` done) of every source, in the sources' order.

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
        grid, shown = _source_folders(source)
        for d in shown:
            if not rundir.is_done(d):  # not run yet, running, or failed (even if it wrote metrics.json)
                unfinished.append(str(d))
                continue
            pj = d / rundir.PARAMS_FILE
            try:
                params = rundir.read_json(pj) if pj.exists() else {}
                metrics = rundir.read_json(d / RESULT_FILE)
            except ValueError as exc:  # empty or corrupt: the file is named, the others are reported
                warnings.warn(f"{exc}; run skipped", stacklevel=2)
                unfinished.append(str(d))
                continue
            row = {k: _cell(v) for k, v in params.items()}
            row.update({k: _cell(v) for k, v in metrics.items()})
            row.update(shown[d])  # what the grid asks to show (a run is shared by the protocols)
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
    technique = row.get("technique")
    if technique not in (None, "none") and not _isnan(technique):
        from .methods import PROTOTYPE_TECHNIQUES, TECHNIQUES
        label = TECHNIQUES[technique].label if technique in TECHNIQUES else str(technique)
        # prototypes train nothing, so the loss and sampler play no part in them
        name = label[0].upper() + label[1:] if technique in PROTOTYPE_TECHNIQUES else f"{name} + {label}"
    if _given(row.get("feature_power")) and float(row["feature_power"]) != 1.0:
        name += f" + Tukey λ {float(row['feature_power']):g}"
    if str(row.get("feature_standardize")) == "True":
        name += " + standardised features"
    if row.get("tta") not in (None, "none") and not _isnan(row.get("tta")):
        name += f" + {str(row['tta']).replace('_', '-')} TTA"
    if _given(row.get("mixup_alpha")) and float(row["mixup_alpha"]) > 0:
        name += " + feature mixup" if row.get("mode") == "linear" else " + mixup"
    if row.get("posthoc") not in (None, "none") and not _isnan(row.get("posthoc")):
        name += {"tau_norm": " + τ-norm", "logit_adjust": " + logit adjustment"}.get(row["posthoc"],
                                                                                    f" + {row['posthoc']}")
    tuned = _json(row.get("tune"))
    if tuned:  # which parameters the run chose on validation (the candidates: params.json)
        name += " (tuned: " + ", ".join(str(k).replace("_params", "").replace("_", " ") for k in tuned) + ")"
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
                extra += ([f"{k}={_label_value(x)}" for k, x in v.items()] if isinstance(v, dict)
                          else [f"{c}={_label_value(v)}"])
            if extra:
                labels.at[i] = f"{base.at[i]} ({', '.join(extra)})"
    return labels


# Metric-like columns of metrics.json that are not parameters (they never tell two methods apart)
_METRIC_COLS = ("best_epoch", "train_images", "num_classes", "wall_s", "cpu_s", "image_size", "posthoc_tau_used")


def _is_metric_col(c: str) -> bool:
    return c in _METRIC_COLS


#: columns ``collect_runs`` adds that are no parameter
_BOOKKEEPING = ("grid", "run_id", "run_dir", "notebook", "method")


def setting_columns(df: pd.DataFrame, exclude=()) -> list[str]:
    """The parameter columns of collected runs that change what a run computes: all but the
    replicate keys (``REPLICATE_KEYS``), where and how fast (``_NOT_A_VARIANT``), and ``exclude``."""
    skip = set(REPLICATE_KEYS) | set(_NOT_A_VARIANT) | set(_BOOKKEEPING) | set(exclude)
    return [c for c in df.columns if "/" not in c and c not in skip and not _is_metric_col(c)]


def setting_groups(df: pd.DataFrame, exclude=()) -> list[tuple[dict, pd.DataFrame]]:
    """The runs grouped by every parameter except the replicate keys (and ``exclude``): one group
    per setting, its runs replicates of each other, so that a mean is never taken over runs of
    different settings (a linear probe and a fine-tuned run of one backbone and loss are two).
    Each item: ({parameter: value}, runs), in the order the runs first show them."""
    if not len(df):
        return []
    cols = setting_columns(df, exclude)
    if not cols:
        return [({}, df)]
    return [({c: sub.iloc[0][c] for c in cols}, sub)
            for _, sub in df.groupby([df[c].astype(str) for c in cols], sort=False, dropna=False)]


def setting_differences(keys: list[dict]) -> list[str]:
    """``k=v, ...`` of the parameters whose values differ between the settings ``keys`` (the ones
    ``setting_groups`` gave), one text each ("" where nothing differs)."""
    varying = [c for c in dict.fromkeys(c for k in keys for c in k)
               if len({str(k.get(c)) for k in keys}) > 1]
    return [", ".join(f"{c}={_label_value(k.get(c))}" for c in varying) for k in keys]


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
    """The losses in ``LOSS_LABELS``' order (CE first); variants after their base name."""
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
    parts = [f"{_abbrev(k)}{_label_value(key[k])}" if k not in TABLE_KEYS else _label_value(key[k]) for k in keys
             if k != "dataset" or df[k].astype(str).nunique() > 1]
    return "_".join(re.sub(r"[^A-Za-z0-9._]+", "-", p).strip("-") for p in parts)


def _abbrev(k: str) -> str:
    return {"imbalance_factor": "if", "pretrained": "pt", "mode": "", "image_size": "px", "n_max": "nmax",
            "profile": "", "class_order": "", "balanced_size": "", "group_scheme": "", "val_fraction": "val",
            "group_thresholds": "groups", "test_longtailed_rule": "",
            "dataset_params": "dp"}.get(k, k)


def setting_text(key: dict) -> str:
    """``eu_moths, mobilenetv2, long-tailed training set`` (+ the extra keys)."""
    parts = [str(key.get("dataset")), str(key.get("backbone"))]
    if "train_set" in key:
        parts.append(f"{TRAIN_SET_LABELS.get(key['train_set'], key['train_set'])} training set")
    parts += [f"{k} {_label_value(v)}" for k, v in key.items() if k not in TABLE_KEYS]
    return ", ".join(parts)


# ============================================================================ the appendix tables

@dataclass
class Table:
    """A formatted table: ``name`` is the file stem (``top1_mobilenetv2_longtailed``)."""
    name: str
    caption: str
    frame: pd.DataFrame
    setting: dict | None = None
    notes: list[str] = field(default_factory=list)  # printed under the table


@dataclass
class Setting:
    """The runs of one table: ``key`` (table key values), ``slug`` (for file names), ``text``."""
    key: dict
    runs: pd.DataFrame
    slug: str
    text: str


def settings(df: pd.DataFrame, by_train_set: bool = True) -> list[Setting]:
    """The settings of the collected runs (one per value of ``table_keys``), in the grids' order
    (each key's values in the order the runs first show them, so the backbones stand as the grid
    lists them; the balanced before the long-tailed training set).  With
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
    first = {k: {v: i for i, v in enumerate(dict.fromkeys(df[k].astype(str)))} for k in keys}
    out.sort(key=lambda s: tuple(order.get(s.key[k], 9) if k == "train_set" else first[k][str(s.key[k])]
                                 for k in keys))
    return out


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
    from .metrics import protocol_column
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
    from .metrics import protocol_column
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
            from .losses import class_balanced_weights
            cb = sub[sub["method"] == "Class-balanced"].iloc[0]
            beta = float(_json(cb.get("loss_params")).get("beta", _loss_default("class_balanced", "beta")))
            w_cb = class_balanced_weights(counts, beta).double().numpy()
            w_inv = (1.0 / np.maximum(counts, 1)) / (1.0 / np.maximum(counts, 1)).mean()
            reduction = _json(cb.get("loss_params")).get("reduction", _loss_default("class_balanced", "reduction"))
            text += (f" With beta = {beta:g} and at most {int(counts.max())} images a class, the class-balanced weights "
                     f"equal inverse frequency to {np.abs(w_cb - w_inv).max():.1e} (weights of mean 1)"
                     + (", and both losses take the weighted mean." if reduction == "weights" else "."))
        notes.append(text)
    return notes


def _train_counts(run_dir) -> np.ndarray | None:
    path = Path(run_dir) / rundir.CLASSES_FILE
    return pd.read_csv(path)["train_count"].to_numpy(dtype=float) if path.exists() else None


def _loss_default(loss: str, name: str):
    import inspect
    from .losses import LOSSES
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
        return v if _given(v) else default
    if get("mode") is None or get("optimizer") is None:
        return ""
    sched = f"{_label_value(get('epochs'))} epochs, {get('optimizer')} lr {_label_value(get('lr'))}"
    if get("mode") == "linear":
        return f"linear probe on frozen features: {sched}"
    parts = [f"fine-tuned ({get('mode')}): {sched}"]
    if get("backbone_lr_scale", 1.0) not in (1, 1.0):
        parts.append(f"backbone lr x {_label_value(get('backbone_lr_scale'))}")
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
    from .metrics import protocol_column
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
    from .metrics import PROTOCOL_TEXT
    from .models import ALIASES
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

def group_sizes(run_dir) -> pd.DataFrame:
    """The head / middle / tail groups of a run folder (its ``classes.csv``), a row each and ``all``:
    ``classes`` and ``train_images`` (of the long-tailed training set, whose counts define the
    groups), ``test_images`` of the physical long-tailed test set (the thesis protocol's, which the
    groups partition), ``test_share`` (%, of that set's images) and ``balanced_test_images`` (the
    balanced test set's, on which the weighted protocol's groups are measured)."""
    from .subsets import group_sizes as sizes_of
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


def confusion_subsets(runs: pd.DataFrame, methods: list[str], k: int = 12,
                      extra_columns: int | None = None) -> list[tuple[str, np.ndarray, list[str], list[str]]]:
    """Confusion matrices (counts, summed over the seeds) of each method for the ``k`` largest and
    the ``k`` smallest training classes: (title, counts [rows, columns], row names, column names).
    Rows are the chosen classes; columns are the same classes, then the ``extra_columns`` other
    classes (default ``k``) that received most of their wrong predictions, then "other classes"
    (the rest), so each row sums to the class's test images and no wrong prediction is hidden."""
    from .metrics import confusion
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
    from .metrics import expected_calibration_error, probabilities, reliability_bins
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


def _label_value(v) -> str:
    """A value in a method label or a table's name: ``100.0`` as ``100``, else ``gridspec.value_text``."""
    return str(int(v)) if isinstance(v, float) and v.is_integer() else value_text(v)



BENCH_FOLDERS = ("bench/results", "bench/measured")  # written by `make bench`; kept from lent GPU machines
#: bench tables that belong beside the published numbers (the CIFAR-10-LT ablation), not among the speed figures
PUBLISHED_ABLATION_PREFIX = "cifar10_lt_ablation"
#: bench tables of params/thesis.yaml runs (our schedule) fine-tuned on a lent GPU: shown beside the thesis's numbers
THESIS_FINETUNE_PREFIX = "thesis_finetune"
#: bench tables that hold results rather than speed figures (shown in their own sections)
RESULT_TABLE_PREFIXES = (PUBLISHED_ABLATION_PREFIX, THESIS_FINETUNE_PREFIX)


def benchmark_tables(folder=None) -> list[tuple[str, str]]:
    """``(file name, markdown)`` of every ``*.md`` in ``folder``, or by default in ``bench/results/``
    (what ``make bench`` wrote on this machine) and then ``bench/measured/`` (figures measured once
    on a lent GPU machine, committed because CI cannot regenerate them)."""
    folders = [Path(folder)] if folder is not None else [config.PROJECT_ROOT / f for f in BENCH_FOLDERS]
    return [(p.name, p.read_text()) for f in folders if f.is_dir() for p in sorted(f.glob("*.md"))]
