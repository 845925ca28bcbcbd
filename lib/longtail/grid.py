"""Run an experiment grid: the training notebook once per parameter combination, through papermill.

A parameter file (YAML) describes a grid::

    name: default                  # optional; default: the file name without .yaml
    extends: other.yaml            # optional; a path relative to this file
    notebook: notebooks/train.py   # optional; relative to the project root
    output_root: runs/default      # optional; default: <LT_RUNS_DIR or <project>/runs>/<name>
    base:                          # parameters of every run (any key of longtail.params.SCHEMA)
      dataset: eu_moths
    grid:                          # axes: the runs are the cartesian product, last axis fastest
      loss: [ce, focal, ldam]
      seed: [0, 1, 2]
    overrides:                     # parameters set when a run's value of a parameter equals the key
      loss:
        focal: {loss_params: {gamma: 2.0}}
        ldam: {drw_epoch: 20, loss_params: {max_m: 0.5, s: 30}}

A run's parameters are ``base``, then its axis values, then every matching override (matched on
the values *before* overrides, applied in the file's order).  A parameter's value is always
replaced whole (``loss_params`` of an override replaces the base's ``loss_params``).  With
``extends`` the child's ``base`` and ``overrides`` are merged into the parent's (key by key;
overrides per parameter and value), the child's ``grid`` axes replace the parent's axes of the
same name (other parent axes stay), ``notebook`` is inherited, ``name`` and ``output_root`` are
not.  Numbers such as ``1e-4`` are read as floats (YAML 1.2), not as strings.

Every run is validated with :func:`longtail.params.validate` before any run starts; all problems
of all runs are reported together (one line per distinct problem, with the runs it concerns).

Values are JSON types only (str, int, float, bool, null, lists, mappings): a ``!!binary``, ``!!set``
or date is refused, and before a kernel starts each value's injected source must be a literal of it.
An empty or non-UTF-8 file, and an override value that is no valid value of its parameter, are refused.

Each run gets the folder ``<output_root>/<run id>/`` (``longtail.rundir.run_id``: a hash of the
resolved parameters), holding the executed notebook ``train.ipynb`` and the run files.  A run is
done when its notebook completed and wrote ``metrics.json`` (``status.json``, ``longtail.rundir.status``);
done runs are skipped, failed or partial ones are rerun from an empty folder.  One run's failure
never stops the others.  At the end the grid's table is written to ``<output_root>/runs.csv``
(``runs-set-<hash>.csv`` for a ``--set`` variant); if it cannot be written (a full disk) the summary
still is, naming the problem.

Ctrl-C (or SIGTERM) stops every worker and kernel at once, prints one line (what is done, what the
next call will run) and exits 130 (143).  Workers die with the grid even when it is killed (Linux
``PR_SET_PDEATHSIG``; their kernels follow through ipykernel's parent poller), and so do the tasks
of submitit's local executor.

Command line::

    python -m longtail.grid params/default.yaml --jobs 2
    python -m longtail.grid params/default.yaml --dry-run
    python -m longtail.grid params/default.yaml --only loss=ce,focal --only seed=0 --set epochs=5
    python -m longtail.grid params/thesis.yaml --executor slurm --slurm-partition gpu \\
        --slurm-array-parallelism 8

Parallel runs (``--jobs N``): N worker processes (a spawn-context process pool), each running
papermill, which starts its own kernel.  With several GPUs each worker sees one GPU
(``CUDA_VISIBLE_DEVICES``, round robin); on CPUs each worker's kernel gets ``cpu_count // N``
threads (``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` unless already set) so that N kernels do not
oversubscribe the cores.  Kernels started at the same moment can, rarely, collide on a port
(jupyter_client picks free ports in each process independently) or time out while the machine is
busy: a kernel start-up failure (any error before the run wrote its ``params.json``) is retried
twice after a short random pause; a cell error (``PapermillExecutionError``) is a run failure and
is not retried.  A per-run lock file (``<output_root>/.locks/<id>.lock``, ``fcntl.flock``) keeps
two grid processes from running the same run at once; such a run is ``busy``: after its own runs
the grid waits for the other process to let go of it and reports what it left (done or failed).

SLURM (``--executor slurm``): the runs to do are submitted as one job array with submitit
(``AutoExecutor``; logs in ``<output_root>/slurm_logs``), one run per array task (``--slurm-gpus-per-task``
GPUs, ``--slurm-cpus-per-task`` CPUs, which also set the kernel's ``OMP_NUM_THREADS``); the command
waits for them and prints the same progress and summary (``--no-wait`` submits and returns; a
later ``--dry-run`` shows what is done).  While it waits it reads ``squeue`` and the jobs' result files
every ``--slurm-poll-s`` seconds, not ``sacct`` (``longtail.slurm``: clusters without accounting work
too); a job that ends without a result (``scancel``, its time limit, a broken node) is a failed run,
reported with its state, exit code and the last lines of its log, and the next call redoes it.  The
project folder, its ``.venv`` (with the ``longtail`` kernel) and the output root must be on the
cluster's shared file system.  A job runs the grid's own Python (submitit: ``sys.executable``), so the
``longtail`` kernel of that ``.venv`` is found whatever the node's PATH, and it inherits the submitting
shell's environment (sbatch's default ``--export=ALL``: ``LT_DATA_ROOT`` and the others).  Other sbatch options go
through ``--slurm-param``, e.g. ``--slurm-param slurm_account=abc``, or on clusters that only know
``--gres``: ``--slurm-gpus-per-task 0 --slurm-param slurm_gres=gpu:1``.  ``--submitit-cluster
local|debug`` (hidden) runs the same code path without SLURM; the tests use it.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import errno
import functools
import hashlib
import itertools
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import config, rundir
from .data import missing_inputs
from .fileio import write_error
from .params import DEFAULTS, SCHEMA, ParameterError, json_type_errors
from .slurm import LOG_FOLDER as SLURM_LOG_FOLDER, POLL_S as SLURM_POLL_S, QueueWatch, log_quote as slurm_log_quote

KERNEL = "longtail"
#: extra kernel command-line arguments: no start-up / shut-down chatter on the grid's terminal ("running
#: over TCP without encryption", "KeyboardInterrupt caught in kernel" when the kernel is shut down)
KERNEL_ARGS = ["--IPKernelApp.log_level=CRITICAL"]
NOTEBOOK = "notebooks/train.py"
EXECUTED_NOTEBOOK = rundir.NOTEBOOK_FILE
TABLE_FILE = "runs.csv"
SPEC_KEYS = ("name", "description", "extends", "notebook", "output_root", "base", "grid", "overrides")
#: run statuses on disk (``status_of``, from ``longtail.rundir``) and of this invocation (``RunOutcome.status``)
DONE, FAILED, PARTIAL, TODO = rundir.DONE, rundir.FAILED, rundir.PARTIAL, rundir.TODO
SKIPPED, BUSY, SUBMITTED = "skipped", "busy", "submitted"


class GridError(ParameterError):
    """A bad parameter file or bad run parameters; nothing was run."""


class GridInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM: the grid stops every worker and kernel and reports what is left."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def _raise_interrupt(signum, frame) -> None:
    raise GridInterrupted(signum)


# --------------------------------------------------------------------------------------------- YAML

class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-4 / 5E+3 as floats (YAML 1.2), as people write them."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_value(text: str, where: str = "value"):
    """A command-line value, read as YAML (``0.1`` -> float, ``[1, 2]`` -> list, ``null`` -> None);
    only JSON types (``longtail.params.json_type_errors``): a ``!!binary`` or ``!!set`` is refused."""
    try:
        value = yaml.load(text, Loader=_Loader) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise GridError(f"{where}: {text!r} is not a valid YAML value: {_one_line(exc)}") from None
    bad = json_type_errors(value, where)
    if bad:
        raise GridError("\n".join(bad))
    return value


# --------------------------------------------------------------------------------- spec and expand

def read_spec(path: str | os.PathLike, _chain: tuple = ()) -> dict:
    """The parameter file with its ``extends`` chain merged (``base``, ``grid``, ``overrides``, ...)."""
    path = Path(path).resolve()
    if path in _chain:
        raise GridError("extends cycle: " + " -> ".join(str(p) for p in (*_chain, path)))
    if not path.is_file():
        where = f" (extended by {_chain[-1]})" if _chain else ""
        raise GridError(f"parameter file {path} does not exist{where}")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except UnicodeDecodeError as exc:
        raise GridError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the file as UTF-8") from None
    except yaml.YAMLError as exc:
        raise GridError(f"{path}: not valid YAML: {exc}") from None
    if raw is None:  # empty, or comments only: running every default is never what was meant
        raise GridError(f"{path}: the file is empty; a grid needs base: and/or grid: (see pydoc longtail.grid)")
    if not isinstance(raw, dict):
        raise GridError(f"{path}: expected a mapping with keys {', '.join(SPEC_KEYS)}")
    bad = json_type_errors(raw, "", scalar_keys=True)  # before anything reads a value
    if bad:
        raise GridError(f"{path}: only JSON types are accepted; nothing was run:\n  " +
                        "\n  ".join(b.lstrip(".") for b in bad))
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    if unknown:
        raise GridError(f"{path}: unknown top-level key(s) {unknown}; valid keys: {', '.join(SPEC_KEYS)} "
                        "(run parameters go under base:)")
    for key, kind in (("base", dict), ("grid", dict), ("overrides", dict)):
        if raw.get(key) is None:
            raw[key] = {}
        if not isinstance(raw[key], kind):
            raise GridError(f"{path}: {key}: must be a mapping, got {type(raw[key]).__name__}")
    spec = {"name": raw.get("name") or path.stem, "path": str(path), "description": raw.get("description"),
            "notebook": raw.get("notebook"), "output_root": raw.get("output_root"),
            "base": raw["base"], "grid": raw["grid"], "overrides": raw["overrides"]}
    if raw.get("extends"):
        parent = read_spec(path.parent / str(raw["extends"]), (*_chain, path))
        spec["base"] = {**parent["base"], **spec["base"]}
        spec["grid"] = {**parent["grid"], **spec["grid"]}
        merged = copy.deepcopy(parent["overrides"])
        for key, by_value in spec["overrides"].items():
            into = merged.setdefault(key, {})
            if isinstance(by_value, dict) and isinstance(into, dict):
                for value, params in by_value.items():
                    into[value] = {**(into.get(value) or {}), **(params or {})}
            else:
                merged[key] = by_value
        spec["overrides"] = merged
        spec["notebook"] = spec["notebook"] or parent["notebook"]
    return spec


def _same(a, b) -> bool:
    """Does a run's value equal an override key?  (100 == 100.0; True is not 1; 'x' == 'x')."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b or (a is not None and b is not None and str(a) == str(b))


def _check_spec(spec: dict) -> None:
    where = spec.get("path") or "grid"
    for axis, values in (spec.get("grid") or {}).items():
        if not isinstance(values, list) or not values:
            raise GridError(f"{where}: grid axis {axis!r} must be a non-empty list of values, got {values!r} "
                            f"(a constant goes under base:)")
    for key, by_value in (spec.get("overrides") or {}).items():
        if key not in SCHEMA:
            raise GridError(f"{where}: overrides on unknown parameter {key!r}; valid parameters: {', '.join(SCHEMA)}")
        if not isinstance(by_value, dict) or not all(isinstance(v, dict) for v in by_value.values()):
            raise GridError(f"{where}: overrides: {key}: must map each value of {key} to a mapping of parameters, "
                            f"e.g. overrides: {{loss: {{focal: {{loss_params: {{gamma: 2.0}}}}}}}}")
    for section in ("base", "grid"):
        if "output_dir" in (spec.get(section) or {}):
            raise GridError(f"{where}: output_dir is set by the grid (<output_root>/<run id>); use output_root:")


def _override_problems(spec: dict, labels: list[dict]) -> list[str]:
    """Overrides that would silently change nothing: a value that is not a valid value of its
    parameter (``loss: {ldamm: ...}``), or a block naming an unknown parameter."""
    from .params import validate

    where = spec.get("path") or "grid"
    problems = []
    for key, by_value in (spec.get("overrides") or {}).items():
        base = spec.get("base") or {}
        used = [label.get(key, base.get(key, DEFAULTS.get(key))) for label in labels]
        for value, extra in by_value.items():
            unknown = sorted(set(extra) - set(SCHEMA))
            if unknown:
                problems.append(f"{where}: overrides: {key}: {value}: unknown parameter(s) {unknown}; "
                                f"valid parameters: {', '.join(SCHEMA)}")
            if any(_same(u, value) for u in used):
                continue
            try:
                validate({key: value}, check_backbone=False)
            except ParameterError as exc:
                own = [line.strip() for line in str(exc).splitlines()[1:] if line.strip().startswith(f"{key}=")]
                if own:
                    values = ", ".join(dict.fromkeys(_short(u) for u in used))
                    problems.append(f"{where}: overrides: {key}: {value!r} matches no run and is not a valid value "
                                    f"({own[0]}); values of {key} in this grid: {values}")
    return problems


def _expand(spec: dict) -> list[tuple[dict, dict]]:
    """[(run parameters, axis values)] in grid order (last axis fastest)."""
    _check_spec(spec)
    base = spec.get("base") or {}
    axes = spec.get("grid") or {}
    overrides = spec.get("overrides") or {}
    names = list(axes)
    out = []
    for combo in itertools.product(*(axes[n] for n in names)):
        label = dict(zip(names, combo))
        chosen = {**copy.deepcopy(base), **copy.deepcopy(label)}
        params = dict(chosen)
        for key, by_value in overrides.items():
            value = chosen.get(key, DEFAULTS.get(key))
            for match, extra in by_value.items():
                if _same(value, match):
                    params.update(copy.deepcopy(extra))
        out.append((params, label))
    return out


def expand(spec: dict) -> list[dict]:
    """The parameters of every run of a spec (``base``, ``grid``, ``overrides``): not yet validated."""
    return [params for params, _ in _expand(spec)]


# ----------------------------------------------------------------------------------------- the grid

def label_text(label: dict) -> str:
    return " ".join(f"{k}={_short(v)}" for k, v in label.items())


def _short(v) -> str:
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)


@dataclass
class Grid:
    """A validated grid: ``runs`` are resolved parameter dicts with ``output_dir`` set."""

    name: str
    notebook: Path
    output_root: Path
    runs: list[dict]
    labels: list[dict]  # the axis values of each run
    axes: dict = field(default_factory=dict)
    path: Path | None = None
    spec: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    variant: str = ""  # "set-<hash>" for a grid changed by --set: its table must not replace the file's

    @property
    def table_path(self) -> Path:
        """``<output_root>/runs.csv``, or ``runs-set-<hash>.csv`` for a ``--set`` variant of the grid."""
        return self.output_root / (TABLE_FILE if not self.variant else f"runs-{self.variant}.csv")

    @property
    def ids(self) -> list[str]:
        return [Path(r["output_dir"]).name for r in self.runs]

    def __len__(self) -> int:
        return len(self.runs)

    def select(self, only: dict | None) -> "Grid":
        """The runs whose parameter ``key`` is one of ``only[key]`` for every key (AND over keys)."""
        if not only:
            return self
        bad = sorted(k for k in only if k not in SCHEMA)
        if bad:
            raise GridError(f"--only: unknown parameter(s) {bad}; grid axes: {', '.join(self.axes) or '(none)'}")
        keep = [i for i, r in enumerate(self.runs)
                if all(any(_same(r[k], v) for v in values) for k, values in only.items())]
        sub = copy.copy(self)
        sub.runs, sub.labels = [self.runs[i] for i in keep], [self.labels[i] for i in keep]
        return sub

    def statuses(self) -> list[str]:
        return [status_of(r["output_dir"]) for r in self.runs]


def build_grid(spec: dict, *, output_root: str | os.PathLike | None = None, sets: dict | None = None,
               check_backbone: bool = True) -> Grid:
    """Expand and validate a spec (see ``read_spec``); raises GridError listing every problem."""
    from .params import validate
    from .run import run_id

    spec = copy.deepcopy(spec)
    spec.setdefault("base", {})
    spec.setdefault("grid", {})
    spec.setdefault("overrides", {})
    for key, value in (sets or {}).items():
        top = key.split(".", 1)[0]
        if top in spec["grid"]:
            raise GridError(f"--set {key}: {top!r} is a grid axis; select its values with --only {top}=VALUE")
        _set_dotted(spec["base"], key, value)
    name = str(spec.get("name") or "grid")
    root = _project_path(spec.get("output_root")) if spec.get("output_root") else (config.runs_dir() / name).resolve()
    if output_root is not None:
        root = Path(output_root).expanduser().resolve()
    notebook = _project_path(spec.get("notebook") or NOTEBOOK)
    if not notebook.is_file():
        raise GridError(f"notebook {notebook} does not exist")

    expanded = _expand(spec)
    bad_overrides = _override_problems(spec, [label for _, label in expanded])
    if bad_overrides:
        raise GridError("\n".join(bad_overrides + ["nothing was run"]))
    problems: dict[str, list[dict]] = {}
    runs, labels, seen, notes = [], [], {}, []
    for params, label in expanded:
        try:
            resolved = validate(params, check_backbone=check_backbone)
        except ParameterError as exc:
            for line in str(exc).splitlines()[1:]:
                problems.setdefault(line.strip(), []).append(label)
            continue
        rid = run_id(resolved)
        if rid in seen:
            notes.append(f"runs {label_text(seen[rid]) or '(base)'} and {label_text(label)} have the same parameters "
                         f"(id {rid}); running it once")
            continue
        seen[rid] = label
        resolved["output_dir"] = str(root / rid)
        runs.append(resolved)
        labels.append(label)
    where = spec.get("path") or name
    if problems:
        n_bad = len({json.dumps(lab, sort_keys=True, default=str) for labs in problems.values() for lab in labs})
        lines = [f"{where}: {n_bad} of {len(expanded)} runs have invalid parameters; nothing was run:"]
        for problem, labs in problems.items():
            lines.append(f"  {problem}")
            if labs[0] and not problem.startswith("valid parameters"):
                if len(labs) == len(expanded):
                    lines.append("      (every run)")
                else:
                    shown = "; ".join(label_text(lab) for lab in labs[:3])
                    more = f" (+{len(labs) - 3} more)" if len(labs) > 3 else ""
                    lines.append(f"      in {len(labs)} run(s): {shown}{more}")
        raise GridError("\n".join(lines))
    variant = ("set-" + hashlib.sha1(json.dumps(sets, sort_keys=True).encode()).hexdigest()[:8]) if sets else ""
    return Grid(name=name, notebook=notebook, output_root=root, runs=runs, labels=labels,
                axes=dict(spec["grid"]), path=Path(spec["path"]) if spec.get("path") else None, spec=spec, notes=notes,
                variant=variant)


def load_grid(path: str | os.PathLike, *, output_root: str | os.PathLike | None = None, sets: dict | None = None,
              check_backbone: bool = True) -> Grid:
    """Read, expand and validate a parameter file."""
    return build_grid(read_spec(path), output_root=output_root, sets=sets, check_backbone=check_backbone)


def _project_path(p) -> Path:
    p = Path(str(p)).expanduser()
    return p if p.is_absolute() else (config.PROJECT_ROOT / p).resolve()


def _set_dotted(d: dict, key: str, value) -> None:
    """``d[a][b] = value`` for key ``a.b`` (a dict parameter's entry; its other entries kept)."""
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        current = d.get(part, DEFAULTS.get(part) if depth == 0 else None)
        d[part] = copy.deepcopy(current) if isinstance(current, dict) else {}
        d = d[part]
    d[parts[-1]] = value


# --------------------------------------------------------------------------------- one run, on disk

def status_of(output_dir) -> str:
    """done | failed | partial (started, neither finished nor failed: killed) | todo (``rundir.status``)."""
    return rundir.status(output_dir)


_notebook_meta = rundir.notebook_meta


def _failure_reason(out: Path, exc: BaseException | None = None) -> str:
    recorded = rundir.failure_reason(out)
    if recorded:
        return _one_line(recorded)
    if exc is None:
        return "unknown (no failure.json)"
    if hasattr(exc, "ename"):  # PapermillExecutionError
        return _one_line(f"{exc.ename}: {exc.evalue}")
    return _one_line(f"{type(exc).__name__}: {exc}")


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


@contextlib.contextmanager
def _quiet(logger_name: str, level: int = logging.ERROR):
    log = logging.getLogger(logger_name)
    before = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(before)


@contextlib.contextmanager
def _run_lock(out: Path, wait: bool = False):
    """Exclusive lock of one run across processes; yields False when another holds it (``wait``: waits for it)."""
    try:
        import fcntl
        lock_dir = out.parent / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        fh = open(lock_dir / f"{out.name}.lock", "w")
    except (ImportError, OSError):
        yield True
        return
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except OSError:  # a file system without locks: go on unlocked
            pass
        yield True
    finally:
        fh.close()


def run_one(run: dict, notebook: str | os.PathLike = NOTEBOOK, *, kernel_name: str = KERNEL,
            cwd: str | os.PathLike | None = None, start_retries: int = 2) -> dict:
    """Execute the notebook for one run into its folder; never raises for a failed run.

    Returns ``{id, output_dir, notebook, status (done|skipped|failed|busy), wall_s, error, host, attempts}``.
    """
    out = Path(run["output_dir"])
    result = {"id": out.name, "output_dir": str(out), "notebook": str(out / EXECUTED_NOTEBOOK), "status": None,
              "wall_s": None, "error": None, "host": socket.gethostname(), "attempts": 0}
    unsafe = injection_problems(run)
    if unsafe:  # validate() refuses these; a caller that skipped it gets no code run either
        return {**result, "status": FAILED, "error": "refused before running: " + "; ".join(unsafe)}
    if rundir.is_done(out):
        return {**result, "status": SKIPPED, "wall_s": _notebook_meta(out).get("duration")}
    with _run_lock(out) as mine:
        if not mine:
            return {**result, "status": BUSY, "error": "another process is running this run"}
        if rundir.is_done(out):
            return {**result, "status": SKIPPED, "wall_s": _notebook_meta(out).get("duration")}
        import jupytext
        import papermill
        from jupyter_client.kernelspec import NoSuchKernel
        from papermill.exceptions import PapermillExecutionError

        nb = jupytext.read(_project_path(notebook))
        cwd = str(cwd or config.PROJECT_ROOT)
        t0 = time.time()
        # the parameters were validated against longtail.params.SCHEMA; papermill's own parameter
        # inspection only adds noise ("Passed unknown parameter" when it cannot parse a comment)
        with _quiet("papermill"):
            for attempt in range(start_retries + 1):
                result["attempts"] = attempt + 1
                try:
                    _clean(out)
                    rundir.mark(out, rundir.RUNNING, attempt=attempt + 1)
                    papermill.execute_notebook(nb, str(out / EXECUTED_NOTEBOOK), parameters=dict(run),
                                               kernel_name=kernel_name, cwd=cwd, progress_bar=False,
                                               log_output=False, extra_arguments=KERNEL_ARGS,
                                               # every output is in by then and the run's files are
                                               # written: killing the kernel saves ~1 s of torch teardown
                                               shutdown_kernel="immediate")
                    result["status"] = DONE if (out / rundir.RESULT_FILE).exists() else FAILED
                    if result["status"] == FAILED:
                        result["error"] = f"the notebook finished but wrote no {rundir.RESULT_FILE}"
                    break
                except PapermillExecutionError as exc:
                    result.update(status=FAILED, error=_failure_reason(out, exc))
                    break
                except NoSuchKernel as exc:
                    result.update(status=FAILED, error=f"no Jupyter kernel named {kernel_name!r} ({exc}); register "
                                                        "it with `make setup` (ipykernel install --sys-prefix "
                                                        "--name longtail)")
                    break
                except Exception as exc:  # kernel start-up (port clash, time-out, died) or papermill itself
                    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        # a full disk is no start-up hiccup: retrying cannot help
                        named = "while writing" in str(exc)  # fileio's writes name the file already
                        result.update(status=FAILED, error=_one_line(exc if named else write_error(exc, out, "the run")))
                        break
                    started = (out / rundir.PARAMS_FILE).exists()
                    if not started and attempt < start_retries:
                        print(f"[grid] {out.name}: kernel start-up failed ({_one_line(repr(exc), 200)}); retrying",
                              file=sys.stderr, flush=True)
                        time.sleep(1 + attempt + random.random() * 2)
                        continue
                    result.update(status=FAILED, error=_failure_reason(out, exc))
                    break
        result["wall_s"] = round(time.time() - t0, 2)
        # done only now: the whole notebook ran (a cell failing after metrics.json was written is a failure)
        try:
            rundir.mark(out, result["status"], error=result["error"], wall_s=result["wall_s"])
        except OSError as exc:  # the run stays "running" on disk (partial): the next call redoes it
            result.update(status=FAILED, error=_one_line(f"{result['error'] or 'finished'}; then {exc}"))
    return result


def injection_problems(params: dict) -> list[str]:
    """The parameters whose papermill-injected source is not a plain literal equal to the value.

    papermill writes each parameter into the notebook as Python source; for a type it does not
    know (bytes, set, ...) it pastes ``str(value)`` between quotes, which a crafted value can close
    to run code.  Each value's source must parse with ``ast.literal_eval`` (literals only, never a
    call) back to the same JSON; anything else is refused before a kernel starts.
    """
    import ast

    from papermill.translators import PythonTranslator

    bad = [f"{e}" for k, v in params.items() for e in json_type_errors(v, str(k))]
    for key, value in params.items():
        if not isinstance(key, str) or not key.isidentifier():
            bad.append(f"parameter name {key!r:.80} is not a Python identifier")
            continue
        source = PythonTranslator.translate(value)
        try:
            same = json.dumps(ast.literal_eval(source), sort_keys=True) == json.dumps(value, sort_keys=True)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            same = False
        if not same:
            bad.append(f"{key}: its notebook source {source!r:.120} is not a literal of the value")
    return list(dict.fromkeys(bad))


def _clean(out: Path) -> None:
    """An empty run folder: nothing of a partial or failed earlier attempt is needed."""
    if out.is_dir():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


# -------------------------------------------------------------------------------------- executors

@dataclass
class RunOutcome:
    id: str
    label: dict
    status: str  # done (run now) | skipped (done before) | failed | busy | submitted | todo (not run)
    output_dir: str
    notebook: str
    wall_s: float | None = None
    error: str | None = None


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
        left = [status_of(o.output_dir) for o in self.outcomes if o.status == TODO]
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


def _outcome(run: dict, label: dict, r: dict) -> RunOutcome:
    return RunOutcome(id=r["id"], label=label, status=r["status"], output_dir=r["output_dir"], notebook=r["notebook"],
                      wall_s=r.get("wall_s"), error=r.get("error"))


def _visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch
        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no torch / no driver: no GPUs
        return []


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first found, then theirs), from /proc (Linux; [] elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def _kill_processes(pids) -> None:
    """SIGKILL each process that still exists (a kernel or worker of an interrupted grid)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _die_with(parent_pid: int) -> None:
    """This process dies when ``parent_pid`` does: PR_SET_PDEATHSIG on Linux, and a check for a parent
    that died before it was set.  (Its kernels follow it: ipykernel exits when its parent is gone.)"""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the grid kills its workers when it is interrupted
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


def _init_worker(slots, gpus: list[str], threads: int | None, grid_pid: int | None = None) -> None:
    """Per worker process, before any kernel starts: its GPU and its CPU thread budget (inherited by kernels);
    it dies with the grid, and leaves Ctrl-C to the grid (which stops every worker and kernel)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if grid_pid is not None:
        _die_with(grid_pid)
    slot = slots.get()
    if len(gpus) > 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(threads))


def _run_local(todo, labels, *, notebook, jobs, kernel_name, start_retries, report) -> None:
    one = functools.partial(run_one, notebook=str(notebook), kernel_name=kernel_name, start_retries=start_retries)
    if jobs <= 1 or len(todo) <= 1:
        try:
            for run, label in zip(todo, labels):
                report(_outcome(run, label, one(run)))
        except BaseException:  # interrupted: the running kernel goes too, now
            _kill_processes(_descendants(os.getpid()))
            raise
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = mp.get_context("spawn")
    workers = min(jobs, len(todo))
    slots = ctx.Queue()
    for i in range(workers):
        slots.put(i)
    gpus = _visible_gpus()
    threads = None if gpus else max(1, (os.cpu_count() or 1) // workers)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(slots, gpus, threads, os.getpid()))
    try:
        futures = {pool.submit(one, run): (run, label) for run, label in zip(todo, labels)}
        for fut in as_completed(futures):
            run, label = futures[fut]
            try:
                r = fut.result()
            except Exception as exc:  # noqa: BLE001 - a worker died (killed, out of memory): a run failure
                out = Path(run["output_dir"])
                r = {"id": out.name, "output_dir": str(out), "notebook": str(out / EXECUTED_NOTEBOOK),
                     "status": FAILED, "error": f"worker process failed: {_failure_reason(out, exc)}"}
            report(_outcome(run, label, r))
    except BaseException:  # interrupted: no run may start after this; workers and kernels stop now
        workers = list(getattr(pool, "_processes", {}) or {})  # (not multiprocessing's resource tracker)
        _kill_processes([*(k for w in workers for k in _descendants(w)), *workers])
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def make_submitit_executor(folder: Path, *, cluster: str = "slurm", partition: str | None = None,
                           array_parallelism: int = 8, timeout_min: int = 240, gpus_per_task: int = 1,
                           cpus_per_task: int | None = 8, mem_gb: float | None = None, name: str = "longtail",
                           extra: dict | None = None):
    """A submitit AutoExecutor (cluster slurm, or local / debug for tests) with the grid's job parameters."""
    import submitit

    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise GridError("--executor slurm: no SLURM here (sbatch not found); run on the cluster's login node, "
                        "or use --executor local")
    ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params = dict(timeout_min=int(timeout_min), gpus_per_node=int(gpus_per_task), name=name,
                  slurm_array_parallelism=int(array_parallelism), nodes=1, tasks_per_node=1)
    if cpus_per_task:
        params["cpus_per_task"] = int(cpus_per_task)
    if mem_gb:
        params["mem_gb"] = float(mem_gb)
    if partition:
        params["slurm_partition"] = partition
    params.update(extra or {})
    ex.update_parameters(**params)
    return ex


def _watch_grid(grid_pid: int, poll_s: float = 0.5) -> None:
    """A thread that ends this process (and its kernel) once the grid process ``grid_pid`` is gone:
    submitit's local executor starts tasks that would otherwise outlive a killed grid."""
    def watch():
        while True:
            try:
                os.kill(grid_pid, 0)
            except ProcessLookupError:
                _kill_processes(_descendants(os.getpid()))
                os._exit(1)
            except OSError:
                pass
            time.sleep(poll_s)
    threading.Thread(target=watch, name="watch-grid", daemon=True).start()


def _run_one_task(run: dict, grid_pid: int | None = None, **kw) -> dict:
    """``run_one`` in a SLURM array task: the kernel's CPU threads follow the task's CPUs.
    ``grid_pid`` (submitit's local executor, same machine): the task dies with the grid."""
    if grid_pid is not None:
        _watch_grid(grid_pid)
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, cpus)
    return run_one(run, **kw)


def _run_submitit(todo, labels, grid: Grid, *, kernel_name, start_retries, report, wait: bool, cluster: str,
                  poll_s: float | None = None, **executor_kw) -> list:
    logs = grid.output_root / SLURM_LOG_FOLDER
    ex = make_submitit_executor(logs, cluster=cluster, name=f"lt-{grid.name}", **executor_kw)
    one = functools.partial(_run_one_task, notebook=str(grid.notebook), kernel_name=kernel_name,
                            start_retries=start_retries, grid_pid=os.getpid() if cluster == "local" else None)
    jobs = ex.map_array(one, todo)
    if jobs:
        print(f"submitted {len(jobs)} run(s) as job array {jobs[0].job_id.split('_')[0]} ({cluster}); "
              f"logs: {logs}", flush=True)
    if not wait:
        for run, label, job in zip(todo, labels, jobs):
            out = Path(run["output_dir"])
            report(RunOutcome(out.name, label, SUBMITTED, str(out), str(out / EXECUTED_NOTEBOOK),
                              error=f"job {job.job_id}"))
        return jobs
    poll_s = poll_s if poll_s is not None else (SLURM_POLL_S if cluster == "slurm" else 0.5)
    pending = list(zip(todo, labels, jobs))
    try:
        _wait_for(pending, cluster, poll_s, report)
    except KeyboardInterrupt:
        if cluster == "local":  # the tasks are this machine's processes: they stop with the grid
            _kill_processes(_descendants(os.getpid()))
        elif pending:
            print(f"the submitted SLURM jobs go on (scancel {jobs[0].job_id.split('_')[0]} stops them); "
                  "rerun the same command to wait for them", file=sys.stderr, flush=True)
        raise
    return jobs


def _wait_for(pending, cluster, poll_s, report) -> None:
    # on SLURM: squeue and the result files, not submitit's sacct (absent without accounting; see longtail.slurm)
    watch = QueueWatch() if cluster == "slurm" else None
    while pending:
        still = []
        ended = watch.ended([job for *_, job in pending]) if watch else {}
        for run, label, job in pending:
            running = job.job_id not in ended if watch else cluster != "debug" and not job.done()
            if running:
                still.append((run, label, job))
                continue
            if ended.get(job.job_id):  # the task ended without a result: its state and log tail
                out = Path(run["output_dir"])
                report(_outcome(run, label, {"id": out.name, "output_dir": str(out), "status": FAILED,
                                             "notebook": str(out / EXECUTED_NOTEBOOK), "error": ended[job.job_id]}))
                continue
            try:
                r = job.result()
            except Exception as exc:  # noqa: BLE001 - the task died (time limit, node failure, cancelled)
                out = Path(run["output_dir"])
                why = _failure_reason(out, exc)
                if watch is not None and not rundir.failure_reason(out):  # the traceback is at the log's end
                    why = f"{type(exc).__name__} in the job; {slurm_log_quote(job)}"
                r = {"id": out.name, "output_dir": str(out), "notebook": str(out / EXECUTED_NOTEBOOK),
                     "status": FAILED, "error": f"job {job.job_id}: {why}"}
            report(_outcome(run, label, r))
        pending[:] = still
        if pending:
            time.sleep(poll_s)


def run_grid(grid: Grid | str | os.PathLike, jobs: int = 1, only: dict | None = None, executor: str = "local", *,
             output_root=None, sets: dict | None = None, kernel_name: str = KERNEL, start_retries: int = 2,
             submitit_cluster: str = "slurm", slurm_partition: str | None = None, slurm_array_parallelism: int = 8,
             slurm_timeout_min: int = 240, slurm_gpus_per_task: int = 1, slurm_cpus_per_task: int | None = 8,
             slurm_mem_gb: float | None = None, slurm_extra: dict | None = None, wait: bool = True,
             slurm_poll_s: float | None = None, out=None) -> Summary:
    """Run (the selected runs of) a grid; returns the Summary (``.ok`` False when a run failed).

    Raises GridError, before any run starts, when the file or any run's parameters are invalid.
    """
    out = out or sys.stdout
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
        if status_of(run["output_dir"]) == DONE:
            outcomes[i] = RunOutcome(Path(run["output_dir"]).name, label, SKIPPED, run["output_dir"],
                                     str(Path(run["output_dir"]) / EXECUTED_NOTEBOOK),
                                     wall_s=_notebook_meta(Path(run["output_dir"])).get("duration"))
        else:
            todo.append(run), todo_labels.append(label), todo_idx.append(i)
    where = f" ({grid.path})" if grid.path else ""
    how = f"{jobs} local worker(s)" if executor == "local" else f"submitit ({submitit_cluster})"
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
            _run_local(todo, todo_labels, notebook=grid.notebook, jobs=jobs, kernel_name=kernel_name,
                       start_retries=start_retries, report=report)
        elif todo:
            submitted_jobs = _run_submitit(
                todo, todo_labels, grid, kernel_name=kernel_name, start_retries=start_retries, report=report,
                wait=wait, cluster=submitit_cluster, partition=slurm_partition,
                array_parallelism=slurm_array_parallelism, timeout_min=slurm_timeout_min,
                gpus_per_task=slurm_gpus_per_task, cpus_per_task=slurm_cpus_per_task, mem_gb=slurm_mem_gb,
                extra=slurm_extra, poll_s=slurm_poll_s)
        _settle_busy(outcomes, grid, out)
    except KeyboardInterrupt as exc:  # workers and kernels were stopped by the executor
        interrupted = getattr(exc, "signum", int(signal.SIGINT))
    finally:
        table_error = None
        try:
            write_table(full, outcomes={grid.ids[i]: o for i, o in outcomes.items()})
        except OSError as exc:  # a full disk must not also lose the summary
            table_error = _one_line(exc)
    ordered = [outcomes.get(i) or RunOutcome(Path(r["output_dir"]).name, lab, TODO, r["output_dir"],
                                             str(Path(r["output_dir"]) / EXECUTED_NOTEBOOK))
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
        with _run_lock(Path(o.output_dir), wait=True):
            state = status_of(o.output_dir)
        if state == DONE:
            outcomes[i] = RunOutcome(o.id, o.label, SKIPPED, o.output_dir, o.notebook,
                                     wall_s=_notebook_meta(Path(o.output_dir)).get("duration"))
        elif state == FAILED:
            outcomes[i] = RunOutcome(o.id, o.label, FAILED, o.output_dir, o.notebook,
                                     error="in another grid process: " + _failure_reason(Path(o.output_dir)))


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
        status = o.status if o is not None and o.status != SKIPPED else status_of(out)
        wall = o.wall_s if o is not None and o.wall_s is not None else _notebook_meta(out).get("duration")
        error = o.error if o is not None else (_failure_reason(out) if status == FAILED else None)
        rows.append({"id": out.name, **{k: _short(v) if isinstance(v, (dict, list)) else v for k, v in label.items()},
                     "status": status, "wall_s": None if wall is None else round(float(wall), 2), "error": error,
                     "output_dir": str(out)})
    path = grid.table_path
    grid.output_root.mkdir(parents=True, exist_ok=True)
    from .fileio import atomic_write_text
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


def _parse_sets(items: list[str]) -> dict:
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
    examples = __doc__.split("Command line::")[1].split("\n\n")[1]
    ap = argparse.ArgumentParser(prog="python -m longtail.grid", description=__doc__.split("\n\n")[0],
                                 epilog="examples:\n" + examples + "\n\nsee `pydoc longtail.grid` for the file format",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("params", help="the grid's parameter file (YAML), e.g. params/default.yaml")
    ap.add_argument("--dry-run", action="store_true", help="list the runs (id, done/failed/partial/todo) and exit")
    ap.add_argument("--jobs", type=int, default=1, help="parallel local workers (one GPU each when there are several)")
    ap.add_argument("--only", action="append", default=[], metavar="KEY=VALUE[,VALUE]",
                    help="run only runs with one of these values (repeatable; AND over keys)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                    help="override a base parameter (VALUE read as YAML; KEY.SUB for a dict parameter)")
    ap.add_argument("--executor", choices=("local", "slurm"), default="local")
    ap.add_argument("--output-root", default=None, help="folder of the run folders (default: from the file)")
    ap.add_argument("--kernel", default=KERNEL, help="Jupyter kernel name (default: %(default)s)")
    s = ap.add_argument_group("SLURM (--executor slurm, through submitit)")
    s.add_argument("--slurm-partition", default=None)
    s.add_argument("--slurm-array-parallelism", type=int, default=8, help="array tasks running at once")
    s.add_argument("--slurm-timeout-min", type=int, default=240, help="time limit of one run (minutes)")
    s.add_argument("--slurm-gpus-per-task", type=int, default=1)
    s.add_argument("--slurm-cpus-per-task", type=int, default=8)
    s.add_argument("--slurm-mem-gb", type=float, default=None)
    s.add_argument("--slurm-param", action="append", default=[], metavar="KEY=VALUE",
                   help="any other submitit parameter, e.g. slurm_account=abc (repeatable)")
    s.add_argument("--slurm-poll-s", type=float, default=None,
                   help=f"seconds between looks at the queue while waiting (default: {SLURM_POLL_S:g})")
    s.add_argument("--no-wait", action="store_true", help="submit and return; rerun with --dry-run for the state")
    s.add_argument("--submitit-cluster", choices=("slurm", "local", "debug"), default="slurm",
                   help=argparse.SUPPRESS)  # local / debug: the submitit code path without SLURM (tests)
    args = ap.parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)  # kill / scancel: stop as for Ctrl-C
    try:
        only = _parse_only(args.only)
        sets = _parse_sets(args.sets)
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
        summary = run_grid(grid, jobs=args.jobs, only=only,
                           executor=args.executor, kernel_name=args.kernel, submitit_cluster=args.submitit_cluster,
                           slurm_partition=args.slurm_partition, slurm_array_parallelism=args.slurm_array_parallelism,
                           slurm_timeout_min=args.slurm_timeout_min, slurm_gpus_per_task=args.slurm_gpus_per_task,
                           slurm_cpus_per_task=args.slurm_cpus_per_task, slurm_mem_gb=args.slurm_mem_gb,
                           slurm_extra=extra, wait=not args.no_wait, slurm_poll_s=args.slurm_poll_s)
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
