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

``--features``: feature extraction (``engine.predict``, what every evaluation runs), MobileNetV2
at 224 px from the 256 px decoded-image cache, today's path against the one before the speed work (commit 2359d30)
(``base_predict`` and ``base_eval_transform``, frozen copies: autograd off, the model in whatever
layout the caller gave it, the crop taken on floats),
side by side in one process (alternating, best of ``--repeats``), over batch sizes and thread
counts (1 thread: what each kernel of a 2-worker grid gets on 2 cores).

    python bench/throughput.py                 # CPU: small backbones
    python bench/throughput.py --gpu           # CUDA: the four thesis backbones at 224 px, bf16
    python bench/throughput.py --features      # CPU: feature extraction, base vs now
    python bench/throughput.py --head          # CPU: a linear head on cached features, base vs now

``--head``: mode linear's training as the main job runs it (581 features of 1280 dimensions, 200
classes, 30 epochs of batch 64, SGD with Nesterov momentum and weight decay, one thread as each
kernel of a 2-worker grid has): ``engine.fit`` against its compute floor, the same 300 steps' two
matmuls (forward, weight gradient) alone, side by side (alternating, best of ``--repeats``), with the
steps' parts (forward, loss, backward, SGD update, bookkeeping) timed apart.
Prints a markdown table; the last line is the ratio ours / bare (goal >= 0.9), with ``--features``
the ratio now / base (goal: >= 200 img/s on an idle 2-core machine).
"""
from __future__ import annotations

import argparse
import math
import os
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


@torch.no_grad()
def base_predict(model, x, transform=None, *, batch_size=512, device="cpu", precision="auto", features=False):
    """engine.predict before the speed work (commit 2359d30), kept to measure against."""
    device = torch.device(device)
    model.eval().to(device)
    outs = []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size].to(device, non_blocking=True)
        xb = transform(xb) if transform is not None else xb
        with engine.autocast(device, precision):
            out = model.forward_head(model.forward_features(xb), pre_logits=True) if features else model(xb)
        outs.append(out.float().cpu())
    return torch.cat(outs).numpy()


def base_eval_transform(image_size, mean, std, channels_last=False):
    """The evaluation transform before the speed work (BatchTransform, augment none), kept to measure
    against: uint8 NHWC -> float NCHW / 255, centre crop of the floats, normalise, lay out."""
    mean_t, std_t = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)

    def transform(batch):
        x = batch.permute(0, 3, 1, 2).float().div_(255)
        h, w = x.shape[-2:]
        top, left = (h - image_size) // 2, (w - image_size) // 2
        x = (x[..., top:top + image_size, left:left + image_size] - mean_t) / std_t
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
    return transform


def _feature_model():
    from longtail import config
    weights = "inat_insects" if (config.weights_dir() / models.LOCAL_WEIGHTS["inat_insects"]["file"]).exists() else None
    return models.build_model("mobilenetv2", 200, weights), weights


def feature_extraction(n_images: int, repeats: int, batches=(8, 16, 32), threads=(1, 2)):
    """img/s of the paths before and after the speed work on MobileNetV2 at 224 px; returns the table's rows.

    - base, default layout: ``base_predict`` with the model in the default layout (what every
      caller got before the speed work), batch 32 (the default then);
    - base, channels_last: the same with a channels_last model and batches, as the linear path of
      run.py handed them over before the speed work (and engine.predict's first step of it);
    - now: ``engine.predict`` (inference copy: BatchNorm folded, activations fused, SAME convolutions
      without a padded copy; one-pass transform; channels_last; inference mode; as many batches at
      once as threads, one intra-op thread each) over ``batches``; and with one batch at a time
      (``cpu_workers=1``, all threads on each batch's operators), to show what each part gives.
    Every way is checked against the first one's features (float rounding)."""
    model, weights = _feature_model()
    dc = model.data_config
    x = torch.randint(0, 256, (n_images, 256, 256, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    base_tf = base_eval_transform(224, dc["mean"], dc["std"])
    base_cl_tf = base_eval_transform(224, dc["mean"], dc["std"], channels_last=True)
    now_tf = transforms.BatchTransform(224, dc["mean"], dc["std"], channels_last=True)

    def base_default():  # the model in the default layout, as base predict ran it for any caller
        return base_predict(model.to(memory_format=torch.contiguous_format), x, base_tf, batch_size=32, features=True)

    def base_cl():  # channels_last model and inputs, as the linear path of run.py handed them over
        return base_predict(model.to(memory_format=torch.channels_last), x, base_cl_tf, batch_size=32, features=True)

    ways = {("base, default layout", 32): base_default, ("base, channels_last", 32): base_cl}
    for b in batches:
        ways[("now: engine.predict", b)] = lambda b=b: engine.predict(model.to(memory_format=torch.contiguous_format),
                                                                        x, now_tf, batch_size=b, features=True, cpu_batch=None)
    ways[("now, one batch at a time (cpu_workers=1)", 16)] = lambda: engine.predict(
        model.to(memory_format=torch.contiguous_format), x, now_tf, batch_size=16, features=True, cpu_workers=1,
        cpu_batch=None)
    reference = None
    best = {}
    for _ in range(repeats):  # alternating, so drifting machine load hits every way alike
        for t in threads:
            torch.set_num_threads(t)
            for (name, b), fn in ways.items():
                t0 = time.perf_counter()
                out = fn()
                rate = n_images / (time.perf_counter() - t0)
                reference = out if reference is None else reference
                assert np.allclose(out, reference, rtol=1e-4, atol=1e-4), f"{name}: features differ"
                best[(name, b, t)] = max(best.get((name, b, t), 0.0), rate)
    return [{"way": name, "batch": b, "threads": t, "img_s": r} for (name, b, t), r in best.items()], weights


def feature_stages(batch: int, threads: int, repeats: int):
    """Seconds per image of each stage of one batch, base (channels_last) against now, best of
    ``repeats`` alternating: the transform, the model's forward, the whole batch."""
    from longtail import inference
    torch.set_num_threads(threads)
    model, _ = _feature_model()
    model.eval().to(memory_format=torch.channels_last)
    dc = model.data_config
    fast = inference.for_inference(model)
    xb = torch.randint(0, 256, (batch, 256, 256, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    base_tf = base_eval_transform(224, dc["mean"], dc["std"], channels_last=True)
    now_tf = transforms.BatchTransform(224, dc["mean"], dc["std"], channels_last=True)
    floats = now_tf(xb)
    steps = {("transform", "base"): lambda: base_tf(xb), ("transform", "now"): lambda: now_tf(xb),
             ("model", "base"): lambda: model.forward_head(model.forward_features(floats), pre_logits=True),
             ("model", "now"): lambda: fast.forward_head(fast.forward_features(floats), pre_logits=True)}
    best = {}
    with torch.inference_mode():
        for _ in range(repeats):
            for key, fn in steps.items():
                t0 = time.perf_counter()
                fn()
                best[key] = min(best.get(key, math.inf), (time.perf_counter() - t0) / batch)
    return best


def main_features(args):
    load_before = os.getloadavg()
    rows, weights = feature_extraction(args.images, args.repeats)
    print(f"MobileNetV2 ({weights or 'random weights'}), 224 px from 256 px uint8, {args.images} images, "
          f"best of {args.repeats}; torch {torch.__version__}, {os.cpu_count()} cores; load average "
          f"(1, 5, 15 min) before {', '.join(f'{v:.1f}' for v in load_before)}, "
          f"after {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print("\n| path | batch | threads | img/s |\n|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["threads"], r["way"], r["batch"])):
        print(f"| {r['way']} | {r['batch']} | {r['threads']} | {r['img_s']:.0f} |")
    rate = lambda way, t: max(r["img_s"] for r in rows if r["way"].startswith(way) and r["threads"] == t)  # noqa: E731
    # "now" below: engine.predict as every evaluation runs it (the cpu_workers=1 row is a breakdown)
    for t in sorted({r["threads"] for r in rows}):
        print(f"{t} thread(s): now {rate('now:', t):.0f} img/s (best batch); now / base default layout "
              f"{rate('now:', t) / rate('base, default', t):.2f}, now / base channels_last "
              f"{rate('now:', t) / rate('base, channels', t):.2f}")
    now = max((r for r in rows if r["way"].startswith("now:")), key=lambda r: r["img_s"])
    stages = feature_stages(now["batch"], now["threads"], max(3, args.repeats))
    print(f"\nStages of one batch of {now['batch']} on {now['threads']} thread(s), ms per image "
          f"(best of {max(3, args.repeats)}):")
    print("\n| stage | base (channels_last) | now | base / now |\n|---|---|---|---|")
    for stage in ("transform", "model"):
        b, n = stages[(stage, "base")] * 1e3, stages[(stage, "now")] * 1e3
        print(f"| {stage} | {b:.2f} | {n:.2f} | {b / n:.2f} |")
    print(f"\nfastest now: batch {now['batch']}, {now['threads']} thread(s), {now['img_s']:.0f} img/s "
          f"(goal >= 200 img/s on an idle 2-core machine)")
    base = rate("base, default", now["threads"])
    print(f"feature extraction now / base (default layout, {now['threads']} thread(s)): {now['img_s'] / base:.2f}")


def head_training(x, y, epochs: int, batch: int) -> float:
    """Seconds of ``engine.fit`` for a linear head on features ``x`` (the main job's recipe)."""
    counts = np.bincount(y.numpy(), minlength=int(y.max()) + 1).tolist()
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], len(counts))
    cfg = engine.TrainConfig(epochs=epochs, batch_size=batch, lr=0.1, weight_decay=5e-4, device="cpu")
    t0 = time.perf_counter()
    engine.fit(head, x, y, losses.build_loss("ce", counts), samplers.build_sampler("instance", y.numpy(), 0), cfg,
               log=lambda s: None)
    return time.perf_counter() - t0


def head_step_parts(x, y, epochs: int, batch: int) -> dict:
    """CPU seconds of each part of the same training's steps, run as ``engine.train_one_epoch`` runs
    them (``TrainingLoop.train_step``'s parts apart): the batch gather, forward, loss, backward, SGD
    update, and the bookkeeping (accuracy, loss sum, finite check)."""
    counts = np.bincount(y.numpy(), minlength=int(y.max()) + 1).tolist()
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], len(counts))
    cfg = engine.TrainConfig(epochs=epochs, batch_size=batch, lr=0.1, weight_decay=5e-4, device="cpu")
    loss_fn, sampler = losses.build_loss("ce", counts), samplers.build_sampler("instance", y.numpy(), 0)
    loop = engine.TrainingLoop.start(head, loss_fn, cfg, torch.device("cpu"), len(y), log=lambda s: None)
    parts, clock = dict.fromkeys(("gather", "forward", "loss", "backward", "SGD update", "bookkeeping"), 0.0), time.thread_time
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        order = torch.as_tensor(np.fromiter(iter(sampler), dtype=np.int64))
        loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
        first_bad = torch.full((), -1, dtype=torch.long)
        for b in range(loop.steps_per_epoch):
            t = [clock()]
            idx = order[b * batch:(b + 1) * batch]
            xb, yb = x[idx], y[idx]
            for g in loop.opt.param_groups:
                g["lr"] = cfg.lr * engine.lr_factor(loop.step, loop.steps_per_epoch, cfg) * g["lr_scale"]
            t.append(clock())
            out = head(xb)
            t.append(clock())
            loss = loss_fn(out, yb)
            t.append(clock())
            loop.opt.zero_grad(set_to_none=True)
            loss.backward()
            t.append(clock())
            loop.opt.step()
            loop.step += 1
            t.append(clock())
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), b, first_bad)
            loss_sum += loss.detach() * len(yb)
            correct += (out.argmax(1) == yb).sum()
            t.append(clock())
            for name, t0, t1 in zip(parts, t, t[1:]):
                parts[name] += t1 - t0
    return parts


def head_matmuls(x, classes: int, epochs: int, batch: int) -> float:
    """Seconds of the training's two matmuls alone: each step's forward (``addmm``) and weight gradient."""
    w, b = torch.randn(classes, x.shape[1]) * 0.01, torch.zeros(classes)
    t0 = time.perf_counter()
    for _ in range(epochs):
        for s in range(0, len(x), batch):
            xb = x[s:s + batch]
            z = torch.addmm(b, xb, w.t())
            z.t().mm(xb)
    return time.perf_counter() - t0


def main_head(args, n=581, dim=1280, classes=200, epochs=30, batch=64):
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    # pooled ReLU6 features as MobileNetV2's on EU Moths are (about half zeros, norm ~10), classes
    # separable as theirs are: random labels would make the loss diverge into subnormal softmax
    # outputs, which a CPU computes with many times slower, and measure that instead
    y = torch.randint(0, classes, (n,), generator=gen)
    means = 0.3 * torch.randn(classes, dim, generator=gen)
    x = (means[y] + 0.3 * torch.randn(n, dim, generator=gen)).clamp(0, 6)
    load_before = os.getloadavg()
    times = {"fit": [], "matmuls": []}
    for _ in range(args.repeats):
        times["fit"].append(head_training(x, y, epochs, batch))
        times["matmuls"].append(head_matmuls(x, classes, epochs, batch))
    best = {k: min(v) for k, v in times.items()}
    parts = head_step_parts(x, y, epochs, batch)
    steps = epochs * -(-n // batch)
    flops = 2 * 2 * n * dim * classes * epochs
    print(f"linear head: {n} x {dim} features, {classes} classes, {epochs} epochs of batch {batch} ({steps} steps), "
          f"1 thread, best of {args.repeats}; load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}")
    print("\n| what | s | per step (ms) |\n|---|---|---|")
    for way, label in (("fit", "engine.fit"), ("matmuls", "its two matmuls alone (the floor)")):
        print(f"| {label} | {best[way]:.3f} | {1e3 * best[way] / steps:.2f} |")
    print("\n| part of a step (CPU time) | s | per step (ms) |\n|---|---|---|")
    for name, seconds in parts.items():
        print(f"| {name} | {seconds:.3f} | {1e3 * seconds / steps:.2f} |")
    print(f"\nmatmul rate {flops / best['matmuls'] / 1e9:.0f} GFLOP/s at batch {batch}, 1 thread; "
          f"engine.fit / floor {best['fit'] / best['matmuls']:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="the four thesis backbones at 224 px in bf16 on CUDA")
    ap.add_argument("--features", action="store_true", help="feature extraction, base vs now, on the CPU")
    ap.add_argument("--head", action="store_true", help="a linear head on cached features, base vs now, on the CPU")
    ap.add_argument("--images", type=int, default=128, help="images per measurement (--features)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.features:
        return main_features(args)
    if args.head:
        return main_head(args)
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
