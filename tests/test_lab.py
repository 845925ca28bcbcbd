"""JupyterLab as a new user meets it: the jupytext .py notebooks open as notebooks by default (the
venv's settings, installed by `make setup`), and saving one without an edit leaves it byte-identical."""
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))
TRACKED_SETTINGS = ROOT / "jupyter" / "lab-overrides.json"
#: where the Makefile's set-up step installs them (LAB_SETTINGS): the venv's prefix, not ~/.jupyter
INSTALLED_SETTINGS = Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.d" / "longtail.json"
DOCMANAGER = "@jupyterlab/docmanager-extension:plugin"


def _project_copy(tmp_path: Path) -> Path:
    """jupytext.toml and the notebooks, as Lab sees them below its root."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "jupytext.toml", tmp_path / "jupytext.toml")
    (tmp_path / "notebooks").mkdir()
    for nb in NOTEBOOKS:
        shutil.copy(nb, tmp_path / "notebooks" / nb.name)
    return tmp_path


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_py_to_notebook_to_py_is_byte_identical(path):
    config = jupytext.config.load_jupytext_configuration_file(str(ROOT / "jupytext.toml"))
    text = path.read_text()
    nb = jupytext.reads(text, fmt="py:percent")
    nb.metadata["language_info"] = {"name": "python", "version": "3.11"}  # what a kernel adds in Lab
    assert jupytext.writes(nb, fmt="py:percent", config=config) == text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_saving_through_lab_contents_manager_changes_nothing(tmp_path, path):
    """The code path of Lab's save button: jupytext's contents manager reads the .py as a notebook
    and writes it back (with the metadata a running kernel adds)."""
    from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
    from jupytext.async_contentsmanager import build_async_jupytext_contents_manager_class

    root = _project_copy(tmp_path)
    manager = build_async_jupytext_contents_manager_class(AsyncLargeFileManager)(root_dir=str(root))
    rel = f"notebooks/{path.name}"

    async def load_and_save():
        model = await manager.get(rel, type="notebook", content=True)
        nb = model["content"]
        nb.metadata["language_info"] = {"name": "python", "version": "3.11"}
        await manager.save({"type": "notebook", "format": "json", "content": nb}, rel)

    asyncio.run(load_and_save())
    assert (root / rel).read_bytes() == path.read_bytes()


def test_makefile_installs_the_tracked_settings_and_lab_starts_at_the_root():
    makefile = (ROOT / "Makefile").read_text()
    assert "LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.d/longtail.json" in makefile
    assert "$(LAB_SETTINGS): jupyter/lab-overrides.json" in makefile
    assert '--ServerApp.root_dir="$(CURDIR)"' in makefile  # jupytext finds jupytext.toml only below the root
    settings = json.loads(TRACKED_SETTINGS.read_text())
    assert settings[DOCMANAGER]["defaultViewers"]["python"] == "Jupytext Notebook"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, data: bytes | None = None, method: str = "GET"):
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _start_lab(tmp_path, root, port: int, token: str, extra_args: list, extra_env: dict):
    """A JupyterLab server with `make lab`'s flags, bound to localhost, on the venv's settings only
    (its config, settings and workspace folders in tmp_path); returns (process, log file)."""
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "user-settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"), **extra_env}
    cmd = [str(Path(sys.prefix) / "bin" / "jupyter"), "lab", f"--ServerApp.root_dir={root}",
           "--LabApp.default_url=/lab/tree/notebooks/train.py", f"--ServerApp.port={port}", "--no-browser",
           "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}", *extra_args]
    if os.getuid() == 0:
        cmd.append("--allow-root")
    log = open(tmp_path / "lab.log", "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path), log


@pytest.mark.skipif(shutil.which("jupyter", path=str(Path(sys.prefix) / "bin")) is None, reason="no jupyter in this venv")
def test_lab_server_opens_py_notebooks_as_notebooks_and_saves_them_unchanged(tmp_path):
    """A real JupyterLab server with `make lab`'s flags and the venv's settings (nothing from the
    user's ~/.jupyter: its config and settings folders point into tmp_path)."""
    assert INSTALLED_SETTINGS.exists(), f"{INSTALLED_SETTINGS} missing: run `make setup`"
    assert json.loads(INSTALLED_SETTINGS.read_text()) == json.loads(TRACKED_SETTINGS.read_text()), \
        f"{INSTALLED_SETTINGS} differs from {TRACKED_SETTINGS}: run `make setup`"
    root = _project_copy(tmp_path / "project")
    port, token = _free_port(), "lt-test-token"
    server, log = _start_lab(tmp_path, root, port, token, ["--ServerApp.port_retries=0"],
                             {"JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")})
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                _get(f"{base}/api/status?token={token}")
                break
            except OSError:
                if server.poll() is not None:
                    break
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not answer in 60 s:\n" + (tmp_path / "lab.log").read_text()[-3000:])
        assert server.poll() is None, (tmp_path / "lab.log").read_text()[-3000:]
        settings = _get(f"{base}/lab/api/settings/{DOCMANAGER}?token={token}")
        # the venv's override is the schema's default; the (empty) user settings leave it alone
        assert settings["schema"]["properties"]["defaultViewers"]["default"]["python"] == "Jupytext Notebook"
        assert "defaultViewers" not in settings["settings"]
        factories = json.dumps(_get(f"{base}/lab/api/settings/?token={token}"))
        assert "jupyterlab-jupytext" in factories  # the extension that provides the factory is installed

        model = _get(f"{base}/api/contents/notebooks/train.py?type=notebook&content=1&token={token}")
        assert model["type"] == "notebook"
        assert any("parameters" in c["metadata"].get("tags", []) for c in model["content"]["cells"])
        model["content"]["metadata"]["language_info"] = {"name": "python", "version": "3.11"}
        _get(f"{base}/api/contents/notebooks/train.py?token={token}", method="PUT",
             data=json.dumps({"type": "notebook", "format": "json", "content": model["content"]}).encode())
        assert (root / "notebooks" / "train.py").read_bytes() == (ROOT / "notebooks" / "train.py").read_bytes()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.slow
def test_run_all_in_a_fresh_lab_trains_the_main_jobs_model_and_saving_changes_nothing(tmp_path, data_root, weights_dir):
    """The whole first hour in a real browser: JupyterLab (the venv's settings, empty user settings)
    opens notebooks/train.py as a notebook, Run All trains with the defaults and shows a balanced
    top-1 far above chance (0.5 % for 200 classes), and File > Save leaves the .py byte-identical.
    Headless Chromium is driven over the DevTools protocol (tornado's websocket client)."""
    import asyncio
    import base64
    import re as _re

    from tornado.websocket import websocket_connect
    browser = _chromium()
    if browser is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium; .ci/run installs it)")
    root = _project_copy(tmp_path / "project")
    port, cdp_port, token = _free_port(), _free_port(), "lt-test-token"
    server, log = _start_lab(tmp_path, root, port, token, ["--LabApp.expose_app_in_browser=True"],
                             {"LT_RUNS_DIR": str(tmp_path / "runs"), "PYTHONUNBUFFERED": "1"})
    chrome = None
    try:
        for _ in range(120):
            try:
                _get(f"http://127.0.0.1:{port}/api/status?token={token}")
                break
            except OSError:
                time.sleep(0.5)
        chrome = subprocess.Popen([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                   f"--remote-debugging-port={cdp_port}", f"--user-data-dir={tmp_path / 'profile'}",
                                   "--window-size=1280,900", "about:blank"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(60):
            try:
                targets = _get(f"http://127.0.0.1:{cdp_port}/json")
                break
            except OSError:
                time.sleep(0.5)
        ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")

        async def session():
            ws = await websocket_connect(ws_url, max_message_size=64 * 2**20)
            counter = iter(range(1, 10**6))

            async def js(expr):
                mid = next(counter)
                await ws.write_message(json.dumps({"id": mid, "method": "Runtime.evaluate", "params": {
                    "expression": expr, "awaitPromise": True, "returnByValue": True}}))
                while (msg := json.loads(await ws.read_message())).get("id") != mid:
                    pass
                return msg["result"].get("result", {}).get("value")

            async def until(expr, seconds):
                for _ in range(seconds):
                    if await js(expr):
                        return True
                    await asyncio.sleep(1)
                return False

            mid = next(counter)
            await ws.write_message(json.dumps({"id": mid, "method": "Page.navigate", "params": {
                "url": f"http://127.0.0.1:{port}/lab/tree/notebooks/train.py?token={token}"}}))
            opened = await until("!!(window.jupyterapp && document.querySelector('.jp-NotebookPanel .jp-Cell'))", 120)
            kind = await js("document.querySelector('.jp-FileEditor') ? 'text editor' : "
                            "(document.querySelector('.jp-NotebookPanel') ? 'notebook' : 'nothing')")
            assert opened and kind == "notebook", kind
            # the kernel the notebook names starts by itself; Run All once it is ready, as a user would
            ready = await until("Array.from(jupyterapp.shell.widgets('main')).some(w => w.sessionContext"
                                "?.session?.kernel?.status === 'idle')", 180)  # (headless: no current widget)
            assert ready, "the notebook's kernel did not start"
            await js("void jupyterapp.commands.execute('notebook:run-all-cells')")  # not awaited: it ends with the run
            done = ("(() => { const p = Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt'));"
                    " return document.querySelector('.jp-Dialog') ? 'dialog' :"
                    " p.length > 0 && p.every(x => /\\[\\d+\\]/.test(x.textContent)); })()")
            assert await until(done, 600), "Run All did not finish in 10 minutes"
            dialog = await js("document.querySelector('.jp-Dialog') ? document.querySelector('.jp-Dialog').innerText : ''")
            assert not dialog, f"Lab asked the user: {dialog}"  # e.g. "Select Kernel": the kernel was not found
            text = await js("Array.from(document.querySelectorAll('.jp-OutputArea-output')).map(o => o.innerText).join('\\n')")
            images = await js("document.querySelectorAll('.jp-OutputArea-output img').length")
            # File > Save (docmanager:save acts on the focused widget, and headless Lab has none)
            await js("Array.from(jupyterapp.shell.widgets('main')).find(w => w.context && w.sessionContext).context.save()")
            mid = next(counter)
            await ws.write_message(json.dumps({"id": mid, "method": "Page.captureScreenshot", "params": {}}))
            while (msg := json.loads(await ws.read_message())).get("id") != mid:
                pass
            (tmp_path / "lab.png").write_bytes(base64.b64decode(msg["result"]["data"]))
            return text, images

        before = (root / "notebooks" / "train.py").stat().st_mtime_ns
        text, images = asyncio.run(asyncio.wait_for(session(), 900))  # a dialog or a lost page fails, never hangs
        assert "Error" not in text and "Traceback" not in text, text[-3000:]
        balanced = float(_re.search(r"^Balanced\s+([\d.]+)", text, _re.M).group(1))
        assert balanced > 40, text[-3000:]  # top-1 in %; chance is 0.5 %
        assert images >= 2  # learning curves and the per-split bars
        assert (root / "notebooks" / "train.py").stat().st_mtime_ns > before  # saved after Run All ...
        assert (root / "notebooks" / "train.py").read_bytes() == (ROOT / "notebooks" / "train.py").read_bytes()  # ... unchanged
    finally:
        if chrome is not None:
            chrome.terminate()
            chrome.wait(timeout=20)
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
