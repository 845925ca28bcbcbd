"""The GPU benchmark's helpers that run on a CPU: the projection reads the measured throughput table
and the CIFAR benchmark's own log lines (written by the functions the benchmark logs with)."""
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
