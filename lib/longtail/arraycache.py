"""A checksummed, self-healing cache of numpy arrays on disk: ``<cache>/<folder>/<key>.npy``.

Each entry ``<key>.npy`` has its size and CRC-32 in ``<key>.json``, verified on every read; a bad
entry (truncated, corrupted, without a checksum) is computed again, with a one-line warning naming
the file.  Entries are computed under a file lock, so two grid workers never both compute one, and
written atomically, the checksum last (an entry with a checksum is complete).  ``features`` keeps the
frozen backbone's features in it, ``partial`` the frozen prefix's outputs.
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np

from . import config
from .fileio import atomic_write_bytes, atomic_write_json, checksum_problem, file_checksum, file_lock


def cached_array(key: str, compute, *, folder: str, redo: str) -> np.ndarray:
    """The array ``<cache>/<folder>/<key>.npy``, verified against the size and checksum in
    ``<key>.json``; when missing or bad, ``compute(path)`` makes it (under a file lock, so two workers
    never both compute it) and it is saved atomically, the checksum last.  A bad entry is named in a
    warning ("<folder> cache <path>: <problem>; <redo> again")."""
    path = entry_path(key, folder)
    if entry_problem(path) is None:
        return np.load(path)
    with file_lock(path):  # the entry is missing, being written, or bad: decide under the lock
        return load_or_compute(path, lambda: compute(path), name=folder, redo=redo)


def load_or_compute(path: Path, compute, *, name: str, redo: str) -> np.ndarray:
    """Under the entry's lock: the entry when another worker completed it meanwhile, else
    ``compute()`` saved (a bad entry named in a warning first)."""
    problem = entry_problem(path)
    if problem is None:  # another worker computed it while this one waited
        return np.load(path)
    if path.exists():
        warnings.warn(f"{name} cache {path}: {problem}; {redo} again", stacklevel=4)
    return _save(path, compute())


def entry_path(key: str, folder: str) -> Path:
    return config.cache_dir() / folder / f"{key}.npy"


def _save(path: Path, array: np.ndarray) -> np.ndarray:
    """Write ``array`` to ``path`` atomically, then its size and checksum (the entry is complete)."""
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())
    atomic_write_json(path.with_suffix(".json"), file_checksum(path))
    return array


def entry_problem(path: Path) -> str | None:
    """None when the entry exists and matches its stored size and checksum, else why not."""
    if not path.exists():
        return "missing"
    try:
        expected = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        expected = None
    return checksum_problem(path, expected)
