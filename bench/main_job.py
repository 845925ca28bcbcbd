"""The CPU main job, stage by stage: wall time and peak memory, from a cold cache.

Stages (each a subprocess, so its peak resident memory is its own, read with ``os.wait4``):

1. decoded-image cache: EU Moths' 2,205 JPEGs decoded once at 256 px;
2. feature extraction: the frozen MobileNetV2 (iNaturalist insects) on all images;
3. the grid: ``python -m longtail.grid params/default.yaml --jobs 2`` (42 papermill runs);
4. the report: ``python -m longtail.report params/default.yaml``.

Per run it also gives the papermill overhead: the notebook's wall time minus the time spent inside
``run_training`` (kernel start, imports, notebook plumbing).  Everything goes to a temporary cache
and runs folder; the project's own caches are left alone.

    python bench/main_job.py [--params params/default.yaml] [--jobs 2]
Prints a markdown table; the last line is the ratio of the total to the 5-minute goal.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from longtail import rundir
from longtail.gridspec import TABLE_FILE

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

DECODE = """
from longtail import data
ds = data.load_dataset("eu_moths")
for split in (ds.train, ds.test):
    data.split_images(split, 256, progress=False)
"""
FEATURES = """
from longtail.run import run_training
run_training(dict(dataset="eu_moths", backbone="mobilenetv2", pretrained="inat_insects", mode="linear",
                  epochs=0, save_checkpoints=False, output_dir={out!r}), log=lambda s: None)
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
    ap.add_argument("--goal-s", type=float, default=300.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lt-bench-"))
    env = {**os.environ, "LT_CACHE_DIR": str(tmp / "cache"), "LT_RUNS_DIR": str(tmp / "runs"),
           "PYTHONUNBUFFERED": "1"}
    rows = [
        stage("decoded-image cache (cold)", [PY, "-c", DECODE], env),
        stage("feature extraction (cold)", [PY, "-c", FEATURES.format(out=str(tmp / "features-run"))], env),
        stage(f"grid ({args.params}, --jobs {args.jobs})",
              [PY, "-m", "longtail.grid", args.params, "--jobs", str(args.jobs)], env),
        stage("report", [PY, "-m", "longtail.report", args.params, "--out", str(tmp / "report")], env),
    ]
    runs = [json.loads(p.read_text()) for p in (tmp / "runs").rglob(rundir.RESULT_FILE)]
    notebook_walls = _notebook_walls(tmp / "runs")
    overheads = [notebook_walls[Path(m["run_dir"]).name] - m["wall_s"] for m in runs if Path(m["run_dir"]).name in notebook_walls]
    total = sum(r["wall_s"] for r in rows)
    print(f"machine: {os.cpu_count()} cores; cache and runs in {tmp}")
    print("\n| stage | wall s | peak MiB |\n|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['wall_s']:.1f} | {r['peak_mib']:.0f} |")
    print(f"| **total** | **{total:.1f}** | |")
    if runs:
        inside = sorted(m["wall_s"] for m in runs)
        print(f"\nruns: {len(runs)}; time inside run_training: median {inside[len(inside) // 2]:.2f} s")
    if overheads:
        overheads.sort()
        print(f"papermill overhead per run (notebook wall - run_training): median {overheads[len(overheads) // 2]:.2f} s, "
              f"max {overheads[-1]:.2f} s (goal < 3 s)")
    print(f"main job total / goal: {total:.0f} s / {args.goal_s:.0f} s = {total / args.goal_s:.2f}")


def _notebook_walls(root: Path) -> dict:
    import pandas as pd
    walls = {}
    for table in root.rglob(TABLE_FILE):
        df = pd.read_csv(table)
        walls.update({str(i): float(w) for i, w in zip(df["id"], df["wall_s"]) if w == w})
    return walls


if __name__ == "__main__":
    main()
