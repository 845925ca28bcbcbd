"""Tables of the runs that ``bench/gpu.sh`` ran on a lent GPU (the run folders stay on that machine).

    python bench/gpu_summary.py thesis RUN_ROOT --wall-s 95   # markdown: the thesis protocol's tables, thesis beside ours
    python bench/gpu_summary.py jsonl RUN_ROOT                # one JSON line a finished run: parameters + metrics
    python bench/gpu_summary.py pack RUN_ROOT --to PREFIX --parts 3   # the run folders (no checkpoints) in
                                                              # PREFIX_1.tgz ... (a lent machine returns files of <= 16 MB)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))


def markdown(frame, index: bool = True) -> str:
    """A DataFrame as a markdown table (pandas' to_markdown needs tabulate, which the project does not use)."""
    frame = frame.reset_index() if index else frame
    cols = [" ".join(map(str, c)).strip() if isinstance(c, tuple) else str(c) for c in frame.columns]
    rows = [" | ".join(cols), " | ".join("---" for _ in cols)]
    rows += [" | ".join(" ".join(map(str, v)) if isinstance(v, tuple) else str(v) for v in r)
             for r in frame.itertuples(index=False)]
    return "\n".join(f"| {r} |" for r in rows)


def thesis_tables(root: str, wall_s: float, jobs: int) -> str:
    import torch

    from longtail import results, thesis

    runs = results.collect_runs(root)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    out = [f"## Thesis grid, MobileNetV2 part, on {device}", "",
           f"{len(runs)} runs finished ({len(runs.attrs['unfinished'])} not) through the real papermill grid "
           f"(`python -m longtail.grid params/thesis.yaml --only backbone=mobilenetv2 "
           f"--set pretrained=inat_insects --jobs {jobs}`, `bench/gpu.sh run`), {jobs} at once on the one GPU: "
           f"**{wall_s:.0f} s wall** for the whole grid, image decoding, kernel starts and evaluation included.", ""]
    if not len(runs):
        return "\n".join(out)
    first = runs.iloc[0]
    out += [f"Protocol: EU Moths (200 species; the thesis's own photographs are not available), {first['epochs']} "
            f"epochs, batch {first['batch_size']}, {first['optimizer']} lr {first['lr']}, image size "
            f"{first['image_size']}, pretrained `{first['pretrained']}` (the only MobileNetV2 weights offline; the "
            "thesis used ImageNet weights), evaluation protocol `thesis`; mean ± std over the seeds.", ""]
    for ts in ("balanced", "longtailed"):
        sub = runs[runs["train_set"] == ts]
        if len(sub):
            out += [f"### Training set: {ts} (thesis protocol: the method's loss, top-1 and support-weighted F1)", "",
                    markdown(results.split_table(sub, "thesis")), ""]
    side = thesis.side_by_side(runs)
    if len(side):
        out += ["### The thesis's numbers beside ours (top-1 %, thesis protocol; different photographs and "
                "pretraining: compare the pattern, not the level)", "", markdown(side), ""]
    timing = (runs.groupby(["train_set", "method"])[["wall_s", "train_images"]].mean().round(1)
              .assign(runs=runs.groupby(["train_set", "method"]).size()).reset_index())
    out += ["### Time per run (mean of each run's own wall time inside its notebook, sharing the GPU)", "", markdown(timing, index=False), ""]
    return "\n".join(out)


def jsonl(root: str) -> str:
    from longtail import rundir
    lines = []
    for m in sorted(Path(root).glob(f"*/{rundir.RESULT_FILE}")):
        lines.append(json.dumps({"params": json.loads((m.parent / rundir.PARAMS_FILE).read_text()),
                                 "metrics": json.loads(m.read_text())}))
    return "\n".join(lines)


def pack(root: str, prefix: str, parts: int) -> None:
    import tarfile
    runs = sorted(d for d in Path(root).iterdir() if d.is_dir())
    for i in range(parts):
        with tarfile.open(f"{prefix}_{i + 1}.tgz", "w:gz") as tar:
            for d in runs[i::parts]:
                tar.add(d, arcname=f"{Path(root).name}/{d.name}", filter=lambda t: None if t.name.endswith(".pt") else t)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("thesis", "jsonl", "pack"))
    ap.add_argument("root")
    ap.add_argument("--wall-s", type=float, default=float("nan"))
    ap.add_argument("--jobs", type=int, default=14, help="the grid's workers (for the text)")
    ap.add_argument("--to", default="runs")
    ap.add_argument("--parts", type=int, default=1)
    args = ap.parse_args()
    if args.what == "pack":
        pack(args.root, args.to, args.parts)
    else:
        print(thesis_tables(args.root, args.wall_s, args.jobs) if args.what == "thesis" else jsonl(args.root))


if __name__ == "__main__":
    main()
