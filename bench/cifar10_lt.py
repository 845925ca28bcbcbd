"""CIFAR-10-LT against the literature: the protocol of ``params/cifar10_lt.yaml`` (ResNet-32,
LDAM-DRW recipe), several runs in one process, beside the published top-1.

On a GPU (the full protocol, 200 epochs): the decoded data set lives on the GPU as uint8, the
augmentation runs there, bf16 autocast and channels_last are on, evaluation uses large batches;
runs are done one after another in this one process (no kernel or import cost per run)::

    python bench/cifar10_lt.py                                  # all 14 runs of the grid
    python bench/cifar10_lt.py --losses ce,ldam --imbalance 100 # a subset

On a CPU, a shortened schedule, labelled as such in the output: ``--epochs E`` scales the whole
schedule (warm-up, lr steps, DRW epoch) by E/200::

    python bench/cifar10_lt.py --epochs 12 --losses ce,balanced_softmax,ldam --imbalance 100

Prints a markdown table ours vs published; the last line is the mean difference (ours - published)
in top-1 points over the rows that have a published number.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from longtail import grid as grid_mod
from longtail.results import PUBLISHED, published_comparison
from longtail.run import run_training

ROOT = Path(__file__).resolve().parents[1]


def scaled(run: dict, epochs: int) -> dict:
    """The protocol's schedule compressed from its epochs to ``epochs``."""
    full = run["epochs"]
    f = epochs / full
    run = dict(run, epochs=epochs, warmup_epochs=max(1, round(run["warmup_epochs"] * f)) if run["warmup_epochs"] else 0,
               lr_steps=[max(1, round(s * f)) for s in run["lr_steps"]])
    if run.get("drw_epoch") is not None:
        run["drw_epoch"] = max(1, round(run["drw_epoch"] * f))
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(ROOT / "params" / "cifar10_lt.yaml"))
    ap.add_argument("--epochs", type=int, default=None, help="shortened schedule (default: the protocol's)")
    ap.add_argument("--losses", default=None, help="comma-separated subset of the grid's losses")
    ap.add_argument("--imbalance", default=None, help="comma-separated subset of the imbalance factors")
    ap.add_argument("--output-root", default=None)
    args = ap.parse_args()
    only = {}
    if args.losses:
        only["loss"] = args.losses.split(",")
    if args.imbalance:
        only["imbalance_factor"] = [float(x) for x in args.imbalance.split(",")]
    suffix = f"_{args.epochs}ep" if args.epochs else ""
    grid = grid_mod.load_grid(args.params, output_root=args.output_root or ROOT / "runs" / f"cifar10_lt{suffix}")
    grid = grid.select(only)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    label = f"full protocol ({grid.runs[0]['epochs']} epochs)" if not args.epochs else \
        f"SHORTENED schedule: {args.epochs} of 200 epochs, scaled warm-up/steps/DRW"
    print(f"device: {torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu'}; {label}; {len(grid.runs)} runs")
    for run in grid.runs:
        run = scaled(run, args.epochs) if args.epochs else run
        out = Path(run["output_dir"])
        if (out / "metrics.json").exists():
            print(f"{out.name}: done before, kept")
            continue
        t0 = time.perf_counter()
        result = run_training({**run, "eval_batch_size": 4096}, log=lambda s: None)
        print(f"{run['loss']:>16} IF {run['imbalance_factor']:>5.0f}: top-1 {100 * result.metrics['balanced/acc1']:.2f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    import pandas as pd
    ours = pd.DataFrame([json.loads(p.read_text()) for p in Path(grid.output_root).glob("*/metrics.json")])
    table = published_comparison(ours)
    print(f"\n{label}; CIFAR-10 from the local JPEG (q75) copy where that is the data\n")
    if not len(table):
        print("no run matches a published row")
        return
    cols = list(table.columns)
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for _, row in table.iterrows():
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    matched = table[table["Seeds"] > 0]
    diff = matched["Ours − published"].astype(float)
    print(f"mean difference ours - published: {diff.mean():+.2f} top-1 points over {len(diff)} of "
          f"{len(PUBLISHED)} published rows ({label})")


if __name__ == "__main__":
    main()
