import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from longtail import engine, losses, samplers, transforms


def test_cache_size_follows_crop_pct():
    assert transforms.cache_size_for(224, 0.875) == 256
    assert transforms.cache_size_for(32, 1.0) == 32


def test_eval_transform_is_centre_crop_and_normalisation():
    x = torch.arange(6 * 6 * 3, dtype=torch.uint8).view(1, 6, 6, 3)
    out = transforms.BatchTransform(4, (0.5,) * 3, (0.25,) * 3)(x)
    expected = (x.permute(0, 3, 1, 2).float() / 255)[..., 1:5, 1:5]
    assert torch.allclose(out, (expected - 0.5) / 0.25)


def test_cifar_augmentation_shifts_by_whole_pixels():
    x = torch.rand(64, 3, 8, 8)
    out = transforms.pad_crop_flip(x, pad=2, generator=torch.Generator().manual_seed(0))
    # every output pixel is an input pixel or zero padding: bilinear sampling at integer offsets
    values = set(np.round(x.numpy().ravel(), 6)) | {0.0}
    assert set(np.round(out.numpy().ravel(), 6)) <= values


def test_cifar_augmentation_is_the_reference_pad_crop_flip():
    """Each output is exactly one of torchvision's RandomCrop(padding=pad) + RandomHorizontalFlip
    results (zero padding, whole-pixel offsets), and every offset and flip occurs."""
    pad, n = 2, 2000
    x = torch.rand(n, 3, 6, 6)
    out = transforms.pad_crop_flip(x, pad=pad, generator=torch.Generator().manual_seed(0))
    seen = set()
    for i in range(n):
        matches = [(flip, dy, dx) for flip in (False, True) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                   if torch.allclose(torch.nn.functional.pad(x[i].flip(-1) if flip else x[i], (pad,) * 4)
                                     [:, dy:dy + 6, dx:dx + 6], out[i], atol=1e-6)]
        assert len(matches) == 1, f"image {i}: {matches}"
        seen.add(matches[0])
    assert len(seen) == 2 * (2 * pad + 1) ** 2


def test_random_resized_crop_with_full_scale_and_no_flip_is_identity():
    x = torch.rand(3, 3, 16, 16)
    gen = torch.Generator().manual_seed(0)
    out = transforms.random_resized_crop_flip(x, 16, scale=(1, 1), ratio=(1, 1), generator=gen)
    flipped = out.flip(-1)
    for i in range(3):  # each image is either itself or its mirror image
        assert torch.allclose(out[i], x[i], atol=1e-5) or torch.allclose(flipped[i], x[i], atol=1e-5)


def test_mixup_keeps_hard_labels_and_mixes():
    x, y = torch.rand(8, 3, 4, 4), torch.arange(8)
    xm, ya, yb, lam = transforms.mix_batch(x, y, mixup_alpha=0.4, generator=torch.Generator().manual_seed(1))
    assert 0 <= lam <= 1 and torch.equal(ya, y) and sorted(yb.tolist()) == list(range(8))
    assert torch.allclose(xm, lam * x + (1 - lam) * x[yb])  # y = arange, so y_b is the permutation itself
    assert lam < 1 and not torch.allclose(xm, x)


def test_train_config_defaults_are_the_run_parameters_defaults():
    from longtail.params import DEFAULTS, validate
    cfg = engine.TrainConfig()
    assert {k: getattr(cfg, k) for k in cfg.__dataclass_fields__} == {k: DEFAULTS[k] for k in cfg.__dataclass_fields__}
    assert cfg.eval_batch_size == 32 and engine.TrainConfig.from_params(validate({})) == cfg
    cfg.lr_steps.append(60)  # a list default is the config's own
    assert engine.TrainConfig().lr_steps == []


def test_lr_schedule_warmup_cosine_step():
    cfg = engine.TrainConfig(epochs=10, warmup_epochs=2, schedule="cosine")
    assert engine.lr_factor(0, 10, cfg) == pytest.approx(1 / 20)
    assert engine.lr_factor(19, 10, cfg) == pytest.approx(1.0)
    assert engine.lr_factor(60, 10, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    step = engine.TrainConfig(epochs=200, warmup_epochs=5, schedule="step", lr_steps=[160, 180], lr_gamma=0.1)
    assert engine.lr_factor(100 * 10, 10, step) == 1.0
    assert engine.lr_factor(170 * 10, 10, step) == pytest.approx(0.1)
    assert engine.lr_factor(190 * 10, 10, step) == pytest.approx(0.01)


def _blobs(n_per_class=(60, 30, 10), dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(n_per_class), dim, generator=g) * 3
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    return centres[y] + torch.randn(len(y), dim, generator=g), y


def test_fit_learns_and_selects_on_validation():
    x, y = _blobs()
    head = nn.Linear(5, 3)
    cfg = engine.TrainConfig(epochs=15, batch_size=16, lr=0.1)
    sampler = samplers.build_sampler("instance", y.numpy(), 0)
    history, best, best_epoch = engine.fit(head, x, y, losses.build_loss("ce", [60, 30, 10]), sampler, cfg,
                                           val_x=x, val_y=y, log=lambda s: None)
    assert len(history) == 15 and history[-1]["train_acc"] > 0.9
    assert best_epoch == max(range(15), key=lambda e: (history[e]["val_balanced_acc"], e))
    head.load_state_dict(best)
    assert (head(x).argmax(1) == y).float().mean() > 0.9


def test_fit_is_deterministic_under_a_seed():
    x, y = _blobs()
    runs = []
    for _ in range(2):
        head = nn.Linear(5, 3)
        torch.manual_seed(123)
        head.reset_parameters()
        cfg = engine.TrainConfig(epochs=3, batch_size=16, lr=0.1, seed=7)
        _, best, _ = engine.fit(head, x, y, losses.build_loss("ce", [60, 30, 10]),
                                samplers.build_sampler("class_balanced", y.numpy(), 7), cfg, log=lambda s: None)
        runs.append(best["weight"])
    assert torch.equal(runs[0], runs[1])


def test_non_finite_loss_stops_with_a_clear_error():
    x, y = _blobs()
    x[0] = float("nan")
    cfg = engine.TrainConfig(epochs=2, batch_size=200)
    with pytest.raises(engine.NonFiniteLossError, match="epoch 0"):
        engine.fit(nn.Linear(5, 3), x, y, losses.build_loss("ce", [60, 30, 10]),
                   samplers.build_sampler("instance", y.numpy(), 0), cfg, log=lambda s: None)


def test_drw_switches_weights_on_at_its_epoch():
    x, y = _blobs()
    loss = losses.build_loss("ldam", [60, 30, 10])
    drw = losses.DRWSchedule([60, 30, 10], start_epoch=2)
    seen = []
    engine.fit(nn.Linear(5, 3), x, y, loss, samplers.build_sampler("instance", y.numpy(), 0),
               engine.TrainConfig(epochs=4, batch_size=50), drw=drw, log=lambda s: None,
               on_epoch=lambda e, m, r: seen.append(loss.class_weights is not None))
    assert seen == [False, False, True, True]


def test_device_resolution_errors_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert engine.resolve_device("auto").type in ("cpu", "mps")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        engine.resolve_device("cuda")


def test_randaugment_option_changes_training_images_only():
    x = torch.randint(0, 256, (4, 20, 20, 3), dtype=torch.uint8)
    torch.manual_seed(0)
    tf = transforms.BatchTransform(16, (0.5,) * 3, (0.5,) * 3, augment="none", randaugment=True)
    plain = transforms.BatchTransform(16, (0.5,) * 3, (0.5,) * 3, augment="none")
    out = tf(x)
    assert out.shape == (4, 3, 16, 16) and not torch.allclose(out, plain(x))


def test_warmup_per_epoch_follows_the_ldam_drw_code():
    # Cao et al.'s adjust_learning_rate: lr * (e + 1) / 5 in epochs e = 0..4, held for the whole epoch
    cfg = engine.TrainConfig(epochs=200, warmup_epochs=5, warmup_unit="epoch", schedule="step",
                             lr_steps=[160, 180], lr_gamma=0.01)
    per_epoch = [engine.lr_factor(e * 10 + s, 10, cfg) for e in range(6) for s in (0, 9)]
    assert per_epoch == pytest.approx([0.2, 0.2, 0.4, 0.4, 0.6, 0.6, 0.8, 0.8, 1.0, 1.0, 1.0, 1.0])
    assert engine.lr_factor(160 * 10, 10, cfg) == pytest.approx(1e-2)  # 0.1 -> 1e-3, as theirs
    assert engine.lr_factor(180 * 10, 10, cfg) == pytest.approx(1e-4)  # -> 1e-5


def _net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))


def test_optimizer_reference_switches():
    ours = engine.make_optimizer(_net(), engine.TrainConfig(weight_decay=2e-4))
    decayed = [p.ndim for g in ours.param_groups if g["weight_decay"] > 0 for p in g["params"]]
    exempt = [p.ndim for g in ours.param_groups if g["weight_decay"] == 0 for p in g["params"]]
    assert decayed == [4, 2] and exempt == [1, 1, 1, 1]  # conv bias, BN weight and bias, linear bias
    assert all(g["nesterov"] for g in ours.param_groups)
    ref = engine.make_optimizer(_net(), engine.TrainConfig(weight_decay=2e-4, nesterov=False, decay_norm_and_bias=True))
    assert len(ref.param_groups) == 1 and ref.param_groups[0]["weight_decay"] == 2e-4
    assert len(ref.param_groups[0]["params"]) == 6 and not ref.param_groups[0]["nesterov"]


@pytest.mark.parametrize("momentum,nesterov,weight_decay,decay_all", [
    (0.9, True, 5e-4, False), (0.9, False, 5e-4, True), (0.0, False, 0.0, False), (0.5, True, 0.0, True)])
def test_cpu_sgd_equals_torch_sgd_bit_for_bit(momentum, nesterov, weight_decay, decay_all):
    """CpuSGD (what make_optimizer gives for CPU parameters) and torch.optim.SGD, from the same
    start on the same batches with a changing lr, end with identical parameters."""
    torch.manual_seed(0)
    nets = [_net(), _net()]
    nets[1].load_state_dict(nets[0].state_dict())
    cfg = engine.TrainConfig(lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                             decay_norm_and_bias=decay_all)
    ours = engine.make_optimizer(nets[0], cfg)
    assert isinstance(ours, engine.CpuSGD)
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in engine.make_optimizer(nets[1], cfg).param_groups]
    ref = torch.optim.SGD(groups, lr=0.1, momentum=momentum, nesterov=nesterov)
    x, y = torch.randn(6, 8, 3, 6, 6), torch.randint(0, 2, (6, 8))
    for step in range(6):
        for net, opt in zip(nets, (ours, ref)):
            for g in opt.param_groups:
                g["lr"] = 0.1 / (step + 1)
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x[step]), y[step]).backward()
            opt.step()
    for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values()):
        assert torch.equal(a, b)


def test_training_on_cpu_never_imports_dynamo():
    """torch.optim's first step imports torch._dynamo (about 1 s of each run's kernel); the engine's CPU path does not."""
    import subprocess
    import sys
    code = ("import sys, torch; from longtail import engine, losses, samplers\n"
            "x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))\n"
            "engine.fit(torch.nn.Linear(5, 3), x, y, losses.build_loss('ce', [14, 13, 13]), "
            "samplers.build_sampler('instance', y.numpy(), 0), engine.TrainConfig(epochs=2, batch_size=8, device='cpu'), "
            "log=lambda s: None)\n"
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_weight_decay_on_norm_layers_shrinks_them_only_when_asked():
    # one SGD step with zero gradient: decayed parameters shrink by lr * wd, exempt ones stay
    for decay_all, expected in ((False, 1.0), (True, 1 - 0.1 * 0.5)):
        net = _net()
        opt = engine.make_optimizer(net, engine.TrainConfig(lr=0.1, momentum=0.0, weight_decay=0.5,
                                                            decay_norm_and_bias=decay_all))
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        assert torch.allclose(net[1].weight, torch.full((4,), expected))


def test_monitor_records_test_accuracy_without_changing_selection():
    x, y = _blobs()
    runs = {}
    for monitored in (False, True):
        head = nn.Linear(5, 3)
        torch.manual_seed(0)
        head.reset_parameters()
        cfg = engine.TrainConfig(epochs=4, batch_size=16, lr=0.1, seed=3)
        extra = {"monitor_x": x, "monitor_y": y.numpy()} if monitored else {}
        history, best, best_epoch = engine.fit(head, x, y, losses.build_loss("ce", [60, 30, 10]),
                                               samplers.build_sampler("instance", y.numpy(), 3), cfg,
                                               log=lambda s: None, **extra)
        runs[monitored] = (history, best, best_epoch)
    history, best, best_epoch = runs[True]
    assert best_epoch == runs[False][2] == 3 and torch.equal(best["weight"], runs[False][1]["weight"])
    last = nn.Linear(5, 3)
    last.load_state_dict(best)
    assert history[-1]["monitor_acc"] == pytest.approx((last(x).argmax(1) == y).float().mean().item())
    assert "monitor_acc" not in runs[False][0][-1]


def _graph_vs_eager(device: str, epochs: int = 2):
    """ResNet-32 on random 32 px images, trained twice from the same state: cuda_graph off, then on."""
    from longtail.models import build_model
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (200, 32, 32, 3), dtype=torch.uint8, generator=g)
    y = torch.arange(200) % 4
    out = []
    for graph in (False, True):
        transform = transforms.BatchTransform(32, (0.5,) * 3, (0.25,) * 3, augment="cifar", seed=5)
        torch.manual_seed(1)
        model = build_model("resnet32", 4, pretrained=None)
        cfg = engine.TrainConfig(epochs=epochs, batch_size=64, lr=0.05, device=device, cuda_graph=graph, seed=3)
        history, state, _ = engine.fit(model, x, y, losses.build_loss("ce", [50] * 4),
                                       samplers.build_sampler("instance", y.numpy(), 3), cfg, transform=transform,
                                       log=lambda s: None)
        out.append((history, state))
    return out


def test_cuda_graph_is_ignored_off_cuda():
    (h_eager, s_eager), (h_graph, s_graph) = _graph_vs_eager("cpu", epochs=1)
    assert not h_graph[0]["cuda_graph"]
    assert [r["train_loss"] for r in h_eager] == [r["train_loss"] for r in h_graph]
    assert all(torch.equal(s_eager[k], s_graph[k]) for k in s_eager)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_trains_like_eager():
    # 200 images, batch 64: three captured batches and a last one of 8 that runs eagerly, every epoch
    (h_eager, s_eager), (h_graph, s_graph) = _graph_vs_eager("cuda")
    assert h_graph[0]["cuda_graph"] and not h_eager[0]["cuda_graph"]
    for a, b in zip(h_eager, h_graph):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=2e-2)
    # the capture's warm-up passes did not move BatchNorm's statistics: same count of batches tracked
    counts = [k for k in s_eager if k.endswith("num_batches_tracked")]
    assert counts and all(int(s_eager[k]) == int(s_graph[k]) for k in counts)
    for k in s_eager:
        if s_eager[k].is_floating_point():
            assert torch.allclose(s_eager[k], s_graph[k], rtol=0.1, atol=2e-2), k
