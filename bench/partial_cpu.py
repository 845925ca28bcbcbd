"""Fine-tuning without a GPU: ``linear`` against ``partial`` (the last blocks of
MobileNetV2 trained on cached outputs of the frozen first ones) and plain ``finetune`` at a reduced
size, on EU Moths' long-tailed training set (IF 8, 581 images; params/default.yaml), iNaturalist-insects
MobileNetV2, CE, one training seed.  Hyperparameters are chosen on the balanced validation set of
unused training-fold images (val_source unused, 2 a class), which also picks the epoch; the test
fold is only reported.  Cost: the run's wall and CPU seconds (all threads), cold (its caches
built in the run) or warm, as the row says.

    python bench/partial_cpu.py                     # every row below, then the table
    python bench/partial_cpu.py --rows partial_k2_lr0.01 --table bench/measured/partial_cpu.md
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from longtail import config
from longtail.run import run_training

BASE = dict(dataset="eu_moths", backbone="mobilenetv2", pretrained="inat_insects", imbalance_factor=8,
            train_set="longtailed", subset_seed=0, seed=0, loss="ce", val_fraction=0.0, val_source="unused",
            val_per_class=2, save_checkpoints=False)
#: name: (parameters over BASE, what the row is)
ROWS = {
    "linear": (dict(mode="linear", epochs=30, batch_size=64, lr=0.1, weight_decay=5e-4),
               "linear probe, params/default.yaml's settings (today's path)"),
    "linear_lr0.03": (dict(mode="linear", epochs=30, batch_size=64, lr=0.03, weight_decay=5e-4),
                      "linear probe, lr 0.03"),
    **{f"partial_k{k}_lr{lr}": (dict(mode="partial", partial_blocks=k, partial_views=4, epochs=15, batch_size=32, lr=lr),
                                f"partial: {what} trained, 4 views, lr {lr}, 15 epochs")
       for k, what in ((2, "blocks[6] + conv_head"), (3, "blocks[5:7] + conv_head")) for lr in (0.01, 0.03, 0.1)},
    "partial_k2_lr0.03_la": (dict(mode="partial", partial_blocks=2, partial_views=4, epochs=15, batch_size=32, lr=0.03,
                                  loss="logit_adjusted"),
                             "partial as partial_k2_lr0.03, logit-adjusted loss (τ 1)"),
    "finetune_160": (dict(mode="finetune", image_size=160, channels_last=True, epochs=8, batch_size=32, lr=0.01,
                          warmup_epochs=1),
                     "plain finetune, 160 px (reduced size), channels_last, 8 epochs (shortened schedule), lr 0.01"),
}


def measure(name: str, out_root: Path) -> dict:
    params, what = ROWS[name]
    started = time.time()
    result = run_training({**BASE, **params, "output_dir": str(out_root / name)}, log=lambda s: None)
    m = result.metrics
    return {"row": name, "what": what, "params": params, "val_balanced_acc": m.get("val/balanced_acc"),
            "balanced_acc1": m["balanced/acc1"], "tail_acc1": m["tail/acc1"], "head_acc1": m["head/acc1"],
            "best_epoch": m["best_epoch"], "wall_s": m["wall_s"], "cpu_s": m["cpu_s"],
            "total_s": round(time.time() - started, 1)}


def table(rows: list[dict]) -> str:
    lines = ["| row | what | val bal. top-1 | test bal. top-1 | tail top-1 | head top-1 | best epoch | wall s | CPU s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['row']}` | {r['what']} | {100 * r['val_balanced_acc']:.1f} | {100 * r['balanced_acc1']:.1f} "
                     f"| {100 * r['tail_acc1']:.1f} | {100 * r['head_acc1']:.1f} | {r['best_epoch']} "
                     f"| {r['wall_s']:.0f} | {r['cpu_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--results", default=None, help="JSON lines file the rows are appended to "
                    "(default: <runs>/bench_partial_cpu/results.jsonl)")
    args = ap.parse_args(argv)
    out_root = config.runs_dir() / "bench_partial_cpu"
    results = Path(args.results) if args.results else out_root / "results.jsonl"
    results.parent.mkdir(parents=True, exist_ok=True)
    for name in args.rows:
        row = measure(name, out_root)
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    print(table([json.loads(line) for line in results.read_text().splitlines()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
