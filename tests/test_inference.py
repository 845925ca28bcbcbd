"""The inference copy (BatchNorm folded, SAME convolutions without a padded copy), the one-pass
evaluation transform, and engine.predict on them: outputs equal the plain eval-mode path's."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, Conv2dSame

from longtail import engine, inference, models, transforms
from fptol import U64, assert_close_to_scale, dot_bound, network_bound

#: layers and largest dot product of each network here (fptol.network_bound): MobileNetV2 has 52
#: convolutions and the classifier (1280 inputs); ResNet-32 31 convolutions and the classifier
#: (3x3 over 64 channels: 576 terms)
MOBILENETV2_BOUND = network_bound(53, 1280)
RESNET32_BOUND = network_bound(32, 576)


def _randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm statistics and affines far from identity, so a wrong fold cannot pass unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g))
    return model.eval()


def _plain_features(model, x):
    """The eval-mode forward as timm runs it, default layout, no inference copy."""
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True).numpy()


def test_fold_batchnorm_equals_conv_then_batchnorm_by_hand():
    """W' = W·s, b' = (b − μ)·s + β with s = γ / sqrt(σ² + ε), checked on a 1x1 convolution by hand."""
    conv = nn.Conv2d(2, 2, 1, bias=True)
    bn = nn.BatchNorm2d(2, eps=0.0).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0]]).view(2, 2, 1, 1))
        conv.bias.copy_(torch.tensor([0.5, -1.0]))
        bn.running_mean.copy_(torch.tensor([1.0, 2.0]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25]))
        bn.weight.copy_(torch.tensor([2.0, 3.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.2]))
    fused = inference.fold_batchnorm(conv, bn)
    # s = (2/2, 3/0.5) = (1, 6); W' rows (1, 2) and (18, -6); b' = ((0.5-1)·1+0.1, (-1-2)·6+0.2)
    assert torch.equal(fused.weight.view(2, 2), torch.tensor([[1.0, 2.0], [18.0, -6.0]]))
    assert torch.allclose(fused.bias, torch.tensor([-0.4, -17.8]))
    x = torch.randn(3, 2, 4, 4)
    with torch.no_grad():
        assert torch.allclose(fused(x), bn(conv(x)), atol=1e-5)
    assert conv.weight[1, 0, 0, 0] == 3.0  # the original is left as it was


@pytest.mark.parametrize("size", [8, 9, 224 // 8])
@pytest.mark.parametrize("kernel,stride,groups", [(3, 2, 1), (3, 2, 4), (3, 1, 4), (5, 2, 1), (2, 2, 1)])
def test_same_pad_conv_equals_timm_conv2d_same(size, kernel, stride, groups):
    """Even and odd inputs (asymmetric and symmetric SAME padding), depthwise and dense kernels."""
    torch.manual_seed(0)
    same = Conv2dSame(4, 8, kernel, stride=stride, groups=groups, bias=True).eval()
    fast = inference.InferenceConv2d(same)
    x = torch.randn(2, 4, size, size)
    with torch.no_grad():
        expected = same(x)
        got = fast(x)
        got_cl = fast(x.contiguous(memory_format=torch.channels_last))
    assert got.shape == expected.shape
    bound = 2 * dot_bound(4 * kernel * kernel // groups)  # one dot product each, two orders
    assert_close_to_scale(got, expected, bound, "SAME conv")
    assert_close_to_scale(got_cl, expected, bound, "SAME conv, channels_last")
    from timm.layers.padding import get_same_padding
    total = get_same_padding(size, kernel, stride, 1)  # timm's own total
    assert inference._same_pad(size, kernel, stride) == (total // 2, total - total // 2)


def test_same_pad_offsets_by_hand():
    """TF SAME: 224 px, k 3, s 2 pads 0 before, 1 after; 225 px pads 1 and 1; k 5, s 2 on 8 px: 1, 2."""
    assert inference._same_pad(224, 3, 2) == (0, 1)
    assert inference._same_pad(225, 3, 2) == (1, 1)
    assert inference._same_pad(8, 5, 2) == (1, 2)
    assert inference._same_pad(7, 3, 1) == (1, 1)


def test_inference_conv_refuses_what_it_cannot_compute_exactly():
    with pytest.raises(ValueError, match="dilation"):
        inference.InferenceConv2d(Conv2dSame(2, 2, 3, stride=2, dilation=2))
    with pytest.raises(ValueError, match="reflect"):
        inference.InferenceConv2d(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="unknown activation GELU; choose one of ReLU, ReLU6"):
        inference.InferenceConv2d(nn.Conv2d(2, 2, 3), nn.GELU)


@pytest.mark.parametrize("activation", [None, nn.ReLU, nn.ReLU6])
@pytest.mark.parametrize("same", [False, True])
def test_fused_activation_equals_conv_then_activation(activation, same, monkeypatch):
    """The oneDNN conv + post-op path (CPU, float32) and the plain path (float64 input, which the
    fused kernel does not take) both equal the convolution followed by the activation."""
    torch.manual_seed(0)
    conv = (Conv2dSame(6, 6, 3, stride=2, groups=6) if same else nn.Conv2d(6, 8, 3, padding=1)).eval()
    with torch.no_grad():
        conv.bias.normal_(0, 2)  # outputs on both sides of 0 and 6, so the clamps matter
        conv.weight.mul_(8)
    fast = inference.InferenceConv2d(conv, activation)
    act = activation() if activation else nn.Identity()
    x = torch.randn(2, 6, 10, 10)
    with torch.no_grad():
        expected = act(conv(x))
        assert (expected == 6).any() if activation is nn.ReLU6 else True
        assert (expected == 0).any() if activation else True
        plain_conv2d = F.conv2d
        if inference._mkldnn():  # float32 on the CPU never takes the plain path
            monkeypatch.setattr(F, "conv2d", lambda *a, **k: pytest.fail("F.conv2d called on the fused path"))
        bound = 2 * dot_bound(6 * 9)  # at most 6 channels x 3x3 terms, computed in two orders
        assert_close_to_scale(fast(x), expected, bound, "fused")
        assert_close_to_scale(fast(x.contiguous(memory_format=torch.channels_last)), expected, bound, "fused, NHWC")
        monkeypatch.setattr(F, "conv2d", plain_conv2d)
        assert_close_to_scale(fast.double()(x.double()), act(conv.double()(x.double())), 2 * dot_bound(54, U64))


@pytest.mark.parametrize("size", [64, 65])
def test_mobilenetv2_same_padding_inference_copy_equals_the_model(size):
    """MobileNetV2 with SAME padding (the CORAL weights' architecture), norms randomised: every
    BatchNorm folded, every Conv2dSame rewritten, features and logits equal to float rounding, and
    the model itself unchanged."""
    model = _randomise_norms(_same_mobilenetv2(7))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert sum(isinstance(m, Conv2dSame) for m in model.modules()) == 5
    fast = inference.for_inference(model)
    assert fast is not model
    assert not any(isinstance(m, (nn.BatchNorm2d, Conv2dSame, nn.ReLU6)) for m in fast.modules())
    convs = [m for m in fast.modules() if isinstance(m, inference.InferenceConv2d)]
    # stem, 2 in the depthwise-separable block, 3 in each of the 16 inverted residuals, head; ReLU6
    # after all but the 17 projections
    assert len(convs) == 52 and sum(c.same for c in convs) == 5
    assert sum(c.activation is nn.ReLU6 for c in convs) == 35 and not any(isinstance(m, nn.Conv2d) for m in fast.modules())
    x = torch.randn(3, 3, size, size)
    expected = _plain_features(model, x)
    with torch.no_grad():
        got = fast.forward_head(fast.forward_features(x), pre_logits=True).numpy()
        logits, expected_logits = fast(x), model(x)
        # the fold is exact algebra: in float64 both agree to float64 rounding ...
        model64 = copy.deepcopy(model).double()
        assert_close_to_scale(inference.for_inference(model64)(x.double()), model64(x.double()),
                              2 * network_bound(53, 1280, U64), "float64")
    # ... and in float32 to float32 rounding, relative to the outputs' scale (two orders, each bounded)
    assert_close_to_scale(got, expected, 2 * MOBILENETV2_BOUND, "features")
    assert_close_to_scale(logits, expected_logits, 2 * MOBILENETV2_BOUND, "logits")
    assert not np.array_equal(got[0], got[1])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert any(isinstance(m, BatchNormAct2d) for m in model.modules())


def _same_mobilenetv2(num_classes):
    import timm
    return timm.create_model("mobilenetv2_100", pretrained=False, num_classes=num_classes, pad_type="same")


def test_resnet32_is_folded_and_equal():
    torch.manual_seed(0)
    model = _randomise_norms(models.build_model("resnet32", 10))
    fast = inference.for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert_close_to_scale(fast(x), model(x), 2 * RESNET32_BOUND)


def test_models_without_foldable_pairs_are_used_as_they_are():
    head = nn.Linear(4, 2).eval()
    assert inference.for_inference(head) is head
    preact = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3)).eval()  # norm before conv: not folded
    assert inference.for_inference(preact) is preact
    tracking_off = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    assert inference.for_inference(tracking_off) is tracking_off  # batch statistics in eval: nothing to fold


def test_sequential_conv_batchnorm_pairs_are_folded():
    torch.manual_seed(0)
    seq = _randomise_norms(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                         nn.Conv2d(4, 4, 3, groups=4), nn.BatchNorm2d(4)))
    fast = inference.for_inference(seq)
    assert [type(m) for m in fast] == [inference.InferenceConv2d, nn.Identity, nn.ReLU, inference.InferenceConv2d,
                                       nn.Identity]
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        assert_close_to_scale(fast(x), seq(x), 2 * network_bound(2, 27))


def test_a_model_in_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval mode"):
        inference.for_inference(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size,crop", [(40, 32), (41, 32), (32, 32)])
def test_one_pass_eval_transform_equals_the_float_path(size, crop, channels_last):
    """Crop on uint8, one fused convert-and-normalise: equals convert, crop, normalise to rounding,
    in the layout asked for."""
    x = torch.randint(0, 256, (5, size, size + 3, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = transforms.normalize(transforms.center_crop(transforms._to_float(x), crop), mean, std)
    got = transforms.center_crop_normalize(x, crop, mean, std, channels_last)
    assert got.dtype == torch.float32 and got.shape == (5, 3, crop, crop)
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert torch.allclose(got, expected, rtol=0, atol=2e-6), (got - expected).abs().max()
    # a pixel by hand: (x/255 − mean)/std
    top, left = (size - crop) // 2, (size + 3 - crop) // 2
    assert got[2, 1, 0, 0].item() == pytest.approx((x[2, top, left, 1].item() / 255 - mean[1]) / std[1], abs=1e-6)
    assert torch.equal(transforms.BatchTransform(crop, mean, std, channels_last=channels_last)(x), got)


def test_one_pass_eval_transform_refuses_a_crop_larger_than_the_image():
    with pytest.raises(ValueError, match="exceeds"):
        transforms.center_crop_normalize(torch.zeros(1, 8, 8, 3, dtype=torch.uint8), 9, (0.5,) * 3, (0.5,) * 3)


def test_predict_equals_the_plain_eval_forward_of_the_pretrained_mobilenetv2(weights_dir):
    """The CORAL iNat insects MobileNetV2 at 224 px from 256 px images: engine.predict (inference copy,
    channels_last, one-pass transform) against the model's own eval forward on the float path."""
    model = models.build_model("mobilenetv2", 200, "inat_insects", weights_dir=weights_dir)
    dc = model.data_config
    x = torch.randint(0, 256, (6, 256, 256, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    floats = transforms.normalize(transforms.center_crop(transforms._to_float(x), 224), dc["mean"], dc["std"])
    expected = _plain_features(model.eval(), floats)
    got = engine.predict(model, x, transforms.BatchTransform(224, dc["mean"], dc["std"]), batch_size=4, features=True)
    assert got.shape == (6, 1280)
    assert_close_to_scale(got, expected, 2 * MOBILENETV2_BOUND, "features")
    with torch.no_grad():
        logits = model(floats).numpy()
    assert_close_to_scale(engine.predict(model, x, transforms.BatchTransform(224, dc["mean"], dc["std"]), batch_size=4),
                          logits, 2 * MOBILENETV2_BOUND, "logits")


def test_parallel_cpu_batches_keep_the_order_and_the_thread_setting():
    """Batches on several threads at once (one intra-op thread each) give the rows in order, equal
    to one batch at a time; the caller's thread count comes back, also after an error."""
    torch.manual_seed(0)
    model = models.build_model("resnet32", 10)
    x = torch.randint(0, 256, (11, 36, 36, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    tf = transforms.BatchTransform(32, (0.5,) * 3, (0.25,) * 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        serial = engine.predict(model, x, tf, batch_size=3, cpu_workers=1)
        parallel = engine.predict(model, x, tf, batch_size=3, cpu_workers=3)
        assert torch.get_num_threads() == 2
        assert parallel.shape == (11, 10) and np.abs(parallel - serial).max() <= 2 * RESNET32_BOUND * np.abs(serial).max()
        one_by_one = np.concatenate([engine.predict(model, x[i:i + 1], tf, cpu_workers=1) for i in range(11)])
        assert_close_to_scale(parallel, one_by_one, 2 * RESNET32_BOUND)  # row i is image i

        flip = transforms.BatchTransform(32, (0.5,) * 3, (0.25,) * 3, augment="flip", seed=3)  # draws per batch
        random_serial = engine.predict(model, x, flip, batch_size=3, cpu_workers=1)
        flip.generator.manual_seed(3)
        assert_close_to_scale(engine.predict(model, x, flip, batch_size=3, cpu_workers=3), random_serial, 2 * RESNET32_BOUND)

        def broken(batch):
            raise RuntimeError("bad batch")
        with pytest.raises(RuntimeError, match="bad batch"):
            engine.predict(model, x, broken, batch_size=3, cpu_workers=2)
        assert torch.get_num_threads() == 2
        with pytest.raises(ValueError, match="cpu_workers must be at least 1"):
            engine.predict(model, x, tf, cpu_workers=0)
    finally:
        torch.set_num_threads(threads)


def test_predict_reads_a_memory_mapped_array_batch_by_batch(tmp_path, recwarn):
    """The decoded-image cache as it is on disk (a read-only memory map): the same outputs as the
    images in memory, without a warning about a non-writable array."""
    torch.manual_seed(0)
    model = models.build_model("resnet32", 4)
    x = torch.randint(0, 256, (7, 34, 34, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    np.save(tmp_path / "images.npy", x.numpy())
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    tf = transforms.BatchTransform(32, (0.5,) * 3, (0.25,) * 3)
    expected = engine.predict(model, x, tf, batch_size=3, features=True)
    for workers in (1, 2):
        got = engine.predict(model, mapped, tf, batch_size=3, features=True, cpu_workers=workers)
        assert_close_to_scale(got, expected, 2 * RESNET32_BOUND)
    assert not [w for w in recwarn if "not writable" in str(w.message)]
