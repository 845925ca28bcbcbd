"""Why fine-tuning loses to a frozen linear probe, measured on a CPU at reduced cost: an ablation of
the fine-tuning recipe on EU Moths (IF 8, 581 training images, balanced and long-tailed training
sets), iNaturalist-insects MobileNetV2, CE.

Fine-tuning here is ``mode: partial`` with ``partial_blocks: 3`` (blocks[5], blocks[6] and conv_head,
the last 3 of 9 units, with their 9 BatchNorm layers, trained with the classifier on cached outputs
of the frozen first six, 4 augmented views) at 128 px, 12 epochs, batch 64, AdamW, weight decay
0.05, cosine with 1 warm-up epoch: params/thesis.yaml's schedule (ours; the thesis states none) shortened and shrunk
so that one run costs about two minutes on two cores.  Rows:

- ``ft_thesis``: our former params/thesis.yaml rates (the thesis states none), lr 1e-4 for everything, a random classifier, BatchNorm in train mode;
- one change at a time: ``ft_freeze_bn`` (freeze_bn stats), ``ft_lp`` (head_init linear_probe: LP-FT),
  ``ft_lr_head`` (lr 1e-3 for the classifier, backbone_lr_scale 0.1: the backbone keeps 1e-4),
  ``ft_lr1e-3`` (lr 1e-3 for everything);
- ``ft_all``: the three fixes together; ``ft_lp_lr_head``: all but freeze_bn;
- ``linear_128`` / ``linear_224``: the linear probe (params/default.yaml's recipe) at the fine-tuning
  resolution and at the reference's (224 px, the main job's and the GPU fine-tuning's);
- ``linear_*_thesis_rates``: the same probe trained with our former thesis.yaml optimisation (AdamW lr 1e-4,
  30 epochs): what those rates do to the classifier alone, with no backbone change at all.

Every epoch, every hyperparameter and the recipe are chosen on the balanced validation set of unused
training-fold images (``val_source: unused``, 2 a class, 389 images); the test fold is only reported.

    python bench/finetune_cpu.py --table bench/measured/finetune_cpu.md                 # every row, seed 0
    python bench/finetune_cpu.py --rows ft_all linear_224 --seeds 1 2 --table bench/measured/finetune_cpu.md
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from longtail import config
from longtail.run import run_training

BASE = dict(dataset="eu_moths", backbone="mobilenetv2", pretrained="inat_insects", imbalance_factor=8,
            subset_seed=0, loss="ce", val_fraction=0.0, val_source="unused", val_per_class=2,
            save_checkpoints=False)
#: the shortened thesis recipe every fine-tuning row starts from
FINETUNE = dict(mode="partial", partial_blocks=3, partial_views=4, image_size=128, epochs=12, batch_size=64,
                optimizer="adamw", lr=1e-4, weight_decay=0.05, schedule="cosine", warmup_epochs=1)
#: params/default.yaml's linear probe
LINEAR = dict(mode="linear", optimizer="sgd", epochs=30, batch_size=64, lr=0.1, weight_decay=5e-4)
#: params/thesis.yaml's optimisation (30 epochs, batch 64, AdamW lr 1e-4, wd 0.05, cosine, 2 warm-up epochs)
THESIS_RATES = dict(optimizer="adamw", lr=1e-4, weight_decay=0.05, epochs=30, batch_size=64, warmup_epochs=2)
FIXES = dict(freeze_bn="stats", head_init="linear_probe", lr=1e-3, backbone_lr_scale=0.1)
#: name: (parameters over BASE, what the row is)
ROWS = {
    "ft_thesis": (FINETUNE, "our former thesis.yaml rates: lr 1e-4 everywhere, random classifier, BN in train mode"),
    "ft_freeze_bn": ({**FINETUNE, "freeze_bn": "stats"}, "+ freeze_bn stats (BN running statistics frozen)"),
    "ft_lp": ({**FINETUNE, "head_init": "linear_probe"}, "+ head_init linear_probe (LP-FT)"),
    "ft_lr_head": ({**FINETUNE, "lr": 1e-3, "backbone_lr_scale": 0.1},
                   "+ classifier lr 1e-3, backbone_lr_scale 0.1 (backbone keeps 1e-4)"),
    "ft_lr1e-3": ({**FINETUNE, "lr": 1e-3}, "lr 1e-3 everywhere"),
    "ft_all": ({**FINETUNE, **FIXES}, "freeze_bn stats + LP-FT + classifier lr 1e-3, backbone x 0.1"),
    "ft_lp_lr_head": ({**FINETUNE, **FIXES, "freeze_bn": "none"}, "LP-FT + classifier lr 1e-3, backbone x 0.1, BN in train mode"),
    "linear_128": ({**LINEAR, "image_size": 128}, "linear probe, 128 px"),
    "linear_224": ({**LINEAR, "image_size": 224}, "linear probe, 224 px (the reference's resolution)"),
    "linear_224_thesis_rates": ({**LINEAR, **THESIS_RATES, "image_size": 224},
                                "linear probe, 224 px, trained with our former thesis.yaml rates (AdamW lr 1e-4, wd 0.05, 30 epochs)"),
    "linear_224_adamw_1e-3": ({**LINEAR, **THESIS_RATES, "lr": 1e-3, "image_size": 224},
                              "linear probe, 224 px, our former thesis.yaml rates but lr 1e-3 (the fine-tuned classifier's rate)"),
    "linear_128_thesis_rates": ({**LINEAR, **THESIS_RATES, "image_size": 128},
                                "linear probe, 128 px, trained with our former thesis.yaml rates"),
}
TRAIN_SETS = ("balanced", "longtailed")


def measure(name: str, train_set: str, seed: int, out_root: Path) -> dict:
    params, what = ROWS[name]
    started = time.time()
    result = run_training({**BASE, **params, "train_set": train_set, "seed": seed,
                           "output_dir": str(out_root / f"{name}_{train_set}_s{seed}")}, log=lambda s: None)
    m = result.metrics
    return {"row": name, "train_set": train_set, "seed": seed, "what": what, "params": params,
            "val_balanced_acc": m.get("val/balanced_acc"), "balanced_acc1": m["balanced/acc1"],
            "tail_acc1": m["tail/acc1"], "head_acc1": m["head/acc1"], "best_epoch": m["best_epoch"],
            "wall_s": m["wall_s"], "cpu_s": m["cpu_s"], "total_s": round(time.time() - started, 1)}


def _cell(values) -> str:
    v = 100 * np.asarray(values, dtype=float)
    return f"{v.mean():.1f}" if len(v) == 1 else f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def table(results: list[dict]) -> str:
    """One line per row and training set: mean (± sample std over seeds) of each top-1, in %."""
    lines = ["| training set | row | what | seeds | val bal. top-1 | test bal. top-1 | tail top-1 | head top-1 "
             "| best epochs | wall s (mean) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for ts in TRAIN_SETS:
        for name in ROWS:
            rs = [r for r in results if r["row"] == name and r["train_set"] == ts]
            if not rs:
                continue
            rs = list({r["seed"]: r for r in rs}.values())  # a rerun of a seed replaces it
            lines.append(f"| {ts} | `{name}` | {rs[0]['what']} | {', '.join(str(r['seed']) for r in rs)} "
                         f"| {_cell([r['val_balanced_acc'] for r in rs])} | {_cell([r['balanced_acc1'] for r in rs])} "
                         f"| {_cell([r['tail_acc1'] for r in rs])} | {_cell([r['head_acc1'] for r in rs])} "
                         f"| {', '.join(str(r['best_epoch']) for r in rs)} | {np.mean([r['wall_s'] for r in rs]):.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--train-sets", nargs="*", default=list(TRAIN_SETS), choices=TRAIN_SETS)
    ap.add_argument("--seeds", nargs="*", type=int, default=[0])
    ap.add_argument("--results", default=None, help="JSON lines file the runs are appended to "
                    "(default: <runs>/bench_finetune_cpu/results.jsonl)")
    ap.add_argument("--table", default=None, help="also write the table (all runs in the results file) here")
    args = ap.parse_args(argv)
    out_root = config.runs_dir() / "bench_finetune_cpu"
    results = Path(args.results) if args.results else out_root / "results.jsonl"
    results.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for ts in args.train_sets:
            for name in args.rows:
                row = measure(name, ts, seed, out_root)
                with results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    text = table([json.loads(line) for line in results.read_text().splitlines()])
    print(text)
    if args.table:
        command = "python " + " ".join(["bench/finetune_cpu.py", *(argv if argv is not None else sys.argv[1:])])
        Path(args.table).write_text(f"## Fine-tuning against the linear probe on a CPU (bench/finetune_cpu.py)\n\n"
                                    f"Last command (the table holds every run of the results file):\n\n    {command}\n\n"
                                    f"{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
