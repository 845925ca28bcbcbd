"""Papermill overhead per run: today's code against a base revision, side by side in one run.

Each run is one grid run exactly as ``longtail.grid`` executes it (``executors.run_one``: papermill, a
fresh ``longtail`` kernel, the executed notebook written into the run folder), in a subprocess with
one CPU thread (``OMP_NUM_THREADS=1``, what each of the main job's two workers gets on 2 cores).
The two sides alternate, round by round, so drifting machine load hits both alike:

- **base**: ``lib/`` and ``notebooks/`` of ``--base`` (default: the commit before issue 14's
  changes), extracted with ``git archive`` into a temporary folder, its own ``run_one``;
- **now**: this working tree.

The overhead of a run is the notebook's wall time (``run_one``'s ``wall_s``: kernel start, the
cells, papermill's writes, kernel shutdown) minus the time inside ``run_training`` (the run's
``metrics.json`` ``wall_s``).  From papermill's timestamps it is split into: kernel start and
shutdown (outside papermill's clock), papermill before the first cell, the first cell less
``run_training`` (imports, the table), the figure cells, papermill between cells (a notebook
write after each), and the final write.

The run is the main job's (``params/default.yaml``: EU Moths, linear probe on cached
MobileNetV2 features, cross-entropy, 30 epochs); the features are extracted once before the rounds.

    python bench/papermill_overhead.py [--rounds 5] [--base REV]
Prints a markdown table of medians; the last line is the ratio now / base of the median overhead.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE_REV = "2359d30"  # the main branch before issue 14 (goal 3)
RUN = dict(dataset="eu_moths", backbone="mobilenetv2", pretrained="inat_insects", mode="linear", imbalance_factor=8,
           train_set="longtailed", loss="ce", val_fraction=0.0, epochs=30, batch_size=64, lr=0.1, weight_decay=5e-4)

# run in a subprocess whose PYTHONPATH is one side's lib/: one run through that side's run_one
# (in longtail.executors since issue 13, in longtail.grid before)
ONE_RUN = """
import json, sys
from longtail import config, params
try:
    from longtail.executors import run_one
except ImportError:
    from longtail.grid import run_one
run = params.validate({**json.loads(sys.argv[1]), "output_dir": sys.argv[2]})
r = run_one(run, str(config.PROJECT_ROOT / "notebooks" / "train.py"))
print(json.dumps(r))
"""


def one_run(side: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(side / "lib"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", ONE_RUN, json.dumps(RUN), str(out)], cwd=side, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"run in {side} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["status"] != "done":
        raise SystemExit(f"run in {side} failed: {result['error']}")
    inside = json.loads((out / "metrics.json").read_text())["wall_s"]
    return {"notebook_s": result["wall_s"], "inside_s": inside, "overhead_s": result["wall_s"] - inside,
            **_cell_split(out / "train.ipynb", result["wall_s"], inside)}


def _cell_split(notebook: Path, wall: float, inside: float) -> dict:
    """Where the overhead goes, from papermill's timestamps (notebook and code cells)."""
    nb = json.loads(notebook.read_text())
    meta = nb["metadata"]["papermill"]
    t = lambda s: datetime.fromisoformat(s).timestamp()  # noqa: E731
    cells = [c["metadata"]["papermill"] for c in nb["cells"] if c["cell_type"] == "code"]
    ran = [c for c in cells if c.get("start_time") and c.get("end_time")]
    durations = [t(c["end_time"]) - t(c["start_time"]) for c in ran]
    main = max(range(len(ran)), key=lambda i: durations[i])  # the cell that calls run_training
    span = t(meta["end_time"]) - t(meta["start_time"])  # papermill's clock starts once the kernel is up
    return {"outside_s": wall - span,
            "before_first_cell_s": t(ran[0]["start_time"]) - t(meta["start_time"]),
            "first_cell_less_run_s": durations[main] - inside,
            "other_cells_s": sum(durations) - durations[main],
            "between_cells_s": t(ran[-1]["end_time"]) - t(ran[0]["start_time"]) - sum(durations),
            "after_last_cell_s": t(meta["end_time"]) - t(ran[-1]["end_time"]),
            "notebook_kib": notebook.stat().st_size / 1024}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--base", default=BASE_REV, help="git revision of the base side (default %(default)s)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lt-pm-bench-"))
    base = tmp / "base"
    base.mkdir()
    archive = subprocess.run(["git", "archive", args.base, "lib", "notebooks", "jupytext.toml"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    sides = {"base": base, "now": ROOT}
    one_run(ROOT, tmp / "warm-up")  # features and decoded images into the cache, both sides read them
    rows = {name: [] for name in sides}
    t0 = time.perf_counter()
    for i in range(args.rounds):
        for name, side in (sides.items() if i % 2 == 0 else reversed(sides.items())):
            rows[name].append(one_run(side, tmp / f"{name}-{i}"))
    print(f"{args.rounds} rounds in {time.perf_counter() - t0:.0f} s; {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} (1 min); base = {args.base}, one thread per kernel")
    keys = [("notebook_s", "notebook wall"), ("inside_s", "inside run_training"), ("overhead_s", "**overhead**"),
            ("outside_s", "kernel start and shutdown (outside papermill's clock)"),
            ("before_first_cell_s", "papermill before the first cell"),
            ("first_cell_less_run_s", "first cell less run_training (imports, table)"),
            ("other_cells_s", "the other cells (figures)"), ("between_cells_s", "between cells (papermill)"),
            ("after_last_cell_s", "after the last cell (final write)"), ("notebook_kib", "executed notebook KiB")]
    med = {name: {k: statistics.median(r[k] for r in rs) for k, _ in keys} for name, rs in rows.items()}
    print("\n| median over rounds | base | now | now / base |\n|---|---|---|---|")
    for k, label in keys:
        b, n = med["base"][k], med["now"][k]
        print(f"| {label} | {b:.2f} | {n:.2f} | {n / b if b else float('nan'):.2f} |")
    print(f"\npapermill overhead per run (median): base {med['base']['overhead_s']:.2f} s, now "
          f"{med['now']['overhead_s']:.2f} s (goal <= 1.5 s on an idle machine); "
          f"ratio now/base {med['now']['overhead_s'] / med['base']['overhead_s']:.2f}")


if __name__ == "__main__":
    main()
