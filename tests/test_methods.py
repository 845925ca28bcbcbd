"""The classifier-stage methods of longtail.methods against hand-computed values and special cases,
the unused-image validation split, and their parameters."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from longtail import methods, subsets
from longtail.params import ParameterError, validate


def _linear(weight, bias):
    head = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        head.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        head.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return head


# ---------------------------------------------------------------------------- decoupling

def test_lws_scales_each_class_logit_and_trains_only_the_scales():
    head = _linear([[1.0, 2.0], [3.0, -1.0]], [0.5, -0.5])
    lws = methods.LearnableWeightScaling(head, 2)
    x = torch.tensor([[1.0, 1.0]])
    assert lws(x).tolist() == [[3.5, 1.5]]  # f = 1 at the start: the head itself
    with torch.no_grad():
        lws.scales.copy_(torch.tensor([2.0, -1.0]))
    assert lws(x).tolist() == [[7.0, -1.5]]  # f_j (w_j·x + b_j)
    assert [n for n, q in lws.named_parameters() if q.requires_grad] == ["scales"]
    assert head.weight.requires_grad  # the original head is copied, not frozen in place


def test_tau_normalization_by_hand():
    head = _linear([[3.0, 4.0], [0.0, 2.0]], [1.0, 1.0])
    unit = methods.tau_normalized(head, 1.0)
    assert torch.allclose(unit.weight, torch.tensor([[0.6, 0.8], [0.0, 1.0]]))
    assert unit.bias.tolist() == [0.0, 0.0]
    half = methods.tau_normalized(head, 0.5)
    assert torch.allclose(half.weight[0], torch.tensor([3.0, 4.0]) / 5 ** 0.5)
    assert torch.equal(methods.tau_normalized(head, 0.0).weight, head.weight)  # τ = 0: unchanged
    assert head.weight[0].tolist() == [3.0, 4.0]  # a copy


def test_tau_norm_grid_is_kangs_sweep_and_the_leaderboard_uses_it():
    """Kang et al. sweep τ over np.linspace(0, 2, 21); every τ-norm entry of the leaderboard tunes
    τ on that grid."""
    from longtail import gridspec
    assert methods.TAU_NORM_GRID == pytest.approx(np.linspace(0, 2, 21).tolist(), abs=1e-12)
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    runs = [r for r in gridspec.expand(gridspec.read_spec(root / "params" / "techniques.yaml"))
            if r.get("posthoc") == "tau_norm"]
    assert {r["label"] for r in runs} == {"tau_norm", "bs_flip_tau_norm"}
    assert all(r["posthoc_tau_grid"] == methods.TAU_NORM_GRID for r in runs)


def test_max_norm_radius_is_relative_to_the_stage1_norms():
    norms = torch.tensor([1.0, 3.0, 2.0])
    assert methods.max_norm_radius(norms, 0.0) == 1.0
    assert methods.max_norm_radius(norms, 0.25) == 1.5
    assert methods.max_norm_radius(norms, 1.0) == 3.0


def test_max_norm_projects_rows_onto_the_ball():
    w = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    methods.max_norm_(w, 1.0)
    assert torch.allclose(w, torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]]))


# ---------------------------------------------------------------------------- prototypes

def test_class_means_and_ncm_by_hand():
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 1])
    assert methods.class_means(x, y, 3).tolist() == [[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]]
    ncm = methods.NearestClassMean(x, y, 2, "euclidean", scale=1.0)
    # normalised features: (1,0), (0,1), (0,1); class means (1,0), (0,1)
    out = ncm(torch.tensor([[3.0, 4.0]]))  # x̂ = (0.6, 0.8)
    assert torch.allclose(out, torch.tensor([[-(0.4 ** 2 + 0.8 ** 2), -(0.6 ** 2 + 0.2 ** 2)]]))


def test_ncm_renormalized_means_by_hand():
    """Class 0 holds two orthogonal images (mean of the normalised features (0.5, 0.5), length
    0.71), class 1 one image (its mean has length 1).  Renormalised, the means are unit vectors and
    z_j = -s (2 - 2 cos(x, μ_j)); the query at 215° is nearer in angle to class 1 but nearer in
    Euclidean distance to the short mean of class 0, so the two options disagree."""
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.2]])
    y = torch.tensor([0, 0, 1])
    query = torch.tensor([[math.cos(math.radians(215)), math.sin(math.radians(215))]])
    plain = methods.NearestClassMean(x, y, 2, "euclidean", scale=1.0)
    renorm = methods.NearestClassMean(x, y, 2, "euclidean", scale=1.0, renormalize_means=True)
    mu1 = torch.tensor([1.0, 0.2]) / math.hypot(1.0, 0.2)
    assert torch.allclose(plain.means, torch.stack([torch.tensor([0.5, 0.5]), mu1]))
    assert torch.allclose(renorm.means, torch.stack([torch.tensor([0.5, 0.5]) / 0.5 ** 0.5, mu1]))
    cos = query @ renorm.means.t()
    assert torch.allclose(renorm(query), -(2 - 2 * cos), atol=1e-6)
    assert plain(query).argmax(1).item() == 0 and renorm(query).argmax(1).item() == 1
    assert methods.technique_params("ncm", None)["renormalize_means"] is True  # chosen on validation
    with pytest.raises(ValueError, match="renormalize_means='yes': choose one of true, false"):
        methods.technique_params("ncm", {"renormalize_means": "yes"})


def test_cosine_prototypes_are_centred_by_hand():
    x = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 1])
    proto = methods.NearestClassMean(x, y, 2, "cosine", scale=2.0)
    # centre (1, 1): prototypes (1, -1) and (-1, 1); a query (3, 1) centred is (2, 0)
    out = proto(torch.tensor([[3.0, 1.0]]))
    assert torch.allclose(out, torch.tensor([[2.0 / 2 ** 0.5, -2.0 / 2 ** 0.5]]))


# ---------------------------------------------------------------------------- tail calibration

def test_tukey_transform():
    x = torch.tensor([[4.0, 1.0]])
    assert methods.tukey(x, 0.5).tolist() == [[2.0, 1.0]]
    assert torch.equal(methods.tukey(x, 0.0), torch.log(x + 1e-6))
    with pytest.raises(ValueError, match="non-negative"):
        methods.tukey(-x, 0.5)
    with pytest.raises(ValueError, match="must be >= 0"):
        methods.tukey(x, -0.5)


def test_tukey_log_is_finite_on_exact_zeros():
    """λ = 0 is log(x + ε): a ReLU feature's exact zero maps to log ε, not -inf.  Against the
    float64 value: rounding x + ε to fp32 moves the log by at most u (the unit roundoff; d log y =
    dy / y), the fp32 log adds a few ulps of its result."""
    x = torch.tensor([[0.0, 1.0, 4.0]])
    out = methods.tukey(x, 0.0)
    assert torch.isfinite(out).all()
    expected = torch.tensor([[math.log(1e-6), math.log(1 + 1e-6), math.log(4 + 1e-6)]])
    u = torch.finfo(torch.float32).eps
    assert torch.allclose(out, expected, rtol=4 * u, atol=u)
    assert methods.tukey(torch.zeros(1), 0.0, eps=1e-3).item() == pytest.approx(math.log(1e-3), rel=1e-6)
    to_space = methods.feature_transform("feature_calibration", {"tukey": 0.0, "log_eps": 0.5})
    assert to_space(torch.zeros(1)).item() == pytest.approx(math.log(0.5), rel=1e-6)
    with pytest.raises(ValueError, match="log_eps=0"):
        methods.technique_params("feature_calibration", {"log_eps": 0})


def test_calibration_without_spread_gives_the_calibrated_mean():
    """k = 1, α = 0 and a base class of identical images: Σ' = 0, so every draw is μ' = (μ_b + x̃)/2,
    with μ_b the nearest base class; the tail class is topped up to the largest class's count."""
    x = torch.tensor([[0.0, 0.0]] * 5 + [[10.0, 10.0]] * 5 + [[1.0, 0.0]])
    y = torch.tensor([0] * 5 + [1] * 5 + [2])
    new_x, new_y = methods.calibrated_samples(x, y, 3, k=1, alpha=0.0, base_min=5,
                                              generator=torch.Generator().manual_seed(0))
    assert new_y.tolist() == [2, 2, 2, 2]
    assert torch.allclose(new_x, torch.tensor([[0.5, 0.0]] * 4))


def test_calibration_covariance_is_the_mean_base_covariance_plus_alpha():
    """Draws of one tail image with k = 2: their covariance matches Σ_1/2 + Σ_2/2 + α I."""
    rng = torch.Generator().manual_seed(1)
    base1 = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 0.0], [2.0, 0.0]])  # variance 4/3 along x
    base2 = torch.tensor([[5.0, 0.0], [5.0, 2.0], [5.0, 0.0], [5.0, 2.0]])  # variance 4/3 along y
    x = torch.cat([base1, base2, torch.tensor([[3.0, 3.0]])])
    y = torch.tensor([0] * 4 + [1] * 4 + [2])
    new_x, _ = methods.calibrated_samples(x, y, 3, k=2, alpha=0.5, base_min=4, target=20001, generator=rng)
    assert len(new_x) == 20000
    expected_mean = (torch.tensor([1.0, 0.0]) + torch.tensor([5.0, 1.0]) + torch.tensor([3.0, 3.0])) / 3
    assert torch.allclose(new_x.mean(0), expected_mean, atol=0.03)
    cov = torch.cov(new_x.T)
    assert torch.allclose(cov, torch.tensor([[4 / 6 + 0.5, 0.0], [0.0, 4 / 6 + 0.5]]), atol=0.03)


def test_calibration_needs_enough_base_classes():
    x, y = torch.rand(6, 2), torch.tensor([0, 0, 0, 1, 1, 2])
    with pytest.raises(ValueError, match="1 base classes"):
        methods.calibrated_samples(x, y, 3, k=2, base_min=3)


# ---------------------------------------------------------------------------- tuning and the techniques

def test_best_on_validation_picks_the_highest_balanced_accuracy_first_on_ties():
    labels = np.array([0, 0, 0, 1])
    # candidate a: class 0 all right, class 1 wrong -> 0.5; b: 2/3 of class 0, class 1 right -> 0.833
    preds = {"a": [0, 0, 0, 0], "b": [0, 0, 1, 1], "c": [0, 1, 0, 1]}
    best, scores = methods.best_on_validation(preds, lambda c: np.eye(2)[preds[c]], labels, 2)
    assert best == "b" and scores["a"] == 0.5 and scores["b"] == pytest.approx(5 / 6)
    assert scores["c"] == scores["b"]  # a tie: the first candidate wins
    with pytest.raises(ValueError, match="validation split"):
        methods.best_on_validation([1.0], lambda c: np.zeros((0, 2)), [], 2)


def test_weight_balancing_stage1_without_maxnorm_then_tunes_stage2_on_validation():
    """Stage 1: the run's loss with each weight decay, no MaxNorm; stage 2 from the chosen stage 1:
    class-balanced loss, each (weight decay, threshold), MaxNorm on the weights (not the bias) with
    δ relative to the stage-1 norms; both choices by validation score, the best retrained last."""
    calls = []
    stage1_scores = {5e-4: 0.4, 5e-3: 0.7, 2e-2: 0.6}
    stage2_scores = {(0.0, 1.2): 0.5, (0.0, 2.0): 0.55, (0.1, 1.2): 0.8, (0.1, 2.0): 0.3}

    def fit(module, x, y, **kw):
        if "loss" not in kw:  # stage 1: "trains" to class-weight norms 1 and 3
            assert "on_step" not in kw  # no MaxNorm in stage 1
            with torch.no_grad():
                module.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 3.0, 0.0]]))
                module.bias.copy_(torch.tensor([5.0, -5.0]))
            calls.append(("wb1", kw["weight_decay"]))
            return [{"epoch": 0}], stage1_scores[kw["weight_decay"]]
        assert kw["loss"] == "class_balanced" and kw["loss_params"] == {"beta": 0.9999} and kw["stage_epochs"]
        assert module.weight.norm(dim=1).tolist() == [1.0, 3.0]  # starts from stage 1's classifier
        with torch.no_grad():
            module.weight.mul_(10.0)
            module.bias.mul_(10.0)
        kw["on_step"](module)  # the projection, as after an optimiser step
        radius = round(module.weight.norm(dim=1).max().item(), 4)
        calls.append(("wb2", kw["weight_decay"], radius))
        return [{"epoch": 0}], stage2_scores[(kw["weight_decay"], radius)]

    params = {"stage2_wd_grid": [0.0, 0.1], "max_norm_grid": [0.1, 0.5]}  # δ = 1 + t (3 - 1): 1.2, 2.0
    head, history = methods.train_classifier("weight_balancing", params, lambda: nn.Linear(3, 2),
                                             torch.rand(4, 3), torch.tensor([0, 0, 1, 1]), 2, fit)
    assert calls == [("wb1", 5e-4), ("wb1", 5e-3), ("wb1", 2e-2), ("wb1", 5e-3),  # the best again, last
                     ("wb2", 0.0, 1.2), ("wb2", 0.0, 2.0), ("wb2", 0.1, 1.2), ("wb2", 0.1, 2.0), ("wb2", 0.1, 1.2)]
    assert torch.allclose(head.weight.norm(dim=1), torch.tensor([1.2, 1.2]))
    assert head.bias.tolist() == [50.0, -50.0]  # the bias is not capped
    assert [r["stage"] for r in history] == ["wb1 wd=0.005", "wb2 wd=0.1 max_norm=0.1"]


def test_weight_balancing_defaults_include_the_papers_values():
    p = methods.technique_params("weight_balancing", None)
    assert 5e-3 in p["stage1_wd_grid"] and 0.1 in p["max_norm_grid"] and p["beta"] == 0.9999
    assert methods.tuned_on_validation("weight_balancing", None) == ["stage1_wd_grid", "stage2_wd_grid",
                                                                     "max_norm_grid"]
    assert methods.tuned_on_validation("weight_balancing", {"stage1_wd_grid": [0.0], "stage2_wd_grid": [0.1],
                                                            "max_norm_grid": [0.1]}) == []


def test_feature_calibration_tunes_k_and_alpha_on_validation(monkeypatch):
    """One classifier per (k, α) on the real and calibrated features, each drawn with the run's
    seed; the best validation score is kept (and retrained last)."""
    drawn = []

    def fake_samples(x, y, num_classes, *, k, alpha, base_min, generator, target=None):
        drawn.append((k, alpha, generator.initial_seed()))
        return torch.full((1, x.shape[1]), 10.0 * k + alpha), torch.tensor([2])

    monkeypatch.setattr(methods, "calibrated_samples", fake_samples)
    scores = {(1, 0.0): 0.2, (1, 0.5): 0.6, (2, 0.0): 0.6, (2, 0.5): 0.1}
    trained = []

    def fit(module, x, y, **kw):
        assert len(x) == 11 and y[-1] == 2 and not kw
        v = x[-1, 0].item()
        trained.append((int(v // 10), round(v % 10, 3)))
        return [{"epoch": 0}], scores[trained[-1]]

    x, y = torch.rand(10, 3), torch.tensor([0] * 5 + [1] * 5)
    head, history = methods.train_classifier("feature_calibration", {"k_grid": [1, 2], "alpha_grid": [0.0, 0.5]},
                                             lambda: nn.Linear(3, 3), x, y, 3, fit, seed=7)
    assert trained == [(1, 0.0), (1, 0.5), (2, 0.0), (2, 0.5), (1, 0.5)]  # a tie goes to the first
    assert {s for *_, s in drawn} == {7}
    assert [r["stage"] for r in history] == ["calibrated k=1 alpha=0.5"]
    with pytest.raises(ValueError, match="2 base classes .* for k=3"):  # before any training
        methods.train_classifier("feature_calibration", {"k_grid": [1, 3]}, lambda: nn.Linear(3, 3), x, y, 3, fit)
    assert len(trained) == 5


def test_technique_parameters_are_checked():
    with pytest.raises(ValueError, match="choose one of none, lws"):
        methods.technique_params("lw", {})
    with pytest.raises(ValueError, match="valid: tukey, log_eps, k_grid, alpha_grid, base_min"):
        methods.technique_params("feature_calibration", {"beta": 1})
    with pytest.raises(ValueError, match=r"max_norm_grid=\[0.1, -1\]: \[-1\] invalid; a non-empty list of MaxNorm"):
        methods.technique_params("weight_balancing", {"max_norm_grid": [0.1, -1]})
    with pytest.raises(ValueError, match=r"stage2_wd_grid=\[\]: a non-empty list of weight decays"):
        methods.technique_params("weight_balancing", {"stage2_wd_grid": []})
    with pytest.raises(ValueError, match=r"k_grid=\[2, 1.5\]: \[1.5\] invalid; a non-empty list of numbers of base"):
        methods.technique_params("feature_calibration", {"k_grid": [2, 1.5]})
    with pytest.raises(ValueError, match=r"alpha_grid=0.2: a non-empty list of spreads"):
        methods.technique_params("feature_calibration", {"alpha_grid": 0.2})
    with pytest.raises(ValueError, match="tukey=-1"):
        methods.technique_params("feature_calibration", {"tukey": -1})
    assert methods.technique_params("ncm", None) == {"scale": 16.0, "renormalize_means": True}


@pytest.mark.parametrize("bad,expected", [
    ({"technique": "lsw"}, "choose one of none, lws, weight_balancing"),
    ({"technique": "ncm", "mode": "finetune"}, "use mode linear"),
    ({"tta": "crops"}, "choose one of none, flip, five_crop, ten_crop"),
    ({"val_source": "unused", "val_fraction": 0.1}, "set val_fraction null or 0"),
    ({"posthoc_tau_grid": [0.5, 1]}, "posthoc='none'"),
    ({"posthoc": "logit_adjust", "posthoc_tau_grid": [0.5, 1], "val_fraction": 0.0}, "tuned on a validation split"),
    ({"technique": "ncm", "posthoc": "tau_norm"}, "use posthoc logit_adjust"),
    ({"technique": "weight_balancing", "val_fraction": 0.0},
     "tunes stage1_wd_grid, stage2_wd_grid, max_norm_grid on a validation split"),
    ({"technique": "feature_calibration", "val_fraction": 0.0}, "tunes k_grid, alpha_grid on a validation split"),
    ({"technique": "weight_balancing", "technique_params": {"max_norm_grid": [-1]}},
     "max_norm_grid=[-1]: [-1] invalid"),
])
def test_technique_run_parameters_fail_with_their_choices(bad, expected):
    with pytest.raises(ParameterError) as err:
        validate(bad)
    assert expected in str(err.value)


# ---------------------------------------------------------------------------- the unused-image validation split

def test_unused_validation_split_is_balanced_and_disjoint():
    labels = np.array([0] * 5 + [1] * 3 + [2] * 2)
    used = np.array([0, 1, 2, 5, 8, 9])  # class 0: 2 spare, class 1: 2 spare, class 2: none
    val = subsets.unused_validation_indices(labels, used, 3, per_class=2, seed=0)
    assert not set(val) & set(used)
    assert np.bincount(labels[val], minlength=3).tolist() == [2, 2, 0]
    assert subsets.unused_validation_indices(labels, used, 3, per_class=1, seed=0).size == 2
    with pytest.raises(ValueError, match="per_class=0"):
        subsets.unused_validation_indices(labels, used, 3, per_class=0)


def test_eu_moths_unused_validation_split_in_a_run(data_root, weights_dir, tmp_path):
    """A real run: no validation image is a training image or a test image, each class has
    min(2, spare images) of them, and the stored validation logits give the stored score."""
    from longtail.run import run_training
    out = tmp_path / "run"
    result = run_training(dict(dataset="eu_moths", backbone="mobilenetv2", pretrained="inat_insects", mode="linear",
                               imbalance_factor=8, val_fraction=0.0, val_source="unused", technique="ncm",
                               save_checkpoints=False, output_dir=str(out)), log=lambda s: None)
    pred = np.load(out / "predictions.npz")
    val, train, test = set(pred["val_ids"]), set(pred["train_ids"]), set(pred["ids"])
    assert len(train) == 581 and not val & train and not val & test
    classes = pd.read_csv(out / "classes.csv")
    from longtail.data import load_dataset
    fold = subsets.class_counts(load_dataset("eu_moths", data_root).train.labels, 200)
    assert (classes["val_count"] == np.minimum(2, fold - classes["train_count"])).all()
    assert classes["val_count"].sum() == len(val) and (classes["val_count"] == 0).sum() == 1  # one head class
    per_class = [(pred["val_logits"][pred["val_labels"] == c].argmax(1) == c).mean()
                 for c in np.unique(pred["val_labels"])]
    assert result.metrics["val/balanced_acc"] == pytest.approx(np.mean(per_class))
    assert json.loads((out / "metrics.json").read_text())["cpu_s"] > 0


SYNTH_LINEAR = dict(dataset="synthetic", backbone="resnet32", mode="linear", epochs=3, batch_size=16, image_size=16,
                    imbalance_factor=4, lr=0.05, val_fraction=0.0, val_source="unused", save_checkpoints=False)


@pytest.mark.parametrize("extra", [
    {"technique": "lws", "tta": "flip", "posthoc": "logit_adjust", "posthoc_tau_grid": [0.0, 1.0]},
    {"technique": "weight_balancing", "technique_params": {"stage1_wd_grid": [0.0, 0.01], "stage2_wd_grid": [0.01],
                                                           "max_norm_grid": [0.1, 1.0]},
     "posthoc": "tau_norm", "posthoc_tau_grid": [0.0, 0.5]},
    {"technique": "cosine_prototypes", "loss": "balanced_softmax"},
    {"technique": "feature_calibration", "technique_params": {"base_min": 3, "tukey": 0.0, "k_grid": [2],
                                                              "alpha_grid": [0.0, 0.21]}, "crt_epochs": 2},
])
def test_techniques_run_end_to_end(tmp_path, tmp_cache, extra):
    from longtail.run import run_training
    result = run_training({**SYNTH_LINEAR, **extra, "output_dir": str(tmp_path / "run")}, log=lambda s: None)
    m = result.metrics
    assert 0 <= m["balanced/acc1"] <= 1 and 0 <= m["val/balanced_acc"] <= 1
    assert m["posthoc_tau_used"] in extra.get("posthoc_tau_grid", [1.0])
    stages = set(result.history.get("stage", pd.Series(dtype=str)).dropna())
    if extra["technique"] == "lws":
        assert stages == {"lws"} and (result.history["stage"] == "lws").sum() == 10  # crt_epochs, the default
    if extra["technique"] == "weight_balancing":
        assert len(stages) == 2 and stages & {"wb1 wd=0", "wb1 wd=0.01"}
        assert stages & {"wb2 wd=0.01 max_norm=0.1", "wb2 wd=0.01 max_norm=1"}
    if extra["technique"] == "feature_calibration":  # tukey 0 (log): finite on the ReLU features' zeros
        assert stages & {"calibrated k=2 alpha=0", "calibrated k=2 alpha=0.21"}
    if extra["technique"] == "cosine_prototypes":
        assert len(result.history) == 0  # nothing trained
    pred = np.load(tmp_path / "run" / "predictions.npz")
    assert not set(pred["val_ids"]) & set(pred["train_ids"])


# ---------------------------------------------------------------------------- feature preparation

def test_prepare_features_power_then_standardise_with_the_fitting_rows_only():
    """x^λ, then (x - μ) / σ with μ, σ (ddof 0) of the fitting rows alone: the other rows (validation,
    test) change nothing of the map; a dimension constant on the fitting rows is only centred."""
    train = torch.tensor([[4.0, 9.0], [16.0, 9.0], [100.0, 1.0]])  # row 2 is not fitted on
    test = torch.tensor([[36.0, 25.0]])
    fit_train, fit_test = methods.prepare_features(train, test, fit_rows=[0, 1], power=0.5, standardize=True)
    # fitting rows after λ = 0.5: [2, 3] and [4, 3]: μ = [3, 3], σ = [1, 0 -> 1]
    assert fit_train.tolist() == [[-1.0, 0.0], [1.0, 0.0], [7.0, -2.0]]
    assert fit_test.tolist() == [[3.0, 2.0]]
    moved = train.clone()
    moved[2] = 1e6  # a non-fitting row
    assert methods.prepare_features(moved, test, fit_rows=[0, 1], power=0.5, standardize=True)[1].tolist() == [[3.0, 2.0]]
    same = methods.prepare_features(train, test, fit_rows=[0, 1])
    assert torch.equal(same[0], train) and torch.equal(same[1], test)  # λ 1, no standardisation: as they are


# ---------------------------------------------------------------------------- L-BFGS probe, kNN

def test_lbfgs_probe_is_scikit_learns_multinomial_logistic_regression():
    """On the run's CE the probe minimises scikit-learn's objective C Σ ℓ + ||W||²/2 (bias free), so
    both reach the same optimum: its probabilities agree to the solvers' tolerance (gradient norm
    1e-6 on an objective of order 1; a strongly convex problem, so the weights are within that of
    the optimum too), far below what a wrong penalty (C·n instead of C) gives."""
    from sklearn.linear_model import LogisticRegression

    from longtail.losses import build_loss
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)) + np.repeat(np.eye(3, 5) * 2, 20, axis=0)
    y = np.repeat([0, 1, 2], 20)
    for c in (0.1, 1.0):
        head = methods.lbfgs_fit(nn.Linear(5, 3), torch.tensor(x, dtype=torch.float32), torch.tensor(y),
                                 build_loss("ce", [20, 20, 20]), c, max_iter=500)
        ref = LogisticRegression(C=c, tol=1e-10, max_iter=5000).fit(x, y)
        with torch.no_grad():
            ours = torch.softmax(head(torch.tensor(x, dtype=torch.float32)), 1).numpy()
        assert np.abs(ours - ref.predict_proba(x)).max() < 1e-3
    far = LogisticRegression(C=1.0 * 60, tol=1e-10, max_iter=5000).fit(x, y)
    assert np.abs(ours - far.predict_proba(x)).max() > 1e-2


def test_lbfgs_probe_uses_the_runs_loss_and_keeps_the_c_best_on_validation():
    """The logit-adjusted loss shifts the fitted logits by τ log π (Menon et al.): trained on
    imbalanced data it predicts the rare class more often than plain CE; C is the candidate with the
    highest validation score, ties to the first, with no seed involved (zero start)."""
    from longtail.losses import build_loss
    rng = np.random.default_rng(1)
    x = torch.tensor(np.r_[rng.normal(0, 1, (90, 2)), rng.normal(1, 1, (10, 2))], dtype=torch.float32)
    y = torch.tensor([0] * 90 + [1] * 10)
    plain = methods.lbfgs_fit(nn.Linear(2, 2), x, y, build_loss("ce", [90, 10]), 1.0)
    adjusted = methods.lbfgs_fit(nn.Linear(2, 2), x, y, build_loss("logit_adjusted", [90, 10], tau=1.0), 1.0)
    with torch.no_grad():
        assert (adjusted(x).argmax(1) == 1).sum() > (plain(x).argmax(1) == 1).sum()
    scores = {0.1: 0.5, 1.0: 0.9, 10.0: 0.9}

    def fit(*a, **k):
        raise AssertionError("the probe trains with its own optimiser, not the SGD loop")
    fit.loss_on = lambda labels: build_loss("ce", [90, 10])
    fit.val_score = lambda head: scores[head.c]
    made = []

    def make_head():
        head = nn.Linear(2, 2)
        head.c = [0.1, 1.0, 10.0, 1.0][len(made)]  # the order the candidates are trained in (best again last)
        made.append(head)
        return head
    head, history = methods.train_classifier("lbfgs_probe", {"c_grid": [0.1, 1.0, 10.0]}, make_head, x, y, 2, fit)
    assert head.c == 1.0 and len(made) == 4
    assert [r["val_balanced_acc"] for r in history] == [0.5, 0.9, 0.9] and history[-1]["best_epoch"] == 1


def test_knn_votes_by_hand():
    """v_c = Σ exp(cos / T) over the k nearest of class c; z = log v (a class without a neighbour at log 1e-30)."""
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    knn = methods.NearestNeighbours(bank, labels, 3, k=2, temperature=0.5)
    z = knn(torch.tensor([[2.0, 0.0]]))  # cosines 1, 0, 1/√2: neighbours 0 (class 0) and 2 (class 1)
    expected = [1 / 0.5, math.log(math.exp(math.sqrt(0.5) / 0.5)), math.log(1e-30)]
    assert z[0].tolist() == pytest.approx(expected, rel=1e-5)
    assert methods.NearestNeighbours(bank, labels, 3, k=10).k == 3  # at most the bank


def test_knn_keeps_the_k_best_on_validation():
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1])

    def fit(*a, **k):
        raise AssertionError("kNN trains nothing")
    fit.val_score = lambda module: {1: 0.4, 2: 0.7, 3: 0.7}[module.k]  # ties go to the first
    module, history = methods.train_classifier("knn", {"k_grid": [1, 2, 3]}, None, x, y, 2, fit)
    assert isinstance(module, methods.NearestNeighbours) and module.k == 2 and history == []


def test_new_technique_parameters_are_checked():
    with pytest.raises(ValueError, match=r"c_grid=\[0\]: \[0\] invalid"):
        methods.technique_params("lbfgs_probe", {"c_grid": [0]})
    with pytest.raises(ValueError, match="max_iter=0"):
        methods.technique_params("lbfgs_probe", {"max_iter": 0})
    with pytest.raises(ValueError, match=r"k_grid=\[0\]: \[0\] invalid"):
        methods.technique_params("knn", {"k_grid": [0]})
    with pytest.raises(ValueError, match="temperature=0"):
        methods.technique_params("knn", {"temperature": 0})
    assert methods.technique_params("knn", None) == {"k_grid": [1, 3, 5, 10, 20], "temperature": 0.07}
    assert methods.technique_params("lbfgs_probe", None) == {"c_grid": [0.1, 0.3, 1.0, 3.0, 10.0], "max_iter": 100}


# ---------------------------------------------------------------------------- tune: run parameters chosen on validation

@pytest.mark.parametrize("bad,expected", [
    ({"tune": {"lr": [0.1]}}, "tune.lr: not tunable; choose among loss_params"),
    ({"tune": {"weight_decay": []}}, "tune.weight_decay=[]: a non-empty list"),
    ({"tune": {"feature_power": [1.0, -1]}, "val_source": "unused"}, "tune.feature_power candidate -1"),
    ({"loss": "logit_adjusted", "tune": {"loss_params": [{"tau": 1.0}, {"taux": 2}]}, "val_source": "unused"},
     "tune.loss_params candidate {'taux': 2}"),
    ({"tune": {"feature_power": [1.0, 0.5]}, "val_fraction": 0.0}, "its candidates are tried on a validation split"),
    ({"tune": {"feature_power": [1.0]}, "mode": "finetune"}, "tune={'feature_power': [1.0]} with mode='finetune'"),
    ({"feature_standardize": True, "mode": "partial"}, "feature_standardize=True with mode='partial'"),
    ({"technique": "lbfgs_probe", "loss": "ldam"}, "technique='lbfgs_probe' with a cosine head"),
    ({"tta": "twelve_crop"}, "choose one of none, flip, five_crop, ten_crop"),
    ({"technique": "feature_calibration", "feature_standardize": True, "val_source": "unused"},
     "feature_standardize=True with technique='feature_calibration'"),
])
def test_tune_and_feature_parameters_fail_with_their_choices(bad, expected):
    with pytest.raises(ParameterError) as err:
        validate(bad)
    assert expected in str(err.value)


def test_tune_candidates_are_every_combination():
    from longtail.params import tune_candidates
    assert tune_candidates({}) == [{}]
    assert tune_candidates({"a": [1, 2], "b": [3]}) == [{"a": 1, "b": 3}, {"a": 2, "b": 3}]


def test_tune_keeps_the_candidate_best_on_validation_end_to_end(tmp_path, tmp_cache):
    """A tuned run equals the run of the candidate with the best validation score (each candidate run
    alone gives that score), its given parameters recorded as given and its choice as ``tuned/``."""
    from longtail.run import run_training
    base = {**SYNTH_LINEAR, "loss": "logit_adjusted", "save_checkpoints": True}
    taus = [0.0, 1.0, 3.0]
    alone = {t: run_training({**base, "loss_params": {"tau": t}, "output_dir": str(tmp_path / f"tau{t}")},
                             log=lambda s: None).metrics for t in taus}
    best = max(taus, key=lambda t: (alone[t]["val/balanced_acc"], -taus.index(t)))
    lines = []
    tuned = run_training({**base, "tune": {"loss_params": [{"tau": t} for t in taus]},
                          "output_dir": str(tmp_path / "tuned")}, log=lines.append).metrics
    assert json.loads(tuned["tuned/loss_params"]) == {"tau": best}
    assert tuned["loss_params"] == "{}"  # as given: the choice is a result, so seeds that differ stay one method
    for k in ("val/balanced_acc", "balanced/acc1", "tail/acc1"):
        assert tuned[k] == alone[best][k]
    assert any(line.startswith("tune: loss_params {\"tau\": 0.0}: ") and "chosen on validation" in line for line in lines)
    head = torch.load(tmp_path / "tuned" / "best.pt")  # the chosen candidate's checkpoint is the one on disk
    assert torch.equal(head["weight"], torch.load(tmp_path / f"tau{best}" / "best.pt")["weight"])


@pytest.mark.parametrize("extra", [
    {"technique": "lbfgs_probe", "technique_params": {"c_grid": [0.1, 1.0]}, "feature_standardize": True},
    {"technique": "knn", "technique_params": {"k_grid": [1, 3]}, "feature_power": 0.5, "posthoc": "logit_adjust",
     "posthoc_tau_grid": [0.0, 1.0]},
    {"loss": "label_aware_smoothing", "tta": "ten_crop", "tune": {"feature_power": [1.0, 0.5]}},
])
def test_new_linear_options_run_end_to_end(tmp_path, tmp_cache, extra):
    from longtail.run import run_training
    m = run_training({**SYNTH_LINEAR, **extra, "output_dir": str(tmp_path / "run")}, log=lambda s: None).metrics
    assert 0 <= m["balanced/acc1"] <= 1 and 0 <= m["val/balanced_acc"] <= 1


# ---------------------------------------------------------------------------- multi-crop TTA views

def test_ten_crop_views_are_the_corners_and_centre_and_their_mirrors():
    """Each view is the evaluation transform of the patch at its corner (or the centre), mirrored
    for ``_flip``: checked against the centre crop of the patch cut out by hand."""
    from longtail import transforms
    tf = transforms.BatchTransform(4, [0.5] * 3, [0.25] * 3)
    batch = torch.arange(2 * 6 * 6 * 3, dtype=torch.uint8).reshape(2, 6, 6, 3)
    corners = {"top_left": (0, 0), "top_right": (0, 2), "bottom_left": (2, 0), "bottom_right": (2, 2), "centre": (1, 1)}
    assert set(transforms.TTA_VIEWS["ten_crop"]) == {v + s for v in corners for s in ("", "_flip")}
    assert set(transforms.TTA_VIEWS["five_crop"]) == set(corners)
    for view, (top, left) in corners.items():
        patch = tf(batch[:, top:top + 4, left:left + 4].contiguous())
        assert torch.equal(transforms.view_transform(tf, view)(batch), patch), view
        assert torch.equal(transforms.view_transform(tf, view + "_flip")(batch), patch.flip(-1)), view
    with pytest.raises(ValueError, match="view 'middle'"):
        transforms.view_transform(tf, "middle")
