"""The grid runner: expansion, validation, and real papermill executions of the tiny synthetic grid.

Each notebook execution costs ~8 s on 2 CPU cores (kernel start, imports, 2 epochs of ResNet-32
on 16 px images).  The kernels run with OMP_NUM_THREADS=1: on a shared 2-core machine torch's
2 OpenMP threads can be 100x slower than one under load, and with one thread per kernel the
serial and the parallel runs use the same arithmetic (bit-identical metrics).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from longtail import executors, gridspec, rundir
from longtail import grid as G
from longtail.params import ParameterError
from longtail.run import run_id

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "params" / "tiny.yaml"
PY = sys.executable


def write_yaml(path: Path, obj) -> Path:
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return path


def metrics_of(out_dir) -> dict:
    return json.loads((Path(out_dir) / "metrics.json").read_text())


# ------------------------------------------------------------------------------- pure: no execution

def test_expand_is_the_cartesian_product_with_overrides():
    spec = {"base": {"dataset": "synthetic", "epochs": 3, "loss_params": {}},
            "grid": {"loss": ["ce", "focal", "ldam"], "seed": [0, 1]},
            "overrides": {"loss": {"focal": {"loss_params": {"gamma": 2.0}},
                                   "ldam": {"drw_epoch": 2, "loss_params": {"max_m": 0.5, "s": 30}}}}}
    runs = gridspec.expand(spec)
    assert [(r["loss"], r["seed"]) for r in runs] == [("ce", 0), ("ce", 1), ("focal", 0), ("focal", 1),
                                                       ("ldam", 0), ("ldam", 1)]  # last axis fastest
    assert all(r["dataset"] == "synthetic" and r["epochs"] == 3 for r in runs)
    assert runs[0]["loss_params"] == {} and "drw_epoch" not in runs[0]
    assert runs[2]["loss_params"] == {"gamma": 2.0} and "drw_epoch" not in runs[2]
    assert runs[4]["loss_params"] == {"max_m": 0.5, "s": 30} and runs[4]["drw_epoch"] == 2
    runs[2]["loss_params"]["gamma"] = 5.0  # runs are independent copies
    assert gridspec.expand(spec)[3]["loss_params"] == {"gamma": 2.0}


def test_overrides_match_numbers_bools_and_defaults():
    spec = {"grid": {"imbalance_factor": [100, 10.0], "compile": [True, False]},
            "overrides": {"imbalance_factor": {100.0: {"epochs": 7}, 10: {"epochs": 8}},
                          "compile": {True: {"lr": 0.5}},
                          "loss": {"ce": {"weight_decay": 0.0}}}}  # loss not set: matched on its default (ce)
    runs = gridspec.expand(spec)
    assert [r["epochs"] for r in runs] == [7, 7, 8, 8]
    assert [r.get("lr") for r in runs] == [0.5, None, 0.5, None]
    assert all(r["weight_decay"] == 0.0 for r in runs)
    assert gridspec._same(1, 1.0) and not gridspec._same(True, 1) and gridspec._same("ce", "ce") and not gridspec._same(None, "None")


def test_extends_merges_base_and_overrides_and_replaces_axes(tmp_path):
    write_yaml(tmp_path / "parent.yaml", {
        "name": "parent", "notebook": str(ROOT / "notebooks" / "train.py"),
        "base": {"dataset": "synthetic", "epochs": 5, "lr": 0.1},
        "grid": {"loss": ["ce", "focal"], "seed": [0, 1, 2]},
        "overrides": {"loss": {"focal": {"loss_params": {"gamma": 2.0}, "epochs": 6}}}})
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text(
        "extends: ../parent.yaml\n"
        "base: {epochs: 1, weight_decay: 1e-4}\n"  # 1e-4: a float, not the string YAML 1.1 would make
        "grid: {seed: [7]}\n"
        "overrides: {loss: {focal: {epochs: 9}, ce: {lr: 0.01}}}\n")
    spec = gridspec.read_spec(tmp_path / "sub" / "child.yaml")
    assert spec["name"] == "child"  # not inherited (nor output_root): the child's runs go to runs/child
    assert spec["notebook"] == str(ROOT / "notebooks" / "train.py")  # inherited
    assert spec["base"] == {"dataset": "synthetic", "epochs": 1, "lr": 0.1, "weight_decay": 1e-4}
    assert isinstance(spec["base"]["weight_decay"], float)
    assert spec["grid"] == {"loss": ["ce", "focal"], "seed": [7]}
    assert spec["overrides"]["loss"] == {"focal": {"loss_params": {"gamma": 2.0}, "epochs": 9}, "ce": {"lr": 0.01}}
    runs = gridspec.expand(spec)
    assert [(r["loss"], r["seed"], r["epochs"], r["lr"]) for r in runs] == [("ce", 7, 1, 0.01), ("focal", 7, 9, 0.1)]


def test_bad_files_are_refused(tmp_path):
    with pytest.raises(G.GridError, match="unknown top-level key"):
        gridspec.read_spec(write_yaml(tmp_path / "a.yaml", {"bsae": {"epochs": 1}}))
    with pytest.raises(G.GridError, match="non-empty list"):
        G.load_grid(write_yaml(tmp_path / "b.yaml", {"grid": {"seed": 0}}))
    with pytest.raises(G.GridError, match="cycle"):
        write_yaml(tmp_path / "c.yaml", {"extends": "d.yaml"})
        gridspec.read_spec(write_yaml(tmp_path / "d.yaml", {"extends": "c.yaml"}))
    with pytest.raises(G.GridError, match="does not exist"):
        gridspec.read_spec(write_yaml(tmp_path / "e.yaml", {"extends": "missing.yaml"}))
    with pytest.raises(G.GridError, match="output_dir is set by the grid"):
        G.load_grid(write_yaml(tmp_path / "f.yaml", {"base": {"output_dir": "x"}}))


def test_load_grid_resolves_runs_into_output_root(tmp_path, env):
    g = G.load_grid(TINY, output_root=tmp_path / "out")
    assert g.name == "tiny" and len(g) == 4 and len(set(g.ids)) == 4
    assert g.labels[1] == {"loss": "ce", "train_set": "longtailed"}
    for run in g.runs:
        assert set(run) == set(G.SCHEMA)  # resolved: every parameter of the notebook
        assert run["output_dir"] == str(tmp_path / "out" / run_id(run))
    assert G.load_grid(TINY).output_root == env / "runs" / "tiny"  # default: $LT_RUNS_DIR/<name>
    # --set changes a base parameter (and so the ids); --only selects by any parameter's values
    g2 = G.load_grid(TINY, output_root=tmp_path / "out", sets={"epochs": 1, "dataset_params.num_classes": 3})
    assert all(r["epochs"] == 1 and r["dataset_params"]["num_classes"] == 3 and r["dataset_params"]["image_size"] == 16
               for r in g2.runs)
    assert not set(g2.ids) & set(g.ids)
    with pytest.raises(G.GridError, match="grid axis"):
        G.load_grid(TINY, sets={"loss": "focal"})
    sub = g.select({"loss": ["ldam"], "train_set": ["longtailed", "balanced"]})
    assert [lab["loss"] for lab in sub.labels] == ["ldam", "ldam"] and len(g) == 4
    assert len(g.select({"imbalance_factor": [4]})) == 4 and len(g.select({"imbalance_factor": [5]})) == 0


def test_run_folders_are_those_of_the_validated_grid_without_torch():
    """The report finds a grid's run folders from the file alone (``params.resolve``, no validation):
    the same folders, in the same order, as ``load_grid`` for every shipped file, and no torch."""
    for path in sorted((ROOT / "params").glob("*.yaml")):
        g = G.load_grid(path, check_backbone=False)
        assert gridspec.run_folders(path) == (g.name, [Path(r["output_dir"]) for r in g.runs]), path.name
    code = ("import sys; from longtail import gridspec; gridspec.run_folders('params/techniques.yaml'); "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([PY, "-c", code], cwd=ROOT).returncode == 0


def test_help_and_readme_show_the_parameter_file_format_as_it_is(capsys):
    with pytest.raises(SystemExit):
        G.main(["--help"])
    text = capsys.readouterr().out
    readme = (ROOT / "README.md").read_text()
    for block in (gridspec.SPEC_EXAMPLE, gridspec.SPEC_RULES):
        assert block in readme
        assert all(line.strip() in text for line in block.splitlines())
    assert all(line.strip() in text for line in G.EXAMPLES.splitlines())
    assert "--slurm-timeout-min" in text and f"default: {executors.SlurmOptions().timeout_min}" in text


def test_every_module_is_in_the_readme_table_and_the_package_docstring():
    import re

    import longtail
    modules = {p.stem for p in (ROOT / "lib" / "longtail").glob("*.py")} - {"__init__"}
    table = dict(re.findall(r"^\| `(\w+)`(?: \((\d+)\. [^)]+\))? \|", (ROOT / "README.md").read_text(), re.M))
    layers = {m.strip(): num for num, mods in re.findall(r"^(\d+)\. [^:]+: (.+)$", longtail.__doc__, re.M)
              for m in mods.split(",")}
    assert modules <= set(table) and modules == set(layers)
    assert not (set(table) - modules - {"lib", "notebooks", "params", "tests", "bench", "report"})
    assert {m: table[m] for m in modules} == layers  # the README names each module's layer as the docstring does


def test_shipped_parameter_files_are_valid():
    counts = {"default": 42, "thesis": 168, "thesis_ldam_drw": 24, "class_balanced": 42, "cifar10_lt": 14,
              "cifar10_control": 2, "tiny": 4, "finetune": 6}
    grids = {name: G.load_grid(ROOT / "params" / f"{name}.yaml") for name in counts}
    assert {name: len(g) for name, g in grids.items()} == counts

    def run(g, **where):
        (hit,) = [r for r, lab in zip(g.runs, g.labels) if all(lab[k] == v for k, v in where.items())]
        return hit

    d = grids["default"]
    assert {r["dataset"] for r in d.runs} == {"eu_moths"} and {r["subset_seed"] for r in d.runs} == {0}
    assert {r["seed"] for r in d.runs} == {0, 1, 2} and isinstance(d.runs[0]["weight_decay"], float)
    assert run(d, loss="ldam", train_set="longtailed", seed=0)["drw_epoch"] == 20
    assert run(d, loss="ce", train_set="longtailed", seed=0)["drw_epoch"] is None
    c = grids["cifar10_lt"]
    ldam = run(c, loss="ldam", imbalance_factor=100)
    assert (ldam["drw_epoch"], ldam["lr_steps"], ldam["lr_gamma"], ldam["val_fraction"]) == (160, [160, 180], 0.01, 0.0)
    assert run(c, loss="class_balanced", imbalance_factor=10)["loss_params"] == {
        "base": "focal", "beta": 0.9999, "gamma": 1.0, "reduction": "batch", "bias_init": "prior"}
    t = grids["thesis"]
    assert {r["backbone"] for r in t.runs} == {"mobilenetv2", "resnet50v2", "vit_b16", "convnext_base"}
    assert {(r["mode"], r["optimizer"], r["lr"], r["image_size"]) for r in t.runs} == {("finetune", "adamw", 1e-3, 224)}
    recipe = {(r["head_init"], r["backbone_lr_scale"], r["freeze_bn"]) for r in t.runs}  # the backbone at 1e-4
    assert recipe == {("linear_probe", 0.1, "none")}
    f = grids["finetune"]
    assert {(r["mode"], r["lr"], r["head_init"], r["backbone_lr_scale"], r["val_source"]) for r in f.runs} == {
        ("finetune", 1e-3, "linear_probe", 0.1, "unused")}
    assert {r["seed"] for r in t.runs} == {0, 1, 2} and {r["eval_protocol"] for r in t.runs} == {"thesis"}
    assert run(t, backbone="vit_b16", loss="ldam", train_set="longtailed", seed=0)["drw_epoch"] is None  # plain LDAM
    drw = grids["thesis_ldam_drw"]
    assert {r["loss"] for r in drw.runs} == {"ldam"} and {r["drw_epoch"] for r in drw.runs} == {20}
    cb = grids["class_balanced"]
    assert {r["loss"] for r in cb.runs} == {"class_balanced"} and {r["train_set"] for r in cb.runs} == {"longtailed"}
    assert {r["mode"] for r in cb.runs} == {"linear"} and {r["dataset"] for r in cb.runs} == {"eu_moths"}
    assert {json.dumps(r["loss_params"], sort_keys=True) for r in cb.runs} >= {
        '{"base": "sigmoid", "beta": 0.9, "reduction": "weights"}',
        '{"base": "focal", "beta": 0.9999, "normalize": false, "reduction": "batch"}'}


def test_invalid_parameters_are_all_reported_before_any_run(tmp_path, env, capsys):
    path = write_yaml(tmp_path / "bad.yaml", {
        "extends": str(TINY),
        "base": {"epoch": 3},  # typo of epochs
        "grid": {"loss": ["ce", "focal", "hinge"], "sampler": ["instance", "bogus"], "train_set": ["longtailed"]},
        "overrides": {"loss": {"ce": {"loss_params": {"gamma": 2.0}}}}})  # ce has no gamma
    out = tmp_path / "out"
    with pytest.raises(G.GridError) as err:
        G.run_grid(path, output_root=out)
    msg = str(err.value)
    assert "6 of 6 runs have invalid parameters; nothing was run" in msg
    assert "unknown parameter 'epoch'" in msg and "(every run)" in msg and "epochs" in msg  # the valid names
    assert "loss='hinge': choose one of ce, focal" in msg and "loss=hinge train_set=longtailed sampler=instance" in msg
    assert "sampler='bogus': choose one of instance, class_balanced" in msg
    assert "loss_params ['gamma'] are not parameters of loss 'ce'; valid: label_smoothing" in msg
    assert msg.count("sampler='bogus'") == 1  # one line per distinct problem, with the runs it concerns
    assert isinstance(err.value, ParameterError)
    assert not out.exists()  # validation happens before anything is created
    # the command line: exit status 2, the same report, still nothing created
    assert G.main([str(path), "--output-root", str(out)]) == 2
    assert "sampler='bogus'" in capsys.readouterr().err and not out.exists()
    assert G.main([str(path), "--output-root", str(out), "--dry-run"]) == 2 and not out.exists()


def test_kernel_startup_failure_is_retried_but_a_cell_error_is_not(tmp_path, monkeypatch):
    import papermill
    from papermill.exceptions import PapermillExecutionError

    run = {"output_dir": str(tmp_path / "abc"), "epochs": 1}
    calls = []

    def flaky(nb, out_path, **kw):
        calls.append(kw["parameters"])
        if len(calls) == 1:
            raise RuntimeError("Kernel died before replying to kernel_info")
        Path(out_path).parent.joinpath("metrics.json").write_text("{}")

    monkeypatch.setattr(papermill, "execute_notebook", flaky)
    monkeypatch.setattr(executors.time, "sleep", lambda s: None)
    r = executors.run_one(run)
    assert (r["status"], r["attempts"], len(calls)) == ("done", 2, 2) and calls[0]["epochs"] == 1
    assert executors.run_one(run)["status"] == "skipped"

    def cell_error(nb, out_path, **kw):
        calls.append(1)
        raise PapermillExecutionError(3, 1, "run_training(...)", "ValueError", "bad thing", [])

    monkeypatch.setattr(papermill, "execute_notebook", cell_error)
    calls.clear()
    r = executors.run_one({"output_dir": str(tmp_path / "def")})
    assert (r["status"], r["attempts"], len(calls), r["error"]) == ("failed", 1, 1, "ValueError: bad thing")


def test_a_run_held_by_another_process_is_busy(tmp_path):
    import fcntl
    out = tmp_path / "root" / "abc"
    (tmp_path / "root" / ".locks").mkdir(parents=True)
    with open(tmp_path / "root" / ".locks" / "abc.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        assert subprocess.run([PY, "-c", f"from longtail.executors import run_one; import sys; "
                                         f"sys.exit(run_one({{'output_dir': {str(out)!r}}})['status'] != 'busy')"],
                              cwd=ROOT).returncode == 0
    assert not out.exists()


def test_sbatch_script_of_the_slurm_executor(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sbatch", "srun"):  # stand-ins: only the script text is checked, nothing is submitted
        (bin_dir / tool).write_text("#!/bin/sh\necho 'Submitted batch job 1'\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    options = executors.SlurmOptions(cluster="slurm", partition="gpu", array_parallelism=8, timeout_min=90,
                                     gpus_per_task=1, extra={"slurm_account": "abc"})
    ex = executors.make_submitit_executor(tmp_path / "logs", options, name="lt-thesis")
    text = ex._executor._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=1", "--time=90", "--job-name=lt-thesis", "--cpus-per-task=8",
                 "--account=abc", f"--output={tmp_path / 'logs'}"):
        assert line in text
    assert ex._executor.parameters["array_parallelism"] == 8


def test_dry_run_lists_runs_and_creates_nothing(tmp_path, env, capsys):
    out = tmp_path / "out"
    assert G.main([str(TINY), "--output-root", str(out), "--dry-run", "--only", "loss=ldam"]) == 0
    text = capsys.readouterr().out
    g = G.load_grid(TINY, output_root=out).select({"loss": ["ldam"]})
    for rid, lab in zip(g.ids, g.labels):
        assert f"todo     {rid}  {G.label_text(lab)}" in text
    assert "2 runs: 0 done, 0 failed, 0 partial, 2 todo" in text and not out.exists()


# ------------------------------------------------------------------------ real papermill executions

def test_killed_grid_resumes_with_only_the_unfinished_runs(tmp_path, env, pids_with_environ):
    out = tmp_path / "out"
    g = G.load_grid(TINY, output_root=out)
    proc = subprocess.Popen([PY, "-m", "longtail.grid", str(TINY), "--output-root", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 240
        # kill when one run is done and the next is half-way (its params.json written, no metrics.json)
        while time.time() < deadline and proc.poll() is None:
            states = [rundir.status(r["output_dir"]) for r in g.runs]
            started = [Path(r["output_dir"], "params.json").exists() for r in g.runs]
            if "done" in states and any(s and st != "done" for s, st in zip(started, states)):
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()
        assert pids_with_environ(f"JPY_PARENT_PID={proc.pid}")  # the in-flight run's kernel
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # the killed process's kernel (its own session) notices its parent is gone and exits (ipykernel's
    # parent poller, ~1 s); wait for that so that it cannot write into the folder the rerun cleans
    deadline = time.time() + 60
    while pids_with_environ(f"JPY_PARENT_PID={proc.pid}") and time.time() < deadline:
        time.sleep(0.2)
    assert not pids_with_environ(f"JPY_PARENT_PID={proc.pid}")
    states = g.statuses()
    finished = {rid: (Path(r["output_dir"], "metrics.json").stat().st_mtime_ns, metrics_of(r["output_dir"]))
                for rid, r, s in zip(g.ids, g.runs, states) if s == "done"}
    assert 1 <= len(finished) < len(g) and "partial" in states, states
    partial = next(r["output_dir"] for r, s in zip(g.runs, states) if s == "partial")
    Path(partial, "stale.pt").write_text("left by the killed run")

    summary = G.run_grid(TINY, output_root=out)
    assert summary.ok
    assert {o.id for o in summary.skipped} == set(finished)
    assert {o.id for o in summary.done} == set(g.ids) - set(finished)
    for rid, (mtime, metrics) in finished.items():  # finished results untouched
        assert Path(out, rid, "metrics.json").stat().st_mtime_ns == mtime and metrics_of(out / rid) == metrics
    assert not Path(partial, "stale.pt").exists() and Path(partial, "train.ipynb").exists()
    table = pd.read_csv(out / "runs.csv")
    assert list(table["id"]) == g.ids and set(table["status"]) == {"done"} and table["wall_s"].notna().all()
    assert list(table.columns[:3]) == ["id", "loss", "train_set"]


def test_a_failing_run_is_reported_and_the_others_finish(tmp_path, env, capsys):
    path = write_yaml(tmp_path / "failing.yaml", {
        "extends": str(TINY),
        "grid": {"loss": ["ce"], "train_set": ["longtailed"], "dataset": ["imagefolder", "synthetic"]},
        "overrides": {"dataset": {"imagefolder": {"data_root": str(tmp_path / "empty-folder"),
                                                  "dataset_params": {}}}}})  # synthetic's are refused
    (tmp_path / "empty-folder").mkdir()  # there (the pre-flight check passes), but no class folders
    out = tmp_path / "out"
    assert G.main([str(path), "--output-root", str(out)]) == 1
    text = capsys.readouterr().out
    g = G.load_grid(path, output_root=out)
    bad, good = g.runs
    assert rundir.status(good["output_dir"]) == "done" and rundir.status(bad["output_dir"]) == "failed"
    nb = Path(bad["output_dir"], "train.ipynb")
    assert nb.exists() and json.loads(nb.read_text())["metadata"]["papermill"]["exception"]
    assert "1 done, 0 skipped (done before), 1 failed" in text
    assert f"FAILED {g.ids[0]} loss=ce train_set=longtailed dataset=imagefolder" in text
    assert f"FileNotFoundError: {tmp_path / 'empty-folder'} holds no class folders" in text
    assert f"notebook: {nb}" in text
    assert f"[1/2] {g.ids[0]} loss=ce train_set=longtailed dataset=imagefolder FAILED" in text
    assert f"[2/2] {g.ids[1]} loss=ce train_set=longtailed dataset=synthetic done in" in text
    table = pd.read_csv(out / "runs.csv")
    assert list(table["status"]) == ["failed", "done"] and "FileNotFoundError" in table["error"][0]
    # a rerun retries the failed run (it fails again) and skips the finished one
    summary = G.run_grid(path, output_root=out)
    assert [o.status for o in summary.outcomes] == ["failed", "skipped"] and not summary.ok


def test_two_workers_give_the_same_results_as_one(tmp_path, env):
    only = {"train_set": ["longtailed"]}  # ce and ldam (with DRW and the cosine head)
    serial = G.run_grid(TINY, jobs=1, only=only, output_root=tmp_path / "serial")
    parallel = G.run_grid(TINY, jobs=2, only=only, output_root=tmp_path / "parallel")
    assert serial.ok and parallel.ok and len(serial.done) == len(parallel.done) == 2
    assert [o.id for o in serial.outcomes] == [o.id for o in parallel.outcomes]
    for o in serial.outcomes:
        a, b = metrics_of(o.output_dir), metrics_of(tmp_path / "parallel" / o.id)
        for key, value in a.items():
            if isinstance(value, float) and key not in ("wall_s", "cpu_s") and value == value:  # timings differ
                assert b[key] == pytest.approx(value, abs=1e-6), key
        ha = pd.read_csv(Path(o.output_dir, "history.csv"))
        hb = pd.read_csv(tmp_path / "parallel" / o.id / "history.csv")
        pd.testing.assert_series_equal(ha["train_loss"], hb["train_loss"], atol=1e-6, rtol=0)
    # the two workers did run at the same time
    spans = [json.loads(Path(o.notebook.replace(str(tmp_path / "serial"), str(tmp_path / "parallel")))
                        .read_text())["metadata"]["papermill"] for o in serial.outcomes]
    (s1, e1), (s2, e2) = [(pd.Timestamp(s["start_time"]), pd.Timestamp(s["end_time"])) for s in spans]
    assert s1 < e2 and s2 < e1


def test_slurm_path_through_submitit_local_executor(tmp_path, env):
    out = tmp_path / "out"
    summary = G.run_grid(TINY, executor="slurm", output_root=out,
                         slurm=executors.SlurmOptions(cluster="local", gpus_per_task=0, cpus_per_task=1, timeout_min=10),
                         only={"loss": ["ce"], "train_set": ["balanced"]})
    assert summary.ok and len(summary.done) == 1 and len(summary.jobs) == 1
    (o,) = summary.done
    assert rundir.status(o.output_dir) == "done" and Path(o.notebook).exists()
    logs = list((out / "slurm_logs").glob("*_log.out"))
    assert logs  # the job's logs, beside the runs
    table = pd.read_csv(out / "runs.csv")  # the whole grid's table: one run done, three to do
    assert sorted(table["status"]) == ["done", "todo", "todo", "todo"]


def test_workers_per_gpu_deals_that_many_runs_to_each_gpu(tmp_path, capsys):
    assert executors.local_jobs() == 1 and executors.local_jobs(3) == 3
    assert executors.local_jobs(workers_per_gpu=4, gpus=["0", "1"]) == 8  # round robin: 4 on each
    with pytest.raises(gridspec.GridError, match=r"--workers-per-gpu 2: no GPU is visible"):
        executors.local_jobs(workers_per_gpu=2, gpus=[])
    with pytest.raises(gridspec.GridError, match="choose one"):
        executors.local_jobs(2, 2, gpus=["0"])
    with pytest.raises(gridspec.GridError, match=r"--jobs 0: must be at least 1"):
        executors.local_jobs(0)
    # on the command line: refused before any run starts, nothing written
    out = tmp_path / "runs"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-m", "longtail.grid", str(TINY), "--output-root", str(out),
                        "--workers-per-gpu", "3"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--workers-per-gpu 3: no GPU is visible" in r.stderr and not out.exists()
