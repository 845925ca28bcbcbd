"""The projected wall time of the full thesis grid (4 backbones x 7 losses x 2 training sets x 3 seeds
= 168 runs, ``params/thesis.yaml``) on one GPU, from what ``bench/gpu.sh run`` measured, and the
CIFAR-10-LT grid's time (measured, or projected from its progress lines when the deadline stopped it).

Thesis projection, a two-term model per backbone (42 runs each, one backbone's grid after another):
- a run = a fixed part (kernel start, data, model, evaluation, notebook: the measured MobileNetV2 runs'
  wall time minus their training epochs) + its training images (epochs x training-set size, as
  measured) at the bare training loop's throughput of that backbone (bf16, 224 px, ``bench/throughput.py
  --gpu``, in ``bench/measured/``);
- the grid takes the longer of: the GPU busy with every run's training back to back (sum of training
  images / bare throughput), and the runs' wall time spread over the ``--jobs`` workers.
The MobileNetV2 row shows the model against the measured grid.

    python bench/gpu_projection.py --thesis-runs /tmp/lt-gpu/runs/thesis --thesis-wall-s 95 --jobs 10 --cifar-log gpu_run.log
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
#: the measured training throughput of the four thesis backbones (bare loop column)
THROUGHPUT_FILE = ROOT / "bench" / "measured" / "gpu_h200_2026-11-27.md"
THESIS_RUNS_PER_BACKBONE = 7 * 2 * 3


def bare_throughput(path: Path = THROUGHPUT_FILE) -> dict[str, float]:
    """backbone -> bare-loop training images/s, from the measured table's rows ``| name | 224 | 128 | bf16 | bare | ...``."""
    out = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and cells[1] == "224" and cells[3] == "bf16" and cells[4].isdigit():
            out[cells[0]] = float(cells[4])
    return out


def thesis_projection(runs_root: str, wall_s: float, jobs: int) -> list[str]:
    import pandas as pd

    from longtail import results, rundir
    runs = results.collect_runs(runs_root) if runs_root and Path(runs_root).is_dir() else None
    if runs is not None and len(runs):  # this lease's runs: those restored from earlier leases (longtail.archive,
        runs = runs[runs["notebook"].notna()]  # no executed notebook) are not in wall_s
    if runs is None or not len(runs) or not math.isfinite(wall_s):
        return ["No MobileNetV2 thesis grid finished: no projection.", ""]
    thr = bare_throughput()
    train_s = [float(pd.read_csv(Path(d) / rundir.HISTORY_FILE)["epoch_s"].sum()) for d in runs["run_dir"]]
    fixed = float((runs["wall_s"].astype(float) - train_s).mean())
    images = float((runs["epochs"].astype(float) * runs["train_images"].astype(float)).mean())
    n = THESIS_RUNS_PER_BACKBONE
    lines = ["## Projected: the full thesis grid (168 runs) on one GPU", "",
             f"Measured: {len(runs)} MobileNetV2 runs in {wall_s:.0f} s wall ({jobs} workers); a run's fixed part "
             f"(kernel, data, model, evaluation, notebook) {fixed:.1f} s, its training {images:,.0f} images "
             f"({sum(train_s) / len(train_s):.1f} s measured).", "",
             "| backbone | runs | bare img/s (bf16, 224 px) | GPU busy s | runs over workers s | projected s |",
             "|---|---|---|---|---|---|"]
    total = 0.0
    for name, rate in thr.items():
        gpu_s = n * images / rate
        workers_s = n * (fixed + images / rate) / jobs
        secs = max(gpu_s, workers_s)
        total += secs
        measured = f" (measured: {wall_s * n / len(runs):,.0f})" if name == "mobilenetv2" else ""
        lines.append(f"| {name} | {n} | {rate:,.0f} | {gpu_s:,.0f} | {workers_s:,.0f} | {secs:,.0f}{measured} |")
    lines += [f"| **all** | {4 * n} | | | | **{total:,.0f} ({total / 60:.1f} min)** |", "",
              f"Goal: <= 15 min. Throughputs from `{THROUGHPUT_FILE.relative_to(ROOT)}` (one H200); the "
              "projection holds for the GPU they were measured on.", ""]
    return lines


PROGRESS = re.compile(r"^\s+(?P<name>.+?)\s+(?P<secs>\d+) s\s+epoch\s+(?P<ep>\d+)/(?P<of>\d+) .*?(?P<ips>\d+) img/s")
DONE = re.compile(r"^\[\s*(?P<at>\d+) s\] (?P<name>.+?)\s+top-1 last (?P<top1>[\d.]+).*\((?P<secs>\d+) s\)")


def cifar_projection(log: str) -> list[str]:
    path = Path(log)
    if not path.exists():
        return []
    last, done = {}, {}
    for line in path.read_text().splitlines():
        if m := PROGRESS.match(line):
            last[m["name"].strip()] = (int(m["secs"]), int(m["ep"]), int(m["of"]), int(m["ips"]))
        elif m := DONE.match(line):
            done[m["name"].strip()] = int(m["secs"])
    if not last and not done:
        return ["No CIFAR-10-LT progress in the log."]
    lines = ["## CIFAR-10-LT grid: time", ""]
    if done:
        lines.append(f"{len(done)} runs finished; the slowest took {max(done.values())} s.")
    open_runs = {n: v for n, v in last.items() if not any(n.startswith(d[:40]) or d.startswith(n) for d in done)}
    if open_runs:
        proj = max(s * of / ep for s, ep, of, _ in open_runs.values())
        agg = sum(ips for *_, ips in open_runs.values())
        lines.append(f"{len(open_runs)} runs stopped by the deadline; from their last progress line (every 25th epoch) "
                     f"the slowest would need {proj:.0f} s for all epochs; together they trained {agg:,} img/s.")
    return lines + [""]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--thesis-runs", default="")
    ap.add_argument("--thesis-wall-s", type=float, default=float("nan"))
    ap.add_argument("--jobs", type=int, default=10, help="the thesis grid's workers (default 10)")
    ap.add_argument("--cifar-log", default="")
    args = ap.parse_args()
    print("\n".join(thesis_projection(args.thesis_runs, args.thesis_wall_s, args.jobs) + cifar_projection(args.cifar_log)))


if __name__ == "__main__":
    main()
