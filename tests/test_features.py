"""The evaluation fast path (engine.predict) and the feature cache's parallel extraction."""
import threading
import time

import numpy as np
import pytest
import torch

from longtail import engine, features, models, transforms
from longtail.fileio import file_lock
from fptol import assert_close_to_scale, network_bound


def _images(n=12, size=40, seed=0):
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name,size", [("mobilenetv2", 32), ("resnet32", 32)])
@pytest.mark.parametrize("as_features", [False, True])
def test_predict_channels_last_equals_the_default_layout(name, size, as_features):
    """The fast path (channels_last model and batches, inference mode) gives the default layout's
    outputs to float rounding, with and without a transform; the model still trains afterwards."""
    torch.manual_seed(0)
    model = models.build_model(name, 5)
    x = _images(size=size + 4)
    tf = transforms.BatchTransform(size, (0.5,) * 3, (0.25,) * 3)
    slow = engine.predict(model, x, tf, batch_size=5, features=as_features, channels_last=False)
    assert model.conv_stem.weight.is_contiguous() if name == "mobilenetv2" else model.conv1.weight.is_contiguous()
    fast = engine.predict(model, x, tf, batch_size=5, features=as_features)
    conv = model.conv_stem if name == "mobilenetv2" else model.conv1
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.shape == slow.shape == (12, model.num_features if as_features else 5)
    bound = network_bound(53, 1280) if name == "mobilenetv2" else network_bound(32, 576)  # layers, largest dot
    assert_close_to_scale(fast, slow, 2 * bound)
    assert not np.array_equal(fast[0], fast[1])  # real outputs, not a constant
    model.train()
    model(tf(x[:4])).sum().backward()  # parameters are no inference tensors
    assert conv.weight.grad is not None


def test_predict_of_a_head_on_features_is_unchanged():
    head = torch.nn.Linear(6, 3)
    x = torch.randn(10, 6)
    with torch.no_grad():
        expected = head(x).numpy()
    assert_close_to_scale(engine.predict(head, x, batch_size=4), expected, 2 * network_bound(1, 6))


def test_parallel_workers_extract_different_entries(tmp_cache):
    """An entry another process holds is taken last: with entry 0 locked elsewhere, entry 1 is
    extracted first, then entry 0 once released; both equal predict's features."""
    torch.manual_seed(0)
    model = models.build_model("resnet32", 4)
    tf = transforms.BatchTransform(32, (0.5,) * 3, (0.25,) * 3)
    imgs = [_images(6, 36, seed=1), _images(7, 36, seed=2)]
    keys = ["entry0", "entry1"]
    paths = [tmp_cache / "features" / f"{k}.npy" for k in keys]
    held, release = threading.Event(), threading.Event()

    def other_worker():  # holds entry 0 until entry 1 is written (a separate open file: flock conflicts)
        with file_lock(paths[0]):
            held.set()
            release.wait(60)

    t = threading.Thread(target=other_worker)
    t.start()
    held.wait(10)
    lines = []

    def log(line):
        lines.append(line)
        if "entry1" in line:
            threading.Timer(0.2, release.set).start()

    built = []
    out = features.cached_features_many(lambda: built.append(1) or model, [(imgs[0], tf, keys[0]), (imgs[1], tf, keys[1])],
                                        batch_size=4, log=log)
    t.join()
    assert [("entry0" in s, "entry1" in s) for s in lines] == [(False, True), (True, False)]
    assert built == [1]  # the backbone is built once for both entries
    for got, x in zip(out, imgs):
        assert_close_to_scale(got, engine.predict(model, x, tf, batch_size=3, features=True), 2 * network_bound(32, 576))
    again = features.cached_features_many(lambda: pytest.fail("cached: no model needed"),
                                          [(imgs[0], tf, keys[0]), (imgs[1], tf, keys[1])], log=log)
    assert all(np.array_equal(a, b) for a, b in zip(again, out)) and len(lines) == 2


def test_a_held_lock_is_reported_without_waiting(tmp_path):
    path = tmp_path / "entry.npy"
    with file_lock(path) as first:
        start = time.perf_counter()
        with file_lock(path, wait=False) as second:
            assert first is True and second is False
        assert time.perf_counter() - start < 1
    with file_lock(path, wait=False) as third:
        assert third is True


def test_a_linear_run_imports_only_what_it_needs(tmp_path):
    """What notebooks/train.py runs for a linear run (its imports, run_training, the table and both
    figures) leaves out the modules that cost a kernel seconds and that it does not use."""
    import subprocess
    import sys
    code = f"""
import sys
from longtail import figures
from longtail.report import show_figure, show_table
from longtail.tables import run_metrics_table
from longtail.run import run_training
r = run_training(dict(dataset="synthetic", backbone="resnet32", mode="linear", image_size=16, epochs=2,
                      dataset_params={{"num_classes": 4, "train_per_class": 12, "test_per_class": 4, "image_size": 16}},
                      output_dir={str(tmp_path / "run")!r}), log=lambda s: None)
show_table(run_metrics_table(r.metrics), caption="x")
show_figure(figures.learning_curves(r.history))
show_figure(figures.split_accuracy(run_metrics_table(r.metrics)))
print(sorted(m for m in ("seaborn", "scipy", "sklearn", "timm", "torchvision", "torch._dynamo") if m in sys.modules))
"""
    env = {**__import__("os").environ, "LT_CACHE_DIR": str(tmp_path / "cache"), "MPLBACKEND": "Agg"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
