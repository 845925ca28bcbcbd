"""Batch transforms on uint8 NHWC tensors, on whatever device the batch is on.

Images come from the decoded-image cache as ``cache_size`` squares (shorter side resized,
centre crop).  Evaluation takes the centre ``image_size`` crop (the backbone's crop_pct geometry);
training draws a random resized crop and a horizontal flip per image in one ``grid_sample`` call,
so augmentation is vectorised and runs on the GPU where the batch is.

| augment  | training transform                                                   |
|----------|----------------------------------------------------------------------|
| ``rrc``  | random resized crop (scale 0.08–1, ratio 3/4–4/3) + flip (ImageNet)  |
| ``light``| random resized crop (scale 0.35–1) + flip: for small fine-tuning sets |
| ``cifar``| 4-pixel zero padding, random crop, flip (He et al. 2016; Cao et al.) |
| ``flip`` | horizontal flip only                                                 |
| ``none`` | the evaluation transform                                             |

Test-time views (``TTA_VIEWS``, ``view_transform``): the centre crop, its mirror image, and the
corner crops of the ten-crop evaluation (Krizhevsky et al., *ImageNet Classification with Deep
Convolutional Neural Networks*, NeurIPS 2012, Sec. 6: the four corner and the centre
``image_size`` patches of the ``cache_size`` square, and their horizontal reflections).

``randaugment=True`` adds RandAugment (Cubuk et al. 2020; torchvision's, 2 ops of magnitude 9)
before the crop: per image, on uint8, so it costs CPU time where the batch is on the CPU.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

AUGMENTS = ("rrc", "light", "cifar", "flip", "none")


#: a run's ``tta`` choice -> the views whose features are averaged (``view_transform`` names).  The
#: corner crops are the ``image_size`` patches at the corners of the ``cache_size`` square, 12.5 % of
#: its side from the centre crop at the backbone's crop_pct 0.875 (32 px at 224 / 256 px).
TTA_VIEWS = {
    "none": ("centre",),
    "flip": ("centre", "centre_flip"),
    "five_crop": ("centre", "top_left", "top_right", "bottom_left", "bottom_right"),
    "ten_crop": tuple(v + s for v in ("centre", "top_left", "top_right", "bottom_left", "bottom_right")
                      for s in ("", "_flip")),
}
CROP_POSITIONS = ("centre", "top_left", "top_right", "bottom_left", "bottom_right")


def view_transform(eval_tf: "BatchTransform", view: str):
    """The evaluation transform ``eval_tf`` seen in ``view``: one of ``CROP_POSITIONS``, optionally
    with ``_flip`` (the crop mirrored left to right).  ``centre`` is ``eval_tf`` itself."""
    position, flip = (view[:-len("_flip")], True) if view.endswith("_flip") else (view, False)
    if position not in CROP_POSITIONS:
        raise ValueError(f"view {view!r}: choose one of {', '.join(CROP_POSITIONS)}, each optionally + '_flip'")
    if position == "centre":
        return (lambda batch: eval_tf(batch).flip(-1)) if flip else eval_tf
    size = eval_tf.image_size

    def transform(batch: torch.Tensor) -> torch.Tensor:
        n, h, w, c = batch.shape
        if size > min(h, w):
            raise ValueError(f"a {size} px corner crop of {h}x{w} images")
        top = 0 if position.startswith("top") else h - size
        left = 0 if position.endswith("left") else w - size
        x = center_crop_normalize(batch[:, top:top + size, left:left + size], size, eval_tf.mean, eval_tf.std,
                                  eval_tf.channels_last)
        return x.flip(-1) if flip else x
    return transform


def cache_size_for(image_size: int, crop_pct: float) -> int:
    """Size of the cached square from which an ``image_size`` centre crop keeps ``crop_pct``."""
    return int(math.floor(image_size / crop_pct))


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor (random draws) onto ``device`` without waiting for the GPU.  A plain copy
    from pageable memory waits for every queued kernel, so each training step's host work and GPU
    work would run one after the other; a pinned, asynchronous copy lets them overlap."""
    device = torch.device(device)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2).float().div_(255)


@functools.lru_cache(maxsize=32)
def _channel_stats(mean: tuple, std: tuple, device: torch.device, dtype: torch.dtype):
    """mean and std as [1, C, 1, 1] tensors on ``device``, made once: building them from Python
    numbers is a blocking host-to-device copy, which would stall every training step on a GPU."""
    return (torch.tensor(mean, dtype=dtype).view(1, -1, 1, 1).to(device),
            torch.tensor(std, dtype=dtype).view(1, -1, 1, 1).to(device))


@functools.lru_cache(maxsize=32)
def _uint8_affine(mean: tuple, std: tuple, device: torch.device):
    """``scale = 1/(255·std)`` and ``shift = −mean/std`` as float32 [1, C, 1, 1] on ``device``, computed in
    float64 and made once (like ``_channel_stats``: no blocking host-to-device copy per batch)."""
    std64 = torch.tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * std64)).to(torch.float32).view(1, -1, 1, 1)
    shift = (-torch.tensor(mean, dtype=torch.float64) / std64).to(torch.float32).view(1, -1, 1, 1)
    return scale.to(device), shift.to(device)


def normalize(x: torch.Tensor, mean, std, channels_last: bool = False) -> torch.Tensor:
    mean, std = _channel_stats(tuple(map(float, mean)), tuple(map(float, std)), x.device, x.dtype)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def center_crop_normalize(batch: torch.Tensor, size: int, mean, std, channels_last: bool = False) -> torch.Tensor:
    """The evaluation transform in one pass: the centre ``size`` crop of a uint8 NHWC batch, taken
    on the uint8 pixels, converted and normalised straight into the float NCHW output,
    ``(x / 255 − mean) / std = x · 1/(255·std) − mean/std`` (a channels_last output keeps NHWC's
    memory order, so the pass reads and writes in order).  Equals ``normalize(center_crop(
    _to_float(batch)))`` to float rounding; ``size`` must not exceed the batch's height or width."""
    n, h, w, c = batch.shape
    if size > min(h, w):
        raise ValueError(f"centre crop size {size} exceeds the images ({h}x{w})")
    top, left = (h - size) // 2, (w - size) // 2
    crop = batch[:, top:top + size, left:left + size].permute(0, 3, 1, 2)
    scale, shift = _uint8_affine(tuple(map(float, mean)), tuple(map(float, std)), batch.device)
    out = torch.empty((n, c, size, size), dtype=torch.float32, device=batch.device,
                      memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return torch.addcmul(shift, crop, scale, out=out)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre crop of an NCHW batch to ``size``; resizes (bilinear) when ``size`` exceeds the input."""
    h, w = x.shape[-2:]
    if size > min(h, w):
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def _affine_sample(x: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    grid = F.affine_grid(theta, (x.shape[0], x.shape[1], size, size), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_resized_crop_flip(x: torch.Tensor, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                             generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image random resized crop (Szegedy et al. 2015) + horizontal flip of NCHW floats."""
    n, dev = x.shape[0], x.device
    rand = lambda *s: to_device(torch.rand(*s, generator=generator, device="cpu"), dev)  # noqa: E731
    area = scale[0] + (scale[1] - scale[0]) * rand(n)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * rand(n)
    r = torch.exp(log_r)
    sw = torch.sqrt(area * r).clamp(max=1.0)  # crop width and height as fractions of the image
    sh = torch.sqrt(area / r).clamp(max=1.0)
    cx = (1 - sw) * (2 * rand(n) - 1)  # centre, in [-1, 1] grid units, keeping the crop inside
    cy = (1 - sh) * (2 * rand(n) - 1)
    flip = torch.where(rand(n) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = sw * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = sh, cy
    return _affine_sample(x, theta, size)


def pad_crop_flip(x: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """CIFAR augmentation: zero-pad by ``pad``, random crop back to the size, random flip."""
    n, h = x.shape[0], x.shape[-1]
    shifts = to_device(torch.randint(-pad, pad + 1, (n, 2), generator=generator), x.device)
    flip = to_device(torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0), x.device)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 1, 1] = flip, 1.0
    theta[:, :, 2] = shifts.float() * 2 / h  # integer pixel shifts: bilinear sampling stays exact
    return _affine_sample(x, theta, h)


class BatchTransform:
    """uint8 NHWC batch -> normalised float NCHW batch for the model."""

    def __init__(self, image_size: int, mean, std, *, augment: str = "none", channels_last: bool = False,
                 seed: int = 0, randaugment: bool = False):
        if augment not in AUGMENTS:
            raise ValueError(f"unknown augment {augment!r}; choose one of {', '.join(AUGMENTS)}")
        self.image_size, self.mean, self.std = image_size, mean, std
        self.augment, self.channels_last = augment, channels_last
        self.generator = torch.Generator().manual_seed(seed)
        self.randaugment = None
        if randaugment:
            from torchvision.transforms import v2
            self.randaugment = v2.RandAugment(num_ops=2, magnitude=9)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.augment == "none" and self.randaugment is None and self.image_size <= min(batch.shape[1:3]):
            return center_crop_normalize(batch, self.image_size, self.mean, self.std, self.channels_last)
        if self.randaugment is not None:  # per image: RandAugment draws its ops per call
            batch = torch.stack([self.randaugment(img) for img in batch.permute(0, 3, 1, 2)]).permute(0, 2, 3, 1)
        x = _to_float(batch)
        if self.augment == "rrc":
            x = random_resized_crop_flip(x, self.image_size, generator=self.generator)
        elif self.augment == "light":
            x = random_resized_crop_flip(x, self.image_size, scale=(0.35, 1.0), generator=self.generator)
        elif self.augment == "cifar":
            x = pad_crop_flip(center_crop(x, self.image_size), generator=self.generator)
        else:
            x = center_crop(x, self.image_size)
            if self.augment == "flip":
                flip = to_device(torch.rand(x.shape[0], generator=self.generator), x.device) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        return normalize(x, self.mean, self.std, self.channels_last)


def mix_batch(x: torch.Tensor, y: torch.Tensor, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
              generator: torch.Generator | None = None):
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019), chosen with equal odds when both are on.
    Returns (x_mixed, y_a, y_b, lam); the loss is lam*L(x, y_a) + (1-lam)*L(x, y_b), which works
    with every loss of the library since targets stay hard labels."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return x, y, y, 1.0
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or torch.rand(1, generator=generator).item() < 0.5)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = to_device(torch.randperm(x.shape[0], generator=generator), x.device)
    if not use_cutmix:
        return lam * x + (1 - lam) * x[perm], y, y[perm], lam
    h, w = x.shape[-2:]
    ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy, cx = int(torch.randint(h, (1,), generator=generator)), int(torch.randint(w, (1,), generator=generator))
    t, b, l, r = max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)
    x = x.clone()
    x[..., t:b, l:r] = x[perm][..., t:b, l:r]
    lam = 1 - (b - t) * (r - l) / (h * w)  # the area actually pasted
    return x, y, y[perm], lam
