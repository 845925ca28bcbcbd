"""Where the project reads data and weights and writes caches and runs.

Each location is, in order of precedence: an explicit argument, an environment variable,
a folder inside the project. Nothing is ever written below the data root or the weights
folder (they may be read-only copies, as ``../shared`` is in CI); extracted archives,
decoded-image caches and feature caches go to the cache folder.

| setting      | environment variable | default               |
|--------------|----------------------|-----------------------|
| data root    | ``LT_DATA_ROOT``     | ``<project>/data``    |
| weights dir  | ``LT_WEIGHTS_DIR``   | ``<project>/weights`` |
| cache dir    | ``LT_CACHE_DIR``     | ``<project>/.cache``  |
| runs dir     | ``LT_RUNS_DIR``      | ``<project>/runs``    |

Paths written in project files (a grid's ``notebook``, ``output_root``) are relative to the
project root (``from_project_root``).  ``git_state`` says which code the checkout holds (HEAD, and
whether tracked files differ from it) and ``environment`` the machine and the package versions: the
runs' and the report's provenance.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def from_project_root(path: str | os.PathLike) -> Path:
    """A path written in a project file (a grid's ``notebook``, ``output_root``): relative to the
    project root whatever the working directory, ``~`` expanded, resolved."""
    p = Path(str(path)).expanduser()
    return p if p.is_absolute() else (PROJECT_ROOT / p).resolve()


def _resolve(value: str | os.PathLike | None, env: str, default: Path) -> Path:
    if value not in (None, ""):
        return Path(value).expanduser()
    if os.environ.get(env):
        return Path(os.environ[env]).expanduser()
    return default


def data_root(value: str | os.PathLike | None = None) -> Path:
    return _resolve(value, "LT_DATA_ROOT", PROJECT_ROOT / "data")


def weights_dir(value: str | os.PathLike | None = None) -> Path:
    return _resolve(value, "LT_WEIGHTS_DIR", PROJECT_ROOT / "weights")


def cache_dir(value: str | os.PathLike | None = None) -> Path:
    path = _resolve(value, "LT_CACHE_DIR", PROJECT_ROOT / ".cache")
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir(value: str | os.PathLike | None = None) -> Path:
    return _resolve(value, "LT_RUNS_DIR", PROJECT_ROOT / "runs")


def git_state(root: str | os.PathLike = PROJECT_ROOT) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the project's checkout: HEAD, and whether tracked files differ from it
    (a run or report made from changed code, or from a copied tree whose history is older, says so);
    ``(None, None)`` where there is no git or no repository."""
    import subprocess

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None, None
        status = git("status", "--porcelain", "--untracked-files=no")
        return head.stdout.strip() or None, (bool(status.stdout.strip()) if status.returncode == 0 else None)
    except (OSError, subprocess.SubprocessError):
        return None, None


#: the packages whose versions a run's ``environment.json`` and the report's provenance record
PACKAGES = ("longtail", "torch", "torchvision", "timm", "numpy", "pandas", "scikit-learn", "matplotlib", "seaborn",
            "papermill", "nbconvert", "jupytext")


def environment() -> dict:
    """The provenance a run and the report share: Python, package versions (``PACKAGES``; None when
    not installed), platform, processor, CPU count, the checkout's git state and the date (ISO 8601)."""
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    commit, dirty = git_state()
    return {"python": platform.python_version(), "packages": versions, "platform": platform.platform(),
            "processor": platform.processor(), "cpu_count": os.cpu_count(), "git_commit": commit, "git_dirty": dirty,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
