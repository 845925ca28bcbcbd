"""How fast the CIFAR-10-LT protocol's training step runs on this device: eager against CUDA graphs
(``cuda_graph``), one run alone and N runs at once, measured side by side in one invocation.

The runs of a setting start training together (a barrier) and the last of 3 epochs is timed: an
earlier version timed 2 epochs of runs that started one after another, and its 14-at-once figure
(130,621 img/s on an H200) was twice what the full grid then sustained (~65,000 img/s).
Each run is the protocol's LDAM-DRW run (ResNet-32 with the cosine head, LDAM loss, SGD, batch 128,
pad-crop-flip on the device, bf16 on CUDA) for a few epochs on random uint8 images of CIFAR-10-LT's
size (12,406 at IF 100): speed does not depend on the pixels, and the probe needs no data set.
Printed: images/s of each setting's last epoch, its ratio to eager, and whether the graphed run's
per-epoch losses match the eager run's (same seed, same batches; within 2 %)::

    python bench/gpu_probe.py                                   # a GPU: 3 epochs, 14 runs at once
    python bench/gpu_probe.py --images 512 --epochs 1 --parallel 2 --device cpu   # a CPU smoke test

On a CPU ``cuda_graph`` is ignored (both columns are the eager loop).  ``--json`` writes the figures.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time


def one_run(args: tuple) -> dict:
    graph, images, epochs, device, threads, barrier = args
    import numpy as np
    import torch

    from longtail import engine, losses, samplers, transforms
    from longtail.models import build_model
    if threads:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (images, 32, 32, 3), dtype=torch.uint8, generator=g)
    # CIFAR-10-LT's exponential profile (IF 100 from 5,000), scaled to ``images``
    counts = np.round(5000 * 0.01 ** (np.arange(10) / 9) * images / 12406).astype(int).clip(1)
    y = torch.from_numpy(np.repeat(np.arange(10), counts)[:images])
    if len(y) < images:
        y = torch.cat([y, torch.zeros(images - len(y), dtype=torch.long)])
    torch.manual_seed(1)
    model = build_model("resnet32", 10, pretrained=None, cosine_head=True)
    loss = losses.build_loss("ldam", np.bincount(y.numpy(), minlength=10), max_m=0.5, s=30)
    cfg = engine.TrainConfig(epochs=epochs, batch_size=128, lr=0.1, momentum=0.9, nesterov=False,
                             weight_decay=2e-4, schedule="step", warmup_epochs=0, lr_steps=[160, 180],
                             device=device, cuda_graph=graph, seed=0)
    tf = transforms.BatchTransform(32, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), augment="cifar", seed=0)
    barrier.wait()  # every run starts training together: no run's epoch is timed while others still import
    t0 = time.perf_counter()
    history, _, _ = engine.fit(model, x, y, loss, samplers.build_sampler("instance", y.numpy(), 0), cfg,
                               transform=tf, log=lambda s: None)
    return {"graph": graph, "cuda_graph_used": bool(history[-1]["cuda_graph"]), "seconds": time.perf_counter() - t0,
            "last_epoch_images_per_s": history[-1]["images_per_s"], "losses": [h["train_loss"] for h in history]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=12406)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=14, help="runs at once in the second setting (default 14)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import os

    import torch
    cpus = os.cpu_count() or 1
    name = torch.cuda.get_device_name(0) if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    rows, out = [], {"device": name, "images": args.images, "epochs": args.epochs, "parallel": args.parallel}
    ctx = mp.get_context("spawn")
    for parallel in (1, args.parallel):
        for graph in (False, True):
            threads = max(1, cpus // parallel)
            t0 = time.perf_counter()
            with ctx.Manager() as manager, ctx.Pool(parallel) as pool:
                barrier = manager.Barrier(parallel)
                runs = pool.map(one_run, [(graph, args.images, args.epochs, args.device, threads, barrier)] * parallel)
            rows.append({"parallel": parallel, "graph": graph, "wall_s": time.perf_counter() - t0,
                         "aggregate_images_per_s": sum(r["last_epoch_images_per_s"] for r in runs),
                         "cuda_graph_used": all(r["cuda_graph_used"] for r in runs), "losses": runs[0]["losses"]})
            print(f"{parallel:>2} at once, cuda_graph {str(graph):<5}: {rows[-1]['aggregate_images_per_s']:8.0f} img/s "
                  f"(last epoch, all runs together; wall {rows[-1]['wall_s']:.0f} s; graphs used: "
                  f"{rows[-1]['cuda_graph_used']})", flush=True)
    eager = {r["parallel"]: r for r in rows if not r["graph"]}
    print(f"\n## CUDA graphs vs eager, CIFAR-10-LT step (ResNet-32, batch 128), {name}\n")
    print("| runs at once | eager img/s | cuda_graph img/s | ratio | graph losses = eager (2 %) |")
    print("|---|---|---|---|---|")
    for r in rows:
        if r["graph"]:
            e = eager[r["parallel"]]
            agree = all(abs(a - b) <= 0.02 * abs(a) for a, b in zip(e["losses"], r["losses"]))
            r["agrees_with_eager"] = agree
            print(f"| {r['parallel']} | {e['aggregate_images_per_s']:.0f} | {r['aggregate_images_per_s']:.0f} | "
                  f"{r['aggregate_images_per_s'] / e['aggregate_images_per_s']:.2f} | {agree} |")
    out["rows"] = rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
