"""The GPU benchmark's helpers that run on a CPU: the projection reads the measured throughput table
and the CIFAR benchmark's own log lines (written by the functions the benchmark logs with)."""
import json
import sys

import pytest

from longtail import config

sys.path.insert(0, str(config.PROJECT_ROOT / "bench"))
cifar10_lt = pytest.importorskip("cifar10_lt")
gpu_projection = pytest.importorskip("gpu_projection")


def test_bare_throughput_reads_the_measured_table():
    thr = gpu_projection.bare_throughput()
    assert thr == {"mobilenetv2": 6654.0, "resnet50v2": 4742.0, "vit_b16": 2668.0, "convnext_base": 1380.0}


def test_cifar_projection_reads_the_benchmark_log(tmp_path):
    epoch = "epoch  50/200 | lr 0.1 | loss 1.2345 | acc 0.612 | 8000 img/s"
    lines = [cifar10_lt.progress_line("ldam IF 100", 100, epoch),
             cifar10_lt.progress_line("ce IF 10", 120, epoch.replace("8000", "6000")),
             cifar10_lt.done_line(410, "ldam IF 100", 71.79, "73.07", 405)]
    log = tmp_path / "gpu_run.log"
    log.write_text("\n".join(["noise"] + lines) + "\n")
    text = "\n".join(gpu_projection.cifar_projection(str(log)))
    assert "1 runs finished; the slowest took 405 s" in text
    # the unfinished run: 120 s for 50 of 200 epochs -> 480 s; it alone trained 6,000 img/s
    assert "1 runs stopped by the deadline" in text and "480 s" in text and "6,000 img/s" in text


def test_the_control_is_he_et_al_s_64k_iterations_as_epochs_on_the_full_balanced_set():
    """params/cifar10_control.yaml: ResNet-32 on all 50,000 CIFAR-10 training images, He et al. 2016's
    schedule (lr / 10 at 32k and 48k of 64k iterations of batch 128) in whole epochs of 391 steps."""
    import math

    import numpy as np

    from longtail import gridspec, selection
    grid = gridspec.load_grid(config.PROJECT_ROOT / "params" / "cifar10_control.yaml", check_backbone=False)
    assert [r["seed"] for r in grid.runs] == [0, 1]
    p = grid.runs[0]
    sets = selection.run_sets(p, np.repeat(np.arange(10), 5000), None, np.repeat(np.arange(10), 1000), None, 10)
    steps = math.ceil(len(sets.train) / p["batch_size"])
    assert (len(sets.train), steps) == (50000, 391)
    assert (p["dataset"], p["backbone"], p["pretrained"], p["loss"], p["augment"]) == ("cifar10", "resnet32", None, "ce", "cifar")
    assert (p["optimizer"], p["lr"], p["momentum"], p["nesterov"], p["weight_decay"], p["warmup_epochs"]) == (
        "sgd", 0.1, 0.9, False, 1e-4, 0)
    assert (p["schedule"], p["lr_gamma"], p["val_fraction"]) == ("step", 0.1, 0.0)
    # each whole epoch is the nearest to He et al.'s iteration count, within one epoch's steps
    for epochs, iterations in zip([*p["lr_steps"], p["epochs"]], (32000, 48000, 64000), strict=True):
        assert epochs == round(iterations * 128 / 50000) and abs(epochs * steps - iterations) < steps


def test_the_control_rows_say_not_run_yet_beside_the_published_number():
    base = {"loss": "ce", "imbalance_factor": 100.0, "drw_epoch": None, "_in_grid": False}
    rows = [{**base, "_kind": "control", "_name": f"{cifar10_lt.CONTROL_ROW}, seed {s}"} for s in (0, 1)]
    text = cifar10_lt.tables(rows, "full protocol")
    assert f"| {cifar10_lt.CONTROL_ROW}, seed 0 | ce | not run yet | | | 92.49 | |" in text
    assert "balanced CIFAR-10, He et al. protocol): not run yet; published 92.49 %" in text
    # one seed finished: its top-1 and the mean of the finished seeds against the published number
    rows[0] = {**rows[0], "metrics": {"balanced/acc1": 0.9212}, "seconds": 290.0}
    text = cifar10_lt.tables(rows, "full protocol")
    assert f"| {cifar10_lt.CONTROL_ROW}, seed 0 | ce | 92.12 |  |  | 92.49 | 290 |" in text
    assert "92.12 % top-1, mean of 1 of 2 seeds, against the published 92.49 % (-0.37 points" in text
    assert f"| {cifar10_lt.CONTROL_ROW}, seed 1 | ce | not run yet |" in text


def test_same_numbers_finds_one_changed_prediction_and_ignores_timings(tmp_path):
    """A real run folder copied: equal but for its timings; then one logit changed, one metric
    changed and one report table cell changed: each is found."""
    import shutil

    import numpy as np

    import same_numbers

    from longtail.run import run_training

    before = tmp_path / "before" / "grid" / "r1"
    run_training(dict(dataset="synthetic", backbone="resnet32", mode="linear", image_size=16, epochs=2,
                      dataset_params={"num_classes": 4, "train_per_class": 12, "test_per_class": 4, "image_size": 16},
                      output_dir=str(before)), log=lambda s: None)
    after = tmp_path / "after" / "grid" / "r1"
    shutil.copytree(before, after)
    metrics = json.loads((after / "metrics.json").read_text())
    (after / "metrics.json").write_text(json.dumps({**metrics, "wall_s": 99.0, "run_dir": "elsewhere"}))
    assert same_numbers.compare_runs(tmp_path / "before", tmp_path / "after")[2:] == ([], [])
    params = json.loads((before / "params.json").read_text())  # the earlier code had no "tune" parameter
    (before / "params.json").write_text(json.dumps({k: v for k, v in params.items() if k != "tune"}))
    assert same_numbers.compare_runs(tmp_path / "before", tmp_path / "after")[2:] == ([], ["tune"])

    with np.load(after / "predictions.npz") as z:
        arrays = {k: z[k] for k in z.files}
    logits = arrays["logits"]
    logits[0, 0] = np.nextafter(logits[0, 0], np.inf, dtype=logits.dtype)  # one unit in the last place
    np.savez(after / "predictions.npz", **arrays)
    (after / "metrics.json").write_text(json.dumps({**metrics, "balanced/acc1": metrics["balanced/acc1"] + 0.01}))
    diffs = same_numbers.compare_runs(tmp_path / "before", tmp_path / "after")[2]
    assert diffs == ["grid/r1 metrics.json balanced/acc1: "
                     f"{metrics['balanced/acc1']!r} -> {metrics['balanced/acc1'] + 0.01!r}",
                     "grid/r1 predictions.npz logits differs"]

    for name, cell in (("before", "62.5 ± 0.7"), ("after", "62.6 ± 0.7")):
        (tmp_path / name / "report" / "tables").mkdir(parents=True)
        (tmp_path / name / "report" / "tables" / "top1.csv").write_text(f"Method,Balanced,CPU s / run\nCE,{cell},{len(name)}\n")
    n, diffs, notes = same_numbers.compare_reports(tmp_path / "before" / "report", tmp_path / "after" / "report")
    assert n == 1 and diffs == ["report table top1.csv differs"]


main_job = pytest.importorskip("main_job")


def test_the_floor_counts_a_linear_heads_forward_and_weight_gradient():
    """bench/main_job.py's training floor: 2 x 2 x N x D x C FLOPs an epoch for mode linear (the
    main job: 581 features of 1280 dimensions, 200 classes, 30 epochs: 8.9 GFLOP a run); other modes
    are not counted (None), never counted as free."""
    run = {"mode": "linear", "epochs": 30}
    assert main_job.training_flops(run, {"train_images": 581, "num_classes": 200}, 1280) == 4 * 581 * 1280 * 200 * 30
    assert main_job.training_flops({**run, "mode": "finetune"}, {"train_images": 581, "num_classes": 200}, 1280) is None
    rows = main_job.floor_rows({"grid": 60.0, "report": 20.0},
                               {"grid": {"decode": 2.0, "extract": 8.0, "train": 2.0}, "report": {"figures": 4.0}})
    assert rows == [("grid", 60.0, 12.0, 5.0), ("report", 20.0, 4.0, 5.0), ("main job", 80.0, 16.0, 5.0)]
