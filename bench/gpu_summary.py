"""Tables of the runs that ``bench/gpu.sh`` ran on a lent GPU (the run folders stay on that machine).

    python bench/gpu_summary.py thesis RUN_ROOT --wall-s 95   # markdown: params/thesis.yaml's tables, thesis beside ours
    python bench/gpu_summary.py jsonl RUN_ROOT                # one JSON line a finished run: parameters + metrics

The finished run folders themselves come back as an archive (``python -m longtail.archive``, ``bench/gpu.sh``).
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

    from longtail import results, tables, thesis

    runs = results.collect_runs(root)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    # a run restored from an earlier lease's archive (longtail.archive) has no executed notebook
    earlier = int(runs["notebook"].isna().sum()) if len(runs) else 0
    out = [f"## Thesis grid, MobileNetV2 part, on {device}", "",
           f"{len(runs)} runs finished ({len(runs.attrs['unfinished'])} not) through the real papermill grid "
           f"(`python -m longtail.grid params/thesis.yaml --only backbone=mobilenetv2 "
           f"--set pretrained=inat_insects --jobs {jobs}`, `bench/gpu.sh run`), {jobs} at once on the one GPU"
           + (f"; {earlier} of them in earlier leases, restored from the archive" if earlier else "")
           + f": **{wall_s:.0f} s wall** for this lease's part of the grid, image decoding, kernel starts and "
           "evaluation included.", ""]
    if not len(runs):
        return "\n".join(out)
    first = runs.iloc[0]
    out += [f"Schedule: `params/thesis.yaml`'s, our choice (the thesis states no epochs, learning rate, optimiser "
            f"or pretraining): {first['epochs']} epochs, batch {first['batch_size']}, {first['optimizer']} lr "
            f"{first['lr']}, image size {first['image_size']}, pretrained `{first['pretrained']}` (the only "
            "MobileNetV2 weights offline). Data: EU Moths (200 species; the thesis's own photographs are not "
            "available). Evaluation protocol `thesis`; mean ± std over the seeds.", ""]
    for ts in ("balanced", "longtailed"):
        sub = runs[runs["train_set"] == ts]
        if len(sub):
            out += [f"### Training set: {ts} (the thesis's evaluation protocol: the method's loss, top-1 and "
                    "support-weighted F1)", "",
                    markdown(tables.split_table(sub, "thesis")), ""]
    side = thesis.side_by_side(runs)
    if len(side):
        out += ["### The thesis's numbers beside ours (top-1 %, the thesis's evaluation protocol; different "
                "photographs, pretraining and, our choice, schedule: compare the pattern, not the level)", "",
                markdown(side), ""]
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("thesis", "jsonl"))
    ap.add_argument("root")
    ap.add_argument("--wall-s", type=float, default=float("nan"))
    ap.add_argument("--jobs", type=int, default=14, help="the grid's workers (for the text)")
    args = ap.parse_args()
    print(thesis_tables(args.root, args.wall_s, args.jobs) if args.what == "thesis" else jsonl(args.root))


if __name__ == "__main__":
    main()
