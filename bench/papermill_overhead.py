"""Papermill overhead per run: a base revision, today's kernel start and forked kernels, side by side.

Each side is one grid worker: a subprocess with one CPU thread (``OMP_NUM_THREADS=1``, what each of
the main job's two workers gets on 2 cores) that runs ``--runs-per-worker`` runs in a row, each
exactly as ``longtail.grid`` executes it (``executors.run_one``: papermill, a fresh kernel, the
executed notebook written into the run folder).  The sides alternate, round by round, so drifting
machine load hits them alike:

- **base**: ``lib/`` and ``notebooks/`` of ``--base`` (default: the commit before the speed work's
  changes), extracted with ``git archive`` into a temporary folder, its own ``run_one``;
- **ordinary**: this working tree, each kernel started on its own (``run_one(forked=False)``: a new
  Python that imports ipykernel, then the notebook's torch, pandas, matplotlib, longtail);
- **forked**: this working tree as the grid runs it (``run_one(forked=True)``): each kernel forked
  from the worker's server of preloaded modules (``longtail.kernels``), which the worker's first
  run starts (its imports are in that run's time).

The overhead of a run is the notebook's wall time (``run_one``'s ``wall_s``: kernel start, the
cells, papermill's writes, kernel shutdown) minus the time inside ``run_training`` (the run's
``metrics.json`` ``wall_s``).  Two figures per side: the median over the runs after each worker's
first (a worker's steady state), and the mean over all of a worker's runs, its first included (what
a worker of that many runs pays per run; the main job's two workers run 21 each).  From
papermill's timestamps the steady-state overhead is split into: papermill before its clock
starts (reading and parameterising the notebook) and after it stops, papermill before the first
cell (the first write, the kernel's start, its kernel_info), the first cell less ``run_training``
(imports, the table), the figure cells, papermill between cells (a notebook write after each), and
after the last cell (the kernel's shutdown, the final write).

The run is the main job's (``params/default.yaml``: EU Moths, linear probe on cached
MobileNetV2 features, cross-entropy, 30 epochs); the features are extracted once before the rounds.

    python bench/papermill_overhead.py [--rounds 3] [--runs-per-worker 4] [--base REV]
Prints a markdown table of medians; the last lines are the overheads and the ratios to ordinary.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE_REV = "2359d30"  # the main branch before the speed work (forked kernels)
RUN = dict(dataset="eu_moths", backbone="mobilenetv2", pretrained="inat_insects", mode="linear", imbalance_factor=8,
           train_set="longtailed", loss="ce", val_fraction=0.0, epochs=30, batch_size=64, lr=0.1, weight_decay=5e-4)

# run in a subprocess whose PYTHONPATH is one side's lib/: runs in a row through that side's run_one
# (in longtail.executors now, in longtail.grid before; forked kernels since the speed work)
WORKER = """
import inspect, json, sys
from longtail import config, params
try:
    from longtail.executors import run_one
except ImportError:
    from longtail.grid import run_one
kw = {"forked": sys.argv[3] == "forked"} if "forked" in inspect.signature(run_one).parameters else {}
for out in json.loads(sys.argv[2]):
    run = params.validate({**json.loads(sys.argv[1]), "output_dir": out})
    print(json.dumps(run_one(run, str(config.PROJECT_ROOT / "notebooks" / "train.py"), **kw)), flush=True)
"""


def one_worker(side: Path, how: str, outs: list[Path]) -> list[dict]:
    """``len(outs)`` runs in a row in one worker process of ``side`` (``how``: forked or ordinary)."""
    env = {**os.environ, "PYTHONPATH": str(side / "lib"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(RUN), json.dumps([str(o) for o in outs]), how],
                          cwd=side, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"worker in {side} failed:\n{proc.stderr[-3000:]}")
    if how == "forked" and "[kernels]" in proc.stderr:  # a fallback to ordinary kernels would be no forked figure
        raise SystemExit(f"forked kernels fell back to the ordinary start:\n{proc.stderr[-3000:]}")
    rows = []
    for line, out in zip(proc.stdout.strip().splitlines()[-len(outs):], outs):
        result = json.loads(line)
        if result["status"] != "done":
            raise SystemExit(f"run in {side} failed: {result['error']}")
        inside = json.loads((out / "metrics.json").read_text())["wall_s"]
        rows.append({"notebook_s": result["wall_s"], "inside_s": inside, "overhead_s": result["wall_s"] - inside,
                     **_cell_split(out / "train.ipynb", result["wall_s"], inside)})
    return rows


def _cell_split(notebook: Path, wall: float, inside: float) -> dict:
    """Where the overhead goes, from papermill's timestamps (notebook and code cells); papermill's
    clock starts before it starts the kernel and stops after it shut the kernel down."""
    nb = json.loads(notebook.read_text())
    meta = nb["metadata"]["papermill"]
    t = lambda s: datetime.fromisoformat(s).timestamp()  # noqa: E731
    cells = [c["metadata"]["papermill"] for c in nb["cells"] if c["cell_type"] == "code"]
    ran = [c for c in cells if c.get("start_time") and c.get("end_time")]
    durations = [t(c["end_time"]) - t(c["start_time"]) for c in ran]
    main = max(range(len(ran)), key=lambda i: durations[i])  # the cell that calls run_training
    span = t(meta["end_time"]) - t(meta["start_time"])
    return {"outside_s": wall - span,
            "before_first_cell_s": t(ran[0]["start_time"]) - t(meta["start_time"]),
            "first_cell_less_run_s": durations[main] - inside,
            "other_cells_s": sum(durations) - durations[main],
            "between_cells_s": t(ran[-1]["end_time"]) - t(ran[0]["start_time"]) - sum(durations),
            "after_last_cell_s": t(meta["end_time"]) - t(ran[-1]["end_time"]),
            "notebook_kib": notebook.stat().st_size / 1024}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs-per-worker", type=int, default=4)
    ap.add_argument("--base", default=BASE_REV, help="git revision of the base side (default %(default)s)")
    args = ap.parse_args()
    if args.runs_per_worker < 2:
        raise SystemExit("--runs-per-worker must be >= 2 (the steady state is the runs after a worker's first)")
    tmp = Path(tempfile.mkdtemp(prefix="lt-pm-bench-"))
    base = tmp / "base"
    base.mkdir()
    archive = subprocess.run(["git", "archive", args.base, "lib", "notebooks", "jupytext.toml"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    sides = {"base": (base, "ordinary"), "ordinary": (ROOT, "ordinary"), "forked": (ROOT, "forked")}
    one_worker(ROOT, "ordinary", [tmp / "warm-up"])  # features and decoded images into the cache, all sides read them
    firsts = {name: [] for name in sides}
    steady = {name: [] for name in sides}
    means = {name: [] for name in sides}
    load = [os.getloadavg()[0]]
    t0 = time.perf_counter()
    for i in range(args.rounds):
        order = list(sides.items())
        order = order[i % len(order):] + order[:i % len(order)]  # each side goes first once in three rounds
        for name, (side, how) in order:
            rows = one_worker(side, how, [tmp / f"{name}-{i}-{k}" for k in range(args.runs_per_worker)])
            firsts[name].append(rows[0])
            steady[name] += rows[1:]
            means[name].append(statistics.mean(r["overhead_s"] for r in rows))
        load.append(os.getloadavg()[0])
    print(f"{args.rounds} rounds of {args.runs_per_worker} runs a worker in {time.perf_counter() - t0:.0f} s; "
          f"{os.cpu_count()} cores, load average (1 min) {min(load):.1f} to {max(load):.1f}; base = {args.base}, "
          "one thread per kernel")
    keys = [("notebook_s", "notebook wall"), ("inside_s", "inside run_training"), ("overhead_s", "**overhead**"),
            ("outside_s", "papermill outside its clock (reading, parameterising the notebook)"),
            ("before_first_cell_s", "papermill before the first cell (first write, kernel start, kernel_info)"),
            ("first_cell_less_run_s", "first cell less run_training (imports, table)"),
            ("other_cells_s", "the other cells (figures)"), ("between_cells_s", "between cells (papermill's writes)"),
            ("after_last_cell_s", "after the last cell (kernel shutdown, final write)"),
            ("notebook_kib", "executed notebook KiB")]
    med = {name: {k: statistics.median(r[k] for r in rs) for k, _ in keys} for name, rs in steady.items()}
    names = list(sides)
    print(f"\n| median over the runs after a worker's first | {' | '.join(names)} | forked / ordinary |\n"
          f"|---|{'---|' * (len(names) + 1)}")
    for k, label in keys:
        o, f = med["ordinary"][k], med["forked"][k]
        print(f"| {label} | {' | '.join(f'{med[n][k]:.2f}' for n in names)} | {f / o if o else float('nan'):.2f} |")
    first = {n: statistics.median(r["overhead_s"] for r in rs) for n, rs in firsts.items()}
    mean = {n: statistics.median(m) for n, m in means.items()}
    print(f"| overhead of a worker's first run (median) | {' | '.join(f'{first[n]:.2f}' for n in names)} | "
          f"{first['forked'] / first['ordinary']:.2f} |")
    print(f"| overhead per run over a worker's {args.runs_per_worker} runs (mean, median over rounds) | "
          f"{' | '.join(f'{mean[n]:.2f}' for n in names)} | {mean['forked'] / mean['ordinary']:.2f} |")
    o, f, b = (med[n]["overhead_s"] for n in ("ordinary", "forked", "base"))
    print(f"\npapermill overhead per run (median, a worker's runs after its first): base {b:.2f} s, ordinary "
          f"{o:.2f} s, forked {f:.2f} s (goal <= 1.5 s on an idle machine); per run over a worker's "
          f"{args.runs_per_worker} runs: ordinary {mean['ordinary']:.2f} s, forked {mean['forked']:.2f} s")
    print(f"ratio forked / ordinary {f / o:.2f} (steady), {mean['forked'] / mean['ordinary']:.2f} "
          f"(over {args.runs_per_worker} runs); forked / base {f / b:.2f}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
