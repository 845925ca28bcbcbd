"""Scaling: the cost of one run against training-set size and number of classes, in ``linear``
and ``finetune`` modes, measured in one process (after a warm-up run) on the synthetic data set
with ResNet-32 at 32 px (fixed epochs), so only N and C change.

    python bench/scaling.py
Prints a markdown table and the fitted growth exponent a in time ~ N^a (and ~ C^b); the last
line is the ratio of the largest to the smallest run's cost per training image.
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np

os.environ.setdefault("LT_CACHE_DIR", tempfile.mkdtemp(prefix="lt-scaling-"))
from longtail.run import run_training  # noqa: E402

BASE = dict(dataset="synthetic", backbone="resnet32", image_size=32, imbalance_factor=1.0, train_set="balanced",
            balanced_size="full", val_fraction=0.0, epochs=3, batch_size=128, save_checkpoints=False)


def one(mode, per_class, classes):
    params = {**BASE, "mode": mode, "dataset_params": {"num_classes": classes, "train_per_class": per_class,
                                                       "test_per_class": 20, "image_size": 32},
              "output_dir": tempfile.mkdtemp(prefix="lt-run-")}
    t0 = time.perf_counter()
    result = run_training(params, log=lambda s: None)
    return time.perf_counter() - t0, result.metrics["train_images"]


def exponent(xs, ts):
    return float(np.polyfit(np.log(xs), np.log(ts), 1)[0])


def main():
    one("finetune", 20, 5)  # warm-up: imports, first-call allocations
    rows = []
    for mode in ("linear", "finetune"):
        for per_class, classes in ((50, 10), (100, 10), (200, 10), (400, 10), (100, 20), (100, 40)):
            t, n = one(mode, per_class, classes)
            rows.append((mode, classes, per_class, n, t))
    print("| mode | classes | images/class | training images | run s | ms / image |\n|---|---|---|---|---|---|")
    for mode, c, pc, n, t in rows:
        print(f"| {mode} | {c} | {pc} | {n} | {t:.2f} | {1000 * t / n:.2f} |")
    for mode in ("linear", "finetune"):
        by_n = [(n, t) for m, c, pc, n, t in rows if m == mode and c == 10]
        by_c = [(c, t) for m, c, pc, n, t in rows if m == mode and pc == 100]
        print(f"{mode}: time ~ N^{exponent(*zip(*by_n)):.2f} (10 classes), ~ C^{exponent(*zip(*by_c)):.2f} "
              f"(100 images per class, so N grows with C)")
    ft = [(n, t) for m, c, pc, n, t in rows if m == "finetune"]
    per_image = [t / n for n, t in ft]
    print(f"finetune cost per image, largest/smallest run: {per_image[ft.index(max(ft))] / per_image[ft.index(min(ft))]:.2f}")


if __name__ == "__main__":
    main()
