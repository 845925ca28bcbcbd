"""Mode partial (longtail.partial): the frozen prefix and the trained part compose to the backbone,
k = 0 is a linear probe, the prefix cache heals, and a real papermill run."""
import json
from pathlib import Path

import jupytext
import numpy as np
import papermill
import pytest
import torch

from longtail import models, partial
from longtail.models import build_model
from longtail.params import DEFAULTS, ParameterError, validate
from longtail.run import run_training

ROOT = Path(__file__).resolve().parents[1]
TINY_PARTIAL = dict(dataset="synthetic", dataset_params={"num_classes": 4, "train_per_class": 16, "test_per_class": 6,
                                                         "image_size": 16},
                    backbone="resnet32", mode="partial", partial_blocks=2, partial_views=2, epochs=2, batch_size=16,
                    image_size=16, imbalance_factor=4, lr=0.05, val_fraction=0.25, save_checkpoints=False)


def _quiet(_):
    pass


@pytest.mark.parametrize("name,size", [("mobilenetv2", 64), ("resnet32", 16)])
def test_prefix_then_trained_part_is_the_backbone(name, size):
    """For every split point, part(prefix(x)) is the model's own forward (features and logits),
    and through the fp16 cache it stays within fp16 rounding."""
    torch.manual_seed(0)
    model = build_model(name, 5).eval()
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        features, logits = model.forward_features(x), model(x)
        n = len(models.blocks(model))
        assert n == (9 if name == "mobilenetv2" else 16)  # stem, 7 stages, conv_head / stem, 15 blocks
        for k in range(n):
            prefix, part = partial.split(model, k)
            part.eval()
            assert sum(1 for _ in part.tail) == k
            torch.testing.assert_close(part.forward_features(prefix(x)), features, rtol=0, atol=0)
            torch.testing.assert_close(part(prefix(x)), logits, rtol=0, atol=0)
            images = (x * 40 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)  # uint8 NHWC, as cached
            to_input = lambda b: b.permute(0, 3, 1, 2).float().sub(128).div(40)  # noqa: E731
            cached = partial.prefix_outputs(prefix, images, to_input, batch_size=2)  # in two batches
            assert cached.dtype == np.float16
            by_batch = torch.cat([prefix(to_input(images[:2])), prefix(to_input(images[2:]))])
            np.testing.assert_array_equal(cached, by_batch.half().numpy())  # the prefix's outputs, stored
            ref = model.forward_features(to_input(images))
            assert (part.forward_features(torch.from_numpy(cached)) - ref).abs().max() <= 5e-3 * ref.abs().max()
        with pytest.raises(ValueError, match=f"partial_blocks={n}: .* train 0 to {n - 1}"):
            partial.split(model, n)


def test_zero_trained_blocks_is_the_linear_probe(tmp_path, tmp_cache):
    """k = 0, one unaugmented view: the classifier trains on the pooled frozen features, as mode
    linear does (same head initialisation, sampler, optimiser); only the fp16 storage of the feature
    maps differs, so the test logits agree to fp16 precision."""
    common = {**TINY_PARTIAL, "partial_blocks": 0, "partial_views": 1, "augment": "none", "epochs": 3}
    lin = run_training({**common, "mode": "linear", "output_dir": str(tmp_path / "linear")}, log=_quiet)
    par = run_training({**common, "output_dir": str(tmp_path / "partial")}, log=_quiet)
    a, b = (np.load(tmp_path / d / "predictions.npz") for d in ("linear", "partial"))
    assert np.abs(a["logits"]).max() > 0.1
    np.testing.assert_allclose(b["logits"], a["logits"], rtol=0, atol=5e-3 * np.abs(a["logits"]).max())
    np.testing.assert_allclose(b["val_logits"], a["val_logits"], rtol=0, atol=5e-3 * np.abs(a["logits"]).max())
    assert par.metrics["balanced/acc1"] == pytest.approx(lin.metrics["balanced/acc1"], abs=1 / 24 + 1e-9)
    assert par.metrics["mode"] == "partial" and len(par.history) == 3


def test_partial_trains_the_tail_and_caches_the_prefix_once(tmp_path, tmp_cache):
    first = run_training({**TINY_PARTIAL, "output_dir": str(tmp_path / "a"), "save_checkpoints": True}, log=_quiet)
    entries = sorted((tmp_cache / "partial").glob("*.npy"))
    assert len(entries) == 2 + 1 + 1  # two training views, the validation and the test centre views
    shapes = {np.load(e, mmap_mode="r").shape[1:] for e in entries}
    assert shapes == {(64, 4, 4)}  # the input of the last two ResNet-32 blocks at 16 px, fp16
    assert {np.load(e, mmap_mode="r").dtype for e in entries} == {np.dtype(np.float16)}
    stamps = {e: e.stat().st_mtime_ns for e in entries}
    second = run_training({**TINY_PARTIAL, "lr": 0.02, "output_dir": str(tmp_path / "b")}, log=_quiet)
    assert sorted((tmp_cache / "partial").glob("*.npy")) == entries  # another training: the same cache
    assert all(e.stat().st_mtime_ns == t for e, t in stamps.items())
    state = torch.load(tmp_path / "a" / "best.pt")
    assert set(state) and all(k.startswith(("tail.", "classifier.")) for k in state)  # the trained part only
    assert {k.split(".")[1] for k in state if k.startswith("tail.")} == {"0", "1"}
    for m in (first.metrics, second.metrics):
        assert 0 <= m["balanced/acc1"] <= 1 and 0 <= m["val/balanced_acc"] <= 1


def test_a_bad_prefix_cache_entry_is_rebuilt_and_the_run_unchanged(tmp_path, tmp_cache):
    first = run_training({**TINY_PARTIAL, "output_dir": str(tmp_path / "a")}, log=_quiet).metrics
    entries = sorted((tmp_cache / "partial").glob("*.npy"))
    data = bytearray(entries[0].read_bytes())           # same size, different contents
    for i in range(len(data) // 2, len(data), 7):
        data[i] ^= 0x5A
    entries[0].write_bytes(bytes(data))
    entries[1].write_bytes(entries[1].read_bytes()[:100])  # truncated
    with pytest.warns(UserWarning, match="partial cache .*npy: .*computing the prefix outputs again") as record:
        again = run_training({**TINY_PARTIAL, "output_dir": str(tmp_path / "b")}, log=_quiet).metrics
    named = {str(e) for e in entries[:2]}
    assert {m for w in record for m in named if m in str(w.message)} == named
    assert again["balanced/acc1"] == first["balanced/acc1"] and again["balanced/loss"] == first["balanced/loss"]


def test_partial_parameters_are_checked_before_any_work(tmp_path):
    with pytest.raises(ParameterError) as err:
        validate({**TINY_PARTIAL, "backbone": "vit_b16", "partial_views": 0})
    assert "backbone='vit_b16' with mode='partial'" in str(err.value) and "mobilenetv2*" in str(err.value)
    assert "partial_views=0" in str(err.value)
    assert validate({**TINY_PARTIAL})["partial_blocks"] == 2
    with pytest.raises(ParameterError, match="technique='lws' with mode='partial'"):
        validate({**TINY_PARTIAL, "technique": "lws"})


def test_partial_run_under_papermill(tmp_path, tmp_cache):
    nb = jupytext.read(ROOT / "notebooks" / "train.py")
    src = tmp_path / "train.ipynb"
    jupytext.write(nb, src)
    params = {**DEFAULTS, **TINY_PARTIAL, "loss": "ldam", "drw_epoch": 1, "output_dir": str(tmp_path / "run")}
    papermill.execute_notebook(str(src), str(tmp_path / "out.ipynb"), parameters=params, kernel_name="longtail",
                               cwd=str(ROOT), progress_bar=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["mode"] == "partial" and 0 <= metrics["balanced/acc1"] <= 1
    assert json.loads((tmp_path / "run" / "params.json").read_text())["partial_blocks"] == 2
    assert len(list((tmp_cache / "partial").glob("*.npy"))) == 4
