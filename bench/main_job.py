"""The CPU main job against its compute floor: wall time stage by stage, from cold caches.

**Wall**: what ``make`` runs, from an empty cache and runs folder (temporary; the project's own
caches are left alone), each stage a subprocess (its peak resident memory read with ``os.wait4``):

1. the grid: ``python -m longtail.grid params/default.yaml --jobs 2`` (42 papermill runs; the
   first runs decode EU Moths' 2,205 JPEGs and extract the MobileNetV2 features);
2. the report: ``python -m longtail.report params/default.yaml``.

**Floor**: the compute the job cannot do without, each part measured alone on this machine after it:

- decoding EU Moths' JPEGs, in one process from another cold cache (the library's decoder);
- feature extraction at the **bare** model's speed: the backbone alone (random weights, eval mode,
  channels_last, inference mode, fp32 at its input size), one batch of 32 on every core or one batch
  of 8 a core (as many processes as cores, each one thread), the faster; the images / that rate, or
  / the library's own rate alone (its inference copy folds BatchNorm and fuses ReLU) where faster;
- the training FLOPs at the machine's measured matmul rate: a mode linear run's head does
  2 x 2 x N x D x C multiply-add FLOPs an epoch (forward and weight gradient; N fitting features of
  D dimensions, C classes), summed over the runs, at the rate of the training's own matmuls
  (batch x D by D x C, forward and weight gradient) on one thread, times the cores;
- figure rendering: each report figure's fastest render (``provenance.json`` ``figure_render_s``,
  timed in the notebooks' kernels; building the figure's artists is not counted).

It prints wall and floor per stage (the grid: decoding, extraction, training; the report: figures)
and wall / floor.  Also, per run, the papermill overhead: the notebook's wall time minus the time
inside ``run_training`` (kernel start, imports, notebook plumbing), and the time inside
``run_training`` against that run's own training floor.

    python bench/main_job.py [--params params/default.yaml] [--jobs 2]
Prints markdown tables; the last line is the ratio wall / floor.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from longtail import rundir
from longtail.gridspec import TABLE_FILE

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# decoding, then feature extraction, as the runs of params/default.yaml do them (the same cache
# keys), timed apart; one epoch of a head is trained (epochs must be >= 1) and not counted
DECODE_AND_EXTRACT = """
import json, sys, time
from longtail import data
from longtail.run import run_training
t0 = time.perf_counter()
ds = data.load_dataset("eu_moths")
for split in (ds.train, ds.test):
    data.split_images(split, 256, progress=False)
t1 = time.perf_counter()
r = run_training(dict(dataset="eu_moths", backbone="mobilenetv2", pretrained="inat_insects", mode="linear",
                      epochs=1, save_checkpoints=False, output_dir=sys.argv[1]), log=lambda s: None)
t2 = time.perf_counter()
print(json.dumps({"decode_s": t1 - t0, "extract_s": t2 - t1 - r.history["epoch_s"].sum(),
                  "images": len(ds.train) + len(ds.test)}))
"""


# the bare backbone's forward on random images: img/s at one batch size, with the threads of OMP_NUM_THREADS
BARE_MODEL = """
import json, sys, time, torch
from longtail import models
name, batch = sys.argv[1], int(sys.argv[2])
model = models.build_model(name, 1, None).eval().to(memory_format=torch.channels_last)
size = model.data_config["input_size"][-1]
x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
with torch.inference_mode():
    model.forward_head(model.forward_features(x), pre_logits=True)  # warm-up: oneDNN picks its kernels
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 3.0:
        model.forward_head(model.forward_features(x), pre_logits=True)
        done += batch
print(json.dumps({"img_s": done / (time.perf_counter() - t0), "input_size": size}))
"""

# a linear head's two matmuls a step (forward, weight gradient) at the runs' shapes, on one thread
MATMUL = """
import json, sys, time, torch
torch.set_num_threads(1)
batch, dim, classes = (int(a) for a in sys.argv[1:4])
x, w, b = torch.rand(batch, dim), torch.randn(classes, dim) * 0.01, torch.zeros(classes)
steps, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < 2.0:
    z = torch.addmm(b, x, w.t())
    z.t().mm(x)
    steps += 1
print(json.dumps({"flop_s": steps * 2 * 2 * batch * dim * classes / (time.perf_counter() - t0)}))
"""


def training_flops(params: dict, metrics: dict, num_features: int) -> float | None:
    """FLOPs of a run's training: for mode linear, forward and weight gradient of its head,
    2 x 2 x N x D x C an epoch (multiply-adds count 2; no input gradient, the features are fixed);
    None for other modes (not counted)."""
    if params.get("mode") != "linear":
        return None
    return 2.0 * 2.0 * metrics["train_images"] * num_features * metrics["num_classes"] * params["epochs"]


def floor_rows(wall: dict, floor: dict) -> list[tuple[str, float, float, float]]:
    """``(stage, wall s, floor s, wall / floor)`` for each stage and the total; ``floor`` maps each
    stage to its parts' seconds."""
    rows = [(name, wall[name], sum(floor[name].values()), wall[name] / max(sum(floor[name].values()), 1e-9))
            for name in wall]
    total_wall, total_floor = sum(r[1] for r in rows), sum(r[2] for r in rows)
    return rows + [("main job", total_wall, total_floor, total_wall / max(total_floor, 1e-9))]


def _json_stage(name: str, cmd: list[str], env: dict) -> dict:
    return json.loads(stage(name, cmd, env)["output"].strip().splitlines()[-1])


def stage(name: str, cmd: list[str], env: dict) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        print(output[-3000:])
        raise SystemExit(f"stage {name!r} failed")
    # ru_maxrss (KiB) covers the process and its waited-for descendants (papermill kernels, workers)
    return {"stage": name, "wall_s": wall, "peak_mib": usage.ru_maxrss / 1024, "output": output}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params/default.yaml")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--goal-s", type=float, default=90.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lt-bench-"))
    env = {**os.environ, "LT_CACHE_DIR": str(tmp / "cache"), "LT_RUNS_DIR": str(tmp / "runs"), "PYTHONUNBUFFERED": "1"}
    load_before = os.getloadavg()[0]
    rows = [
        stage(f"grid ({args.params}, --jobs {args.jobs}; cold caches)",
              [PY, "-m", "longtail.grid", args.params, "--jobs", str(args.jobs)], env),
        stage("report", [PY, "-m", "longtail.report", args.params, "--out", str(tmp / "report")], env),
    ]
    wall = sum(r["wall_s"] for r in rows)
    cores = os.cpu_count() or 1
    threads = sorted({1, cores})
    alone = {}
    for n in threads:
        floor_env = {**env, "LT_CACHE_DIR": str(tmp / f"cache-floor-{n}"), "OMP_NUM_THREADS": str(n),
                     "MKL_NUM_THREADS": str(n)}
        r = stage(f"decode + extraction alone, OMP_NUM_THREADS {n}", [PY, "-c", DECODE_AND_EXTRACT, str(tmp / f"floor-run-{n}")],
                  floor_env)
        alone[n] = json.loads(r["output"].strip().splitlines()[-1])
    fastest = min(threads, key=lambda n: alone[n]["extract_s"])

    runs = [json.loads(p.read_text()) for p in (tmp / "runs").rglob(rundir.RESULT_FILE)]
    run_params = {m["run_dir"]: json.loads((Path(m["run_dir"]) / rundir.PARAMS_FILE).read_text()) for m in runs}
    base = next(iter(run_params.values()))
    bare = {}
    for n, batch in ((cores, 32), (1, 8)):  # one batch on every core; one batch a core, as many at once as cores
        one = {**env, "OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n)}
        rate = _json_stage(f"bare {base['backbone']}, batch {batch}, {n} thread(s)",
                           [PY, "-c", BARE_MODEL, base["backbone"], str(batch)], one)
        bare[(n, batch)] = rate["img_s"] * (cores if n == 1 else 1)
    bare_rate = max(bare.values())
    from longtail import models
    flops, uncounted, dims = 0.0, 0, {}
    for m in runs:
        p = run_params[m["run_dir"]]
        key = (p["backbone"], p["pretrained"])
        if key not in dims:
            dims[key] = models.backbone_card(p["backbone"], p["pretrained"], p["weights_dir"])["num_features"]
        f = training_flops(p, m, dims[key])
        flops, uncounted = (flops + f, uncounted) if f is not None else (flops, uncounted + 1)
    matmul = _json_stage("matmul rate", [PY, "-c", MATMUL, str(base["batch_size"]), str(next(iter(dims.values()))),
                                         str(runs[0]["num_classes"])], env)["flop_s"] if runs else float("nan")
    provenance = json.loads((tmp / "report" / "provenance.json").read_text())
    renders = provenance.get("figure_render_s", {})
    images = alone[fastest]["images"]
    # the library's inference copy (BatchNorm folded, ReLU fused) may outrun the bare model: the floor
    # takes the faster, so that it stays a lower bound
    library_rate = images / alone[fastest]["extract_s"]
    extract_rate, by = max((bare_rate, "the bare model's"), (library_rate, "the library's"))
    floor = {
        "grid": {"decoding EU Moths (alone)": min(a["decode_s"] for a in alone.values()),
                 f"feature extraction at {by} {extract_rate:.0f} img/s (the faster)": images / extract_rate,
                 f"training: {flops / 1e9:.1f} GFLOP at {matmul / 1e9:.0f} GFLOP/s x {cores} cores": flops / (matmul * cores)},
        "report": {f"rendering its {len(renders)} figures once each": sum(min(r) for r in renders.values())},
    }
    stages = {"grid": rows[0]["wall_s"], "report": rows[1]["wall_s"]}

    print(f"machine: {cores} cores, load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after "
          f"(1 min); cache and runs in {tmp}")
    print("\n| wall: stage | s | peak MiB |\n|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['wall_s']:.1f} | {r['peak_mib']:.0f} |")
    print(f"| **wall** | **{wall:.1f}** | |")
    print("\n| floor: compute alone | s |\n|---|---|")
    for parts in floor.values():
        for name, s in parts.items():
            print(f"| {name} | {s:.2f} |")
    print("\n| stage | wall s | floor s | wall / floor |\n|---|---|---|---|")
    for name, w, f, ratio in floor_rows(stages, floor):
        print(f"| {name} | {w:.1f} | {f:.1f} | {ratio:.1f} |")
    if uncounted:
        print(f"\n{uncounted} runs not in mode linear: their training is not counted in the floor")
    print("\nfeature extraction: " + ", ".join(f"the library alone, OMP_NUM_THREADS {n}: {a['extract_s']:.1f} s "
                                              f"({a['images'] / a['extract_s']:.0f} img/s)" for n, a in alone.items())
          + "; the bare model: " + ", ".join(f"batch {b} x {n} thread(s){f' x {cores} processes' if n == 1 else ''}: "
                                            f"{r:.0f} img/s" for (n, b), r in bare.items()))
    inside = sorted(m["wall_s"] for m in runs)
    walls = _notebook_walls(tmp / "runs")
    overheads = sorted(walls[Path(m["run_dir"]).name] - m["wall_s"] for m in runs if Path(m["run_dir"]).name in walls)
    if inside:
        per_run = sorted(training_flops(run_params[m["run_dir"]], m, next(iter(dims.values()))) or 0 for m in runs)
        print(f"\nruns: {len(inside)}; time inside run_training: median {statistics.median(inside):.2f} s, "
              f"max {inside[-1]:.2f} s (the first runs extract the features); a run's training floor "
              f"(median, one thread): {statistics.median(per_run) / matmul:.3f} s")
    if overheads:
        print(f"papermill overhead per run (notebook wall - run_training): median {statistics.median(overheads):.2f} s, "
              f"max {overheads[-1]:.2f} s (goal <= 1.5 s on an idle machine)")
    phases = _grid_phases(runs, rows[0]["wall_s"])
    if phases:
        print(phases)
    timing = [line for line in rows[1]["output"].splitlines() if line.startswith("report: ") and " s; " in line]
    if timing:  # the report's own split: its two notebooks (at once) and the run pages
        print(timing[-1].replace("report: ", "report stage: ", 1))
    floor_s = sum(sum(parts.values()) for parts in floor.values())
    print(f"main job wall {wall:.0f} s (goal <= {args.goal_s:.0f} s on an idle 2-core machine); "
          f"wall / floor = {wall:.0f} s / {floor_s:.0f} s = {wall / floor_s:.2f}")


def _grid_phases(runs: list[dict], grid_wall: float) -> str | None:
    """The grid's wall split at the end of the last run that extracted features (inside
    run_training more than 5x the median): start-up and extraction, then the other runs."""
    from datetime import datetime
    spans = []
    for m in runs:
        nb = Path(m["run_dir"]) / rundir.NOTEBOOK_FILE
        try:
            meta = json.loads(nb.read_text())["metadata"]["papermill"]
            spans.append((m["wall_s"], datetime.fromisoformat(meta["start_time"]).timestamp(),
                           datetime.fromisoformat(meta["end_time"]).timestamp()))
        except (OSError, ValueError, KeyError, TypeError):
            return None
    if not spans:
        return None
    median = statistics.median(w for w, _, _ in spans)
    first_start, last_end = min(s for _, s, _ in spans), max(e for _, _, e in spans)
    extracted = max((e for w, _, e in spans if w > 5 * median), default=first_start)
    rest = [w for w, _, e in spans if e > extracted]
    startup = grid_wall - (last_end - first_start)
    return (f"grid stages: start-up and pre-flight {startup:.1f} s, first runs (feature extraction) "
            f"{extracted - first_start:.1f} s, the other {len(rest)} runs {last_end - extracted:.1f} s "
            f"({(last_end - extracted) / max(1, len(rest)):.2f} s a run with the workers together)")


def _notebook_walls(root: Path) -> dict:
    import pandas as pd
    walls = {}
    for table in root.rglob(TABLE_FILE):
        df = pd.read_csv(table)
        walls.update({str(i): float(w) for i, w in zip(df["id"], df["wall_s"]) if w == w})
    return walls


if __name__ == "__main__":
    main()
