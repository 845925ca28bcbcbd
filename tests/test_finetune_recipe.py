"""The fine-tuning recipe's parameters: frozen BatchNorm, discriminative learning rates, LP-FT."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from longtail import engine, samplers
from longtail.engine import TrainConfig
from longtail.params import ParameterError, validate
from longtail.run import run_training

TINY = dict(dataset="synthetic", backbone="resnet32", mode="finetune", epochs=2, batch_size=32, image_size=16,
            imbalance_factor=5, lr=0.05)
EPS = torch.finfo(torch.float32).eps


class ConvNet(nn.Module):
    """Conv - BN - ReLU - pool - linear classifier, with timm's ``get_classifier``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)
        with torch.no_grad():  # statistics unlike any batch's, so an update would move them
            self.bn.running_mean.fill_(0.5)
            self.bn.running_var.fill_(2.0)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))

    def get_classifier(self):
        return self.fc


def _fit(model, **cfg):
    torch.manual_seed(1)
    x, y = torch.randn(24, 3, 6, 6), torch.arange(24) % 3
    cfg = TrainConfig(**{"epochs": 1, "batch_size": 24, "device": "cpu", "channels_last": False, **cfg})
    engine.fit(model, x, y, nn.CrossEntropyLoss(), samplers.build_sampler("instance", y.numpy(), 0), cfg,
               log=lambda s: None)
    return model


@pytest.mark.parametrize("freeze_bn", ["stats", "all"])
def test_frozen_batchnorm_keeps_its_running_statistics(freeze_bn):
    before = ConvNet()
    after = _fit(copy.deepcopy(before), freeze_bn=freeze_bn, optimizer="adamw", lr=0.01)
    assert torch.equal(after.bn.running_mean, before.bn.running_mean)
    assert torch.equal(after.bn.running_var, before.bn.running_var)
    assert int(after.bn.num_batches_tracked) == 0
    assert not torch.equal(after.conv.weight, before.conv.weight)  # the rest trained
    affine_kept = torch.equal(after.bn.weight, before.bn.weight) and torch.equal(after.bn.bias, before.bn.bias)
    assert affine_kept == (freeze_bn == "all")


def test_batchnorm_in_train_mode_updates_its_statistics():  # the default, as before
    before = ConvNet()
    after = _fit(copy.deepcopy(before), optimizer="adamw", lr=0.01)
    assert not torch.equal(after.bn.running_mean, before.bn.running_mean)


def test_backbone_lr_scale_puts_the_classifier_and_the_rest_in_groups_of_their_own():
    model = ConvNet()
    opt = engine.make_optimizer(model, TrainConfig(backbone_lr_scale=0.1))
    scale = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    assert {scale[id(p)] for p in model.fc.parameters()} == {1.0}
    assert {scale[id(p)] for m in (model.conv, model.bn) for p in m.parameters()} == {0.1}
    assert len(scale) == len(list(model.parameters()))


def test_backbone_lr_scale_scales_the_backbone_step_and_leaves_the_classifier_step():
    """One full-batch SGD step (no momentum, no decay, constant lr): the gradient is the same under
    any scale, so the backbone's step under scale s is s times its step under scale 1, the
    classifier's step the same; both steps are differences of fp32 values, hence the tolerances.
    (conv.bias, followed by BatchNorm in train mode, has a zero gradient: it is left out.)"""
    start = ConvNet()
    cfg = dict(optimizer="sgd", lr=0.5, momentum=0.0, weight_decay=0.0, schedule="constant")
    full, scaled = _fit(copy.deepcopy(start), **cfg), _fit(copy.deepcopy(start), backbone_lr_scale=0.25, **cfg)
    frozen = _fit(copy.deepcopy(start), backbone_lr_scale=0.0, **cfg)
    for name, p0 in start.named_parameters():
        if name == "conv.bias":
            continue
        p0 = p0.detach()
        step_full = dict(full.named_parameters())[name].detach() - p0
        step_scaled = dict(scaled.named_parameters())[name].detach() - p0
        tol = 4 * EPS * float(p0.abs().max() + step_full.abs().max())
        expected = step_full if name.startswith("fc.") else 0.25 * step_full
        assert torch.allclose(step_scaled, expected, rtol=0, atol=tol), name
        assert step_full.abs().max() > 100 * tol, name  # the step is far above rounding
        kept = torch.equal(dict(frozen.named_parameters())[name], p0)
        assert kept == (not name.startswith("fc.")), name


def test_lp_ft_starts_fine_tuning_from_the_linear_probe_of_mode_linear(tmp_path, tmp_cache, monkeypatch):
    """The classifier that fine-tuning starts from is the head a default mode linear run trains on
    the same images (both on the same frozen features, to float rounding: their extraction batches
    differ), not a random one."""
    linear = {k: v for k, v in TINY.items() if k not in ("lr", "epochs", "batch_size")}
    run_training({**linear, "mode": "linear", "output_dir": str(tmp_path / "linear")}, log=lambda s: None)
    probe = torch.load(tmp_path / "linear" / "best.pt")

    starts = []
    real_fit = engine.fit

    def recording_fit(model, *args, **kwargs):
        if hasattr(model, "get_classifier"):  # the fine-tuning fit (the probe's is on a bare head)
            starts.append({k: v.detach().clone() for k, v in model.get_classifier().state_dict().items()})
        return real_fit(model, *args, **kwargs)
    monkeypatch.setattr(engine, "fit", recording_fit)
    run_training({**TINY, "head_init": "linear_probe", "output_dir": str(tmp_path / "lpft")}, log=lambda s: None)
    assert len(starts) == 1 and starts[0].keys() == probe.keys()
    for k in probe:
        assert torch.allclose(starts[0][k], probe[k], rtol=1e-4, atol=1e-5), (k, (starts[0][k] - probe[k]).abs().max())
    random_start = {k: v.detach() for k, v in __import__("longtail.models", fromlist=["x"]).build_model(
        "resnet32", 6, None).get_classifier().state_dict().items()}
    assert not torch.allclose(starts[0]["weight"], random_start["weight"], atol=1e-2)


@pytest.mark.parametrize("bad,message", [
    ({"freeze_bn": "yes"}, "freeze_bn='yes': choose one of none, stats, all"),
    ({"head_init": "probe"}, "head_init='probe': choose one of random, linear_probe"),
    ({"backbone_lr_scale": -0.5}, "backbone_lr_scale=-0.5: must be a number >= 0"),
    ({"mode": "linear", "freeze_bn": "stats"}, "freeze_bn='stats' with mode='linear'"),
    ({"mode": "linear", "head_init": "linear_probe"}, "head_init='linear_probe' with mode='linear'"),
])
def test_bad_recipe_parameters_are_named(bad, message):
    with pytest.raises(ParameterError, match=__import__("re").escape(message)):
        validate({**TINY, **bad})


def test_recipe_parameters_are_accepted():
    p = validate({**TINY, "freeze_bn": "all", "head_init": "linear_probe", "backbone_lr_scale": 0.1})
    assert (p["freeze_bn"], p["head_init"], p["backbone_lr_scale"]) == ("all", "linear_probe", 0.1)
    assert np.isclose(validate(TINY)["backbone_lr_scale"], 1.0)
