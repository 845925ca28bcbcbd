"""Frozen-backbone features, extracted once and cached on disk.

The key covers everything that changes a feature: backbone, weights (file, size, mtime),
the decoded images (their cache file), input size and normalisation.  Each entry ``<key>.npy`` has
its size and checksum in ``<key>.json``, verified on every read; a bad entry (truncated, corrupted,
without a checksum) is extracted again, with a one-line warning naming the file.  Every run of a grid on
the same backbone and data then trains its head on the cached array in seconds
(the survey's decoupled-training idea; the CPU default ``mode="linear"``).  Each feature array is
one entry of the checksummed array cache, ``arraycache``.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import torch

from .arraycache import entry_path, entry_problem, load_or_compute
from .engine import predict
from .fileio import file_lock

CACHE_FOLDER = "features"  # under the cache folder


def feature_key(**parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_features_many(model, requests, *, batch_size=512, device="cpu", precision="auto", channels_last=True,
                         log=print) -> list[np.ndarray]:
    """Pooled pre-logit features [N, D] of each of ``requests`` = [(images, transform, key), ...] (e.g.
    a run's training and test split), in that order, from the cache when there.  ``model`` and the
    images may be callables, called only when features must be extracted.

    An entry that another process is extracting is taken last: two grid workers starting on cold
    caches extract different splits at once, each on its own core, instead of one waiting for the
    other.  ``model`` (a callable) is built once, at the first entry that needs it."""
    built = []

    def the_model():
        if not built:
            built.append(model() if callable(model) and not isinstance(model, torch.nn.Module) else model)
        return built[0]

    def load_or_extract(images, transform, path):  # under the entry's lock
        return load_or_compute(path, lambda: _extract(the_model, images, transform, path, batch_size, device,
                                                       precision, channels_last, log),
                                name="feature", redo="extracting the features")

    paths = [entry_path(key, CACHE_FOLDER) for _, _, key in requests]
    out: list = [np.load(path) if entry_problem(path) is None else None for path in paths]
    for wait in (False, True):  # first the free entries, then wait for those held elsewhere
        for i, (images, transform, _) in enumerate(requests):
            if out[i] is None:
                with file_lock(paths[i], wait=wait) as held:
                    if held:
                        out[i] = load_or_extract(images, transform, paths[i])
    return out


def _extract(model, images, transform, path, batch_size, device, precision, channels_last, log) -> np.ndarray:
    images = images() if callable(images) else images
    log(f"extracting features of {len(images)} images (cached as {path.name})")
    # every core, not this kernel's share of them: the extraction holds the cache entry's lock, so the
    # grid's other workers that need these features wait for it (2 workers on 2 cores: 1.8x faster)
    return predict(model(), images, transform, batch_size=batch_size, device=device, precision=precision,
                   features=True, channels_last=channels_last, cpu_workers=os.cpu_count() or 1).astype(np.float32)
