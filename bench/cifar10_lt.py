"""CIFAR-10-LT against the literature: the protocol of ``params/cifar10_lt.yaml`` (ResNet-32,
Cao et al.'s LDAM-DRW recipe) beside the published top-1, an ablation of what separates our
training from the reference code, and the data-cost control (``params/cifar10_control.yaml``:
ResNet-32 on the balanced full CIFAR-10 from the same JPEG copy, He et al. 2016's protocol, beside
their published 92.49 %), whose rows join the ablation table.

Runs go to worker processes that share one device (``--parallel P``): a ResNet-32 run leaves
most of a GPU idle, so several at once finish the grid sooner.  On a GPU the decoded data set lives
on the GPU as uint8, the augmentation runs there, bf16 autocast and channels_last are on::

    python bench/cifar10_lt.py --runs ablation --max-runs 8 --parallel 8 --deadline 520   # one H200 lease
    python bench/cifar10_lt.py --losses ce,ldam --imbalance 100                    # a subset of the grid
    python bench/cifar10_lt.py --runs control --parallel 2 --cuda-graph             # the control, 2 seeds
    python bench/cifar10_lt.py --runs ablation,control --table-only                 # the table from the runs on disk

On a CPU, a shortened schedule, labelled as such in the output: ``--epochs E`` scales the whole
schedule (warm-up, lr steps, DRW epoch) by E/200::

    python bench/cifar10_lt.py --epochs 12 --losses ce,balanced_softmax,ldam --imbalance 100

Every run records its test top-1 after each epoch (``monitor_test``), so the tables give both the
last epoch (our number: no selection on the test set) and the best test epoch (what Cao et al.'s
script prints), labelled; a row without a result says "not run yet".  Prints markdown tables (grid
vs published; the ablation, each row's difference to the reference row) and writes them to
``--results`` (default ``bench/results/cifar10_lt.md``).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: our training before the alignment with Cao et al. (our optimiser conventions, our subset draw): each ablation
#: row below switches one thing back from the reference protocol of params/cifar10_lt.yaml
OURS_BEFORE = {"nesterov": True, "decay_norm_and_bias": False, "warmup_unit": "step", "subset_method": "permutation"}

#: (row name, loss, imbalance factor, overrides of the protocol); order = priority on a deadline
#: (measured on one H200: 8 runs at once take ~450 s, so ``--max-runs 8`` fits one 10-minute lease)
ABLATION = [
    ("reference protocol", "ldam", 100, {}),
    ("ours before the alignment with Cao et al. (all four deviations)", "ldam", 100, OURS_BEFORE),
    ("reference + one more JPEG q75 pass (data cost)", "ldam", 100, {"dataset_params": {"jpeg_quality": 75}}),
    ("CE: reference protocol", "ce", 100, {}),
    ("CE: ours before the alignment", "ce", 100, OURS_BEFORE),
    ("reference, but our subset draw", "ldam", 100, {"subset_method": "permutation"}),
    ("reference, but Nesterov momentum", "ldam", 100, {"nesterov": True}),
    ("reference, but no decay on norm/bias", "ldam", 100, {"decay_norm_and_bias": False}),
    ("reference, but warm-up per step", "ldam", 100, {"warmup_unit": "step"}),
    ("reference protocol, seed 1", "ldam", 100, {"seed": 1}),
    ("ours before the alignment, seed 1", "ldam", 100, {**OURS_BEFORE, "seed": 1}),
    ("reference protocol in fp32 (no bf16 autocast)", "ldam", 100, {"precision": "fp32"}),
]


#: the control's row in the ablation table, and the number it is read against (one home for both)
CONTROL_ROW = "control: balanced CIFAR-10, He et al. protocol"
CONTROL_PUBLISHED_TOP1 = 92.49  # 100 - 7.51 % top-1 error of ResNet-32
CONTROL_SOURCE = ("K. He, X. Zhang, S. Ren, J. Sun. Deep Residual Learning for Image Recognition. CVPR 2016 "
                  "(Table 6: ResNet-32, 7.51 % top-1 error on CIFAR-10, 64k iterations).")


def scaled(run: dict, epochs: int) -> dict:
    """The protocol's schedule compressed from its epochs to ``epochs``."""
    f = epochs / run["epochs"]
    run = dict(run, epochs=epochs, warmup_epochs=max(1, round(run["warmup_epochs"] * f)) if run["warmup_epochs"] else 0,
               lr_steps=[max(1, round(s * f)) for s in run["lr_steps"]])
    if run.get("drw_epoch") is not None:
        run["drw_epoch"] = max(1, round(run["drw_epoch"] * f))
    return run


#: the kinds of rows ``--runs`` chooses from
RUN_KINDS = ("ablation", "control", "grid")


def plan(args) -> list[dict]:
    """The runs, in priority order: each a dict of run parameters plus ``_kind`` and ``_name``."""
    from longtail import grid as grid_mod
    from longtail.run import run_id

    grid = grid_mod.load_grid(args.params, output_root=args.output_root, check_backbone=False)
    root = Path(grid.output_root)
    todo, seen = [], {}

    def add(kind, name, params, monitor=True):
        params = scaled(params, args.epochs) if args.epochs else params
        params = {**params, "n_max": args.n_max} if args.n_max else params
        if args.n_max and params["train_set"] == "balanced":  # the control: as many images as that long-tailed set
            params["balanced_size"] = "matched"
        params = {**params, "monitor_test": monitor, "eval_batch_size": 4096, "save_checkpoints": False,
                  "cuda_graph": args.cuda_graph}
        params["output_dir"] = str(root / run_id({**params, "output_dir": None}))
        if params["output_dir"] not in seen:
            seen[params["output_dir"]] = len(todo)
            todo.append({**params, "_kind": kind, "_name": name, "_in_grid": kind == "grid"})
        elif kind == "grid":  # an ablation row that is also a grid run (the reference rows)
            todo[seen[params["output_dir"]]]["_in_grid"] = True

    by_key = {(r["loss"], r["imbalance_factor"]): r for r in grid.runs}
    kinds = args.runs.split(",")
    if "ablation" in kinds:
        for i, (name, loss, imbalance, overrides) in enumerate(ABLATION):
            base = by_key[(loss, float(imbalance))]
            # the test set after every epoch (+25 % of a run's time on a GPU) only for the row that is
            # compared with the published best-epoch figure: LDAM-DRW's reference protocol
            add("ablation", name, {**base, **overrides}, monitor=i == 0)
    if "control" in kinds:
        control = grid_mod.load_grid(args.control_params, output_root=root, check_backbone=False)
        for r in control.runs:
            add("control", f"{CONTROL_ROW}, seed {r['seed']}", r, monitor=False)
    if "grid" in kinds:
        only = {}
        if args.losses:
            only["loss"] = args.losses.split(",")
        if args.imbalance:
            only["imbalance_factor"] = [float(x) for x in args.imbalance.split(",")]
        for r in grid.select(only).runs:
            add("grid", f"{r['loss']} IF {r['imbalance_factor']:.0f}", r, monitor=not args.no_monitor)
    return todo[:args.max_runs] if args.max_runs else todo


def _worker_init(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


def progress_line(name: str, seconds: float, epoch_line: str) -> str:
    """A run's progress in the log (``bench/gpu_projection.py`` reads it back): name, seconds, epoch line."""
    return f"  {name[:40]:<40} {seconds:5.0f} s  {epoch_line}"


def done_line(at_s: float, name: str, top1_last: float, best: str, seconds: float) -> str:
    """A finished run in the log (``bench/gpu_projection.py`` reads it back)."""
    return f"[{at_s:6.0f} s] {name:<50} top-1 last {top1_last:.2f}, best test epoch {best} ({seconds:.0f} s)"


def _run_one(params: dict) -> dict:
    from longtail.run import run_training
    clean = {k: v for k, v in params.items() if not k.startswith("_")}
    t0 = time.perf_counter()

    def progress(line: str) -> None:  # every 25th epoch, so a run cut short still says how far it got
        if line.startswith("epoch") and int(line.split()[1].split("/")[0]) % 25 == 0:
            print(progress_line(params["_name"], time.perf_counter() - t0, line), flush=True)

    try:
        result = run_training(clean, log=progress)
    except Exception as exc:  # one failed run must not stop the others
        return {**params, "error": f"{type(exc).__name__}: {exc}"}
    return {**params, "metrics": result.metrics, "seconds": time.perf_counter() - t0}


def _load_done(params: dict) -> dict | None:
    from longtail import rundir
    f = Path(params["output_dir"]) / rundir.RESULT_FILE
    return {**params, "metrics": json.loads(f.read_text()), "seconds": None} if f.exists() else None


def warm_caches(todo: list[dict]) -> None:
    """Extract the archive and decode the images once, before the workers start (they share the cache)."""
    from longtail import data
    seen = set()
    for p in todo:
        key = (p["dataset"], p.get("data_root"))
        if key in seen:
            continue
        seen.add(key)
        ds = data.load_dataset(p["dataset"], p.get("data_root"))
        for split in (ds.train, ds.test):
            data.split_images(split, p["image_size"], progress=False)


def execute(todo: list[dict], parallel: int, deadline_s: float | None, log=print) -> list[dict]:
    """Run ``todo`` on ``parallel`` worker processes; none starts after the deadline, and runs still
    going at ``deadline_s`` are stopped (reported as not finished)."""
    started = time.perf_counter()
    results, pending = [], []
    for p in todo:
        done = _load_done(p)
        (results if done else pending).append(done or p)
    if not pending:
        return results
    threads = max(1, (os.cpu_count() or 1) // max(1, parallel))
    ctx = mp.get_context("spawn")
    with ctx.Pool(min(parallel, len(pending)), initializer=_worker_init, initargs=(threads,), maxtasksperchild=1) as pool:
        handles = [(p, pool.apply_async(_run_one, (p,))) for p in pending]
        for p, h in handles:
            left = None if deadline_s is None else max(0.0, deadline_s - (time.perf_counter() - started))
            try:
                r = h.get(timeout=left)
            except mp.TimeoutError:
                r = {**p, "error": f"not finished within the deadline ({deadline_s:.0f} s)"}
            results.append(r)
            m = r.get("metrics")
            at = time.perf_counter() - started
            log(done_line(at, r["_name"], 100 * m["balanced/acc1"], _pct(m.get("monitor/best_test_acc1")), r["seconds"])
                if m else f"[{at:6.0f} s] {r['_name']:<50} {r['error']}")
        pool.terminate()
    return results


def _pct(x) -> str:
    return "" if x is None or x != x else f"{100 * x:.2f}"


def tables(results: list[dict], label: str) -> str:
    import pandas as pd
    from longtail.tables import PUBLISHED, PUBLISHED_REFERENCES

    out = [f"Schedule: {label}. Data: CIFAR-10 from the local JPEG (q75, 4:2:0) copy, not the original arrays.",
           "`last` = the last epoch (our reported number, no selection on the test set); "
           "`best test epoch` = the best of the per-epoch test evaluations (what Cao et al.'s script prints; "
           "selection on the test set, shown only to compare like with like).", ""]
    rows = [r for r in results if r["_kind"] in ("ablation", "control")]
    if rows:
        # the reference row of each loss: its first row in ABLATION (no overrides)
        refs = {loss: name for name, loss, _, over in reversed(ABLATION) if not over}
        ref_last = {r["loss"]: r["metrics"]["balanced/acc1"] for r in rows
                    if "metrics" in r and refs.get(r["loss"]) == r["_name"]}
        out += ["### Ablation: LDAM-DRW (and CE) on CIFAR-10-LT, IF 100; the control on balanced CIFAR-10", "",
                "| run | loss | top-1 last (%) | best test epoch (%) | last − reference of its loss (points) "
                "| published top-1 (%) | seconds |",
                "|---|---|---|---|---|---|---|"]
        for r in rows:
            m = r.get("metrics")
            published = _published_top1(r)
            if not m:
                why = f"not run: {r['error']}" if r.get("error") else "not run yet"
                out.append(f"| {r['_name']} | {r['loss']} | {why} | | | {published} | |")
                continue
            diff = f"{100 * (m['balanced/acc1'] - ref_last[r['loss']]):+.2f}" \
                if r["_kind"] == "ablation" and r["loss"] in ref_last else ""
            secs = f"{r['seconds']:.0f}" if r.get("seconds") else ""
            out.append(f"| {r['_name']} | {r['loss']} | {_pct(m['balanced/acc1'])} | {_pct(m.get('monitor/best_test_acc1'))} "
                       f"| {diff} | {published} | {secs} |")
        out += ["", control_summary(rows), ""] if any(r["_kind"] == "control" for r in rows) else [""]
    grid_rows = [r for r in results if r["_in_grid"] and "metrics" in r]
    if grid_rows:
        ours = pd.DataFrame([r["metrics"] for r in grid_rows])
        ours["drw"] = ours["drw_epoch"].notna()
        out += ["### The grid against the published table", "",
                "| loss | IF | top-1 last (%) | best test epoch (%) | published (%) | last − published |", "|---|---|---|---|---|---|"]
        for _, m in ours.sort_values(["imbalance_factor", "loss"], ascending=[False, True]).iterrows():
            pub = PUBLISHED[(PUBLISHED["loss"] == m["loss"]) & (PUBLISHED["imbalance_factor"] == m["imbalance_factor"])
                            & (PUBLISHED["drw"] == m["drw"])]
            top = float(pub["top1"].iloc[0]) if len(pub) else None
            published = "" if top is None else f"{top:.2f}"
            gap = "" if top is None else f"{100 * m['balanced/acc1'] - top:+.2f}"
            out.append(f"| {m['loss']} | {m['imbalance_factor']:.0f} | {_pct(m['balanced/acc1'])} | "
                       f"{_pct(m.get('monitor/best_test_acc1'))} | {published} | {gap} |")
        out += ["", "Published: " + " ".join(PUBLISHED_REFERENCES.values()), ""]
    missing = [r for r in results if "metrics" not in r]
    if missing:
        out.append(f"{len(missing)} run(s) without a result: "
                   + "; ".join(f"{r['_name']} ({r.get('error') or 'not run yet'})" for r in missing))
    return "\n".join(out)


def _published_top1(row: dict) -> str:
    """The published top-1 (%) a row of the ablation table is read against: He et al.'s for the
    control, Cao et al.'s for a reference-protocol row at seed 0 (no overrides), else none."""
    if row["_kind"] == "control":
        return f"{CONTROL_PUBLISHED_TOP1:.2f}"
    from longtail.tables import PUBLISHED
    reference = {name for name, _, _, over in ABLATION if not over}
    if row["_name"] not in reference:
        return ""
    pub = PUBLISHED[(PUBLISHED["loss"] == row["loss"]) & (PUBLISHED["imbalance_factor"] == row["imbalance_factor"])
                    & (PUBLISHED["drw"] == (row.get("drw_epoch") is not None))]
    return f"{float(pub['top1'].iloc[0]):.2f}" if len(pub) else ""


def control_summary(rows: list[dict]) -> str:
    """One line: the control's mean over its finished seeds against He et al.'s number, or that it has not run."""
    control = [r for r in rows if r["_kind"] == "control"]
    done = [100 * r["metrics"]["balanced/acc1"] for r in control if r.get("metrics")]
    if not done:
        return (f"Control ({CONTROL_ROW.removeprefix('control: ')}): not run yet; published {CONTROL_PUBLISHED_TOP1:.2f} % ({CONTROL_SOURCE})")
    mean = sum(done) / len(done)
    return (f"Control ({CONTROL_ROW.removeprefix('control: ')}): {mean:.2f} % top-1, mean of {len(done)} of {len(control)} seeds, against the "
            f"published {CONTROL_PUBLISHED_TOP1:.2f} % ({mean - CONTROL_PUBLISHED_TOP1:+.2f} points; {CONTROL_SOURCE})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(ROOT / "params" / "cifar10_lt.yaml"))
    ap.add_argument("--runs", default="grid", help="comma-separated: ablation, control, grid (default grid)")
    ap.add_argument("--control-params", default=str(ROOT / "params" / "cifar10_control.yaml"),
                    help="the control's parameter file (default: %(default)s)")
    ap.add_argument("--table-only", action="store_true",
                    help="run nothing: the tables from the runs already on disk (the others: not run yet)")
    ap.add_argument("--epochs", type=int, default=None, help="shortened schedule (default: the protocol's)")
    ap.add_argument("--losses", default=None, help="comma-separated subset of the grid's losses")
    ap.add_argument("--imbalance", default=None, help="comma-separated subset of the imbalance factors")
    ap.add_argument("--parallel", type=int, default=1, help="runs at once on the one device (default 1)")
    ap.add_argument("--max-runs", type=int, default=None, help="only the first N runs of the plan (priority order)")
    ap.add_argument("--n-max", type=int, default=None,
                    help="images of the largest class (default: the protocol's 5,000); smaller for smoke tests, labelled")
    ap.add_argument("--no-monitor", action="store_true",
                    help="grid runs skip the test evaluation after every epoch (no best-test-epoch column; "
                         "about a fifth less GPU time)")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="replay each step's forward+backward as CUDA graphs (cuda_graph; CUDA only)")
    ap.add_argument("--deadline", type=float, default=None, help="seconds after which no run continues")
    ap.add_argument("--output-root", default=None)
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "cifar10_lt.md"))
    args = ap.parse_args()
    bad = set(args.runs.split(",")) - set(RUN_KINDS)
    if bad:
        sys.exit(f"--runs {args.runs!r}: unknown {sorted(bad)}; choose from {', '.join(RUN_KINDS)}")
    suffix = f"_{args.epochs}ep" if args.epochs else ""
    args.output_root = args.output_root or str(ROOT / "runs" / f"cifar10_lt{suffix}")

    import torch
    todo = plan(args)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    epochs = sorted({p["epochs"] for p in todo})
    label = f"full protocol ({' and '.join(map(str, epochs))} epochs)" if not args.epochs else \
        f"SHORTENED schedule: {args.epochs} epochs instead of the protocol's (200; the control's 164), scaled warm-up/steps/DRW"
    if args.n_max:
        label += f"; SMALLER training set: n_max {args.n_max} instead of 5,000"
    print(f"device: {device}; {label}; {len(todo)} runs, {args.parallel} at once", flush=True)
    t0 = time.perf_counter()
    if args.table_only:
        results = [_load_done(p) or p for p in todo]
    else:
        warm_caches(todo)
        print(f"caches ready ({time.perf_counter() - t0:.0f} s)", flush=True)
        left = None if args.deadline is None else args.deadline - (time.perf_counter() - t0)
        results = execute(todo, args.parallel, left)
    text = f"## CIFAR-10-LT on {device}\n\n" + tables(results, label) + \
        f"\n\nWall time {time.perf_counter() - t0:.0f} s for {len(todo)} runs, {args.parallel} at once on one device.\n"
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
