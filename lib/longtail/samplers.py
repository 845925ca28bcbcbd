"""Class-aware samplers for long-tailed training: how often each class is seen per epoch.

A re-sampler draws every sample in two steps (Shen et al. 2016; Kang et al. 2020): a class j with
probability p_j, then an image uniformly among that class's images, both with replacement.  The
class probabilities form one family, p_j ∝ n_j^q over the classes present in ``labels``:

| name              | p_j (epoch t)                                 | params (besides num_samples) |
|-------------------|-----------------------------------------------|------------------------------|
| ``instance``      | n_j / N: a plain shuffled pass, no re-drawing | –                            |
| ``class_balanced``| 1 / C                                         | –                            |
| ``square_root``   | n_j^½ / Σ_k n_k^½                             | –                            |
| ``power``         | n_j^q / Σ_k n_k^q (q=1 instance, ½ sqrt, 0 cb) | ``q``                       |
| ``progressive``   | (1 − t/T)·n_j/N + (t/T)·1/C, t clipped to T   | ``total_epochs`` (T)         |

C counts only the classes with at least one image, so an empty class is never drawn.  With T the
number of training epochs, the progressive sampler's last epoch (t = T − 1) is nearly balanced and
epoch T exactly so (Kang et al. 2020 interpolate over the epochs in the same way).

Every sampler takes ``num_samples`` (default ``len(labels)``: one epoch's worth of draws) and has a
``set_epoch(epoch)`` method: each epoch's draws come from a generator seeded by (seed, epoch), so
they are deterministic under a seed and differ per epoch.  As with ``DistributedSampler``, call
``set_epoch`` before every epoch, or each epoch repeats the first one.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import numpy as np
from torch.utils.data import Sampler


def _power(class_counts, q: float) -> np.ndarray:
    """p_j ∝ n_j^q over present classes: the one formula behind every sampler's class probabilities."""
    counts = np.asarray(class_counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        raise ValueError("no class has an instance; cannot draw from empty labels")
    # 0**0 == 1 would give an empty class a share under q = 0: keep empty classes at exactly zero.
    w = np.power(counts, q, out=np.zeros_like(counts), where=present)
    return w / w.sum()


def _instance_p(class_counts, epoch: int) -> np.ndarray:
    return _power(class_counts, 1.0)


def _class_balanced_p(class_counts, epoch: int) -> np.ndarray:
    return _power(class_counts, 0.0)


def _square_root_p(class_counts, epoch: int) -> np.ndarray:
    return _power(class_counts, 0.5)


def _power_p(class_counts, epoch: int, q: float) -> np.ndarray:
    return _power(class_counts, q)


def _progressive_p(class_counts, epoch: int, total_epochs: int) -> np.ndarray:
    a = min(max(epoch, 0), total_epochs) / total_epochs
    # Written so that a = 0 and a = 1 give the instance and balanced probabilities bit for bit.
    return (1.0 - a) * _power(class_counts, 1.0) + a * _power(class_counts, 0.0)


class SamplerSpec(NamedTuple):
    probabilities: Callable[..., np.ndarray]  # (class_counts, epoch, **params) -> p
    params: tuple[str, ...]  # required parameters besides num_samples
    permutation: bool = False  # a shuffled pass over the data instead of draws with replacement


SAMPLERS: dict[str, SamplerSpec] = {
    "instance": SamplerSpec(_instance_p, (), permutation=True),
    "class_balanced": SamplerSpec(_class_balanced_p, ()),
    "square_root": SamplerSpec(_square_root_p, ()),
    "power": SamplerSpec(_power_p, ("q",)),
    "progressive": SamplerSpec(_progressive_p, ("total_epochs",)),
}
SAMPLER_NAMES = tuple(SAMPLERS)
COMMON_PARAMS = ("num_samples",)


def _spec(name: str) -> SamplerSpec:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLER_NAMES)}")
    return SAMPLERS[name]


def sampler_param_names(name: str) -> list[str]:
    """Parameters a sampler takes (``num_samples`` is optional, the others required)."""
    return [*COMMON_PARAMS, *_spec(name).params]


def _check_params(name: str, params: dict) -> dict:
    """The sampler-specific parameters, validated; ``num_samples`` is accepted and left out."""
    spec = _spec(name)
    valid = sampler_param_names(name)
    for key in params:
        if key not in valid:
            raise ValueError(f"unknown parameter {key!r} for sampler {name!r}; "
                             f"valid: {', '.join(valid)}")
    missing = [key for key in spec.params if params.get(key) is None]
    if missing:
        raise ValueError(f"sampler {name!r} needs parameter(s) {', '.join(missing)}")
    out = {key: params[key] for key in spec.params}
    if "q" in out:
        out["q"] = float(out["q"])
        if not math.isfinite(out["q"]):
            raise ValueError(f"q must be finite, got {params['q']!r}")
    if "total_epochs" in out:
        if int(out["total_epochs"]) != out["total_epochs"] or out["total_epochs"] < 1:
            raise ValueError(f"total_epochs must be an integer >= 1, got {params['total_epochs']!r}")
        out["total_epochs"] = int(out["total_epochs"])
    return out


def class_probabilities(name: str, class_counts, epoch: int = 0, **params) -> np.ndarray:
    """Probability with which sampler ``name`` draws each class at ``epoch`` (for ``instance``:
    the expected class frequencies of a shuffled pass, n_j / N)."""
    return _spec(name).probabilities(np.asarray(class_counts), int(epoch), **_check_params(name, params))


def _as_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence, got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.min() < 0:
        raise ValueError(f"labels must be non-negative, got {labels.min()}")
    return labels.astype(np.int64)


class EpochSampler(Sampler[int]):
    """Base: labels, per-class counts, ``num_samples`` and the (seed, epoch) generator."""

    def __init__(self, labels, *, seed: int = 0, num_samples: int | None = None):
        self.labels = _as_labels(labels)
        self.class_counts = np.bincount(self.labels)
        self.num_samples = len(self.labels) if num_samples is None else int(num_samples)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples!r}")
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed!r}")
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch!r}")
        self.epoch = int(epoch)

    def _rng(self) -> np.random.Generator:
        # SeedSequence of the pair: unlike seed + epoch, (0, 1) and (1, 0) give different streams.
        return np.random.default_rng([self.seed, self.epoch])

    def indices(self) -> np.ndarray:
        """This epoch's indices (int64), the same on every call until ``set_epoch``."""
        raise NotImplementedError

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples


class InstanceSampler(EpochSampler):
    """Plain shuffling: a fresh permutation each epoch (concatenated ones when num_samples > N)."""

    def indices(self) -> np.ndarray:
        rng, n = self._rng(), len(self.labels)
        passes = -(-self.num_samples // n)
        return np.concatenate([rng.permutation(n) for _ in range(passes)])[: self.num_samples]


class ClassAwareSampler(EpochSampler):
    """Draws a class from ``probabilities(class_counts, epoch)``, then an instance uniformly within it."""

    def __init__(self, labels, probabilities: Callable[[np.ndarray, int], np.ndarray], *,
                 seed: int = 0, num_samples: int | None = None):
        super().__init__(labels, seed=seed, num_samples=num_samples)
        self.probabilities = probabilities
        # Indices sorted by class: class c's instances are by_class[offsets[c] : offsets[c] + n_c].
        self._by_class = np.argsort(self.labels, kind="stable")
        self._offsets = np.concatenate([[0], np.cumsum(self.class_counts)[:-1]])

    def class_probabilities(self) -> np.ndarray:
        return self.probabilities(self.class_counts, self.epoch)

    def indices(self) -> np.ndarray:
        rng = self._rng()
        classes = rng.choice(len(self.class_counts), size=self.num_samples, p=self.class_probabilities())
        n_c = self.class_counts[classes]
        # floor(u * n_c) with u in [0, 1); the minimum guards against u * n_c rounding up to n_c.
        within = np.minimum((rng.random(self.num_samples) * n_c).astype(np.int64), n_c - 1)
        return self._by_class[self._offsets[classes] + within]


def build_sampler(name: str, labels, seed: int = 0, **params) -> EpochSampler:
    """Sampler ``name`` (see ``SAMPLER_NAMES``) over ``labels``; ``params`` as in ``sampler_param_names``."""
    checked = _check_params(name, params)
    spec, num_samples = SAMPLERS[name], params.get("num_samples")
    if spec.permutation:
        return InstanceSampler(labels, seed=seed, num_samples=num_samples)
    probabilities = functools.partial(spec.probabilities, **checked)
    return ClassAwareSampler(labels, probabilities, seed=seed, num_samples=num_samples)
