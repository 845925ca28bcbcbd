"""The run folder: the names of its files, its status, its id, and how its files are written.

One home for what ``run`` (which writes a run folder), ``grid`` (which runs the notebook into it
and skips finished runs) and ``results`` (which reads finished runs) must agree on:

| file                    | written by | what                                                     |
|-------------------------|------------|----------------------------------------------------------|
| ``params.json``         | run        | the resolved parameters (defaults filled in)             |
| ``classes.csv``         | run        | per class: name, train count (realised), long-tailed profile count, val and test counts, group (from the long-tailed profile) |
| ``history.csv``         | run        | one row per epoch (loss, accuracy, lr, validation, throughput) |
| ``predictions.npz``     | run        | test logits, labels, the long-tailed sample weights, image ids; validation logits, labels and ids; training image ids |
| ``environment.json``    | run        | package versions, machine, device, git commit (and changed files), wall and CPU time |
| ``last.pt``/``best.pt``/``crt_head.pt`` | run | checkpoints of the head (linear), the trained part (partial) or the model (``save_checkpoints``) |
| ``metrics.csv``/``metrics.json`` | run | the final metrics row with ``wall_s`` and ``cpu_s`` (process CPU seconds, all threads); ``metrics.json`` last, atomically |
| ``failure.json``        | run        | why ``run_training`` failed (a non-finite loss, an exception) |
| ``train.ipynb``         | grid       | the executed notebook (papermill)                        |
| ``status.json``         | grid       | ``running`` while the notebook runs, then ``done`` or ``failed`` |

Status (:func:`status`): a run is **done** when its ``metrics.json`` exists *and* whatever ran it
completed: the grid's ``status.json`` says ``done`` (the whole notebook ran without error), or,
for a folder that no grid ran (``run_training`` called directly), there is no failure and no
unfinished executed notebook.  A run whose notebook failed after ``metrics.json`` was written (a
plotting cell) is **failed**: the grid redoes it and ``results`` never reports it.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from .fileio import atomic_write_json
from .params import DEFAULTS, resolve

PARAMS_FILE = "params.json"
CLASSES_FILE = "classes.csv"
HISTORY_FILE = "history.csv"
PREDICTIONS_FILE = "predictions.npz"
ENVIRONMENT_FILE = "environment.json"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
CRT_HEAD_FILE = "crt_head.pt"
METRICS_CSV = "metrics.csv"
RESULT_FILE = "metrics.json"
FAILURE_FILE = "failure.json"
NOTEBOOK_FILE = "train.ipynb"
STATUS_FILE = "status.json"

#: statuses of a run folder on disk
DONE, FAILED, PARTIAL, TODO = "done", "failed", "partial", "todo"
#: what ``status.json`` can say
RUNNING = "running"

#: parameters that say where things are or how fast they run, not what is computed (cuda_graph replays
#: the same kernels as eager; kept out so that adding it left every earlier run's id unchanged)
NOT_IN_ID = ("output_dir", "data_root", "weights_dir", "save_checkpoints", "cuda_graph")
#: parameters that choose what the tables show of a run, not what it computes (every run computes both
#: evaluation protocols): hashed at their default whatever their value, so that a thesis-protocol run
#: has the id of its weighted-protocol twin, and every weighted run keeps the id it always had
SHOWN_NOT_COMPUTED = ("eval_protocol",)
#: parameters added after runs existed whose default computes what those runs computed: hashed only
#: away from their default, so that adding them left every earlier run's id unchanged
HASHED_AWAY_FROM_DEFAULT = ("group_thresholds", "test_longtailed_rule", "freeze_bn", "head_init",
                            "backbone_lr_scale", "feature_power", "feature_standardize", "tune")


def run_id(params: dict) -> str:
    """Stable id of a run: a hash of its resolved parameters (``params.resolve``; locations excluded,
    ``SHOWN_NOT_COMPUTED`` at their defaults)."""
    return _ids(params)[0]


def legacy_run_id(params: dict) -> str:
    """The id a run had while the evaluation protocol was part of it (a thesis-protocol run's old
    folder name), so that folders written then are still found."""
    return _ids(params)[1]


def _ids(params: dict) -> tuple[str, str]:
    """(run id, legacy run id) of ``params``, resolved once."""
    resolved = resolve(params)
    ident = {k: v for k, v in resolved.items() if k not in NOT_IN_ID
             and not (k in HASHED_AWAY_FROM_DEFAULT and v == DEFAULTS[k])}
    current = {**ident, **{k: DEFAULTS[k] for k in SHOWN_NOT_COMPUTED if k in ident}}
    return _hash(current), _hash(ident)


def _hash(ident: dict) -> str:
    return hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]


def folder_of(root: str | os.PathLike, params: dict) -> Path:
    """The run folder of ``params`` below ``root``: ``<root>/<run id>``, or the folder of its legacy id
    where only that one holds a finished run."""
    root = Path(root)
    new, old = (root / rid for rid in _ids(params))
    return old if old != new and not is_done(new) and is_done(old) else new


def read_json(path: str | os.PathLike):
    """A JSON file; a ValueError naming the file when it is empty or corrupt."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def write_json(out: str | os.PathLike, name: str, obj) -> Path:
    """``<out>/<name>`` written atomically (a reader sees the old file or the new one, never half)."""
    path = Path(out) / name
    atomic_write_json(path, obj)
    return path


def notebook_meta(out: str | os.PathLike) -> dict:
    """papermill's metadata of the executed notebook (``{}`` when there is none or it is unreadable)."""
    try:
        return json.loads((Path(out) / NOTEBOOK_FILE).read_text())["metadata"].get("papermill", {}) or {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def notebook_seconds(out: str | os.PathLike) -> float | None:
    """The executed notebook's wall time (papermill's ``duration``; None when unknown)."""
    return notebook_meta(out).get("duration")


def recorded_status(out: str | os.PathLike) -> dict:
    """The grid's ``status.json`` (``{}`` when absent or unreadable)."""
    try:
        rec = json.loads((Path(out) / STATUS_FILE).read_text())
        return rec if isinstance(rec, dict) else {}
    except (OSError, ValueError):
        return {}


def mark(out: str | os.PathLike, state: str, **info) -> None:
    """Record ``state`` (running | done | failed) in ``status.json``, with the time, host and pid."""
    import socket
    write_json(out, STATUS_FILE, {"status": state, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                  "host": socket.gethostname(), "pid": os.getpid(), **info})


def status(out: str | os.PathLike) -> str:
    """done | failed | partial (started, neither finished nor failed: killed, or running) | todo."""
    out = Path(out)
    rec = recorded_status(out).get("status")
    has_result = (out / RESULT_FILE).exists()
    if rec == DONE:
        return DONE if has_result else PARTIAL
    if rec == FAILED or (out / FAILURE_FILE).exists():
        return FAILED
    if rec == RUNNING:
        return PARTIAL
    meta = notebook_meta(out)
    if meta.get("exception"):
        return FAILED
    if (out / NOTEBOOK_FILE).exists() and not meta.get("end_time"):
        return PARTIAL  # a notebook that never finished (its kernel or its grid was killed)
    if has_result:
        return DONE
    if out.is_dir() and any(out.iterdir()):
        return PARTIAL
    return TODO


def is_done(out: str | os.PathLike) -> bool:
    """``status(out) == DONE``: a finished run, to skip (grid) or to read (results)."""
    return status(out) == DONE


def failure_reason(out: str | os.PathLike) -> str | None:
    """Why a run failed, in one line, from ``failure.json`` or ``status.json`` (None when unknown)."""
    out = Path(out)
    try:
        f = json.loads((out / FAILURE_FILE).read_text())
        return f"{f.get('error')}: {f.get('message')}"
    except (OSError, ValueError, AttributeError):
        pass
    rec = recorded_status(out)
    return rec.get("error") if rec.get("status") == FAILED else None


def start(out: str | os.PathLike) -> None:
    """Forget an earlier attempt's outcome before ``run_training`` writes the folder: its
    ``metrics.json`` and ``failure.json``, and a ``status.json`` that is not the grid's
    ``running`` record of this very attempt."""
    out = Path(out)
    for name in (RESULT_FILE, FAILURE_FILE):
        (out / name).unlink(missing_ok=True)
    if recorded_status(out).get("status") != RUNNING:
        (out / STATUS_FILE).unlink(missing_ok=True)
