"""A short GPU probe of the CIFAR-10-LT protocol's speed: one run alone, then N at once, a few
epochs each, printing every epoch's images/s (the full runs' speed is these times 200 epochs)."""
import multiprocessing as mp
import sys
import time

sys.path.insert(0, "bench")


def one(args):
    tag, epochs = args
    import cifar10_lt as b
    from longtail import grid as g
    from longtail.run import run_training
    run = next(r for r in g.load_grid("params/cifar10_lt.yaml", output_root=f"/tmp/probe/{tag}", check_backbone=False).runs
               if r["loss"] == "ldam" and r["imbalance_factor"] == 100)
    run = {**b.scaled(run, epochs), "output_dir": f"/tmp/probe/{tag}", "eval_batch_size": 4096, "save_checkpoints": False}
    t0 = time.perf_counter()
    run_training(run, log=lambda s: print(f"{tag} {time.perf_counter() - t0:6.1f} s {s}", flush=True))
    return time.perf_counter() - t0


if __name__ == "__main__":
    n = int(sys.argv[1])
    import torch
    torch.set_num_threads(1)
    print("alone:", round(one(("alone", 3)), 1), "s for 3 epochs", flush=True)
    with mp.get_context("spawn").Pool(n) as pool:
        t0 = time.perf_counter()
        pool.map(one, [(f"p{i}", 2) for i in range(n)])
        print(f"{n} at once: {time.perf_counter() - t0:.1f} s for 2 epochs each", flush=True)
