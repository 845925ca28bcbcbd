"""The CPU main job against its compute floor: wall time stage by stage, from cold caches.

**Wall**: what ``make`` runs, from an empty cache and runs folder (temporary; the project's own
caches are left alone), each stage a subprocess (its peak resident memory read with ``os.wait4``):

1. the grid: ``python -m longtail.grid params/default.yaml --jobs 2`` (42 papermill runs; the
   first runs decode EU Moths' 2,205 JPEGs and extract the MobileNetV2 features);
2. the report: ``python -m longtail.report params/default.yaml``.

**Floor**: the compute the job cannot do without, measured after it:

- decoding and feature extraction alone, in one process from another cold cache, with
  OMP_NUM_THREADS 1 and all cores (the faster counts; the extraction itself runs one batch a core
  at once either way, as it does in a grid, where it holds the cache lock);
- the training inside the runs: the runs' median time inside ``run_training`` (``metrics.json``
  ``wall_s``; the median leaves out the first runs, which extracted the features) times the runs;
- the report's own wall time.

The figure is wall / floor (goal <= 2; the main job <= 90 s on an idle 2-core machine).  Per run
it also prints the papermill overhead: the notebook's wall time minus the time inside
``run_training`` (kernel start, imports, notebook plumbing).

    python bench/main_job.py [--params params/default.yaml] [--jobs 2]
Prints markdown tables; the last line is the ratio wall / floor.
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
from pathlib import Path

from longtail import rundir
from longtail.gridspec import TABLE_FILE

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# decoding, then feature extraction, as the runs of params/default.yaml do them (the same cache
# keys), timed apart; one epoch of a head is trained (epochs must be >= 1) and not counted
DECODE_AND_EXTRACT = """
import json, sys, time
from longtail import data
from longtail.run import run_training
t0 = time.perf_counter()
ds = data.load_dataset("eu_moths")
for split in (ds.train, ds.test):
    data.split_images(split, 256, progress=False)
t1 = time.perf_counter()
r = run_training(dict(dataset="eu_moths", backbone="mobilenetv2", pretrained="inat_insects", mode="linear",
                      epochs=1, save_checkpoints=False, output_dir=sys.argv[1]), log=lambda s: None)
t2 = time.perf_counter()
print(json.dumps({"decode_s": t1 - t0, "extract_s": t2 - t1 - r.history["epoch_s"].sum(),
                  "images": len(ds.train) + len(ds.test)}))
"""


def stage(name: str, cmd: list[str], env: dict) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        print(output[-3000:])
        raise SystemExit(f"stage {name!r} failed")
    # ru_maxrss (KiB) covers the process and its waited-for descendants (papermill kernels, workers)
    return {"stage": name, "wall_s": wall, "peak_mib": usage.ru_maxrss / 1024, "output": output}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params/default.yaml")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--goal-s", type=float, default=90.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lt-bench-"))
    env = {**os.environ, "LT_CACHE_DIR": str(tmp / "cache"), "LT_RUNS_DIR": str(tmp / "runs"), "PYTHONUNBUFFERED": "1"}
    load_before = os.getloadavg()[0]
    rows = [
        stage(f"grid ({args.params}, --jobs {args.jobs}; cold caches)",
              [PY, "-m", "longtail.grid", args.params, "--jobs", str(args.jobs)], env),
        stage("report", [PY, "-m", "longtail.report", args.params, "--out", str(tmp / "report")], env),
    ]
    wall = sum(r["wall_s"] for r in rows)
    threads = sorted({1, os.cpu_count() or 1})
    alone = {}
    for n in threads:
        floor_env = {**env, "LT_CACHE_DIR": str(tmp / f"cache-floor-{n}"), "OMP_NUM_THREADS": str(n),
                     "MKL_NUM_THREADS": str(n)}
        r = stage(f"decode + extraction alone, OMP_NUM_THREADS {n}", [PY, "-c", DECODE_AND_EXTRACT, str(tmp / f"floor-run-{n}")],
                  floor_env)
        alone[n] = json.loads(r["output"].strip().splitlines()[-1])
    fastest = min(threads, key=lambda n: alone[n]["extract_s"])

    runs = [json.loads(p.read_text()) for p in (tmp / "runs").rglob(rundir.RESULT_FILE)]
    inside = sorted(m["wall_s"] for m in runs)
    training = statistics.median(inside) * len(inside)
    floor = {"decoding EU Moths (alone)": min(a["decode_s"] for a in alone.values()),
             f"feature extraction (alone, OMP_NUM_THREADS {fastest}, the faster)": alone[fastest]["extract_s"],
             f"training inside the {len(inside)} runs (median x runs)": training,
             "report": rows[1]["wall_s"]}
    floor_s = sum(floor.values())

    print(f"machine: {os.cpu_count()} cores, load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after "
          f"(1 min); cache and runs in {tmp}")
    print("\n| wall: stage | s | peak MiB |\n|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['wall_s']:.1f} | {r['peak_mib']:.0f} |")
    print(f"| **wall** | **{wall:.1f}** | |")
    print("\n| floor: in-run compute | s |\n|---|---|")
    for name, s in floor.items():
        print(f"| {name} | {s:.1f} |")
    print(f"| **floor** | **{floor_s:.1f}** |")
    print("\nfeature extraction alone: " + ", ".join(f"OMP_NUM_THREADS {n}: {a['extract_s']:.1f} s ({a['images'] / a['extract_s']:.0f} img/s)"
                                                   for n, a in alone.items()))
    walls = _notebook_walls(tmp / "runs")
    overheads = sorted(walls[Path(m["run_dir"]).name] - m["wall_s"] for m in runs if Path(m["run_dir"]).name in walls)
    if inside:
        print(f"\nruns: {len(inside)}; time inside run_training: median {statistics.median(inside):.2f} s, "
              f"max {inside[-1]:.2f} s (the first runs extract the features)")
    if overheads:
        print(f"papermill overhead per run (notebook wall - run_training): median {statistics.median(overheads):.2f} s, "
              f"max {overheads[-1]:.2f} s (goal <= 1.5 s on an idle machine)")
    phases = _grid_phases(runs, rows[0]["wall_s"])
    if phases:
        print(phases)
    timing = [line for line in rows[1]["output"].splitlines() if line.startswith("report: ") and " s; " in line]
    if timing:  # the report's own split: its two notebooks (at once) and the run pages
        print(timing[-1].replace("report: ", "report stage: ", 1))
    print(f"main job wall {wall:.0f} s (goal <= {args.goal_s:.0f} s on an idle 2-core machine); "
          f"wall / floor = {wall:.0f} s / {floor_s:.0f} s = {wall / floor_s:.2f} (goal <= 2)")


def _grid_phases(runs: list[dict], grid_wall: float) -> str | None:
    """The grid's wall split at the end of the last run that extracted features (inside
    run_training more than 5x the median): start-up and extraction, then the other runs."""
    from datetime import datetime
    spans = []
    for m in runs:
        nb = Path(m["run_dir"]) / rundir.NOTEBOOK_FILE
        try:
            meta = json.loads(nb.read_text())["metadata"]["papermill"]
            spans.append((m["wall_s"], datetime.fromisoformat(meta["start_time"]).timestamp(),
                           datetime.fromisoformat(meta["end_time"]).timestamp()))
        except (OSError, ValueError, KeyError, TypeError):
            return None
    if not spans:
        return None
    median = statistics.median(w for w, _, _ in spans)
    first_start, last_end = min(s for _, s, _ in spans), max(e for _, _, e in spans)
    extracted = max((e for w, _, e in spans if w > 5 * median), default=first_start)
    rest = [w for w, _, e in spans if e > extracted]
    startup = grid_wall - (last_end - first_start)
    return (f"grid stages: start-up and pre-flight {startup:.1f} s, first runs (feature extraction) "
            f"{extracted - first_start:.1f} s, the other {len(rest)} runs {last_end - extracted:.1f} s "
            f"({(last_end - extracted) / max(1, len(rest)):.2f} s a run with the workers together)")


def _notebook_walls(root: Path) -> dict:
    import pandas as pd
    walls = {}
    for table in root.rglob(TABLE_FILE):
        df = pd.read_csv(table)
        walls.update({str(i): float(w) for i, w in zip(df["id"], df["wall_s"]) if w == w})
    return walls


if __name__ == "__main__":
    main()
