"""The long-tailed leaderboard: every method trained on the long-tailed set, ranked on validation.

``leaderboard(runs)`` (the collected runs of ``results.collect_runs``) gives one row per method of
each long-tailed setting, ranked by the mean *validation* balanced accuracy (never by a test
score, so the top row is a choice made without the test fold): top-1 (%) on the balanced test
set, its tail and head classes (mean and sample standard deviation over the seeds, and the 95 %
bootstrap interval over the test images, ``metrics.bootstrap_interval``, the test fold's own
sampling error, which the seeds' spread leaves out), the validation score, the family of the survey's
taxonomy (``method_family``), and the CPU seconds of a run (``cpu_s``, all threads; training and
evaluation, without the notebook's start-up).  An ensemble of two or three methods (``ensemble``:
their softmax probabilities averaged, seed by seed), the members chosen on *validation*
(``best_ensemble``), joins as one more row.  Runs at another input size than the usual one rank in the same board, the
size in their name (``_one_ranking_over_input_sizes``).  ``pareto_front`` marks the methods no other beats
on both tail and head top-1, ``goal_text`` states the entry chosen on validation against ``GOAL``,
with its test intervals.
Nothing here plots (``figures.tail_vs_head``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics, rundir, taxonomy
from .lossinfo import loss_info
from .results import TABLE_KEYS, settings

#: the leaderboard's goal on the long-tailed set (mean of the seeds): balanced-test and tail top-1
GOAL = {"balanced": 0.75, "tail": 0.60}
METRIC_SPLITS = ("balanced", "tail", "head")


def method_family(row) -> str:
    """The survey families (``longtail.taxonomy``) of a run's ingredients, joined by " + ": its
    loss's (as the loss declares it), re-sampling, DRW, the technique's, TTA, mixup, the post-hoc
    adjustment; ``taxonomy.BASELINE`` for plain CE."""
    from .methods import PROTOTYPE_TECHNIQUES, TECHNIQUES  # methods imports torch: only when a board is built
    parts, losses = [], loss_info()
    technique = row.get("technique") if isinstance(row.get("technique"), str) else "none"
    if technique not in PROTOTYPE_TECHNIQUES:  # class prototypes ignore the loss, sampler and DRW
        if row.get("loss") in losses and losses[row["loss"]].family != taxonomy.BASELINE:
            parts.append(losses[row["loss"]].family)
        if isinstance(row.get("sampler"), str) and row["sampler"] != "instance":
            parts.append(taxonomy.RE_SAMPLING)
        if _number(row.get("drw_epoch")) is not None:
            parts.append(taxonomy.RE_WEIGHTING)
    if technique != "none":
        parts.append(TECHNIQUES[technique].family if technique in TECHNIQUES else str(technique))
    if isinstance(row.get("tta"), str) and row["tta"] != "none":
        parts.append(taxonomy.TEST_TIME_AUGMENTATION)
    if (_number(row.get("mixup_alpha")) or 0) > 0:
        parts.append(taxonomy.DATA_AUGMENTATION)
    posthoc = row.get("posthoc")
    if posthoc == "logit_adjust":
        parts.append(taxonomy.LOGIT_ADJUSTMENT)
    elif posthoc == "tau_norm":
        parts.append(taxonomy.DECOUPLED_TRAINING)
    return " + ".join(dict.fromkeys(parts)) or taxonomy.BASELINE


def _number(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(v) else v


def _stats(values) -> tuple[float, float]:
    v = pd.to_numeric(pd.Series(values), errors="coerce").dropna().to_numpy(dtype=float) * 100
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def _correct(sub: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    """(seeds, images) booleans of the test predictions' correctness and each image's class group, from
    the runs' ``predictions.npz`` and ``classes.csv`` (an ensemble's rows carry them as ``_correct``,
    ``_group``); None where a run has none or the runs disagree on the images."""
    if "_correct" in sub:
        return np.stack(sub["_correct"].tolist()), sub["_group"].iloc[0]
    rows, group = [], None
    for d in sub.get("run_dir", pd.Series(dtype=object)):
        try:
            preds = np.load(Path(d) / rundir.PREDICTIONS_FILE)
            classes = pd.read_csv(Path(d) / rundir.CLASSES_FILE)
        except (OSError, TypeError, ValueError):
            return None
        rows.append(preds["logits"].argmax(1) == preds["labels"])
        group = classes["group"].to_numpy()[preds["labels"]]
    if not rows or len({len(r) for r in rows}) > 1:
        return None
    return np.stack(rows), group


def _row(method: str, family: str, sub: pd.DataFrame) -> dict:
    row = {"Method": method, "Family": family}
    correct = _correct(sub)
    for s in METRIC_SPLITS:
        row[f"{s}_mean"], row[f"{s}_sd"] = _stats(sub.get(f"{s}/acc1", pd.Series(dtype=float)))
        lo = hi = float("nan")
        if correct is not None:
            c, group = correct
            lo, hi = metrics.bootstrap_interval(c if s == "balanced" else c[:, group == s])
        row[f"{s}_lo"], row[f"{s}_hi"] = 100 * lo, 100 * hi
    row["val_mean"], _ = _stats(sub.get("val/balanced_acc", pd.Series(dtype=float)))
    row["cpu_s"] = float(pd.to_numeric(sub.get("cpu_s", pd.Series(dtype=float)), errors="coerce").mean())
    row["Seeds"] = len(sub)
    return row


def ensemble(runs: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """One row per seed that all ``methods`` ran: the metrics of the mean of their softmax
    probabilities (log of it as logits) on the test set, from their ``predictions.npz``; ``cpu_s``
    the sum of theirs."""
    rows = []
    for seed, sub in runs[runs["method"].isin(methods)].groupby("seed"):
        members = [sub[sub["method"] == m] for m in methods]
        if any(len(m) != 1 for m in members):
            continue
        dirs = [Path(m.iloc[0]["run_dir"]) for m in members]
        preds = [np.load(d / rundir.PREDICTIONS_FILE) for d in dirs]
        prob = np.mean([np.exp(metrics.log_softmax(p["logits"])) for p in preds], axis=0)
        labels = preds[0]["labels"]
        classes = pd.read_csv(dirs[0] / rundir.CLASSES_FILE)
        res = metrics.flatten(metrics.evaluate(np.log(np.clip(prob, 1e-12, None)), labels,
                                               classes["longtailed_count"].to_numpy(), classes["group"].to_numpy()))
        val = [p["val_logits"] for p in preds if "val_logits" in p.files]
        if len(val) == len(preds) and len(val[0]):
            vprob = np.mean([np.exp(metrics.log_softmax(v)) for v in val], axis=0)
            res["val/balanced_acc"] = metrics.balanced_accuracy(vprob, preds[0]["val_labels"], vprob.shape[1])
        res.update(seed=seed, cpu_s=float(sum(pd.to_numeric(m["cpu_s"], errors="coerce").iloc[0] for m in members)),
                   _correct=prob.argmax(1) == labels, _group=classes["group"].to_numpy()[labels])
        rows.append(res)
    return pd.DataFrame(rows)


def best_pair(runs: pd.DataFrame, pool: list[str]) -> tuple[list[str], pd.DataFrame]:
    """``best_ensemble`` of exactly two members."""
    return best_ensemble(runs, pool, sizes=(2,))


#: the numbers of members an ensemble of the leaderboard may have
ENSEMBLE_SIZES = (2, 3)


def best_ensemble(runs: pd.DataFrame, pool: list[str], sizes=ENSEMBLE_SIZES) -> tuple[list[str], pd.DataFrame]:
    """The methods of ``pool`` (ordered best validation score first), ``sizes`` of them at a time,
    whose ensemble has the best mean validation balanced accuracy, and that ensemble's rows; ties go
    to the smaller ensemble, then to the earlier combination.  Nothing of the test fold is read.
    Choosing on the ensemble's validation score, not on the members' alone, keeps two methods
    with the same predictions (balanced softmax and the logit-adjusted loss at τ = 1 are one
    formula) from being combined for nothing."""
    from itertools import combinations
    best, best_rows, best_score = [], pd.DataFrame(), -np.inf
    for size in sizes:
        for members in combinations(pool, size):
            rows = ensemble(runs, list(members))
            score = rows["val/balanced_acc"].mean() if "val/balanced_acc" in rows and len(rows) else np.nan
            if np.isfinite(score) and score > best_score:
                best, best_rows, best_score = list(members), rows, score
    return best, best_rows


def leaderboard(runs: pd.DataFrame, ensemble_pool: int = 5) -> pd.DataFrame:
    """One row per method of every long-tailed setting (column ``Setting``), best mean validation
    score first (``val_mean``; entries without one last, then by nothing: in the grid's order);
    numbers in %, ``*_mean`` / ``*_sd`` over the seeds, ``*_lo`` / ``*_hi`` the test interval;
    ``front``: on the tail/head Pareto front.  Where the runs stored validation logits, the ensemble of two or three of
    the ``ensemble_pool`` methods with the best mean validation score joins, its members chosen on the
    ensemble's validation score (``best_ensemble``; never on the test score)."""
    frames = []
    for st in settings(_one_ranking_over_input_sizes(runs)):
        if st.key.get("train_set") != "longtailed":
            continue
        sub = st.runs
        rows = [_row(m, method_family(g.iloc[0]), g) for m, g in sub.groupby("method", sort=False)]
        board = pd.DataFrame(rows)
        if "val/balanced_acc" in sub and board["val_mean"].notna().sum() >= 2:
            pool = board.dropna(subset=["val_mean"]).nlargest(ensemble_pool, "val_mean")["Method"].tolist()
            best, ens = best_ensemble(sub, pool)
            if best:
                board = pd.concat([board, pd.DataFrame([_row("Ensemble: " + " & ".join(best), taxonomy.ENSEMBLE, ens)])],
                                  ignore_index=True)
        board = board.sort_values("val_mean", ascending=False, kind="stable", na_position="last").reset_index(drop=True)
        board.insert(0, "Rank", np.arange(1, len(board) + 1))
        board.insert(0, "Setting", st.text)
        board["front"] = pareto_front(board["head_mean"].to_numpy(), board["tail_mean"].to_numpy())
        board["goal"] = (board["balanced_mean"] >= GOAL["balanced"] * 100) & (board["tail_mean"] >= GOAL["tail"] * 100)
        frames.append(board)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _one_ranking_over_input_sizes(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs with the input size made part of the method, not of the setting: within one data
    set, backbone and training set (``results.TABLE_KEYS``), a run at another size than the most
    common one there is named "<method> at <size> px", and all rank together (the size is one more
    choice made on validation).  Another data set's runs at their own size are left alone."""
    if "image_size" not in runs or runs["image_size"].nunique() < 2:
        return runs
    runs = runs.copy()
    keys = [k for k in TABLE_KEYS if k in runs]
    for _, idx in runs.groupby([runs[k].astype(str) for k in keys], sort=False).groups.items():
        size = pd.to_numeric(runs.loc[idx, "image_size"], errors="coerce")
        if size.nunique() < 2:
            continue
        usual = size.mode().iloc[0]
        other = idx[(size != usual).to_numpy()]
        runs.loc[other, "method"] = runs.loc[other, "method"] + " at " + size[size != usual].map(lambda v: f"{v:g}") + " px"
        runs.loc[idx, "image_size"] = usual
    return runs


def pareto_front(head, tail) -> np.ndarray:
    """True for each point that no other point beats on one coordinate while at least matching it
    on the other (higher is better on both)."""
    head, tail = np.asarray(head, dtype=float), np.asarray(tail, dtype=float)
    dominated = [((head >= h) & (tail >= t) & ((head > h) | (tail > t))).any() for h, t in zip(head, tail)]
    return ~np.asarray(dominated, dtype=bool)


def _interval(r, s) -> str:
    lo, hi = r[f"{s}_lo"], r[f"{s}_hi"]
    return f" [{lo:.1f}, {hi:.1f}]" if np.isfinite(lo) and np.isfinite(hi) else ""


def table(board: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard formatted: ``mean ± sd [test interval]`` cells, the validation score it is
    ranked by, the family, CPU seconds, front and goal marks."""
    def cell(r, s):
        sd = f" ± {r[f'{s}_sd']:.1f}" if np.isfinite(r[f"{s}_sd"]) else ""
        return f"{r[f'{s}_mean']:.1f}{sd}{_interval(r, s)}"
    out = pd.DataFrame({
        "Rank": board["Rank"], "Method": board["Method"],
        "Validation (%)": board["val_mean"].round(1),
        "Balanced top-1 (%)": [cell(r, "balanced") for _, r in board.iterrows()],
        "Tail top-1 (%)": [cell(r, "tail") for _, r in board.iterrows()],
        "Head top-1 (%)": [cell(r, "head") for _, r in board.iterrows()],
        "Seeds": board["Seeds"],
        "CPU s / run": board["cpu_s"].round(1), "Family": board["Family"],
        "Front": np.where(board["front"], "●", ""), "Goal": np.where(board["goal"], "✓", ""),
    })
    return out.set_index(["Rank", "Method"])


#: how the leaderboard's cells read (the table's caption)
TABLE_NOTE = (f"Ranked by the mean validation balanced accuracy (the test fold chooses nothing); test cells: mean ± "
              f"standard deviation over the seeds [{100 * metrics.INTERVAL_LEVEL:.0f} % bootstrap interval over the test images].")


#: the method every family is measured against (``family_gains``): plain cross-entropy
BASELINE_METHOD = "CE"


def family_gains(board: pd.DataFrame) -> list[tuple[str, str, float, float]]:
    """Per survey family, among the entries of that family alone (no combination, no ensemble, so a
    gain is the family's own), the entry with the best validation score (chosen without the test
    fold) and its balanced and tail top-1 gains (test means, points) over ``BASELINE_METHOD``:
    [(family, entry, balanced gain, tail gain)], largest balanced gain first; [] without a baseline row."""
    # plain CE: named "CE", or "CE (k=v)" where runs of other grids share the name; one with a validation score first
    method = board["Method"].astype(str)
    base = board[(board["Family"] == "baseline") & ((method == BASELINE_METHOD) | method.str.startswith(
        BASELINE_METHOD + " (")) & ~method.str.contains("tuned")]
    if not len(base):
        return []
    base = base.sort_values("val_mean", ascending=False, na_position="last", kind="stable").iloc[0]
    alone = board[~board["Family"].astype(str).str.contains(" + ", regex=False)
                  & ~board["Family"].isin([taxonomy.BASELINE, taxonomy.ENSEMBLE])].dropna(subset=["val_mean"])
    out = []
    for family, rows in alone.groupby("Family", sort=False):
        r = rows.loc[rows["val_mean"].idxmax()]
        out.append((family, r["Method"], r["balanced_mean"] - base["balanced_mean"], r["tail_mean"] - base["tail_mean"]))
    return sorted(out, key=lambda t: -t[2])


def goal_text(board: pd.DataFrame, reference: pd.DataFrame | None = None) -> str:
    """The entry of each setting chosen on validation (the board's top row) against ``GOAL``, with its
    test intervals (and against CE on the balanced training set of the same size, when ``reference``,
    the collected runs, holds it).  No "best" is picked on test."""
    if not len(board):
        return "No finished run on a long-tailed training set: no leaderboard."
    lines = []
    for setting, b in board.groupby("Setting", sort=False):
        top = b.iloc[0]
        met = b[b["goal"]]
        goal = (f"goal: ≥ {GOAL['balanced'] * 100:.0f} % balanced and ≥ {GOAL['tail'] * 100:.0f} % tail top-1")
        chosen = ("chosen on validation" if np.isfinite(top["val_mean"]) else
                  "no entry has a validation score, so none is chosen; the first listed")
        text = (f"{setting}: {chosen}: {top['Method']} (validation {top['val_mean']:.1f} %): balanced-test top-1 "
                f"{top['balanced_mean']:.1f} %{_interval(top, 'balanced')}, tail {top['tail_mean']:.1f} %"
                f"{_interval(top, 'tail')} ({100 * metrics.INTERVAL_LEVEL:.0f} % intervals over the test images). "
                + ("It reaches the " + goal + "." if top["goal"] else
                   f"It is {GOAL['balanced'] * 100 - top['balanced_mean']:.1f} points short of the {goal} on balanced, "
                   f"{GOAL['tail'] * 100 - top['tail_mean']:.1f} on tail.")
                + (f" {len(met)} of {len(b)} entries reach it on their test means." if len(met) else ""))
        if not top["goal"] and (moved := family_gains(b)):
            family, entry, gain, tail_gain = moved[0]
            text += (f" The family that moved it most on its own: {family} (its entry best on validation, {entry}, "
                     f"{gain:+.1f} points balanced and {tail_gain:+.1f} tail against CE; test means).")
        if reference is not None and len(reference) and "train_set" in reference:
            technique = reference["technique"].fillna("none") if "technique" in reference else "none"
            ref = reference[(reference["train_set"] == "balanced") & (reference["loss"] == "ce") & (technique == "none")]
            if len(ref):
                mean, _ = _stats(ref["balanced/acc1"])
                text += f" CE on the balanced training set of the same size: {mean:.1f} %."
        lines.append(text)
    return "\n".join(lines)
