"""Did a change leave the numbers alone?  Two run trees and two reports compared field by field.

    python bench/same_numbers.py RUNS_BEFORE RUNS_AFTER [--reports REPORT_BEFORE REPORT_AFTER]

A run tree is a runs folder (``LT_RUNS_DIR``: one folder per grid, one per run).  For every finished
run of the first tree, the run of the same id in the second must have the same ``metrics.json``
(every key but the timings and paths: ``TIMING``), the same ``history.csv`` (but its per-epoch
timings), the same arrays in ``predictions.npz``, the same ``classes.csv`` and ``params.json`` (but
``output_dir``, and parameters the change added, at their defaults in every run).  Reports: every ``tables/*.csv`` the same, but columns of timings and paths; a
column only the second report has is named (a deliberate addition), not counted as a difference.
Prints the counts compared and every difference; exits 1 when there is one.  How a refactor shows
it changed nothing: run the default and tiny grids and the report at both commits (two worktrees,
two ``LT_RUNS_DIR``), then this.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from longtail.params import DEFAULTS

#: what may differ between two runs of the same computation: timings and where the files are
TIMING = ("wall_s", "cpu_s", "run_dir", "output_dir", "notebook", "epoch_s", "images_per_s")


def _same(a, b) -> bool:
    both_nan = isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b)
    return a == b or both_nan


def compare_runs(before: Path, after: Path) -> tuple[int, int, list[str], list[str]]:
    """(runs compared, fields compared, differences, parameters only the second tree's runs record,
    each at its default: a parameter the change added) of two run trees."""
    diffs, n_runs, n_fields, new_params = [], 0, 0, set()
    for d in sorted(p.parent for p in before.glob("*/*/metrics.json")):
        rel = d.relative_to(before)
        a = after / rel
        if not (a / "metrics.json").exists():
            diffs.append(f"{rel}: no finished run after")
            continue
        n_runs += 1
        mb, ma = (json.loads((x / "metrics.json").read_text()) for x in (d, a))
        for k in sorted(set(mb) | set(ma)):
            if k not in TIMING:
                n_fields += 1
                if not _same(mb.get(k), ma.get(k)):
                    diffs.append(f"{rel} metrics.json {k}: {mb.get(k)!r} -> {ma.get(k)!r}")
        hb, ha = (pd.read_csv(x / "history.csv") for x in (d, a))
        keep = [c for c in hb.columns if c not in TIMING]
        if list(hb.columns) != list(ha.columns) or not hb[keep].equals(ha[keep]):
            diffs.append(f"{rel} history.csv differs")
        with np.load(d / "predictions.npz") as pb, np.load(a / "predictions.npz") as pa:
            for k in pb.files:
                n_fields += 1
                if k not in pa.files or not np.array_equal(pb[k], pa[k]):
                    diffs.append(f"{rel} predictions.npz {k} differs")
        if (d / "classes.csv").read_text() != (a / "classes.csv").read_text():
            diffs.append(f"{rel} classes.csv differs")
        pb, pa = ({k: v for k, v in json.loads((x / "params.json").read_text()).items() if k not in TIMING}
                  for x in (d, a))
        added = {k for k in set(pa) - set(pb) if k in DEFAULTS and pa[k] == DEFAULTS[k]}  # new parameters, at their defaults
        differ = sorted(k for k in (set(pb) | set(pa)) - added if pb.get(k) != pa.get(k))
        if differ:
            diffs.append(f"{rel} params.json differs in {differ}")
        new_params.update(added)
    return n_runs, n_fields, diffs, sorted(new_params)


def compare_reports(before: Path, after: Path) -> tuple[int, list[str], list[str]]:
    """(tables compared, differences, notes on timing columns and added columns) of two reports."""
    names_b = {p.name for p in (before / "tables").glob("*.csv")}
    names_a = {p.name for p in (after / "tables").glob("*.csv")}
    diffs = [f"tables only in one report: {sorted(names_b ^ names_a)}"] if names_b != names_a else []
    notes = []
    for name in sorted(names_b & names_a):
        b, a = (pd.read_csv(x / "tables" / name) for x in (before, after))
        skip = [c for c in b.columns if c in TIMING or "CPU" in str(c) or "wall" in str(c).lower()]
        added = [c for c in a.columns if c not in b.columns]
        keep = [c for c in b.columns if c not in skip]
        if [c for c in a.columns if c not in added] != list(b.columns) or not b[keep].equals(a[keep]):
            diffs.append(f"report table {name} differs")
        elif skip or added:
            notes.append(f"{name}: equal but for timings/paths {skip}" + (f", added columns {added}" if added else ""))
    return len(names_b & names_a), diffs, notes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs_before", type=Path)
    ap.add_argument("runs_after", type=Path)
    ap.add_argument("--reports", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = ap.parse_args(argv)
    n_runs, n_fields, diffs, new_params = compare_runs(args.runs_before, args.runs_after)
    n_tables, notes = 0, [f"parameters added, every run at their default: {new_params}"] if new_params else []
    if args.reports:
        n_tables, more, report_notes = compare_reports(*args.reports)
        diffs += more
        notes += report_notes
    print(f"{n_runs} runs ({n_fields} metric and prediction fields) and {n_tables} report tables compared: "
          f"{len(diffs)} difference(s)")
    for line in notes + diffs:
        print("  " + line)
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
