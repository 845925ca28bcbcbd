import os
from pathlib import Path

import pytest

from longtail import config


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data (EU Moths, CIFAR-10 archive) from LT_DATA_ROOT; tests that need it skip without it."""
    root = config.data_root()
    if not (root / "eu-moths" / "images.txt").exists():
        pytest.skip(f"real data not found under LT_DATA_ROOT={os.environ.get('LT_DATA_ROOT')!r} "
                    f"(looked for {root / 'eu-moths' / 'images.txt'})")
    return root


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    folder = config.weights_dir()
    if not (folder / "mobilenetv2_100.coral_inat_insects.pt").exists():
        pytest.skip(f"pretrained weights not found under LT_WEIGHTS_DIR={os.environ.get('LT_WEIGHTS_DIR')!r}")
    return folder


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    """A private cache folder, so a test sees its own cache behaviour."""
    monkeypatch.setenv("LT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A grid's caches and runs in tmp_path; one thread a kernel (bit-identical across executors)."""
    monkeypatch.setenv("LT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LT_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    return tmp_path


def _pids_with_environ(entry: str) -> list[int]:
    """Live processes of this machine whose environment holds ``entry`` (``NAME=value``)."""
    mark, found = entry.encode(), []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if mark in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            pass
    return found


@pytest.fixture
def pids_with_environ():
    """``pids_with_environ("NAME=value")``: the live processes whose environment holds it (kernels
    carry JPY_PARENT_PID of their starter, SLURM tasks SLURM_JOB_ID)."""
    return _pids_with_environ
