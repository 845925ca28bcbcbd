"""Forked kernels (``longtail.kernels``): real papermill executions of a probe notebook and of tiny
runs, and real grids whose processes are looked for in /proc after they end.

A forked kernel must be a fresh process per notebook (never reused, nothing of one notebook seen by
the next), give the results of an ordinarily started kernel, follow the environment (CPU threads,
CUDA_VISIBLE_DEVICES), and never outlive the grid that asked for it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nbformat
import pytest

from longtail import config, executors, kernels
from longtail.notebook import execute

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "params" / "tiny.yaml"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kernels are forked on Linux only")

# what a kernel reports about itself; ``marker`` (a parameter) is left in a module and in the
# namespace, where a second notebook in the same process would find it
PROBE = """\
import json, os, sys
preloaded = "torch" in sys.modules
import torch
import longtail.run as probed
state = {"pid": os.getpid(), "ppid": os.getppid(), "sid": os.getsid(0), "preloaded": preloaded,
         "module_marker": getattr(probed, "probe_marker", None), "namespace_marker": "leftover" in globals(),
         "threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS"),
         "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "cwd": os.getcwd(),
         "mplbackend": __import__("matplotlib").get_backend(),
         "gpu": (torch.ones(3, device="cuda") * 2).sum().item() if torch.cuda.is_available() else None}
probed.probe_marker = marker
leftover = marker
print(json.dumps(state))
"""


def probe_notebook():
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "longtail", "display_name": "Python (longtail)", "language": "python"}
    params = nbformat.v4.new_code_cell("marker = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(PROBE)]
    return nb


def probe(tmp_path: Path, name: str, forked: bool, marker: str = "x") -> dict:
    ex = execute(probe_notebook(), tmp_path / f"{name}.ipynb", {"marker": marker}, forked=forked)
    assert ex.ok, ex.reason
    cells = nbformat.read(tmp_path / f"{name}.ipynb", as_version=4).cells
    text = "".join(o.text for c in cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream")
    return json.loads(text.strip().splitlines()[-1])


def alive(pid: int) -> bool:
    return kernels._start_ticks(pid) is not None


def gone(pids, timeout=10.0) -> bool:
    deadline = time.time() + timeout
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    return not any(alive(p) for p in pids)


@pytest.fixture
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    yield
    kernels.close_servers()


def test_the_kernel_command_is_split_only_for_ipykernel_launcher():
    assert kernels._split_command(["/py", "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f", "c.json"]) == (
        ["/py", "-Xfrozen_modules=off"], ["-f", "c.json"])
    assert kernels._split_command(["/py", "-m", "other_kernel", "-f", "c.json"]) is None
    assert kernels._split_command(["ipykernel_launcher", "-m"]) is None


def test_each_notebook_gets_a_fresh_forked_kernel_that_dies_after_it(tmp_path, one_thread):
    first = probe(tmp_path, "first", forked=True, marker="first")
    second = probe(tmp_path, "second", forked=True, marker="second")
    server = first["ppid"]
    # forked from one server (the modules were there before the notebook imported them), one
    # process each, in its own session as jupyter_client starts kernels
    assert first["preloaded"] and second["preloaded"]
    assert second["ppid"] == server and server != os.getpid()
    assert first["pid"] != second["pid"] and server not in (first["pid"], second["pid"])
    assert first["sid"] == first["pid"] and second["sid"] == second["pid"]
    # nothing of the first notebook reached the second: no module attribute, no name
    assert (first["module_marker"], second["module_marker"]) == (None, None)
    assert not first["namespace_marker"] and not second["namespace_marker"]
    # the environment, directory and backend of an ordinary kernel
    ordinary = probe(tmp_path, "ordinary", forked=False)
    assert not ordinary["preloaded"] and ordinary["ppid"] == os.getpid()
    for key in ("threads", "omp", "cuda", "cwd", "mplbackend", "module_marker", "namespace_marker", "gpu"):
        assert first[key] == ordinary[key], key
    assert (first["threads"], first["omp"], first["cwd"]) == (1, "1", str(config.PROJECT_ROOT))
    # each kernel was killed after its notebook; the server lives until closed
    assert gone([first["pid"], second["pid"], ordinary["pid"]])
    assert alive(server)
    kernels.close_servers()
    assert gone([server])


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device here")
def test_a_forked_kernel_uses_the_gpu(tmp_path, one_thread):
    """The server never starts CUDA (a child of a process that did could not use it): each forked
    kernel starts its own."""
    forked = probe(tmp_path, "gpu", forked=True)
    assert forked["preloaded"] and forked["gpu"] == 6.0


def test_a_changed_environment_gets_a_new_server(tmp_path, one_thread, monkeypatch):
    """The OpenMP runtime reads OMP_NUM_THREADS as torch loads: a server started with another value
    would give its kernels the wrong thread budget, so another environment means another server."""
    one = probe(tmp_path, "one", forked=True)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("MKL_NUM_THREADS", "2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    two = probe(tmp_path, "two", forked=True)
    assert (one["threads"], two["threads"], two["omp"], two["cuda"]) == (1, 2, "2", "1")
    assert one["preloaded"] and two["preloaded"] and one["ppid"] != two["ppid"]
    assert gone([one["ppid"]])  # the first server was closed when the second started


def test_a_server_that_cannot_start_falls_back_to_ordinary_kernels(tmp_path, one_thread, monkeypatch, capfd):
    monkeypatch.setattr(kernels.ForkProvisioner, "modules", ("longtail_no_such_module",))
    monkeypatch.setattr(kernels, "_warned", set())
    state = probe(tmp_path, "fallback", forked=True)
    assert not state["preloaded"] and state["ppid"] == os.getpid()
    err = capfd.readouterr().err
    assert "[kernels] importing the preloaded modules failed: ModuleNotFoundError" in err
    assert "kernels start the ordinary way" in err


def test_a_failed_forked_start_is_retried_with_an_ordinary_kernel(tmp_path, monkeypatch):
    import papermill

    calls = []

    def flaky(nb, out_path, **kw):
        calls.append(kw.get("kernel_manager_class"))
        if len(calls) == 1:
            raise RuntimeError("Kernel died before replying to kernel_info")
        Path(out_path).parent.joinpath("metrics.json").write_text("{}")

    monkeypatch.setattr(papermill, "execute_notebook", flaky)
    monkeypatch.setattr(executors.time, "sleep", lambda s: None)
    r = executors.run_one({"output_dir": str(tmp_path / "abc"), "epochs": 1}, forked=True)
    assert (r["status"], r["attempts"]) == ("done", 2)
    assert calls == [kernels.ForkedKernelManager, None]


def _run(out: Path) -> dict:
    from longtail.gridspec import load_grid
    return {**load_grid(TINY, output_root=out).select({"loss": ["ldam"], "train_set": ["longtailed"]}).runs[0]}


def test_a_forked_kernel_gives_the_results_of_an_ordinary_one(tmp_path, env, one_thread):
    """A real run (tiny parameters: ResNet-32 on synthetic 16 px images, LDAM with DRW) through
    run_one, forked and ordinary: the same metrics and training history, bit for bit at one thread."""
    import pandas as pd

    results = {}
    for forked in (True, False):
        run = _run(tmp_path / ("forked" if forked else "ordinary"))
        r = executors.run_one(run, forked=forked)
        assert r["status"] == "done", r["error"]
        results[forked] = Path(run["output_dir"])
    a = json.loads((results[True] / "metrics.json").read_text())
    b = json.loads((results[False] / "metrics.json").read_text())
    compared = [k for k, v in b.items() if isinstance(v, float) and k not in ("wall_s", "cpu_s")]
    assert len(compared) > 20
    for key in compared:
        assert a[key] == b[key] or (a[key] != a[key] and b[key] != b[key]), key
    pd.testing.assert_frame_equal(pd.read_csv(results[True] / "history.csv").drop(columns=["epoch_s", "images_per_s"]),
                                  pd.read_csv(results[False] / "history.csv").drop(columns=["epoch_s", "images_per_s"]))


def _marked(mark: str) -> list[int]:
    """Live processes whose environment holds ``mark`` (the grid, its workers, servers and kernels:
    a forked kernel's /proc environ is its server's)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if mark.encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            pass
    return found


def _servers_and_kernels(pids) -> list[int]:
    found = []
    for pid in pids:
        try:
            if b"longtail.kernels" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


@pytest.mark.parametrize("how", ["end", "SIGINT", "SIGKILL"])
def test_no_server_or_kernel_outlives_the_grid(tmp_path, env, how):
    """A grid with two workers (each with its server and forked kernels), left to end, interrupted
    (Ctrl-C to its process group), or killed alone: afterwards no process of it is left."""
    mark = f"LT_TEST_GRID={uuid.uuid4().hex}"
    out = tmp_path / "out"
    # interrupted cases: runs long enough (200 epochs of the tiny grid) that the grid is still running
    # when the signal comes, however slowly a loaded machine lets this loop see its processes
    longer = [] if how == "end" else ["--set", "epochs=200"]
    proc = subprocess.Popen([sys.executable, "-m", "longtail.grid", str(TINY), "--jobs", "2", "--output-root",
                             str(out), *longer], cwd=ROOT, env={**os.environ, mark.split("=")[0]: mark.split("=")[1]},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True,
                            # Ctrl-C's default disposition, as a terminal gives it: a test run started in the
                            # background of a script inherits SIGINT ignored, and a grid started so rightly
                            # keeps ignoring it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        seen: set[int] = set()
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:  # until a server and a kernel of it run
            forked = _servers_and_kernels(_marked(mark))
            seen.update(forked)
            if len(forked) >= 2 and list(out.glob("*/params.json")):
                break
            time.sleep(0.05)
        assert len(seen) >= 2, proc.communicate()[0]
        assert how == "end" or proc.poll() is None, "the grid ended before it could be interrupted"
        if how == "SIGINT":
            os.killpg(proc.pid, signal.SIGINT)
        elif how == "SIGKILL":
            os.kill(proc.pid, signal.SIGKILL)
        output = proc.communicate(timeout=300)[0]
        assert proc.returncode == {"end": 0, "SIGINT": 130, "SIGKILL": -9}[how], output
        assert "[kernels]" not in output  # no fall-back to ordinary kernels
        assert gone(_marked(mark) + list(seen), timeout=15), [p for p in _marked(mark) if alive(p)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_linear_run_on_cached_features_imports_nothing_the_server_has_not(tmp_path):
    """Every module a mode linear run imports as it goes is in ``PRELOAD``, so no forked kernel pays
    for it (before: 14 modules, 0.05 s of a 0.6 s run)."""
    params = dict(dataset="synthetic", backbone="resnet32", mode="linear", image_size=16, imbalance_factor=4,
                  dataset_params={"num_classes": 4, "train_per_class": 24, "test_per_class": 8, "image_size": 16},
                  epochs=2, batch_size=16, device="cpu", channels_last=False, seed=1)
    code = ("import importlib, json, sys\n"
            "from longtail.kernels import PRELOAD\n"
            "for m in PRELOAD: importlib.import_module(m)\n"
            "before = set(sys.modules)\n"
            "from longtail.run import run_training\n"
            f"run_training({{**{params!r}, 'output_dir': sys.argv[1]}}, log=lambda s: None)\n"
            "print(json.dumps(sorted(m for m in set(sys.modules) - before if m.startswith(('longtail', 'pandas')))))")
    env = {**os.environ, "LT_CACHE_DIR": str(tmp_path / "cache")}

    def new_modules(out: str) -> list[str]:
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / out)], env=env, capture_output=True,
                              text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])
    new_modules("cold")  # extracts and caches the features (building the backbone imports more)
    assert new_modules("warm") == []


REPORT_PROBE = """\
import json, os, sys
state = {"pid": os.getpid(), "ppid": os.getppid(), "seaborn": "seaborn" in sys.modules, "torch": "torch" in sys.modules,
         "openblas": os.environ.get("OPENBLAS_NUM_THREADS")}
print(json.dumps(state))
"""


def test_the_reports_notebooks_are_forked_from_one_server_that_imported_seaborn_and_no_torch(tmp_path, one_thread):
    """The report's two notebooks (``forked="report"``): forked from one server holding
    ``REPORT_PRELOAD`` (seaborn with SciPy: 2.5 s each notebook paid before; SciPy's OpenBLAS on one
    thread, else the server would run a thread pool and fork nothing), without torch, which they never use."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "longtail", "display_name": "Python (longtail)", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(REPORT_PROBE)]
    states = []
    for name in ("explore", "analysis"):
        ex = execute(nb, tmp_path / f"{name}.ipynb", {}, forked="report")
        assert ex.ok, ex.reason
        cells = nbformat.read(tmp_path / f"{name}.ipynb", as_version=4).cells
        states.append(json.loads("".join(o.text for c in cells for o in c.outputs if o.output_type == "stream")))
    assert states[0]["ppid"] == states[1]["ppid"] != os.getpid()  # one server, not this process
    assert all(s["seaborn"] and not s["torch"] and s["openblas"] == "1" for s in states)
