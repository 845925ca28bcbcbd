"""The grid's SLURM path on a real cluster: ``python -m longtail.grid params/tiny.yaml --executor slurm``
through real ``sbatch`` / ``squeue`` / ``scancel`` (submitit's SLURM executor).

Needs a SLURM cluster this machine can submit to whose nodes see this file system (the project,
its ``.venv`` and pytest's temporary folder): ``make slurm-up`` (``tests/slurm/local_cluster.sh up``)
sets up a one-node cluster on localhost where Debian's ``slurm-wlm`` can be installed.  Elsewhere
the test skips, naming what is missing.  Cost: about 6 notebook runs, 2 at a time (~1-2 minutes on
2 cores).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from longtail import grid as G
from longtail import executors, gridspec, notebook, rundir, slurm
from longtail.results import collect_runs

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "params" / "tiny.yaml"
TOOLS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo", "srun")
SET_UP = "`make slurm-up` (tests/slurm/local_cluster.sh up, as root) sets up a one-node cluster on localhost"
#: a sbatch set-up line that breaks array task 2 before its run starts, as a broken node would
BROKEN_NODE = "simulated broken node: no GPU driver"
FAIL_TASK_2 = f'if [ "$SLURM_ARRAY_TASK_ID" = 2 ]; then echo "{BROKEN_NODE}" >&2; exit 3; fi'


# ------------------------------------------------------------- the queue watch, with stand-in squeue / scontrol

def stand_in(bin_dir: Path, tool: str, stdout: str, rc: int = 0, stderr: str = "") -> None:
    (bin_dir / tool).write_text(f"#!/bin/sh\nprintf '%s' '{stdout}'\nprintf '%s' '{stderr}' >&2\nexit {rc}\n")
    (bin_dir / tool).chmod(0o755)


def fake_job(folder: Path, job_id: str, result: bool = False, err: str = "", out: str = ""):
    paths = SimpleNamespace(result_pickle=folder / f"{job_id}_0_result.pkl", stderr=folder / f"{job_id}_0_log.err",
                            stdout=folder / f"{job_id}_0_log.out")
    for path, text in ((paths.result_pickle, "x" if result else ""), (paths.stderr, err), (paths.stdout, out)):
        if text:
            path.write_text(text)
    return SimpleNamespace(job_id=job_id, paths=paths)


def test_queue_watch_from_squeue_and_result_files(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    stand_in(bin_dir, "squeue", "7_1|RUNNING\n7_2|PENDING\n7_3|CANCELLED\n7_4|COMPLETED\n7_5|FAILED\n")
    stand_in(bin_dir, "scontrol", "JobId=12 ArrayJobId=7 JobState=FAILED Reason=NonZeroExitCode ExitCode=3:0")
    lines = "\n".join(f"line {i}" for i in range(20)) + "\n\n"
    jobs = [fake_job(tmp_path, "7_0", result=True),  # returned: done whatever squeue says
            fake_job(tmp_path, "7_1"), fake_job(tmp_path, "7_2"),  # running, pending
            fake_job(tmp_path, "7_3", out="slurmstepd: *** JOB 10 ON vm CANCELLED AT 2026-01-01 ***"),
            fake_job(tmp_path, "7_4"), fake_job(tmp_path, "7_5", err=lines), fake_job(tmp_path, "7_6")]
    watch = slurm.QueueWatch(grace_s=3600)
    ended = watch.ended(jobs)
    # COMPLETED without a result yet (7_4) and gone from the queue (7_6): within the grace period
    assert sorted(ended) == ["7_0", "7_3", "7_5"] and ended["7_0"] is None
    # the state and exit code come from scontrol (here the same stand-in answer for every job)
    assert ended["7_5"] == (f"job 7_5 FAILED, exit code 3:0, NonZeroExitCode; it wrote no result; last lines of "
                            f"{tmp_path / '7_5_0_log.err'}: " + " | ".join(f"line {i}" for i in range(12, 20)))
    assert ended["7_3"].endswith(f"{tmp_path / '7_3_0_log.out'}: slurmstepd: *** JOB 10 ON vm CANCELLED AT "
                                 "2026-01-01 ***")  # stderr empty: the tail of stdout
    watch.grace_s = 0
    stand_in(bin_dir, "scontrol", "", rc=1, stderr="slurm_load_jobs error: Invalid job id specified")
    late = watch.ended(jobs)
    assert sorted(late) == ["7_0", "7_3", "7_4", "7_5", "7_6"]
    assert late["7_6"] == ("job 7_6 no longer in the queue (cancelled before it started, or its record expired); "
                           f"it wrote no result; no log in {tmp_path}")
    assert late["7_4"].startswith("job 7_4 COMPLETED; it wrote no result")


def test_queue_watch_when_squeue_fails_or_forgot_the_array(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    jobs = [fake_job(tmp_path, "7_0"), fake_job(tmp_path, "7_1", result=True)]
    stand_in(bin_dir, "squeue", "", rc=1, stderr="slurm_load_jobs error: Unable to contact slurm controller")
    watch = slurm.QueueWatch(grace_s=0)
    assert watch.ended(jobs) == {"7_1": None} and watch.ended(jobs) == {"7_1": None}  # nothing concluded
    assert capsys.readouterr().err.count("squeue does not answer") == 1  # said once, not every poll
    stand_in(bin_dir, "squeue", "", rc=1, stderr="slurm_load_jobs error: Invalid job id specified")
    stand_in(bin_dir, "scontrol", "", rc=1)
    assert sorted(watch.ended(jobs)) == ["7_0", "7_1"]  # the controller forgot the array: it has ended


def test_a_job_that_raised_is_reported_with_its_log_tail(tmp_path, monkeypatch):
    """A task whose function raised (here: a stand-in job) is a failed run quoting the end of its log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    stand_in(bin_dir, "squeue", "7_0|COMPLETED\n")
    job = fake_job(tmp_path, "7_0", result=True, err="Traceback (most recent call last):\n  ...\n"
                                                      "ModuleNotFoundError: No module named 'longtail'\n")

    def result():
        raise RuntimeError("Job (task=0) failed during processing with trace: ...")
    job.result = result
    run = {"output_dir": str(tmp_path / "run")}
    outcomes = []
    executors._wait_for([(run, {"loss": "ce"}, job)], "slurm", 0, outcomes.append)
    (o,) = outcomes
    assert o.status == "failed" and o.error == (f"job 7_0: RuntimeError in the job; last lines of "
                                                f"{tmp_path / '7_0_0_log.err'}: Traceback (most recent call last): "
                                                "| ... | ModuleNotFoundError: No module named 'longtail'")


# ------------------------------------------------------------------------------------- a real cluster

@pytest.fixture(scope="module")
def slurm_cluster() -> str:
    """The name of an idle node of a SLURM cluster that answers; skips with the reason otherwise."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"no SLURM here ({', '.join(missing)} not found); {SET_UP}")
    p = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%N %T"], capture_output=True, text=True,
                       timeout=30)
    if p.returncode != 0:
        pytest.skip(f"SLURM is installed but no controller answers (sinfo: {p.stderr.strip()[:200]}); {SET_UP}")
    nodes = dict(line.split()[:2] for line in p.stdout.splitlines() if len(line.split()) >= 2)
    idle = [n for n, state in nodes.items() if state.rstrip("*") in ("idle", "mixed")]
    if not idle:
        pytest.skip(f"no idle SLURM node (sinfo: {nodes or 'none'}); {SET_UP}")
    return idle[0]


def grid_command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "longtail.grid", str(TINY), "--executor", "slurm", "--output-root", str(out),
            "--slurm-gpus-per-task", "0", "--slurm-cpus-per-task", "1", "--slurm-timeout-min", "10",
            "--slurm-poll-s", "1", *extra]


def job_state(job_id: str) -> str:
    text = subprocess.run(["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True).stdout
    m = re.search(r"\bJobState=(\S+)", text)
    return m.group(1) if m else "gone"


@pytest.mark.slurm
@pytest.mark.slow
def test_tiny_grid_on_a_real_slurm_cluster(slurm_cluster, env, tmp_path, pids_with_environ):
    out = tmp_path / "out"
    grid = G.load_grid(TINY, output_root=out)
    ids = grid.ids  # array task i runs grid run i (all four are to do)

    # first call: an array of 4 jobs; task 0 is cancelled while its notebook runs, task 2 fails on its node.
    # Task 0's kernel sleeps as it starts (a sitecustomize on its PYTHONPATH), so that the cancel lands
    # while its run is under way however fast a tiny run has become.
    slow = tmp_path / "slow_kernel"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(
        "import sys, time\n"
        "if 'ipykernel_launcher' in ' '.join(getattr(sys, 'orig_argv', sys.argv)):\n    time.sleep(30)\n")
    slow_task_0 = f'if [ "$SLURM_ARRAY_TASK_ID" = 0 ]; then export PYTHONPATH={slow}${{PYTHONPATH:+:$PYTHONPATH}}; fi'
    t0 = time.time()
    proc = subprocess.Popen(grid_command(out, "--slurm-param", f"slurm_setup={json.dumps([FAIL_TASK_2, slow_task_0])}"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, array = [], None
    for line in proc.stdout:
        lines.append(line)
        if m := re.search(r"submitted 4 run\(s\) as job array (\d+) \(slurm\)", line):
            array = m.group(1)
            break
    assert array, "".join(lines)
    started = out / ids[0]
    while rundir.status(started) != "partial" and time.time() - t0 < 240:
        time.sleep(0.2)  # the run has begun inside its job: its folder exists, its notebook runs
    assert rundir.status(started) == "partial" and job_state(f"{array}_0") == "RUNNING"
    job0 = re.search(r"\bJobId=(\d+)", subprocess.run(["scontrol", "show", "job", "--oneliner", f"{array}_0"],
                                                       capture_output=True, text=True).stdout).group(1)
    assert pids_with_environ(f"SLURM_JOB_ID={job0}")  # its task and the notebook's kernel
    subprocess.run(["scancel", f"{array}_0"], check=True)
    rest, _ = proc.communicate(timeout=480)
    first = "".join(lines) + rest
    assert proc.returncode == 1, first  # runs failed

    assert "grid tiny: 4 runs: 2 done, 0 skipped (done before), 2 failed" in first, first
    # the jobs really went through SLURM: the controller knows how each ended
    assert [job_state(f"{array}_{i}") for i in range(4)] == ["CANCELLED", "COMPLETED", "FAILED", "COMPLETED"]
    table = pd.read_csv(out / gridspec.TABLE_FILE).set_index("id")
    assert list(table.loc[ids, "status"]) == ["failed", "done", "failed", "done"]
    cancelled, broken = table.loc[ids[0], "error"], table.loc[ids[2], "error"]
    assert cancelled.startswith(f"job {array}_0 CANCELLED") and "CANCELLED AT" in cancelled, cancelled
    assert broken.startswith(f"job {array}_2 FAILED, exit code 3:0") and BROKEN_NODE in broken, broken
    assert str(out / "slurm_logs" / f"{array}_2_0_log.err") in broken  # where to read on
    assert f"reason:   {broken}" in first  # the summary quotes the log's tail too
    assert rundir.status(out / ids[0]) == "partial" and rundir.status(out / ids[2]) == "todo"
    assert not pids_with_environ(f"SLURM_JOB_ID={job0}")  # the cancelled job's kernel went with it
    for i in (1, 3):  # results collected: each done run's notebook ran in the venv's kernel `longtail`
        nb = json.loads((out / ids[i] / rundir.NOTEBOOK_FILE).read_text())
        assert nb["metadata"]["kernelspec"]["name"] == notebook.KERNEL
        assert (out / "slurm_logs" / f"{array}_{i}_0_result.pkl").exists()
    first_s = time.time() - t0

    # second call: the done runs are skipped, the cancelled and the failed one are redone; the jobs find
    # the kernel `longtail` through the grid's own Python, not through PATH (here without the venv)
    t1 = time.time()
    bare_path = {**os.environ, "PATH": os.pathsep.join(str(Path(shutil.which(t)).parent) for t in TOOLS)}
    again = subprocess.run(grid_command(out), cwd=ROOT, capture_output=True, text=True, timeout=480, env=bare_path)
    second = again.stdout + again.stderr
    assert again.returncode == 0, second
    assert "4 runs, 2 done before (skipped), 2 to run on submitit (slurm)" in second
    assert "grid tiny: 4 runs: 2 done, 2 skipped (done before), 0 failed" in second, second
    array2 = re.search(r"as job array (\d+)", second).group(1)
    assert [job_state(f"{array2}_{i}") for i in range(2)] == ["COMPLETED", "COMPLETED"]
    runs = collect_runs(out)
    assert sorted(runs["run_id"]) == sorted(ids) and not runs.attrs["unfinished"]
    assert runs["balanced/acc1"].between(0, 1).all()

    second_s = time.time() - t1

    # the redone run equals the same run on the local executor (same code, one thread each)
    t2 = time.time()
    local = G.run_grid(TINY, output_root=tmp_path / "local", only={"loss": ["ce"], "train_set": ["balanced"]})
    assert local.ok and [o.id for o in local.done] == [ids[0]]
    a = json.loads((out / ids[0] / rundir.RESULT_FILE).read_text())
    b = json.loads((tmp_path / "local" / ids[0] / rundir.RESULT_FILE).read_text())
    numbers = [k for k, v in a.items() if isinstance(v, float) and v == v and "wall" not in k and "_s" not in k]
    assert numbers and all(b[k] == pytest.approx(a[k], abs=1e-6) for k in numbers)
    print(f"\nSLURM test: first call {first_s:.0f}s, second call {second_s:.0f}s, "
          f"the local run {time.time() - t2:.0f}s")
