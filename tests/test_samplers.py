import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats
from torch.utils.data import DataLoader, Sampler

from longtail.samplers import (SAMPLER_NAMES, SAMPLERS, build_sampler, class_probabilities,
                               sampler_param_names)
from longtail.subsets import longtail_counts

COUNTS = longtail_counts(500, 10, 50)  # [500, 323, ..., 10]: exp profile, IF 50
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(10), COUNTS))
PARAMS = {"instance": {}, "class_balanced": {}, "square_root": {}, "power": {"q": 0.3},
          "progressive": {"total_epochs": 10}}
P_MIN = 1e-6  # chi-square p-value bound: loose enough never to flake, tight enough to catch a wrong p


def _draw(name, labels=LABELS, seed=0, epoch=0, **params):
    s = build_sampler(name, labels, seed, **{**PARAMS[name], **params})
    s.set_epoch(epoch)
    return np.array(list(s))


def test_name_table_and_params():
    assert SAMPLER_NAMES == tuple(SAMPLERS) == ("instance", "class_balanced", "square_root", "power", "progressive")
    assert sampler_param_names("power") == ["num_samples", "q"]
    assert sampler_param_names("progressive") == ["num_samples", "total_epochs"]
    assert sampler_param_names("instance") == ["num_samples"]


def test_unknown_name_or_param_lists_choices():
    with pytest.raises(ValueError, match="'balanced'.*instance, class_balanced, square_root, power, progressive"):
        build_sampler("balanced", LABELS, 0)
    with pytest.raises(ValueError, match="'alpha'.*num_samples, q"):
        build_sampler("power", LABELS, 0, q=0.5, alpha=1)
    with pytest.raises(ValueError, match="needs parameter.*total_epochs"):
        build_sampler("progressive", LABELS, 0)
    with pytest.raises(ValueError, match="unknown sampler"):
        class_probabilities("nope", COUNTS)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_is_a_torch_sampler_deterministic_under_seed_and_different_per_epoch(name):
    s = build_sampler(name, LABELS, 7, **PARAMS[name])
    assert isinstance(s, Sampler) and len(s) == len(LABELS)
    first = list(s)
    assert list(s) == first  # same epoch, same draws
    assert np.array_equal(_draw(name, seed=7), first)  # a fresh sampler with the same seed
    assert not np.array_equal(_draw(name, seed=8), first)
    s.set_epoch(1)
    assert list(s) != first
    assert all(0 <= i < len(LABELS) for i in first)
    assert [int(i) for i in DataLoader(range(len(LABELS)), batch_size=None, sampler=s)] == list(s)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_num_samples(name):
    assert len(_draw(name, num_samples=37)) == 37
    assert len(_draw(name, num_samples=3 * len(LABELS) + 5)) == 3 * len(LABELS) + 5


def test_instance_sampler_is_a_permutation_per_epoch():
    for epoch in range(3):
        idx = _draw("instance", epoch=epoch)
        assert np.array_equal(np.sort(idx), np.arange(len(LABELS)))
    # more samples than data: whole passes, each a permutation
    idx = _draw("instance", num_samples=2 * len(LABELS))
    assert all(np.array_equal(np.sort(half), np.arange(len(LABELS))) for half in np.split(idx, 2))


@pytest.mark.parametrize("name,epoch,params", [
    ("class_balanced", 0, {}), ("square_root", 0, {}), ("power", 0, {"q": 0.3}), ("power", 0, {"q": 1.5}),
    ("progressive", 0, {}), ("progressive", 4, {}), ("progressive", 10, {}),
])
def test_drawn_class_frequencies_match_expected(name, epoch, params):
    draws = _draw(name, epoch=epoch, num_samples=50_000, **params)
    observed = np.bincount(LABELS[draws], minlength=10)
    expected = class_probabilities(name, COUNTS, epoch, **{**PARAMS[name], **params}) * len(draws)
    assert stats.chisquare(observed, expected).pvalue > P_MIN


def test_instances_are_uniform_within_a_class():
    draws = _draw("class_balanced", num_samples=50_000)
    for c in (0, 9):  # the head class (500 images) and the tail class (10)
        members = np.flatnonzero(LABELS == c)
        hits = np.bincount(np.searchsorted(members, draws[LABELS[draws] == c]), minlength=len(members))
        assert stats.chisquare(hits).pvalue > P_MIN


def test_class_probability_formulas():
    n = np.array(COUNTS, dtype=float)
    assert np.allclose(class_probabilities("instance", n), n / n.sum())
    assert np.allclose(class_probabilities("class_balanced", n), 0.1)
    assert np.allclose(class_probabilities("square_root", n), np.sqrt(n) / np.sqrt(n).sum())
    assert np.allclose(class_probabilities("power", n, q=2), n**2 / (n**2).sum())
    t = 3
    assert np.allclose(class_probabilities("progressive", n, t, total_epochs=10),
                       (1 - t / 10) * n / n.sum() + t / 10 / 10)
    # an empty class is never drawn, even at q = 0 (0**0 == 1)
    p = class_probabilities("class_balanced", [4, 0, 1])
    assert p.tolist() == [0.5, 0.0, 0.5]


def test_progressive_endpoints():
    n = COUNTS
    assert np.array_equal(class_probabilities("progressive", n, 0, total_epochs=10), class_probabilities("instance", n))
    for t in (10, 11):  # T and beyond: uniform
        assert np.array_equal(class_probabilities("progressive", n, t, total_epochs=10),
                              class_probabilities("class_balanced", n))
    # the drawn indices themselves: at T the progressive sampler is the class-balanced one
    assert np.array_equal(_draw("progressive", epoch=10), _draw("class_balanced", epoch=10))


def test_power_special_cases_equal_named_samplers():
    assert np.array_equal(class_probabilities("power", COUNTS, q=1), class_probabilities("instance", COUNTS))
    for q, name in ((0.5, "square_root"), (0, "class_balanced")):
        assert np.array_equal(class_probabilities("power", COUNTS, q=q), class_probabilities(name, COUNTS))
        assert np.array_equal(_draw("power", q=q, epoch=2), _draw(name, epoch=2))


@settings(max_examples=60, deadline=None)
@given(labels=st.lists(st.integers(0, 12), min_size=1, max_size=60),
       name=st.sampled_from(SAMPLER_NAMES), seed=st.integers(0, 2**31), epoch=st.integers(0, 20),
       num_samples=st.integers(1, 200))
def test_property_indices_in_range_and_classes_nonempty(labels, name, seed, epoch, num_samples):
    labels = np.array(labels)
    counts = np.bincount(labels)
    idx = _draw(name, labels, seed, epoch, num_samples=num_samples)
    assert len(idx) == num_samples
    assert idx.min() >= 0 and idx.max() < len(labels)
    assert (counts[labels[idx]] > 0).all()
    p = class_probabilities(name, counts, epoch, **PARAMS[name])
    assert np.isclose(p.sum(), 1) and (p[counts == 0] == 0).all() and (p[labels[idx]] > 0).all()


def test_bad_labels():
    with pytest.raises(ValueError, match="non-empty"):
        build_sampler("instance", [], 0)
    with pytest.raises(ValueError, match="integers"):
        build_sampler("instance", [0.5, 1.0], 0)
    with pytest.raises(ValueError, match="non-negative"):
        build_sampler("class_balanced", [0, -1], 0)
