"""Where a grid's runs execute: one run's notebook into its folder, local worker processes, and
SLURM job arrays through submitit.

``run_one`` executes the training notebook for one run (``longtail.notebook.execute``) into its
folder, under a per-run lock (``<output_root>/.locks/<id>.lock``) so that two grid processes never
run one run at once, retrying a kernel that failed to start; it never raises for a failed run.
``run_local`` runs many in a spawn-context process pool (one GPU a worker when there are several,
``cpu_count // N`` CPU threads a worker otherwise; each worker forks its runs' kernels from its own
server of preloaded modules, ``longtail.kernels``; workers, servers and kernels die with the grid), and
``run_submitit`` submits them as one job array (``SlurmOptions``) and waits through ``squeue`` and
the jobs' result files (``longtail.slurm``).  Each reports a ``RunOutcome`` per run.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import random
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import rundir
from .fileio import one_line, write_error
from .gridspec import NOTEBOOK, GridError
from .kernels import close_servers
from .notebook import KERNEL, Execution, execute as execute_notebook, injection_problems
from .slurm import LOG_FOLDER as SLURM_LOG_FOLDER, POLL_S as SLURM_POLL_S, QueueWatch, log_quote as slurm_log_quote

DONE, FAILED = rundir.DONE, rundir.FAILED
#: outcomes of this invocation beside done and failed: done before, running in another grid process,
#: submitted without waiting
SKIPPED, BUSY, SUBMITTED = "skipped", "busy", "submitted"


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
class SlurmOptions:
    """How ``--executor slurm`` submits a grid's runs (one job array, one run a task) and waits for
    them; these defaults are the command line's."""

    partition: str | None = None
    array_parallelism: int = 8  # array tasks running at once
    timeout_min: int = 240  # time limit of one run (minutes)
    gpus_per_task: int = 1
    cpus_per_task: int | None = 8  # also the kernel's OMP_NUM_THREADS / MKL_NUM_THREADS
    mem_gb: float | None = None
    extra: dict = field(default_factory=dict)  # any other submitit parameter, e.g. {"slurm_account": "abc"}
    poll_s: float | None = None  # seconds between looks at the queue (None: slurm.POLL_S; 0.5 off SLURM)
    wait: bool = True  # False: submit and return
    cluster: str = "slurm"  # submitit's cluster: slurm, or local / debug (the same code path without SLURM)


def failure_reason(out: Path, exc: BaseException | None = None) -> str:
    """Why a run failed, in one line: what the run recorded (``rundir.failure_reason``), else ``exc``."""
    recorded = rundir.failure_reason(out)
    if recorded:
        return one_line(recorded)
    if exc is None:
        return f"unknown (no {rundir.FAILURE_FILE})"
    return one_line(f"{type(exc).__name__}: {exc}")


def _result(out: Path, status: str | None = None, error: str | None = None, **more) -> dict:
    return {"id": out.name, "output_dir": str(out), "notebook": str(out / rundir.NOTEBOOK_FILE), "status": status,
            "error": error, **more}


def _outcome(run: dict, label: dict, r: dict) -> RunOutcome:
    return RunOutcome(id=r["id"], label=label, status=r["status"], output_dir=r["output_dir"], notebook=r["notebook"],
                      wall_s=r.get("wall_s"), error=r.get("error"))


# ------------------------------------------------------------------------------------------ one run

@contextlib.contextmanager
def run_lock(out: Path, wait: bool = False):
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
            cwd: str | os.PathLike | None = None, start_retries: int = 2, forked: bool = False) -> dict:
    """Execute the notebook for one run into its folder; never raises for a failed run.

    ``forked``: its kernel is forked from this process's server of preloaded modules
    (``longtail.kernels``; for a process that runs many runs, as ``run_local``'s workers do); a
    start-up retry starts an ordinary kernel.

    Returns ``{id, output_dir, notebook, status (done|skipped|failed|busy), wall_s, error, host, attempts}``.
    """
    out = Path(run["output_dir"])
    result = _result(out, wall_s=None, host=socket.gethostname(), attempts=0)
    unsafe = injection_problems(run)
    if unsafe:  # validate() refuses these; a caller that skipped it gets no code run either
        return {**result, "status": FAILED, "error": "refused before running: " + "; ".join(unsafe)}
    if rundir.is_done(out):
        return {**result, "status": SKIPPED, "wall_s": rundir.notebook_seconds(out)}
    with run_lock(out) as mine:
        if not mine:
            return {**result, "status": BUSY, "error": "another process is running this run"}
        if rundir.is_done(out):
            return {**result, "status": SKIPPED, "wall_s": rundir.notebook_seconds(out)}
        from jupyter_client.kernelspec import NoSuchKernel

        t0 = time.time()
        for attempt in range(start_retries + 1):
            result["attempts"] = attempt + 1
            try:
                _clean(out)
                rundir.mark(out, rundir.RUNNING, attempt=attempt + 1)
            except OSError as exc:  # the run folder cannot be written (a full disk): a failure, below
                ex = Execution(out / rundir.NOTEBOOK_FILE, 0.0, exc)
            else:
                # a retried start is an ordinary one: a fork server that cannot give a working kernel
                # costs a run one retry, never the run
                ex = execute_notebook(notebook, out / rundir.NOTEBOOK_FILE, run, kernel_name=kernel_name, cwd=cwd,
                                      forked=forked and attempt == 0)
            exc = ex.error
            if ex.ok:
                result["status"] = DONE if (out / rundir.RESULT_FILE).exists() else FAILED
                if result["status"] == FAILED:
                    result["error"] = f"the notebook finished but wrote no {rundir.RESULT_FILE}"
            elif ex.cell_failed:
                result.update(status=FAILED, error=one_line(rundir.failure_reason(out) or ex.reason))
            elif isinstance(exc, NoSuchKernel):
                result.update(status=FAILED, error=ex.reason)
            elif isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                # a full disk is no start-up hiccup: retrying cannot help
                named = "while writing" in str(exc)  # fileio's writes name the file already
                result.update(status=FAILED, error=one_line(exc if named else write_error(exc, out, "the run")))
            elif not (out / rundir.PARAMS_FILE).exists() and attempt < start_retries:
                # the kernel did not start (a port clash, a time-out, it died): the run never began
                print(f"[grid] {out.name}: kernel start-up failed ({one_line(repr(exc), 200)}); retrying",
                      file=sys.stderr, flush=True)
                time.sleep(1 + attempt + random.random() * 2)
                continue
            else:
                result.update(status=FAILED, error=failure_reason(out, exc))
            break
        result["wall_s"] = round(time.time() - t0, 2)
        # done only now: the whole notebook ran (a cell failing after metrics.json was written is a failure)
        try:
            rundir.mark(out, result["status"], error=result["error"], wall_s=result["wall_s"])
        except OSError as exc:  # the run stays "running" on disk (partial): the next call redoes it
            result.update(status=FAILED, error=one_line(f"{result['error'] or 'finished'}; then {exc}"))
    return result


def _clean(out: Path) -> None:
    """An empty run folder: nothing of a partial or failed earlier attempt is needed."""
    if out.is_dir():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


# ------------------------------------------------------------------------------- local processes

def _visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch
        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no torch / no driver: no GPUs
        return []


def local_jobs(jobs: int | None = None, workers_per_gpu: int | None = None, gpus: list[str] | None = None) -> int:
    """The number of local workers: ``jobs``, or ``workers_per_gpu`` times the visible GPUs (the
    workers are dealt round robin, so each GPU gets that many runs at once: a small model leaves
    most of a GPU idle).  Neither: 1.  Raises GridError for both, for a count below 1, or for
    ``workers_per_gpu`` where no GPU is visible."""
    if jobs is not None and workers_per_gpu is not None:
        raise GridError(f"--jobs {jobs} and --workers-per-gpu {workers_per_gpu}: choose one")
    for name, n in (("--jobs", jobs), ("--workers-per-gpu", workers_per_gpu)):
        if n is not None and n < 1:
            raise GridError(f"{name} {n}: must be at least 1")
    if workers_per_gpu is None:
        return jobs or 1
    gpus = _visible_gpus() if gpus is None else gpus
    if not gpus:
        raise GridError(f"--workers-per-gpu {workers_per_gpu}: no GPU is visible here (CUDA_VISIBLE_DEVICES, "
                        "torch.cuda); use --jobs N")
    return workers_per_gpu * len(gpus)


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


def run_local(todo, labels, *, notebook, jobs, kernel_name, start_retries, report, forked: bool = True) -> None:
    """``run_one`` for every run of ``todo`` (labels: their axis values) in ``jobs`` worker processes,
    calling ``report(RunOutcome)`` as each ends; on an interrupt every worker and kernel is killed.

    ``forked``: each worker (or this process, for one job) forks its runs' kernels from its own server
    of preloaded modules (``longtail.kernels``), which ends with the worker; False: each kernel starts
    on its own."""
    one = functools.partial(run_one, notebook=str(notebook), kernel_name=kernel_name, start_retries=start_retries,
                            forked=forked)
    if jobs <= 1 or len(todo) <= 1:
        try:
            for run, label in zip(todo, labels):
                report(_outcome(run, label, one(run)))
        except BaseException:  # interrupted: the running kernel (and its fork server) go too, now
            _kill_processes(_descendants(os.getpid()))
            raise
        finally:
            close_servers()
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
                r = _result(out, FAILED, f"worker process failed: {failure_reason(out, exc)}")
            report(_outcome(run, label, r))
    except BaseException:  # interrupted: no run may start after this; workers and kernels stop now
        workers = list(getattr(pool, "_processes", {}) or {})  # (not multiprocessing's resource tracker)
        _kill_processes([*(k for w in workers for k in _descendants(w)), *workers])
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


# ------------------------------------------------------------------------------ SLURM (submitit)

def make_submitit_executor(folder: Path, options: SlurmOptions | None = None, *, name: str = "longtail"):
    """A submitit AutoExecutor (cluster slurm, or local / debug for tests) with the job parameters of
    ``options``, logging to ``folder``."""
    import submitit

    o = options or SlurmOptions()
    if o.cluster == "slurm" and shutil.which("sbatch") is None:
        raise GridError("--executor slurm: no SLURM here (sbatch not found); run on the cluster's login node, "
                        "or use --executor local")
    ex = submitit.AutoExecutor(folder=str(folder), cluster=o.cluster)
    params = dict(timeout_min=int(o.timeout_min), gpus_per_node=int(o.gpus_per_task), name=name,
                  slurm_array_parallelism=int(o.array_parallelism), nodes=1, tasks_per_node=1)
    if o.cpus_per_task:
        params["cpus_per_task"] = int(o.cpus_per_task)
    if o.mem_gb:
        params["mem_gb"] = float(o.mem_gb)
    if o.partition:
        params["slurm_partition"] = o.partition
    params.update(o.extra or {})
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


def run_submitit(todo, labels, *, name: str, notebook, output_root: Path, options: SlurmOptions, kernel_name,
                 start_retries, report) -> list:
    """Submit ``todo`` as one job array (``<output_root>/slurm_logs``), then, unless ``options.wait``
    is False, wait for it, calling ``report(RunOutcome)`` as each run ends; returns submitit's jobs."""
    logs = output_root / SLURM_LOG_FOLDER
    cluster = options.cluster
    ex = make_submitit_executor(logs, options, name=f"lt-{name}")
    one = functools.partial(_run_one_task, notebook=str(notebook), kernel_name=kernel_name,
                            start_retries=start_retries, grid_pid=os.getpid() if cluster == "local" else None)
    jobs = ex.map_array(one, todo)
    if jobs:
        print(f"submitted {len(jobs)} run(s) as job array {jobs[0].job_id.split('_')[0]} ({cluster}); "
              f"logs: {logs}", flush=True)
    if not options.wait:
        for run, label, job in zip(todo, labels, jobs):
            report(_outcome(run, label, _result(Path(run["output_dir"]), SUBMITTED, f"job {job.job_id}")))
        return jobs
    poll_s = options.poll_s if options.poll_s is not None else (SLURM_POLL_S if cluster == "slurm" else 0.5)
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
    """Report each pending (run, label, job) as its job ends; ``pending`` keeps those still running."""
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
                report(_outcome(run, label, _result(Path(run["output_dir"]), FAILED, ended[job.job_id])))
                continue
            try:
                r = job.result()
            except Exception as exc:  # noqa: BLE001 - the task died (time limit, node failure, cancelled)
                out = Path(run["output_dir"])
                why = failure_reason(out, exc)
                if watch is not None and not rundir.failure_reason(out):  # the traceback is at the log's end
                    why = f"{type(exc).__name__} in the job; {slurm_log_quote(job)}"
                r = _result(out, FAILED, f"job {job.job_id}: {why}")
            report(_outcome(run, label, r))
        pending[:] = still
        if pending:
            time.sleep(poll_s)


