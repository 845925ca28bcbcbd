"""Training throughput: our engine's step against a bare PyTorch loop, and the data path against the model.

Both sides train the same model, batch size and precision on data already in memory, measured
side by side in one process (alternating, best of ``--repeats``):

- **bare**: the loop a knowledgeable user writes: float32 tensors, already normalised (and
  channels_last), a random permutation, forward, cross-entropy, backward, SGD step.
- **ours**: ``longtail.engine.fit`` for one epoch on uint8 images, normalised per batch on the
  device (augment ``none``, so the arithmetic matches), with the library's loss and sampler,
  lr schedule, finite-loss check and bookkeeping.

Also: the data path alone (gather + uint8->float + random resized crop on the batch) against
the model's training step, and a classic DataLoader that decodes JPEG files every epoch.

    python bench/throughput.py                 # CPU: small backbones
    python bench/throughput.py --gpu           # CUDA: the four thesis backbones at 224 px, bf16
Prints a markdown table; the last line is the ratio ours / bare (goal >= 0.9).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from longtail import engine, losses, models, samplers, transforms

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def bare_loop(model, x_float, y, batch_size, device, precision):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    perm = torch.randperm(len(y), device=x_float.device)
    n = 0
    t0 = time.perf_counter()
    for b in range(0, len(y) - batch_size + 1, batch_size):
        idx = perm[b:b + batch_size]
        xb, yb = x_float[idx].to(device, non_blocking=True), y[idx].to(device)
        with engine.autocast(device, precision):
            out = model(xb)
        loss = F.cross_entropy(out.float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(yb)
    _sync(device)
    return n / (time.perf_counter() - t0)


def ours(model, x_uint8, y, batch_size, device, precision, image_size):
    cfg = engine.TrainConfig(epochs=1, batch_size=batch_size, lr=0.01, weight_decay=0.0, device=str(device),
                             precision=precision, schedule="constant")
    tf = transforms.BatchTransform(image_size, MEAN, STD, channels_last=True)
    n = (len(y) // batch_size) * batch_size
    sampler = samplers.build_sampler("instance", y[:n].cpu().numpy(), 0)
    loss = losses.build_loss("ce", np.bincount(y[:n].cpu().numpy()).tolist())
    t0 = time.perf_counter()
    engine.fit(model, x_uint8[:n], y[:n], loss, sampler, cfg, transform=tf, log=lambda s: None)
    _sync(device)
    return n / (time.perf_counter() - t0)


def data_path(x_uint8, batch_size, device, image_size, batches=20):
    tf = transforms.BatchTransform(image_size, MEAN, STD, augment="rrc", channels_last=True)
    t0 = time.perf_counter()
    for _ in range(batches):
        idx = torch.randint(len(x_uint8), (batch_size,), device=x_uint8.device)
        tf(x_uint8[idx].to(device))
    _sync(device)
    return batches * batch_size / (time.perf_counter() - t0)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(name, image_size, n_images, batch_size, device, precision, repeats):
    g = torch.Generator().manual_seed(0)
    x_uint8 = torch.randint(0, 256, (n_images, image_size, image_size, 3), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n_images,), generator=g)
    x_float = transforms.normalize(x_uint8.permute(0, 3, 1, 2).float() / 255, MEAN, STD, channels_last=True)
    if device.type == "cuda":
        x_uint8, x_float, y = x_uint8.to(device), x_float.to(device), y.to(device)
    model = models.build_model(name, 10).to(device).to(memory_format=torch.channels_last)
    bare_loop(model, x_float[:2 * batch_size], y[:2 * batch_size], batch_size, device, precision)  # warm-up
    b, o = [], []
    for _ in range(repeats):  # alternate, so drifting machine load hits both sides alike
        b.append(bare_loop(model, x_float, y, batch_size, device, precision))
        o.append(ours(model, x_uint8, y, batch_size, device, precision, image_size))
    d = data_path(x_uint8, batch_size, device, image_size)
    return {"backbone": name, "image_size": image_size, "batch": batch_size, "precision": precision,
            "bare_img_s": max(b), "ours_img_s": max(o), "ratio": max(o) / max(b), "data_path_img_s": d}


def jpeg_dataloader_rate(n=256, size=128):
    """A DataLoader that decodes JPEG files every epoch (what the decoded-image cache replaces)."""
    import io
    from PIL import Image
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size * 2, size * 2, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        blobs.append(buf.getvalue())
    import torchvision.transforms as T
    tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    t0 = time.perf_counter()
    for blob in blobs:
        tf(Image.open(io.BytesIO(blob)).convert("RGB"))
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="the four thesis backbones at 224 px in bf16 on CUDA")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    device = engine.resolve_device("auto")
    if args.gpu:
        if device.type != "cuda":
            raise SystemExit("--gpu needs CUDA")
        configs = [(n, 224, 2048, 128, "bf16") for n in ("mobilenetv2", "resnet50v2", "vit_b16", "convnext_base")]
    else:
        configs = [("resnet32", 32, 2048, 128, "fp32"), ("mobilenetv2", 96, 256, 32, "fp32")]
    print(f"device: {torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    rows = [measure(n, px, count, bs, device, prec, args.repeats) for n, px, count, bs, prec in configs]
    print("\n| backbone | px | batch | precision | bare img/s | ours img/s | ours/bare | data path img/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backbone']} | {r['image_size']} | {r['batch']} | {r['precision']} | {r['bare_img_s']:.0f} | "
              f"{r['ours_img_s']:.0f} | {r['ratio']:.3f} | {r['data_path_img_s']:.0f} |")
    jpeg = jpeg_dataloader_rate()
    print(f"\nJPEG decode + torchvision augmentation per image (what the cache avoids): {jpeg:.0f} img/s on one core")
    print(f"data path / model step (slowest backbone): "
          f"{min(r['data_path_img_s'] / r['ours_img_s'] for r in rows):.1f}x  (> 1: the loader is not the bottleneck)")
    print(f"ratio ours/bare: {min(r['ratio'] for r in rows):.3f} (min over backbones; goal >= 0.9)")


if __name__ == "__main__":
    main()
