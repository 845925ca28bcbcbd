"""Run an experiment grid: the training notebook once per run of a parameter file, then its table.

``run_grid`` loads the file (``longtail.gridspec``: format, expansion, validation), skips the
runs that are done (``longtail.rundir.status``), checks once that the data and weights are there,
hands the others to an executor (``longtail.executors``: local worker processes, or a SLURM job
array), prints one progress line per run, and writes ``<output_root>/runs.csv``
(``runs-set-<hash>.csv`` for a ``--set`` variant): id, axis values, status, wall time, error,
folder of every run; if it cannot be written (a full disk) the summary still is, naming the
problem.  One run's failure never stops the others; failed or partial runs are rerun from an
empty folder by the next call.  A run that another grid process is running (its lock is held)
is ``busy``: after its own runs the grid waits for it and reports what the other left.

Ctrl-C (or SIGTERM) stops every worker and kernel at once, prints one line (what is done, what the
next call will run) and exits 130 (143).  ``python -m longtail.grid --help`` shows the command
line (``EXAMPLES``) and the parameter file's format (``gridspec.SPEC_FORMAT``).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import rundir
from .data import missing_inputs
from .executors import (BUSY, SKIPPED, SUBMITTED, RunOutcome, SlurmOptions, failure_reason, local_jobs, run_local,
                        run_lock, run_submitit)
from .fileio import atomic_write_text, one_line
from .gridspec import SPEC_FORMAT, Grid, GridError, label_text, load_grid, parse_value, value_text
from .notebook import KERNEL
from .params import SCHEMA
from .slurm import POLL_S as SLURM_POLL_S

DONE, FAILED, PARTIAL, TODO = rundir.DONE, rundir.FAILED, rundir.PARTIAL, rundir.TODO

#: the command line's examples (``--help``; the README shows the same commands)
EXAMPLES = """\
python -m longtail.grid params/default.yaml --jobs 2
python -m longtail.grid params/default.yaml --dry-run
python -m longtail.grid params/default.yaml --only loss=ce,focal --only seed=0 --set epochs=5
python -m longtail.grid params/thesis.yaml --executor slurm --slurm-partition gpu \\
    --slurm-array-parallelism 8
"""
#: what ``--jobs`` and ``--executor slurm`` do, for ``--help``
EXECUTION = """\
--jobs N: N worker processes, each running papermill; a worker forks each run's kernel (a fresh
process a run) from its own server that imported torch and longtail once; with several
GPUs each worker sees one (CUDA_VISIBLE_DEVICES, round robin), on CPUs each kernel gets
cpu_count // N threads.  --workers-per-gpu K: K workers on each visible GPU (several small
runs share one GPU; start CUDA MPS, nvidia-cuda-mps-control -d, so their kernels overlap).
A kernel that fails to start is retried twice; a cell error is a run failure.  --executor slurm: one job array through submitit (logs in <output_root>/slurm_logs),
one run per array task; the command waits, reading squeue and the result files (not sacct);
a job that ends without a result is a failed run, reported with its log's tail.  The project,
its .venv and the output root must be on the cluster's shared file system; jobs inherit this
shell's environment.
"""


class GridInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM: the grid stops every worker and kernel and reports what is left."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def _raise_interrupt(signum, frame) -> None:
    raise GridInterrupted(signum)


@dataclass
class Summary:
    grid: Grid
    outcomes: list[RunOutcome]
    wall_s: float = 0.0
    jobs: list = field(default_factory=list)  # submitit jobs (slurm executor)
    interrupted: int | None = None  # the signal that stopped the grid (SIGINT: Ctrl-C, SIGTERM)
    table_error: str | None = None  # why runs.csv could not be written (a full disk)

    def _with(self, status):
        return [o for o in self.outcomes if o.status == status]

    @property
    def done(self) -> list[RunOutcome]:
        return self._with(DONE)

    @property
    def skipped(self) -> list[RunOutcome]:
        return self._with(SKIPPED)

    @property
    def failed(self) -> list[RunOutcome]:
        return self._with(FAILED)

    @property
    def busy(self) -> list[RunOutcome]:
        return self._with(BUSY)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.busy and self.interrupted is None and self.table_error is None

    @property
    def exit_code(self) -> int:
        """0 when every run is done, 1 when one failed or is busy, 128 + signal when interrupted (130: Ctrl-C)."""
        return 128 + self.interrupted if self.interrupted is not None else (0 if self.ok else 1)

    def interrupted_text(self) -> str:
        """One line: what finished and what the next call of the same command will run."""
        left = [rundir.status(o.output_dir) for o in self.outcomes if o.status == TODO]
        how = "Ctrl-C" if self.interrupted == signal.SIGINT else signal.Signals(self.interrupted).name
        return (f"interrupted ({how}): {len(self.done) + len(self.skipped)} of {len(self.outcomes)} runs done "
                f"({len(self.done)} now), {len(self.failed)} failed; {left.count(PARTIAL)} stopped and "
                f"{left.count(TODO)} not started will be run by the next call of the same command; "
                + (f"table NOT written: {self.table_error}" if self.table_error else
                   f"table: {self.grid.table_path}"))

    def text(self) -> str:
        if self.interrupted is not None:
            return self.interrupted_text()
        counts = ", ".join(f"{len(self._with(s))} {name}" for s, name in
                           ((DONE, "done"), (SKIPPED, "skipped (done before)"), (FAILED, "failed"),
                            (BUSY, "busy (running elsewhere)"), (SUBMITTED, "submitted"))
                           if self._with(s) or s in (DONE, SKIPPED, FAILED))
        lines = [f"grid {self.grid.name}: {len(self.outcomes)} runs: {counts}; wall {self.wall_s:.0f}s"]
        for o in self.failed:
            lines += [f"  FAILED {o.id} {label_text(o.label)}", f"    reason:   {o.error}",
                      f"    notebook: {o.notebook}"]
        for o in self.busy:
            lines.append(f"  busy {o.id} {label_text(o.label)}: {o.error}")
        lines.append(f"table NOT written: {self.table_error}" if self.table_error else
                     f"table: {self.grid.table_path}")
        return "\n".join(lines)


class _Progress:
    def __init__(self, total: int, out=None):
        self.total, self.k, self.t0, self.out = total, 0, time.time(), out or sys.stdout

    def __call__(self, o: RunOutcome) -> None:
        self.k += 1
        elapsed = time.time() - self.t0
        eta = elapsed / self.k * (self.total - self.k)
        what = "done" if o.status == DONE else o.status.upper()
        took = f" in {o.wall_s:.0f}s" if o.wall_s is not None else ""
        why = f" ({o.error})" if o.error and o.status != DONE else ""
        print(f"[{self.k}/{self.total}] {o.id} {label_text(o.label)} {what}{took}{why} | elapsed {elapsed:.0f}s "
              f"| ETA {eta:.0f}s", file=self.out, flush=True)


def run_grid(grid: Grid | str | os.PathLike, jobs: int = 1, only: dict | None = None, executor: str = "local", *,
             output_root=None, sets: dict | None = None, kernel_name: str = KERNEL, start_retries: int = 2,
             slurm: SlurmOptions | None = None, out=None) -> Summary:
    """Run (the selected runs of) a grid; returns the Summary (``.ok`` False when a run failed).

    ``executor``: ``local`` (``jobs`` worker processes) or ``slurm`` (``slurm``: its options).
    Raises GridError, before any run starts, when the file or any run's parameters are invalid.
    """
    out = out or sys.stdout
    slurm = slurm or SlurmOptions()
    if not isinstance(grid, Grid):
        grid = load_grid(grid, output_root=output_root, sets=sets)
    elif output_root is not None or sets:
        raise TypeError("output_root and sets apply to a parameter file; pass them to load_grid")
    if executor not in ("local", "slurm"):
        raise GridError(f"executor={executor!r}: choose one of local, slurm")
    full = grid
    grid = grid.select(only)
    t0 = time.time()
    for note in grid.notes:
        print(f"note: {note}", file=out, flush=True)
    outcomes: dict[int, RunOutcome] = {}
    todo, todo_labels, todo_idx = [], [], []
    for i, (run, label) in enumerate(zip(grid.runs, grid.labels)):
        if rundir.status(run["output_dir"]) == DONE:
            outcomes[i] = RunOutcome(Path(run["output_dir"]).name, label, SKIPPED, run["output_dir"],
                                     str(Path(run["output_dir"]) / rundir.NOTEBOOK_FILE),
                                     wall_s=rundir.notebook_seconds(Path(run["output_dir"])))
        else:
            todo.append(run), todo_labels.append(label), todo_idx.append(i)
    where = f" ({grid.path})" if grid.path else ""
    how = f"{jobs} local worker(s)" if executor == "local" else f"submitit ({slurm.cluster})"
    print(f"grid {grid.name}{where}: {len(grid.runs)} runs, {len(outcomes)} done before (skipped), {len(todo)} to run "
          f"on {how}; output {grid.output_root}", file=out, flush=True)
    if todo and (missing := missing_inputs(todo)):  # once, before any kernel starts (not once per run)
        raise GridError("nothing was run; missing:\n  " + "\n  ".join(missing))
    grid.output_root.mkdir(parents=True, exist_ok=True)

    progress = _Progress(len(todo), out=out)
    by_id = {Path(r["output_dir"]).name: i for r, i in zip(todo, todo_idx)}
    submitted_jobs = []
    interrupted = None

    def report(o: RunOutcome) -> None:
        outcomes[by_id[o.id]] = o
        if o.status != SUBMITTED:
            progress(o)

    try:
        if todo and executor == "local":
            run_local(todo, todo_labels, notebook=grid.notebook, jobs=jobs, kernel_name=kernel_name,
                       start_retries=start_retries, report=report)
        elif todo:
            submitted_jobs = run_submitit(
                todo, todo_labels, name=grid.name, notebook=grid.notebook, output_root=grid.output_root,
                options=slurm, kernel_name=kernel_name, start_retries=start_retries, report=report)
        _settle_busy(outcomes, grid, out)
    except KeyboardInterrupt as exc:  # workers and kernels were stopped by the executor
        interrupted = getattr(exc, "signum", int(signal.SIGINT))
    finally:
        table_error = None
        try:
            write_table(full, outcomes={grid.ids[i]: o for i, o in outcomes.items()})
        except OSError as exc:  # a full disk must not also lose the summary
            table_error = one_line(exc)
    ordered = [outcomes.get(i) or RunOutcome(Path(r["output_dir"]).name, lab, TODO, r["output_dir"],
                                             str(Path(r["output_dir"]) / rundir.NOTEBOOK_FILE))
               for i, (r, lab) in enumerate(zip(grid.runs, grid.labels))]
    return Summary(grid=grid, outcomes=ordered, wall_s=time.time() - t0, jobs=submitted_jobs, interrupted=interrupted,
                   table_error=table_error)


def _settle_busy(outcomes: dict, grid: Grid, out) -> None:
    """Runs another grid process was running when this one reached them: wait until it let go of
    them (their lock), then report what it left on disk (done: skipped; failed: failed)."""
    busy = [i for i, o in outcomes.items() if o.status == BUSY]
    if busy:
        print(f"waiting for {len(busy)} run(s) that another grid process is running", file=out, flush=True)
    for i in busy:
        o = outcomes[i]
        with run_lock(Path(o.output_dir), wait=True):
            state = rundir.status(o.output_dir)
        if state == DONE:
            outcomes[i] = RunOutcome(o.id, o.label, SKIPPED, o.output_dir, o.notebook,
                                     wall_s=rundir.notebook_seconds(Path(o.output_dir)))
        elif state == FAILED:
            outcomes[i] = RunOutcome(o.id, o.label, FAILED, o.output_dir, o.notebook,
                                     error="in another grid process: " + failure_reason(Path(o.output_dir)))


def write_table(grid: Grid, outcomes: dict[str, RunOutcome] | None = None) -> Path:
    """``<output_root>/runs.csv``: id, axis values, status, wall_s, error, output_dir, for every run of the grid.

    ``status`` is this invocation's outcome where the run was run now (done, failed, busy, submitted),
    else its state on disk (done, failed, partial, todo); ``wall_s`` the notebook's execution time.
    """
    import pandas as pd

    outcomes = outcomes or {}
    rows = []
    for run, label in zip(grid.runs, grid.labels):
        out = Path(run["output_dir"])
        o = outcomes.get(out.name)
        status = o.status if o is not None and o.status != SKIPPED else rundir.status(out)
        wall = o.wall_s if o is not None and o.wall_s is not None else rundir.notebook_seconds(out)
        error = o.error if o is not None else (failure_reason(out) if status == FAILED else None)
        rows.append({"id": out.name, **{k: value_text(v) if isinstance(v, (dict, list)) else v for k, v in label.items()},
                     "status": status, "wall_s": None if wall is None else round(float(wall), 2), "error": error,
                     "output_dir": str(out)})
    path = grid.table_path
    grid.output_root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, pd.DataFrame(rows).to_csv(index=False))
    return path


# ------------------------------------------------------------------------------------------- the CLI

def _parse_only(items: list[str]) -> dict:
    only: dict[str, list] = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        if not sep or not key.strip():
            raise GridError(f"--only {item!r}: expected KEY=VALUE[,VALUE...]")
        only.setdefault(key.strip(), []).extend(parse_value(v, f"--only {key.strip()}") for v in values.split(","))
    return only


def parse_sets(items: list[str]) -> dict:
    """The ``--set KEY=VALUE`` options (VALUE read as YAML) as ``{KEY: VALUE}``; GridError naming a bad one."""
    sets = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise GridError(f"--set {item!r}: expected KEY=VALUE (VALUE read as YAML)")
        if key.split(".")[0] not in SCHEMA:
            raise GridError(f"--set {key}: unknown parameter; valid parameters: {', '.join(SCHEMA)}")
        sets[key.strip()] = parse_value(value, f"--set {key.strip()}")
    return sets


def print_dry_run(grid: Grid, out=None) -> None:
    out = out or sys.stdout
    statuses = grid.statuses()
    where = f" ({grid.path})" if grid.path else ""
    print(f"grid {grid.name}{where}: {len(grid.runs)} runs; notebook {grid.notebook}; output {grid.output_root}",
          file=out)
    for note in grid.notes:
        print(f"note: {note}", file=out)
    for status, rid, label in zip(statuses, grid.ids, grid.labels):
        print(f"  {status:<8} {rid}  {label_text(label)}", file=out)
    counts = {s: statuses.count(s) for s in (DONE, FAILED, PARTIAL, TODO)}
    print(f"{len(statuses)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()), file=out, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m longtail.grid",
                                 description="Run an experiment grid: the training notebook once per run of a "
                                             "parameter file (YAML), locally or on SLURM; a rerun skips finished runs.",
                                 epilog="\n".join(f"{title}:\n{textwrap.indent(text, '  ')}" for title, text in (
                                     ("examples", EXAMPLES), ("parallel and SLURM runs", EXECUTION),
                                     ("the parameter file", SPEC_FORMAT))),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    slurm = SlurmOptions()  # the defaults
    ap.add_argument("params", help="the grid's parameter file (YAML), e.g. params/default.yaml")
    ap.add_argument("--dry-run", action="store_true", help="list the runs (id, done/failed/partial/todo) and exit")
    ap.add_argument("--jobs", type=int, default=None,
                    help="parallel local workers (default 1; dealt round robin to the GPUs when there are several)")
    ap.add_argument("--workers-per-gpu", type=int, default=None, metavar="K",
                    help="K workers on each visible GPU (K runs share one GPU); instead of --jobs")
    ap.add_argument("--only", action="append", default=[], metavar="KEY=VALUE[,VALUE]",
                    help="run only runs with one of these values (repeatable; AND over keys)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                    help="override a base parameter (VALUE read as YAML; KEY.SUB for a dict parameter)")
    ap.add_argument("--executor", choices=("local", "slurm"), default="local")
    ap.add_argument("--output-root", default=None, help="folder of the run folders (default: from the file)")
    ap.add_argument("--kernel", default=KERNEL, help="Jupyter kernel name (default: %(default)s)")
    s = ap.add_argument_group("SLURM (--executor slurm, through submitit)")
    s.add_argument("--slurm-partition", default=slurm.partition)
    s.add_argument("--slurm-array-parallelism", type=int, default=slurm.array_parallelism,
                   help="array tasks running at once (default: %(default)s)")
    s.add_argument("--slurm-timeout-min", type=int, default=slurm.timeout_min,
                   help="time limit of one run (minutes; default: %(default)s)")
    s.add_argument("--slurm-gpus-per-task", type=int, default=slurm.gpus_per_task, help="(default: %(default)s)")
    s.add_argument("--slurm-cpus-per-task", type=int, default=slurm.cpus_per_task,
                   help="also the kernel's CPU threads (default: %(default)s)")
    s.add_argument("--slurm-mem-gb", type=float, default=slurm.mem_gb)
    s.add_argument("--slurm-param", action="append", default=[], metavar="KEY=VALUE",
                   help="any other submitit parameter, e.g. slurm_account=abc (repeatable)")
    s.add_argument("--slurm-poll-s", type=float, default=slurm.poll_s,
                   help=f"seconds between looks at the queue while waiting (default: {SLURM_POLL_S:g})")
    s.add_argument("--no-wait", action="store_true", help="submit and return; rerun with --dry-run for the state")
    s.add_argument("--submitit-cluster", choices=("slurm", "local", "debug"), default=slurm.cluster,
                   help=argparse.SUPPRESS)  # local / debug: the submitit code path without SLURM (tests)
    args = ap.parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)  # kill / scancel: stop as for Ctrl-C
    try:
        only = _parse_only(args.only)
        sets = parse_sets(args.sets)
        extra = {}
        for item in args.slurm_param:
            k, sep, v = item.partition("=")
            if not sep:
                raise GridError(f"--slurm-param {item!r}: expected KEY=VALUE")
            extra[k.strip()] = parse_value(v, f"--slurm-param {k.strip()}")
        grid = load_grid(args.params, output_root=args.output_root, sets=sets)
        if args.dry_run:
            print_dry_run(grid.select(only))
            return 0
        if not grid.select(only).runs:
            print(f"error: no run of {args.params} matches --only {' '.join(args.only)}", file=sys.stderr)
            return 2
        slurm = SlurmOptions(partition=args.slurm_partition, array_parallelism=args.slurm_array_parallelism,
                             timeout_min=args.slurm_timeout_min, gpus_per_task=args.slurm_gpus_per_task,
                             cpus_per_task=args.slurm_cpus_per_task, mem_gb=args.slurm_mem_gb, extra=extra,
                             poll_s=args.slurm_poll_s, wait=not args.no_wait, cluster=args.submitit_cluster)
        jobs = local_jobs(args.jobs, args.workers_per_gpu) if args.executor == "local" else 1
        summary = run_grid(grid, jobs=jobs, only=only, executor=args.executor, kernel_name=args.kernel,
                           slurm=slurm)
    except GridError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # before any run started
        print("interrupted before any run started", file=sys.stderr, flush=True)
        return 128 + getattr(exc, "signum", int(signal.SIGINT))
    print(summary.text(), flush=True)
    return summary.exit_code


def _exit(code: int) -> None:
    """Exit; after an interrupt without waiting for the pool's and papermill's threads and event
    loops, whose shutdown only prints noise (the workers and kernels are already gone)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if code >= 128:
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _exit(main())
