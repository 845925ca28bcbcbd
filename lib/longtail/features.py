"""Frozen-backbone features, extracted once and cached on disk.

The key covers everything that changes a feature: backbone, weights (file, size, mtime),
the decoded images (their cache file), input size and normalisation.  Each entry ``<key>.npy`` has
its size and checksum in ``<key>.json``, verified on every read; a bad entry (truncated, corrupted,
without a checksum) is extracted again, with a one-line warning naming the file.  Every run of a grid on
the same backbone and data then trains its head on the cached array in seconds
(the survey's decoupled-training idea; the CPU default ``mode="linear"``).  ``cached_array`` is
that cache for any array (``mode: partial`` keeps its frozen-prefix outputs in it).
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from . import config
from .engine import predict
from .fileio import atomic_write_bytes, atomic_write_json, checksum_problem, file_checksum, file_lock


def feature_key(**parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_features(model, images, transform, key: str, *, batch_size=512, device="cpu",
                    precision="auto", channels_last=True, log=print) -> np.ndarray:
    """Pooled pre-logit features [N, D] of ``images`` under ``transform``, from the cache when there.
    ``model`` and ``images`` may be callables, called only when the features must be extracted."""
    return cached_features_many(model, [(images, transform, key)], batch_size=batch_size, device=device,
                                precision=precision, channels_last=channels_last, log=log)[0]


def cached_features_many(model, requests, *, batch_size=512, device="cpu", precision="auto", channels_last=True,
                         log=print) -> list[np.ndarray]:
    """``cached_features`` of several entries, ``requests`` = [(images, transform, key), ...] (e.g. a
    run's training and test split), in that order.

    An entry that another process is extracting is taken last: two grid workers starting on cold
    caches extract different splits at once, each on its own core, instead of one waiting for the
    other.  ``model`` (a callable) is built once, at the first entry that needs it."""
    built = []

    def the_model():
        if not built:
            built.append(model() if callable(model) and not isinstance(model, torch.nn.Module) else model)
        return built[0]

    def load_or_extract(images, transform, path):  # under the entry's lock
        return _load_or_compute(path, lambda: _extract(the_model, images, transform, path, batch_size, device,
                                                       precision, channels_last, log),
                                name="feature", redo="extracting the features")

    paths = [_entry(key, "features") for _, _, key in requests]
    out: list = [np.load(path) if _problem(path) is None else None for path in paths]
    for wait in (False, True):  # first the free entries, then wait for those held elsewhere
        for i, (images, transform, _) in enumerate(requests):
            if out[i] is None:
                with file_lock(paths[i], wait=wait) as held:
                    if held:
                        out[i] = load_or_extract(images, transform, paths[i])
    return out


def cached_array(key: str, compute, *, folder: str, redo: str) -> np.ndarray:
    """The array ``<cache>/<folder>/<key>.npy``, verified against the size and checksum in
    ``<key>.json``; when missing or bad, ``compute(path)`` makes it (under a file lock, so two workers
    never both compute it) and it is saved atomically, the checksum last.  A bad entry is named in a
    warning ("<folder> cache <path>: <problem>; <redo> again")."""
    path = _entry(key, folder)
    if _problem(path) is None:
        return np.load(path)
    with file_lock(path):  # the entry is missing, being written, or bad: decide under the lock
        return _load_or_compute(path, lambda: compute(path), name=folder, redo=redo)


def _load_or_compute(path: Path, compute, *, name: str, redo: str) -> np.ndarray:
    """Under the entry's lock: the entry when another worker completed it meanwhile, else
    ``compute()`` saved (a bad entry named in a warning first)."""
    problem = _problem(path)
    if problem is None:  # another worker computed it while this one waited
        return np.load(path)
    if path.exists():
        warnings.warn(f"{name} cache {path}: {problem}; {redo} again", stacklevel=4)
    return _save(path, compute())


def _entry(key: str, folder: str) -> Path:
    return config.cache_dir() / folder / f"{key}.npy"


def _save(path: Path, array: np.ndarray) -> np.ndarray:
    """Write ``array`` to ``path`` atomically, then its size and checksum (the entry is complete)."""
    import io
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())
    atomic_write_json(path.with_suffix(".json"), file_checksum(path))
    return array


def _problem(path: Path) -> str | None:
    """None when the entry exists and matches its stored size and checksum, else why not."""
    if not path.exists():
        return "missing"
    try:
        expected = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        expected = None
    return checksum_problem(path, expected)


def _extract(model, images, transform, path, batch_size, device, precision, channels_last, log) -> np.ndarray:
    images = images() if callable(images) else images
    log(f"extracting features of {len(images)} images (cached as {path.name})")
    # every core, not this kernel's share of them: the extraction holds the cache entry's lock, so the
    # grid's other workers that need these features wait for it (2 workers on 2 cores: 1.8x faster)
    return predict(model(), images, transform, batch_size=batch_size, device=device, precision=precision,
                   features=True, channels_last=channels_last, cpu_workers=os.cpu_count() or 1).astype(np.float32)
