"""Tests for longtail.losses: naive float64 references, special cases, gradients, extreme
inputs, errors, DRW, and a no-collapse training check on a synthetic long-tailed problem."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longtail.losses import (
    LOSS_NAMES,
    LOSSES,
    DRWSchedule,
    build_loss,
    clamp_counts,
    class_balanced_weights,
    drw_eligible,
    drw_weights,
    logit_adjust,
    loss_param_names,
)

PROPERTY = settings(max_examples=30, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

# every configuration worth checking: (name, params)
CONFIGS = [
    ("ce", {}),
    ("ce", {"label_smoothing": 0.1}),
    ("focal", {"gamma": 2.0}),
    ("focal", {"gamma": 0.5}),
    ("weighted_ce", {"scheme": "inverse"}),
    ("weighted_ce", {"scheme": "inverse_sqrt"}),
    ("weighted_ce", {"scheme": "log"}),
    ("class_balanced", {"base": "softmax", "beta": 0.999}),
    ("class_balanced", {"base": "sigmoid", "beta": 0.99}),
    ("class_balanced", {"base": "focal", "beta": 0.9999, "gamma": 1.0}),
    ("balanced_softmax", {}),
    ("equalization", {"gamma": 0.9}),
    ("ldam", {"max_m": 0.5, "s": 30.0}),
    ("logit_adjusted", {"tau": 1.0}),
    ("logit_adjusted", {"tau": 0.5}),
]
CONFIG_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in p.items())}" for n, p in CONFIGS]
ACCEPTS_WEIGHT = [n for n in LOSS_NAMES if drw_eligible(n)]


# ----------------------------------------------------------------- naive float64 references
# Written with plain loops and math, independent of the module under test.


def _log_softmax(row):
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def _counts(n):
    return [max(float(c), 1.0) for c in n]


def ref_ce(z, y, w=None, eps=0.0, shift=None):
    """F.cross_entropy semantics incl. weights and label smoothing; shift added to logits."""
    N, C = len(z), len(z[0])
    w = [1.0] * C if w is None else list(w)
    num = den = 0.0
    for i in range(N):
        row = [z[i][j] + (0.0 if shift is None else shift[j]) for j in range(C)]
        lp = _log_softmax(row)
        num += (1 - eps) * w[y[i]] * -lp[y[i]] + eps / C * sum(w[j] * -lp[j] for j in range(C))
        den += w[y[i]]
    return num / den


def _reduce(per, y, w):
    if w is None:
        return sum(per) / len(per)
    return sum(w[y[i]] * per[i] for i in range(len(per))) / sum(w[y[i]] for i in range(len(per)))


def ref_focal(z, y, gamma, w=None):
    per = []
    for i in range(len(z)):
        lp = _log_softmax(list(z[i]))[y[i]]
        per.append(-((1 - math.exp(lp)) ** gamma) * lp)
    return _reduce(per, y, w)


def ref_weighted_ce_weights(n, scheme):
    n = _counts(n)
    if scheme == "inverse":
        w = [1 / c for c in n]
    elif scheme == "inverse_sqrt":
        w = [1 / math.sqrt(c) for c in n]
    else:
        w = [1 + math.log(max(n) / c) for c in n]
    mean = sum(w) / len(w)
    return [v / mean for v in w]


def ref_cb_weights(n, beta):
    w = [(1 - beta) / (1 - beta ** c) for c in _counts(n)]
    s = sum(w)
    return [v * len(w) / s for v in w]


def _sigmoid(x):
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def ref_class_balanced(z, y, n, beta, base, gamma, reduction="batch"):
    w = ref_cb_weights(n, beta)
    if base == "softmax":
        per = [-math.log(_softmax_p(z[i], y[i])) for i in range(len(z))]
        return sum(w[y[i]] * per[i] for i in range(len(z))) / len(z) if reduction == "batch" else ref_ce(z, y, w)
    per = []
    for i in range(len(z)):
        total = 0.0
        for j in range(len(z[0])):
            q = _sigmoid(z[i][j]) if j == y[i] else 1 - _sigmoid(z[i][j])  # prob. of the right binary label
            mod = (1 - q) ** gamma if base == "focal" else 1.0
            total += -mod * math.log(q)
        per.append(total)
    if reduction == "batch":  # Cui et al.'s code: sum_i w_{y_i} l_i / N
        return sum(w[y[i]] * per[i] for i in range(len(z))) / len(z)
    return _reduce(per, y, w)


def _softmax_p(row, k):
    m = max(row)
    return math.exp(row[k] - m) / sum(math.exp(v - m) for v in row)


def ref_balanced_softmax(z, y, n, w=None):
    return ref_ce(z, y, w, shift=[math.log(c) for c in _counts(n)])


def ref_logit_adjusted(z, y, n, tau, w=None):
    n = _counts(n)
    return ref_ce(z, y, w, shift=[tau * math.log(c / sum(n)) for c in n])


def ref_ldam(z, y, n, max_m, s, w=None):
    m = [c ** -0.25 for c in _counts(n)]
    m = [v * max_m / max(m) for v in m]
    zm = [[s * (z[i][j] - (m[y[i]] if j == y[i] else 0.0)) for j in range(len(z[0]))] for i in range(len(z))]
    return ref_ce(zm, y, w)


def ref_equalization(z, y, n, lam, drop, w=None):
    n = _counts(n)
    tail = [c / sum(n) < lam for c in n]
    per = []
    for i in range(len(z)):
        kept = [math.exp(z[i][k]) for k in range(len(z[0])) if k == y[i] or not (drop[i][k] and tail[k])]
        per.append(-(z[i][y[i]] - math.log(sum(kept))))
    return _reduce(per, y, w)


# ----------------------------------------------------------------- random problems


@st.composite
def problems(draw, max_c=8, max_n=12):
    C = draw(st.integers(2, max_c))
    N = draw(st.integers(1, max_n))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    counts = rng.integers(0, 2000, size=C)
    counts[rng.random(C) < 0.15] = 0                      # some absent classes
    scale = draw(st.sampled_from([0.1, 1.0, 5.0]))
    z = rng.normal(0, scale, size=(N, C))
    y = rng.integers(0, C, size=N)
    w = rng.uniform(0.1, 3.0, size=C) if draw(st.booleans()) else None
    return counts, z, y, w


def _t(z, y, dtype=torch.float64):
    return torch.tensor(z, dtype=dtype), torch.tensor(y, dtype=torch.int64)


def _close(got, want, rtol=1e-5, atol=1e-6):
    assert math.isfinite(got)
    assert got == pytest.approx(want, rel=rtol, abs=atol)


@PROPERTY
@given(problems(), st.sampled_from([0.0, 0.1, 0.5]))
def test_ce_matches_reference(p, eps):
    counts, z, y, w = p
    loss = build_loss("ce", counts, label_smoothing=eps, weight=w)
    _close(loss(*_t(z, y)).item(), ref_ce(z, y, w, eps))
    _close(loss(*_t(z, y, torch.float32)).item(), ref_ce(z, y, w, eps), rtol=1e-4, atol=1e-5)


@PROPERTY
@given(problems(), st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0]))
def test_focal_matches_reference(p, gamma):
    counts, z, y, w = p
    loss = build_loss("focal", counts, gamma=gamma, weight=w)
    _close(loss(*_t(z, y)).item(), ref_focal(z, y, gamma, w))


@PROPERTY
@given(problems(), st.sampled_from(["inverse", "inverse_sqrt", "log"]))
def test_weighted_ce_matches_reference(p, scheme):
    counts, z, y, _ = p
    loss = build_loss("weighted_ce", counts, scheme=scheme)
    w = ref_weighted_ce_weights(counts, scheme)
    np.testing.assert_allclose(loss.class_weights.numpy(), w, rtol=1e-6)
    assert loss.class_weights.mean().item() == pytest.approx(1.0, rel=1e-6)
    _close(loss(*_t(z, y)).item(), ref_ce(z, y, w))


@PROPERTY
@given(problems(), st.sampled_from([0.0, 0.9, 0.99, 0.9999]), st.sampled_from(["softmax", "sigmoid", "focal"]),
       st.sampled_from([0.5, 2.0]), st.sampled_from(["batch", "weights"]))
def test_class_balanced_matches_reference(p, beta, base, gamma, reduction):
    counts, z, y, _ = p
    loss = build_loss("class_balanced", counts, beta=beta, base=base, gamma=gamma, reduction=reduction)
    np.testing.assert_allclose(loss.class_weights.numpy(), ref_cb_weights(counts, beta), rtol=1e-6)
    assert loss.class_weights.sum().item() == pytest.approx(len(counts), rel=1e-6)
    _close(loss(*_t(z, y)).item(), ref_class_balanced(z, y, counts, beta, base, gamma, reduction))


def test_class_balanced_reduction_by_hand():
    """Counts [3, 1], beta 0.5: raw weights (1/2)/(1 - 1/8) = 4/7 and (1/2)/(1/2) = 1, normalised to
    sum 2: 8/11 and 14/11.  Logits 0 (two classes): l = log 2 for every sample.  A batch of labels
    [0, 0, 1]: Cui (/N) = (8/11 + 8/11 + 14/11) log 2 / 3 = 10/11 log 2; the weighted mean = log 2."""
    z, y = torch.zeros(3, 2, dtype=torch.float64), torch.tensor([0, 0, 1])
    cui = build_loss("class_balanced", [3, 1], beta=0.5)
    assert cui.reduction == "batch"  # the default: Cui et al.'s code
    assert cui.class_weights.tolist() == pytest.approx([8 / 11, 14 / 11], rel=1e-6)
    assert cui(z, y).item() == pytest.approx(10 / 11 * math.log(2), rel=1e-6)
    assert build_loss("class_balanced", [3, 1], beta=0.5, reduction="weights")(z, y).item() == pytest.approx(
        math.log(2), rel=1e-6)
    # the slips of the ablation: raw weights; weights in the reverse class order
    raw = build_loss("class_balanced", [3, 1], beta=0.5, normalize=False)
    assert raw.class_weights.tolist() == pytest.approx([4 / 7, 1.0], rel=1e-6)
    rev = build_loss("class_balanced", [3, 1], beta=0.5, weight_order="reversed")
    assert rev.class_weights.tolist() == pytest.approx([14 / 11, 8 / 11], rel=1e-6)
    shuffled = build_loss("class_balanced", [5, 4, 3, 2, 1], beta=0.5, weight_order="shuffled").class_weights
    assert sorted(shuffled.tolist()) == pytest.approx(sorted(class_balanced_weights([5, 4, 3, 2, 1], 0.5).tolist()))
    with pytest.raises(ValueError, match="reduction 'sum'.*batch, weights"):
        build_loss("class_balanced", [3, 1], reduction="sum")


def test_drw_keeps_the_weighted_mean():
    """DRW (Cao et al.'s code: a weighted cross-entropy) divides by sum w, unlike Cui's reduction."""
    z, y = torch.zeros(3, 2, dtype=torch.float64), torch.tensor([0, 0, 1])
    loss = build_loss("ce", [3, 1])
    DRWSchedule([3, 1], 0, beta=0.5).apply(loss, 0)
    assert loss(z, y).item() == pytest.approx(math.log(2), rel=1e-6)


@pytest.mark.parametrize("C", [2, 10, 200])
def test_sigmoid_bias_init_is_minus_log_c_minus_1(C):
    """b = -log(C - 1), so that sigma(b) = 1/C (float64, by hand); the softmax base leaves the bias."""
    for base in ("sigmoid", "focal"):
        loss = build_loss("class_balanced", [1] * C, base=base)
        assert loss.activation == "sigmoid"
        b = loss.initial_bias(C)
        assert b == pytest.approx(-math.log(C - 1), rel=1e-15)
        assert 1 / (1 + math.exp(-b)) == pytest.approx(1 / C, rel=1e-12)
        assert build_loss("class_balanced", [1] * C, base=base, bias_init="zero").initial_bias(C) == 0.0
    softmax = build_loss("class_balanced", [1] * C)
    assert softmax.activation == "softmax" and softmax.initial_bias(C) is None


@PROPERTY
@given(problems())
def test_balanced_softmax_matches_reference(p):
    counts, z, y, w = p
    loss = build_loss("balanced_softmax", counts, weight=w)
    _close(loss(*_t(z, y)).item(), ref_balanced_softmax(z, y, counts, w))


@PROPERTY
@given(problems(), st.sampled_from([0.0, 0.5, 1.0, 2.0]))
def test_logit_adjusted_matches_reference(p, tau):
    counts, z, y, w = p
    loss = build_loss("logit_adjusted", counts, tau=tau, weight=w)
    _close(loss(*_t(z, y)).item(), ref_logit_adjusted(z, y, counts, tau, w))


@PROPERTY
@given(problems(), st.sampled_from([0.0, 0.3, 0.5]), st.sampled_from([1.0, 10.0, 30.0]))
def test_ldam_matches_reference(p, max_m, s):
    counts, z, y, w = p
    z = np.tanh(z)                                        # LDAM expects cosine logits
    loss = build_loss("ldam", counts, max_m=max_m, s=s, weight=w)
    _close(loss(*_t(z, y)).item(), ref_ldam(z, y, counts, max_m, s, w))


@PROPERTY
@given(problems(), st.sampled_from([None, 0.01, 0.1, 0.3]), st.integers(0, 2**32 - 1))
def test_equalization_matches_reference_with_fixed_mask(p, lam, seed):
    counts, z, y, w = p
    drop = np.random.default_rng(seed).random(np.shape(z)) < 0.5
    loss = build_loss("equalization", counts, lam=lam, gamma=0.9, weight=w)
    lam_used = 1 / (2 * len(counts)) if lam is None else lam
    assert loss.lam == pytest.approx(lam_used)
    got = loss(*_t(z, y), drop_mask=torch.tensor(drop)).item()
    _close(got, ref_equalization(z, y, counts, lam_used, drop, w))
    loss.eval()                                           # eval: no dropping, i.e. CE
    _close(loss(*_t(z, y)).item(), ref_ce(z, y, w))


def test_equalization_drops_only_tail_negatives_with_probability_gamma():
    counts = [1000, 500, 200, 20, 5, 0]                   # freq < 1/12: the last three (incl. the 0)
    loss = build_loss("equalization", counts, gamma=0.9)
    assert loss.tail.tolist() == [False, False, False, True, True, True]
    torch.manual_seed(0)
    y = torch.randint(0, 6, (20000,))
    drop = loss.sample_drop_mask(y)
    assert not drop[:, :3].any()                          # head classes never dropped
    assert not drop[torch.arange(len(y)), y].any()       # the target is never dropped
    neg_tail = loss.tail[None, :] & (torch.arange(6)[None, :] != y[:, None])
    assert drop[neg_tail].float().mean().item() == pytest.approx(0.9, abs=0.01)
    # training mode samples a fresh mask: the loss varies; eval mode is deterministic
    z = torch.randn(64, 6)
    yy = torch.randint(0, 6, (64,))
    loss.train()
    assert len({round(loss(z, yy).item(), 6) for _ in range(5)}) > 1
    loss.eval()
    assert loss(z, yy).item() == loss(z, yy).item() == pytest.approx(F.cross_entropy(z, yy).item(), rel=1e-6)


# ----------------------------------------------------------------- special cases


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(32, 7, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 7, (32,), generator=g)
    w = torch.rand(7, generator=g) + 0.1
    return z, y, w


EQUAL = [50] * 7


def _ce(z, y, w=None):
    return F.cross_entropy(z, y, weight=None if w is None else w.to(z.dtype)).item()


def test_focal_gamma0_is_ce(batch):
    z, y, w = batch
    assert build_loss("focal", EQUAL, gamma=0)(z, y).item() == pytest.approx(_ce(z, y), rel=1e-10)
    assert build_loss("focal", EQUAL, gamma=0, weight=w)(z, y).item() == pytest.approx(_ce(z, y, w), rel=1e-6)


@pytest.mark.parametrize("name,params", [
    ("class_balanced", {"base": "softmax"}),
    ("class_balanced", {"base": "softmax", "beta": 0.0}),
    ("weighted_ce", {"scheme": "inverse"}),
    ("weighted_ce", {"scheme": "inverse_sqrt"}),
    ("weighted_ce", {"scheme": "log"}),
    ("balanced_softmax", {}),
    ("logit_adjusted", {"tau": 1.0}),
    ("logit_adjusted", {"tau": 3.0}),
])
def test_equal_counts_is_ce(batch, name, params):
    z, y, _ = batch
    assert build_loss(name, EQUAL, **params)(z, y).item() == pytest.approx(_ce(z, y), rel=1e-6)


def test_class_balanced_beta0_is_ce_for_any_counts(batch):
    z, y, _ = batch
    counts = [1000, 300, 100, 30, 10, 3, 0]
    assert build_loss("class_balanced", counts, beta=0.0)(z, y).item() == pytest.approx(_ce(z, y), rel=1e-6)


def test_ldam_no_margin_unit_scale_is_ce(batch):
    z, y, w = batch
    counts = [1000, 300, 100, 30, 10, 3, 0]
    assert build_loss("ldam", counts, max_m=0.0, s=1.0)(z, y).item() == pytest.approx(_ce(z, y), rel=1e-10)
    assert build_loss("ldam", counts, max_m=0.0, s=1.0, weight=w)(z, y).item() == pytest.approx(_ce(z, y, w), rel=1e-6)


def test_logit_adjusted_tau1_is_balanced_softmax(batch):
    z, y, w = batch
    counts = [1000, 300, 100, 30, 10, 3, 0]
    la = build_loss("logit_adjusted", counts, tau=1.0, weight=w)(z, y).item()
    bs = build_loss("balanced_softmax", counts, weight=w)(z, y).item()
    assert la == pytest.approx(bs, rel=1e-6)


def test_equalization_gamma0_is_ce(batch):
    z, y, w = batch
    counts = [1000, 300, 100, 30, 10, 3, 0]
    loss = build_loss("equalization", counts, gamma=0.0, lam=0.5).train()
    assert loss(z, y).item() == pytest.approx(_ce(z, y), rel=1e-10)


@pytest.mark.parametrize("name,params", [
    ("ce", {}), ("focal", {"gamma": 0.0}), ("ldam", {"max_m": 0.0, "s": 1.0}),
    ("balanced_softmax", {}), ("logit_adjusted", {"tau": 0.0}), ("equalization", {"gamma": 0.0}),
])
def test_weighted_reduction_is_torch_cross_entropy(batch, name, params):
    z, y, w = batch
    counts = EQUAL if name == "balanced_softmax" else [1000, 300, 100, 30, 10, 3, 0]
    loss = build_loss(name, counts, weight=w, **params)
    assert torch.equal(loss.class_weights, w.float())
    assert loss(z, y).item() == pytest.approx(_ce(z, y, w), rel=1e-6)
    loss.set_class_weights(None)
    assert loss.class_weights is None
    assert loss(z, y).item() == pytest.approx(_ce(z, y), rel=1e-10)


def test_zero_weight_batch_gives_zero_not_nan():
    loss = build_loss("focal", [10, 10, 10], weight=[0.0, 1.0, 1.0])
    assert loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long)).item() == 0.0


# ----------------------------------------------------------------- gradients, extremes, precision

COUNTS_WITH_ZERO = [400, 120, 40, 9, 0]


@pytest.mark.parametrize("name,params", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("weighted", [False, True])
def test_gradcheck(name, params, weighted):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, 5, generator=g, dtype=torch.float64)
    if name == "ldam":
        z = z.tanh()
    z.requires_grad_()
    y = torch.tensor([0, 2, 4, 1])
    if weighted and drw_eligible(name):
        params = {**params, "weight": torch.rand(5, generator=g) + 0.1}
    loss = build_loss(name, COUNTS_WITH_ZERO, **params)
    if name == "equalization":
        mask = torch.rand(4, 5, generator=g) < 0.5
        assert torch.autograd.gradcheck(lambda x: loss(x, y, drop_mask=mask), (z,))
        loss.eval()
    assert torch.autograd.gradcheck(lambda x: loss(x, y), (z,))


@pytest.mark.parametrize("name,params", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_logits_and_zero_count_are_finite(name, params, dtype):
    g = torch.Generator().manual_seed(2)
    sign = torch.randint(0, 2, (64, 5), generator=g) * 2 - 1
    z = (1e4 * sign).to(dtype).requires_grad_()
    y = torch.randint(0, 5, (64,), generator=g)
    y[:8] = 4                                             # samples of the zero-count class
    loss = build_loss(name, COUNTS_WITH_ZERO, **params).train()
    value = loss(z, y)
    value.backward()
    assert value.dtype == torch.float32
    assert torch.isfinite(value) and torch.isfinite(z.grad).all()
    if not loss.owns_weights:                             # and again with DRW weights on
        DRWSchedule(COUNTS_WITH_ZERO, 0).apply(loss, 1)
    z.grad = None
    value = loss(z, y)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("name,params", CONFIGS, ids=CONFIG_IDS)
def test_bf16_autocast_close_to_float32(name, params):
    g = torch.Generator().manual_seed(3)
    x, W = torch.randn(128, 16, generator=g), torch.randn(6, 16, generator=g) / 4
    if name == "ldam":
        x, W = F.normalize(x, dim=1), F.normalize(W, dim=1)
    y = torch.randint(0, 6, (128,), generator=g)
    loss = build_loss(name, [500, 200, 80, 30, 10, 0], **params).eval()
    ref = loss(x @ W.T, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = x @ W.T
        assert logits.dtype == torch.bfloat16
        got = loss(logits, y)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    # the loss itself runs in float32: identical to upcasting the bf16 logits first
    assert got.item() == pytest.approx(loss(logits.float(), y).item(), rel=1e-6)
    assert got.item() == pytest.approx(ref.item(), rel=0.03, abs=0.03)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name,params", CONFIGS, ids=CONFIG_IDS)
def test_cuda_matches_cpu(name, params):
    z = torch.randn(16, 5, dtype=torch.float64)
    y = torch.randint(0, 5, (16,))
    loss = build_loss(name, COUNTS_WITH_ZERO, **params).eval()
    cpu = loss(z, y).item()
    loss = loss.cuda()
    if not loss.owns_weights:
        DRWSchedule(COUNTS_WITH_ZERO, 0).apply(loss, 0)   # weights set on CPU must still work
        loss.set_class_weights(None)
    assert loss(z.cuda(), y.cuda()).item() == pytest.approx(cpu, rel=1e-6)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert torch.isfinite(loss(z.float().cuda().bfloat16(), y.cuda()))


# ----------------------------------------------------------------- helpers: counts, weights, logit_adjust


def test_clamp_counts_and_validation():
    assert clamp_counts([0, 3, 0.5]).tolist() == [1.0, 3.0, 1.0]
    assert clamp_counts(torch.tensor([5, 0])).dtype == torch.float64
    for bad in ([], [[1, 2]], [1, -1], [1, float("nan")]):
        with pytest.raises(ValueError):
            clamp_counts(bad)


def test_class_balanced_weights_shared_and_finite():
    assert drw_weights is class_balanced_weights
    w = class_balanced_weights([5000, 500, 50, 5, 0], 0.9999)
    assert torch.isfinite(w).all() and w.sum().item() == pytest.approx(5.0, rel=1e-6)
    assert (w[:-1] <= w[1:]).all()                       # rarer class, larger weight
    assert torch.equal(w, class_balanced_weights([5000, 500, 50, 5, 1], 0.9999))  # 0 counts as 1
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            class_balanced_weights([1, 2], bad)


@pytest.mark.parametrize("tau", [0.0, 1.0, 1.5])
def test_logit_adjust_numpy_and_torch(tau):
    counts = [600, 200, 50, 0]
    logits = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    n = np.maximum(np.array(counts, dtype=np.float64), 1)
    want = logits - tau * np.log(n / n.sum())
    got_np = logit_adjust(logits, counts, tau)
    assert isinstance(got_np, np.ndarray) and got_np.dtype == np.float32
    np.testing.assert_allclose(got_np, want, rtol=1e-6)
    got_t = logit_adjust(torch.from_numpy(logits), torch.tensor(counts), tau)
    assert isinstance(got_t, torch.Tensor) and got_t.dtype == torch.float32
    np.testing.assert_allclose(got_t.numpy(), want, rtol=1e-6, atol=1e-6)
    assert np.isfinite(logit_adjust(np.full((2, 4), 1e4), counts, tau)).all()


def test_logit_adjust_favours_rare_classes():
    # equal logits: after adjustment the rarest class wins
    assert logit_adjust(np.zeros((1, 3)), [100, 10, 1]).argmax() == 2


# ----------------------------------------------------------------- API and errors


def test_name_table():
    assert tuple(LOSSES) == LOSS_NAMES == ("ce", "focal", "weighted_ce", "class_balanced", "balanced_softmax",
                                           "equalization", "ldam", "logit_adjusted", "label_aware_smoothing")
    assert {"ce", "focal", "ldam", "balanced_softmax", "logit_adjusted", "equalization"} <= set(ACCEPTS_WEIGHT)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_documented_parameter_builds(name):
    import inspect
    sig = inspect.signature(LOSSES[name].__init__).parameters
    params = {p: sig[p].default for p in loss_param_names(name)}
    assert all(v is not inspect.Parameter.empty for v in params.values())
    loss = build_loss(name, [30, 20, 10], **params)
    assert isinstance(loss, torch.nn.Module)
    assert loss.class_weights is None or loss.class_weights.shape == (3,)
    assert "class_counts" not in loss_param_names(name)


def test_documented_defaults():
    assert build_loss("ce", [1, 2]).label_smoothing == 0.0
    assert build_loss("focal", [1, 2]).gamma == 2.0
    assert build_loss("weighted_ce", [1, 2]).scheme == "inverse"
    cb = build_loss("class_balanced", [1, 2])
    assert (cb.beta, cb.base, cb.gamma) == (0.9999, "softmax", 0.5)
    eq = build_loss("equalization", [1, 2, 3, 4])
    assert (eq.lam, eq.gamma) == (1 / 8, 0.9)
    ldam = build_loss("ldam", [100, 10, 1])
    assert (ldam.max_m, ldam.s) == (0.5, 30.0)
    assert ldam.margins.max().item() == pytest.approx(0.5) and ldam.margins.argmax().item() == 2
    assert build_loss("logit_adjusted", [1, 2]).tau == 1.0


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build_loss("cross_entropy", [1, 2])
    for name in LOSS_NAMES:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="ldam"):
        loss_param_names("nope")


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_unknown_parameter_names_it_and_lists_valid_ones(name):
    with pytest.raises(TypeError) as err:
        build_loss(name, [1, 2], gamma_typo=1.0)
    assert "gamma_typo" in str(err.value)
    for p in loss_param_names(name):
        assert p in str(err.value)


@pytest.mark.parametrize("name,params", [
    ("weighted_ce", {"scheme": "inverse_square"}), ("class_balanced", {"base": "softmax_focal"}),
])
def test_bad_choice_lists_choices(name, params):
    with pytest.raises(ValueError) as err:
        build_loss(name, [1, 2], **params)
    choices = ("inverse", "inverse_sqrt", "log") if name == "weighted_ce" else ("softmax", "focal", "sigmoid")
    assert all(c in str(err.value) for c in choices)


@pytest.mark.parametrize("name,params", [
    ("focal", {"gamma": -1}), ("class_balanced", {"beta": 1.0}), ("ldam", {"s": 0}), ("ldam", {"max_m": -0.1}),
    ("equalization", {"gamma": 1.5}), ("ce", {"label_smoothing": 2}), ("logit_adjusted", {"tau": float("inf")}),
])
def test_bad_values_raise(name, params):
    with pytest.raises(ValueError):
        build_loss(name, [1, 2], **params)


def test_shape_checks():
    loss = build_loss("ce", [1, 2, 3])
    with pytest.raises(ValueError, match="3"):
        loss(torch.randn(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError):
        loss(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError):
        loss.set_class_weights([1.0, 2.0])


# ----------------------------------------------------------------- DRW


def test_drw_schedule():
    counts = [500, 100, 20, 4, 0]
    drw = DRWSchedule(counts, start_epoch=3)
    for name in ACCEPTS_WEIGHT:
        loss = build_loss(name, counts)
        for epoch in range(6):
            returned = drw.apply(loss, epoch)
            if epoch < 3:
                assert returned is None and loss.class_weights is None
            else:
                assert torch.allclose(loss.class_weights, class_balanced_weights(counts, 0.9999))
                assert loss.class_weights.sum().item() == pytest.approx(5.0, rel=1e-6)
    assert torch.allclose(DRWSchedule(counts, 0, beta=0.99).weights_at(0), class_balanced_weights(counts, 0.99))
    for name in ("weighted_ce", "class_balanced"):                # weights are the method: refused
        with pytest.raises(ValueError):
            drw.apply(build_loss(name, counts), 4)


# ----------------------------------------------------------------- no collapse

C, D, IF, N_MAX, SEP = 10, 8, 100, 500, 2.75


def _long_tailed_problem(seed):
    """Gaussian clusters with unit noise and means at distance SEP from the origin in 8-D,
    IF = 100 exponential profile (500 ... 5), balanced test set (200 per class). Overlapping
    enough that plain CE is clearly hurt on the tail (a linear model on separable clusters
    would make every loss perfect). Margins checked over seeds 0-9 when the test was written
    (min over seeds of the tail-accuracy gain over CE: class_balanced +0.12, balanced_softmax
    and logit_adjusted +0.16, LDAM-DRW +0.17; every balanced accuracy >= 0.61; CE's tail
    accuracy below its balanced accuracy by >= 0.09)."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(C, D, generator=g)
    mu = SEP * mu / mu.norm(dim=1, keepdim=True)
    counts = [int(N_MAX * IF ** (-i / (C - 1))) for i in range(C)]
    y_train = torch.cat([torch.full((n,), i) for i, n in enumerate(counts)])
    y_test = torch.arange(C).repeat_interleave(200)
    x_train = mu[y_train] + torch.randn(len(y_train), D, generator=g)
    x_test = mu[y_test] + torch.randn(len(y_test), D, generator=g)
    return counts, x_train, y_train, x_test, y_test


def _train(name, counts, x_train, y_train, x_test, y_test, steps=300):
    """Full-batch Adam on a linear model; LDAM with DRW on a cosine classifier (normalised
    inputs and weight rows, s = 30), DRW switched on for the last third of the steps."""
    torch.manual_seed(0)
    cosine = name == "ldam"
    W = (0.01 * torch.randn(C, D)) if cosine else torch.zeros(C, D)
    W.requires_grad_()
    b = torch.zeros(C, requires_grad=True)
    loss = build_loss(name, counts)
    drw = DRWSchedule(counts, start_epoch=2 * steps // 3) if cosine else None
    opt = torch.optim.Adam([W] if cosine else [W, b], lr=0.05)

    def forward(x):
        return F.normalize(x, dim=1) @ F.normalize(W, dim=1).T if cosine else x @ W.T + b

    for step in range(steps):
        if drw is not None:
            drw.apply(loss, step)
        opt.zero_grad()
        value = loss(forward(x_train), y_train)
        assert torch.isfinite(value)
        value.backward()
        opt.step()
    with torch.no_grad():
        pred = forward(x_test).argmax(1)
    per_class = torch.stack([(pred[y_test == c] == c).float().mean() for c in range(C)])
    return per_class.mean().item(), per_class[C - C // 3:].mean().item()


def test_no_collapse_on_synthetic_long_tail():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                              # tiny ops: threads only contend
    try:
        data = _long_tailed_problem(seed=0)
        results = {name: _train(name, *data) for name in LOSS_NAMES}
    finally:
        torch.set_num_threads(threads)
    report = "\n".join(f"{n:17s} balanced {b:.3f} tail {t:.3f}" for n, (b, t) in results.items())
    print(report)
    for name, (balanced, _) in results.items():
        assert balanced > 0.5, f"{name} collapsed:\n{report}"        # chance is 0.1
    ce_balanced, ce_tail = results["ce"]
    assert ce_tail < ce_balanced - 0.05, f"problem too easy, CE not hurt on the tail:\n{report}"
    for name in ("balanced_softmax", "ldam", "class_balanced", "logit_adjusted"):
        assert results[name][1] > ce_tail + 0.05, f"{name} does not beat CE on the tail:\n{report}"


# ----------------------------------------------------------------- what a loss says about itself


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_losses_describe_their_head_scale_and_drw_eligibility(name):
    loss = build_loss(name, [30, 20, 10])
    assert type(loss).cosine_head is (name == "ldam")      # LDAM's margins are in cosine units
    assert loss.logit_scale == (30.0 if name == "ldam" else 1.0)
    assert build_loss("ldam", [3, 1], s=7.5).logit_scale == 7.5
    assert drw_eligible(name) is (name not in ("weighted_ce", "class_balanced"))
    assert "weight" not in loss_param_names(name)           # class weights are internal (DRW's)
    if drw_eligible(name):
        DRWSchedule([30, 20, 10], 0).apply(loss, 0)
        assert loss.class_weights is not None
    else:
        with pytest.raises(ValueError, match="already weights its classes"):
            DRWSchedule([30, 20, 10], 0).apply(loss, 0)
        with pytest.raises(TypeError, match="takes no weight"):
            build_loss(name, [30, 20, 10], weight=[1.0, 1.0, 1.0])


# --------------------------------------------------------------------------- what a loss declares


def test_every_loss_declares_its_label_and_family_and_lossinfo_reads_them_without_torch():
    from longtail import lossinfo, taxonomy
    info = lossinfo.loss_info()
    assert list(info) == list(LOSS_NAMES)
    families = {v for k, v in vars(taxonomy).items() if k.isupper()}
    for name, cls in LOSSES.items():
        assert "label" in vars(cls), f"{cls.__name__} inherits its label"  # a subclass must name itself
        assert cls.family in families, (name, cls.family)
        assert (info[name].label, info[name].family, info[name].owns_weights, info[name].cosine_head) == (
            cls.label, cls.family, cls.owns_weights, cls.cosine_head)
    assert len({i.label for i in info.values()}) == len(info)
    assert lossinfo.drw_eligible_losses() == [n for n in LOSS_NAMES if drw_eligible(n)]


NEW_LOSS = '''

class SquaredHingeLoss(_LongTailLoss):
    """A stand-in new loss for the test: mean over classes j != y of max(0, 1 + z_j - z_y)^2."""

    label = "Squared hinge"
    family = taxonomy.RE_MARGINING

    def __init__(self, class_counts: CountsLike, margin: float = 1.0, weight: CountsLike | None = None):
        super().__init__(class_counts, weight)
        self.margin = float(margin)

    def _loss(self, z, y, w):
        gap = (self.margin + z - z.gather(1, y[:, None])).clamp_min(0) ** 2
        per = gap.scatter(1, y[:, None], 0.0).sum(1) / max(z.shape[1] - 1, 1)
        return _weighted_mean(per, y, w)
'''

CHECK_NEW_LOSS = '''
import sys
from longtail import leaderboard, lossinfo, losses, params, results, taxonomy
from longtail.run import run_training
p = params.validate({"loss": "squared_hinge", "loss_params": {"margin": 0.5}, "drw_epoch": 1})
assert p["loss"] == "squared_hinge"
try:
    params.validate({"loss": "squared_hinge", "loss_params": {"gamma": 2}})
except params.ParameterError as exc:
    assert "valid: margin" in str(exc), exc
else:
    raise AssertionError("an unknown loss parameter passed")
assert lossinfo.loss_labels()["squared_hinge"] == "Squared hinge"
assert results.base_method({"loss": "squared_hinge", "drw_epoch": 1}) == "Squared hinge-DRW"
assert results.method_order(["Squared hinge", "LDAM", "CE"]) == ["CE", "LDAM", "Squared hinge"]
assert leaderboard.method_family({"loss": "squared_hinge"}) == taxonomy.RE_MARGINING
try:
    losses.DRWSchedule([3, 1], 0).apply(losses.build_loss("weighted_ce", [3, 1]), 0)
except ValueError as exc:
    assert "squared_hinge" in str(exc), exc
r = run_training(dict(dataset="synthetic", backbone="resnet32", mode="linear", image_size=16, epochs=2,
                      loss="squared_hinge", dataset_params={"num_classes": 4, "train_per_class": 12,
                                                            "test_per_class": 4, "image_size": 16},
                      output_dir=sys.argv[1]), log=lambda s: None)
assert 0 <= r.metrics["balanced/acc1"] <= 1
print("new loss found everywhere")
'''


@pytest.mark.slow
def test_a_new_loss_is_one_class_in_losses_py(tmp_path):
    """Adding a loss to (a copy of) losses.py alone: the parameter check, the results' labels and row
    order, the leaderboard's family, DRW's message and a real run all find it; the training
    notebook's parameter cell does not restate the losses (so it needs no change)."""
    import os
    import shutil
    import subprocess
    import sys

    from pathlib import Path

    from longtail import losses as losses_module, params
    lib = tmp_path / "lib"
    shutil.copytree(Path(losses_module.__file__).parent, lib / "longtail",
                    ignore=shutil.ignore_patterns("__pycache__"))
    path = lib / "longtail" / "losses.py"
    source = path.read_text()
    table = "\nLOSSES: dict[str, type[_LongTailLoss]] = {\n"
    start = source.index(table)
    end = source.index("\n}\n", start)  # the table's closing brace
    source = (source[:start] + NEW_LOSS + "\n"  # the class, before the name table ...
              + source[start:end] + '\n    "squared_hinge": SquaredHingeLoss,' + source[end:])  # ... its line in it
    path.write_text(source)
    env = {**os.environ, "PYTHONPATH": str(lib), "LT_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", CHECK_NEW_LOSS, str(tmp_path / "run")], capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode == 0 and "new loss found everywhere" in out.stdout, out.stdout + out.stderr
    cell_line = next(line for line in params.notebook_cell().splitlines() if line.startswith("loss = "))
    assert "longtail.losses.LOSSES" in cell_line  # points at the table instead of listing it


# ----------------------------------------------------------------- label-aware smoothing (MiSLAS)

def test_label_aware_smoothing_with_one_strength_is_torchs_label_smoothing():
    """ε_head = ε_tail = ε: every class smoothed by ε spread over all C classes, which is exactly
    F.cross_entropy's label_smoothing.  ε is held in float32, off by at most u·ε (u = 2^-24), which
    moves the float64 loss by u·ε·|mean_j log p_j - log p_y|, a relative 1e-7 at most here."""
    z = torch.randn(7, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 3])
    loss = build_loss("label_aware_smoothing", [50, 20, 5, 1], smooth_head=0.2, smooth_tail=0.2)
    assert loss(z, y).item() == pytest.approx(F.cross_entropy(z, y, label_smoothing=0.2).item(), rel=1e-7)


@pytest.mark.parametrize("shape", ["concave", "linear", "convex"])
def test_label_aware_smoothing_strengths_follow_the_counts_by_hand(shape):
    """Zhong et al.'s f(n) at the largest (ε_1), smallest (ε_K) and middle count; the loss is
    (1 - ε_y)(-log p_y) + ε_y mean_j(-log p_j), checked in float64."""
    counts = [9, 5, 1]  # n_1 = 9, n_K = 1, the middle class halfway: r = 1/2
    loss = build_loss("label_aware_smoothing", counts, smooth_head=0.4, smooth_tail=0.1, shape=shape)
    middle = {"concave": 0.1 + 0.3 * math.sin(math.pi / 4), "linear": 0.25,
              "convex": 0.4 + 0.3 * math.sin(1.5 * math.pi + math.pi / 4)}[shape]
    assert loss.smoothing.tolist() == pytest.approx([0.4, middle, 0.1], rel=1e-6)
    z = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    logp = F.log_softmax(z, 1)
    eps = torch.tensor([0.4, 0.1], dtype=torch.float64)
    by_hand = (-(1 - eps) * logp[[0, 1], y] - eps * logp.mean(1)).mean()
    assert loss(z, y).item() == pytest.approx(by_hand.item(), rel=1e-6)  # ε stored in float32


def test_label_aware_smoothing_defaults_and_errors():
    loss = build_loss("label_aware_smoothing", [3, 3])
    assert (loss.smooth_head, loss.smooth_tail, loss.shape) == (0.4, 0.1, "concave")
    assert loss.smoothing.tolist() == pytest.approx([0.4, 0.4])  # equal counts: every class is a head class
    with pytest.raises(ValueError, match="shape='wavy'"):
        build_loss("label_aware_smoothing", [3, 1], shape="wavy")
    with pytest.raises(ValueError, match="smooth_head must be in"):
        build_loss("label_aware_smoothing", [3, 1], smooth_head=1.5)
