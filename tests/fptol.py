"""Float tolerances derived from the computation, so that another CPU's kernels cannot fail a test.

Two float32 evaluations of the same network in different orders (a folded BatchNorm, another
memory layout, another convolution kernel, another batch split) each differ from the exact value
by rounding.  A dot product of ``n`` terms computed in float32 has a relative error of at most
``γ_n = n·u / (1 − n·u)`` (Higham, *Accuracy and Stability of Numerical Algorithms*, 2002,
Thm. 3.1), ``u = 2**-24``; rounding errors of independent sign grow like ``√n·u`` instead (Higham
& Mary, SIAM J. Sci. Comput. 2019, the probabilistic bound with λ = 1).  A layer's error is
relative to the size of its outputs, and a network of ``depth`` such layers adds their errors, so
the output error is bounded relative to the output's *scale* (its largest magnitude), not
element by element: a small logit next to large ones carries the large ones' absolute error.
That is why ``rtol`` per element failed on a CPU whose kernels rounded differently.
"""
from __future__ import annotations

import math

import numpy as np
import torch

U32 = 2.0 ** -24  # float32 unit roundoff
U64 = 2.0 ** -53  # float64 unit roundoff


def dot_bound(n: int, u: float = U32) -> float:
    """Deterministic relative error bound of an ``n``-term dot product: ``γ_n = n·u / (1 − n·u)``."""
    return n * u / (1 - n * u)


def network_bound(depth: int, fan_in: int, u: float = U32) -> float:
    """Relative error (to the output's scale) of ``depth`` layers of at most ``fan_in``-term dot
    products, errors of independent sign: ``depth · √fan_in · u``."""
    return depth * math.sqrt(fan_in) * u


def scale(x) -> float:
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return float(np.abs(x).max())


def assert_close_to_scale(got, want, rel: float, what: str = "") -> None:
    """``max |got − want| ≤ rel · max |want|``, naming the error and the bound when it fails."""
    g = got.detach().cpu().double().numpy() if isinstance(got, torch.Tensor) else np.asarray(got, dtype=np.float64)
    w = want.detach().cpu().double().numpy() if isinstance(want, torch.Tensor) else np.asarray(want, dtype=np.float64)
    assert g.shape == w.shape, (g.shape, w.shape)
    err, bound = float(np.abs(g - w).max()), rel * scale(w)
    assert err <= bound, f"{what}: max error {err:.3g} above the bound {bound:.3g} ({rel:.3g} of the scale {scale(w):.3g})"
