"""Watching a grid's SLURM job array through ``squeue`` and ``scontrol``, without ``sacct``.

submitit learns a job's state from ``sacct``, which needs SLURM's accounting database
(``slurmdbd``).  Where it is absent (a one-node cluster, many small clusters) ``sacct`` fails, the
state stays UNKNOWN, and a job that ended without a result (cancelled with ``scancel``, killed at
its time limit, failed before the task started) would be waited for forever.  The grid therefore
decides that an array task has ended from two sources that every SLURM installation has:

* its result file (submitit writes it when the task's function returns or raises): done;
* ``squeue -t all``, which lists pending, running and recently ended tasks (``MinJobAge``,
  default 300 s): a task listed in an ended state, or no longer listed at all (a pending array
  task cancelled before it started leaves no record), has ended.

A task that ended without a result is reported with its state, exit code and the last lines of its
log (``<output_root>/slurm_logs/<array>_<task>_0_log.err``, else ``.out``).
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

#: the folder of the job scripts, logs and results of a grid's SLURM jobs, in its output root
LOG_FOLDER = "slurm_logs"
#: seconds between two looks at the queue and the result files while the grid waits for its jobs
POLL_S = 15.0
#: squeue states of a task that may still produce a result (the others are ended states:
#: COMPLETED, CANCELLED, FAILED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, BOOT_FAIL, DEADLINE, PREEMPTED)
ACTIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
                           "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
                           "RESV_DEL_HOLD", "SPECIAL_EXIT"})
#: seconds to wait for the result file of a task that ended COMPLETED or left the queue: on a shared
#: file system a file can appear on the login node seconds after the compute node wrote it (submitit
#: waits as long in ``Job.result``)
RESULT_GRACE_S = 15.0
#: lines of a failed task's log quoted in its failure reason
LOG_TAIL_LINES = 8
#: characters of that quote, counted from its end
LOG_TAIL_CHARS = 800
#: seconds an squeue / scontrol call may take
COMMAND_TIMEOUT_S = 60


def queue_states(array_ids) -> dict[str, str] | None:
    """``{"<array>_<task>": state}`` of every task of these arrays that ``squeue -t all`` lists.

    Returns ``{}`` when the controller knows none of them any more, ``None`` when squeue could not
    answer (controller unreachable, time-out): then nothing can be concluded.
    """
    ids = sorted({str(a) for a in array_ids})
    if not ids:
        return {}
    try:
        p = subprocess.run(["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T",
                            f"--jobs={','.join(ids)}"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    if p.returncode != 0:
        return {} if "Invalid job id" in p.stderr else None
    states = {}
    for line in p.stdout.splitlines():
        task, _, state = line.strip().partition("|")
        if task:
            states[task] = state.strip().split()[0] if state.strip() else "UNKNOWN"
    return states


def job_details(job_id: str) -> dict:
    """``scontrol show job -o`` as a dict (JobState, Reason, ExitCode, ...); ``{}`` once the record is gone."""
    try:
        p = subprocess.run(["scontrol", "show", "job", "--oneliner", str(job_id)], capture_output=True, text=True,
                           timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = {}
    for item in p.stdout.split() if p.returncode == 0 else []:
        key, sep, value = item.partition("=")
        if sep and key not in fields:
            fields[key] = value
    return fields


def log_tail(job, lines: int = LOG_TAIL_LINES) -> tuple[Path | None, list[str]]:
    """The last non-empty lines of a submitit job's stderr log, else of its stdout log."""
    for path in (Path(job.paths.stderr), Path(job.paths.stdout)):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        kept = [line.strip() for line in text.splitlines() if line.strip()]
        if kept:
            return path, kept[-lines:]
    return None, []


def lost_reason(job, state: str | None) -> str:
    """Why a task ended without a result: its state and exit code, and the tail of its log (one line)."""
    details = job_details(job.job_id)
    state = details.get("JobState") or state
    if state:
        what = state
        if details.get("ExitCode") and details["ExitCode"] != "0:0":
            what += f", exit code {details['ExitCode']}"
        if details.get("Reason") and details["Reason"] != "None":
            what += f", {details['Reason']}"
    else:
        what = "no longer in the queue (cancelled before it started, or its record expired)"
    return f"job {job.job_id} {what}; it wrote no result; {log_quote(job)}"


def log_quote(job) -> str:
    """``last lines of <log>: a | b | c`` (at most LOG_TAIL_CHARS characters, from the end), or where no log is."""
    path, tail = log_tail(job)
    log = f"last lines of {path}: " + " | ".join(tail) if tail else f"no log in {Path(job.paths.stdout).parent}"
    return log if len(log) <= LOG_TAIL_CHARS else "..." + log[-LOG_TAIL_CHARS:]


class QueueWatch:
    """Which submitit jobs of SLURM arrays have ended, from their result files and ``squeue``."""

    def __init__(self, grace_s: float = RESULT_GRACE_S, err=None):
        self.grace_s = grace_s
        self.err = err or sys.stderr
        self._gone_since: dict[str, float] = {}
        self._squeue_failing = False

    def ended(self, jobs) -> dict[str, str | None]:
        """``{job_id: None}`` for a job whose result is there; ``{job_id: reason}`` for one that ended
        without a result; jobs still pending or running are absent."""
        out: dict[str, str | None] = {}
        waiting = []
        for job in jobs:
            if Path(job.paths.result_pickle).exists():
                out[job.job_id] = None
            else:
                waiting.append(job)
        if not waiting:
            return out
        states = queue_states(job.job_id.split("_")[0] for job in waiting)
        if states is None:
            if not self._squeue_failing:
                print("warning: squeue does not answer; waiting for the SLURM controller", file=self.err, flush=True)
            self._squeue_failing = True
            return out
        self._squeue_failing = False
        now = time.time()
        for job in waiting:
            state = states.get(job.job_id)
            if state in ACTIVE_STATES:
                continue
            if state not in (None, "COMPLETED"):  # CANCELLED, FAILED, TIMEOUT, ...: no result will come
                out[job.job_id] = lost_reason(job, state)
                continue
            since = self._gone_since.setdefault(job.job_id, now)  # COMPLETED or gone: its result may lag
            if now - since >= self.grace_s:
                out[job.job_id] = lost_reason(job, state)
        return out
