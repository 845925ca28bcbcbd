"""Finished runs as one table: the rows every analysis starts from.

``collect_runs(sources)`` reads one row per finished run (``rundir.status`` done) of one or more
grids (a grid's parameter file, a folder of run folders, or one run folder; relative paths against
the project root, ``project_path``) and names each run's method (``method_labels``, ordered by
``method_order``; a loss's name as the loss declares it, ``lossinfo``).  ``setting_groups`` and
``settings`` group the rows into settings (every parameter but the seeds; never averaged across),
the runs of one table.  The tables built from these rows are in ``tables``, the per-class views of
the runs' predictions in ``predictions``.  Nothing here renders or plots.
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
from .gridspec import run_folders, shown_parameters, value_text
from .lossinfo import loss_labels
from .metrics import SPLITS
from .params import TRAIN_SETS
from .slurm import LOG_FOLDER as SLURM_LOG_FOLDER  # the grid's SLURM logs beside its runs: not a run

#: display names of the test splits (``metrics.SPLITS``) and the training sets (``params.TRAIN_SETS``)
SPLIT_LABELS = dict(zip(SPLITS, ("Balanced", "Long-tailed", "Head", "Middle", "Tail"), strict=True))
TRAIN_SET_LABELS = dict(zip(TRAIN_SETS, ("long-tailed", "balanced"), strict=True))
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
        return run_folders(p)
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: neither a parameter file (.yaml) nor a folder of runs")
    if (p / rundir.PARAMS_FILE).exists():
        return p.parent.name, [p]
    return p.name, sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name != SLURM_LOG_FOLDER)


def _source_folders(source) -> tuple[str, dict[Path, dict]]:
    """(grid name, {run folder: what it shows}) of a source (``source_runs``): for a parameter file, the
    ``rundir.SHOWN_NOT_COMPUTED`` values its grid sets (``gridspec.shown_parameters``, one expansion of
    the grid); nothing for a folder of runs."""
    p = project_path(source)
    if p.suffix in (".yaml", ".yml"):
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
                metrics = rundir.read_json(d / rundir.RESULT_FILE)
            except ValueError as exc:  # empty or corrupt: the file is named, the others are reported
                warnings.warn(f"{exc}; run skipped", stacklevel=2)
                unfinished.append(str(d))
                continue
            row = {k: _cell(v) for k, v in params.items()}
            row.update({k: _cell(v) for k, v in metrics.items()})
            row.update(shown[d])  # what the grid asks to show (a run is shared by the protocols)
            nb = d / rundir.NOTEBOOK_FILE
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
    name = loss_labels().get(loss, str(loss))
    params = json_mapping(row.get("loss_params"))
    if loss == "class_balanced" and params.get("base") not in (None, "softmax"):
        name = f"Class-balanced {params['base']}"
    if is_given(row.get("drw_epoch")):
        name += "-DRW"
    if row.get("sampler") not in (None, "instance") and not is_nan(row.get("sampler")):
        name += f" + {str(row['sampler']).replace('_', '-')} sampling"
    technique = row.get("technique")
    if technique not in (None, "none") and not is_nan(technique):
        from .methods import PROTOTYPE_TECHNIQUES, TECHNIQUES  # methods imports torch: only for technique runs
        label = TECHNIQUES[technique].label if technique in TECHNIQUES else str(technique)
        # prototypes train nothing, so the loss and sampler play no part in them
        name = label[0].upper() + label[1:] if technique in PROTOTYPE_TECHNIQUES else f"{name} + {label}"
    if is_given(row.get("feature_power")) and float(row["feature_power"]) != 1.0:
        name += f" + Tukey λ {float(row['feature_power']):g}"
    if str(row.get("feature_standardize")) == "True":
        name += " + standardised features"
    if row.get("tta") not in (None, "none") and not is_nan(row.get("tta")):
        name += f" + {str(row['tta']).replace('_', '-')} TTA"
    if is_given(row.get("mixup_alpha")) and float(row["mixup_alpha"]) > 0:
        name += " + feature mixup" if row.get("mode") == "linear" else " + mixup"
    if row.get("posthoc") not in (None, "none") and not is_nan(row.get("posthoc")):
        name += {"tau_norm": " + τ-norm", "logit_adjust": " + logit adjustment"}.get(row["posthoc"],
                                                                                    f" + {row['posthoc']}")
    tuned = json_mapping(row.get("tune"))
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
                v = json_mapping(sub.at[i, c]) if c.endswith("_params") else sub.at[i, c]
                extra += ([f"{k}={label_value(x)}" for k, x in v.items()] if isinstance(v, dict)
                          else [f"{c}={label_value(v)}"])
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
    return [", ".join(f"{c}={label_value(k.get(c))}" for c in varying) for k in keys]


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
    """The losses in ``losses.LOSSES``' order (CE first); variants after their base name."""
    labels = list(loss_labels().values())

    def key(m):
        for i, name in enumerate(labels):
            if m == name or m.startswith(name + " ") or m.startswith(name + "-") or (
                    name == "Class-balanced" and m.startswith("Class-balanced")):
                return (i, m)
        return (len(labels), m)
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
    parts = [f"{_abbrev(k)}{label_value(key[k])}" if k not in TABLE_KEYS else label_value(key[k]) for k in keys
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
    parts += [f"{k} {label_value(v)}" for k, v in key.items() if k not in TABLE_KEYS]
    return ", ".join(parts)


# ============================================================================ settings: the runs of one table

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


# ============================================================================ small helpers

def json_mapping(v) -> dict:
    """A ``*_params`` cell as a dict: the dict itself, or its JSON text; {} for anything else."""
    if isinstance(v, dict):
        return v
    if isinstance(v, str) and v.strip().startswith("{"):
        return json.loads(v)
    return {}


def is_nan(v) -> bool:
    return isinstance(v, float) and np.isnan(v)


def is_given(v) -> bool:
    """Neither None nor a NaN (a parameter a run's row holds)."""
    return v is not None and not is_nan(v)


def label_value(v) -> str:
    """A value in a method label or a table's name: ``100.0`` as ``100``, else ``gridspec.value_text``."""
    return str(int(v)) if isinstance(v, float) and v.is_integer() else value_text(v)
