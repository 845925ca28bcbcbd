"""One training run end to end: the run folder, failures, the notebook under papermill, real data."""
import json
from pathlib import Path

import jupytext
import numpy as np
import pandas as pd
import papermill
import pytest

from longtail.params import DEFAULTS, ParameterError
from longtail.tables import run_metrics_table
from longtail.run import run_training

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = {"params.json", "classes.csv", "history.csv", "predictions.npz", "environment.json", "last.pt",
             "metrics.csv", "metrics.json", "best.pt"}
TINY = dict(dataset="synthetic", backbone="resnet32", mode="finetune", epochs=2, batch_size=32, image_size=16,
            imbalance_factor=5, lr=0.05)


def _quiet(_):
    pass


def test_run_folder_holds_every_file(tmp_path, tmp_cache):
    result = run_training({**TINY, "loss": "ldam", "drw_epoch": 1, "output_dir": str(tmp_path / "run")}, log=_quiet)
    out = tmp_path / "run"
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert pd.read_csv(out / "metrics.csv").loc[0, "balanced/acc1"] == pytest.approx(metrics["balanced/acc1"])
    for split in ("balanced", "longtailed", "head", "middle", "tail", "longtailed_sampled"):
        assert 0 <= metrics[f"{split}/acc1"] <= 1
    classes = pd.read_csv(out / "classes.csv")
    assert classes["train_count"].tolist() == sorted(classes["train_count"], reverse=True)
    assert set(classes["group"]) == {"head", "middle", "tail"}
    assert len(pd.read_csv(out / "history.csv")) == 2
    preds = np.load(out / "predictions.npz")
    assert preds["logits"].shape == (60, 6) and preds["labels"].shape == (60,)
    # the stored logits reproduce the stored metric
    assert (preds["logits"].argmax(1) == preds["labels"]).mean() == pytest.approx(metrics["balanced/acc1"])
    assert json.loads((out / "params.json").read_text())["cosine_head"] is None  # resolved: on for ldam
    groups = run_metrics_table(result.metrics)  # what the notebook shows
    assert groups.loc["Tail", "test images"] == 20
    assert groups.loc["Balanced", "top-1 (%)"] == pytest.approx(100 * result.metrics["balanced/acc1"])


def test_bad_parameters_fail_before_any_work(tmp_path):
    with pytest.raises(ParameterError) as err:
        run_training({**TINY, "loss": "focall", "sampler": "balanced", "learning_rate": 1,
                      "output_dir": str(tmp_path / "run")})
    message = str(err.value)
    for expected in ("loss='focall'", "balanced_softmax", "sampler='balanced'", "class_balanced",
                     "unknown parameter 'learning_rate'"):
        assert expected in message
    assert not (tmp_path / "run").exists()


def test_non_finite_loss_is_recorded_in_the_run_folder(tmp_path, tmp_cache):
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match="loss became"):
        run_training({**TINY, "lr": 1e30, "epochs": 3, "output_dir": str(out)}, log=_quiet)
    failure = json.loads((out / "failure.json").read_text())
    assert failure["error"] == "NonFiniteLossError" and "loss became" in failure["message"]
    assert not (out / "metrics.json").exists()


@pytest.mark.parametrize("mode,extra", [("crt", {"crt_epochs": 2}), ("finetune", {"posthoc": "tau_norm"}),
                                        ("finetune", {"posthoc": "logit_adjust", "sampler": "square_root"})])
def test_modes_and_posthoc_adjustments_run(tmp_path, tmp_cache, mode, extra):
    result = run_training({**TINY, "mode": mode, **extra, "output_dir": str(tmp_path / "run")}, log=_quiet)
    assert 0 <= result.metrics["balanced/acc1"] <= 1
    if mode == "crt":
        assert (result.history["stage"] == "crt").sum() == 2


def test_train_notebook_under_papermill(tmp_path, tmp_cache):
    nb = jupytext.read(ROOT / "notebooks" / "train.py")
    src = tmp_path / "train.ipynb"
    jupytext.write(nb, src)
    # every parameter, as the grid passes them: the notebook's own values are the main job's (EU Moths)
    params = {**DEFAULTS, **TINY, "loss": "balanced_softmax", "output_dir": str(tmp_path / "run")}
    papermill.execute_notebook(str(src), str(tmp_path / "out.ipynb"), parameters=params, kernel_name="longtail",
                               cwd=str(ROOT), progress_bar=False)
    assert RUN_FILES <= {p.name for p in (tmp_path / "run").iterdir()}
    executed = (tmp_path / "out.ipynb").read_text()
    assert "image/png" in executed  # the learning curves and group bars were drawn
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["loss"] == "balanced_softmax"


EU_MOTHS_LINEAR = dict(dataset="eu_moths", backbone="mobilenetv2", pretrained="inat_insects", mode="linear",
                       epochs=30, batch_size=64, lr=0.1, val_fraction=0.0, save_checkpoints=False)


def test_eu_moths_linear_probe_reaches_80_percent(data_root, weights_dir, tmp_path):
    """The acceptance figure: frozen iNaturalist-insects MobileNetV2 features, a linear head on the
    three balanced training folds, top-1 on test fold 0 (a plain probe reached 84.6 %)."""
    result = run_training({**EU_MOTHS_LINEAR, "train_set": "balanced", "balanced_size": "full",
                           "output_dir": str(tmp_path / "run")}, log=_quiet)
    assert result.metrics["train_images"] == 1653
    assert result.metrics["balanced/acc1"] >= 0.80


def test_cifar10_lt_short_finetune_learns(data_root, tmp_path):
    result = run_training(dict(dataset="cifar10", backbone="resnet32", mode="finetune", imbalance_factor=100,
                               n_max=5000, epochs=2, batch_size=128, lr=0.1, image_size=32, augment="cifar",
                               val_fraction=0.0, warmup_epochs=1, output_dir=str(tmp_path / "run")), log=_quiet)
    assert result.metrics["train_images"] == 12406
    assert result.metrics["balanced/acc1"] > 0.2  # chance: 0.1


def test_cosine_head_logits_carry_the_ldam_scale(tmp_path, tmp_cache):
    result = run_training({**TINY, "loss": "ldam", "loss_params": {"s": 10.0}, "epochs": 1,
                           "output_dir": str(tmp_path / "run")}, log=_quiet)
    logits = np.load(tmp_path / "run" / "predictions.npz")["logits"]
    # cosines lie in [-1, 1]; the stored logits are s * cosine, which exceed 1
    assert np.abs(logits).max() <= 10.0 + 1e-4 and np.abs(logits).max() > 1.0
    assert result.metrics["balanced/acc1"] == pytest.approx((logits.argmax(1) == result_labels(tmp_path)).mean())


def result_labels(tmp_path):
    return np.load(tmp_path / "run" / "predictions.npz")["labels"]


def test_sigmoid_class_balanced_run_starts_from_cui_bias_and_is_scored_with_sigmoid(tmp_path, tmp_cache):
    """One epoch at lr 1e-12 (epochs 0 is refused): the stored classifier is the initial one, bias
    -log(C - 1) (C = 6); the test loss is the one-vs-all BCE of the stored logits, recomputed here in
    float64; the own training loss is reported."""
    import math

    import torch
    out = tmp_path / "run"
    run_training({**TINY, "epochs": 1, "lr": 1e-12, "loss": "class_balanced", "val_fraction": 0.0,
                  "loss_params": {"base": "sigmoid"}, "output_dir": str(out)}, log=_quiet)
    state = torch.load(out / "last.pt", weights_only=True)
    assert torch.allclose(state["fc.bias"].double(), torch.full((6,), -math.log(5), dtype=torch.float64))
    preds = np.load(out / "predictions.npz")
    assert str(preds["activation"]) == "sigmoid"
    z, y = preds["logits"].astype(np.float64), preds["labels"]

    def log_sig(x):  # log sigma(x), element by element, without overflow
        return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))
    bce = sum(-log_sig(z[i, j]) if j == y[i] else -log_sig(-z[i, j]) for i in range(len(y)) for j in range(6)) / len(y)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["balanced/loss"] == pytest.approx(bce, rel=1e-5)
    assert np.isfinite(metrics["thesis_longtailed/train_loss"]) and metrics["thesis_balanced/loss"] == metrics["balanced/loss"]


def test_monitor_test_records_the_balanced_test_top1_of_the_last_epoch(tmp_path, tmp_cache):
    """Without a validation split the last epoch is the model evaluated, so its monitored top-1 is
    the run's balanced top-1; the best test epoch is reported beside it, never used for selection."""
    out = tmp_path / "run"
    result = run_training({**TINY, "epochs": 3, "val_fraction": 0.0, "monitor_test": True,
                           "output_dir": str(out)}, log=_quiet)
    hist = pd.read_csv(out / "history.csv")
    assert hist["monitor_acc"].iloc[-1] == pytest.approx(result.metrics["balanced/acc1"])
    assert result.metrics["monitor/best_test_acc1"] == pytest.approx(hist["monitor_acc"].max())
    assert result.metrics["best_epoch"] == 2


@pytest.mark.parametrize("val_source,train_set", [("split", "longtailed"), ("unused", "balanced")])
def test_data_summary_counts_the_images_a_run_trains_on(tmp_path, tmp_cache, val_source, train_set):
    """``datasummary.class_table`` and a run take their training images from the one split function
    (``subsets.fit_and_validation_indices``): its training counts are the run's ``classes.csv``."""
    from longtail import data, datasummary
    fraction = 0.3 if val_source == "split" else 0.0
    params = dict(dataset="synthetic", dataset_params={"num_classes": 5, "train_per_class": 12, "test_per_class": 4,
                                                       "image_size": 16}, backbone="resnet32", mode="linear",
                  epochs=1, image_size=16, imbalance_factor=4, subset_seed=3, val_fraction=fraction,
                  val_source=val_source, train_set=train_set, save_checkpoints=False)
    run_training({**params, "output_dir": str(tmp_path / "run")}, log=_quiet)
    run_counts = pd.read_csv(tmp_path / "run" / "classes.csv")["train_count"].tolist()
    table = datasummary.class_table(data.load_dataset("synthetic", **params["dataset_params"]), imbalance_factor=4,
                                    subset_seed=3, val_fraction=fraction, val_source=val_source)
    assert table[train_set].tolist() == run_counts
    val_counts = pd.read_csv(tmp_path / "run" / "classes.csv")["val_count"]
    assert val_counts.sum() > 0  # the validation split takes images, so the counts depend on it


def test_the_own_loss_column_of_a_linear_drw_run_has_the_drw_weights(tmp_path, tmp_cache):
    """The thesis protocol's loss column is the method's loss as trained: for a linear head with DRW,
    cross-entropy weighted by the class-balanced weights in force at the end (as in fine-tuned runs)."""
    import torch
    import torch.nn.functional as F
    from longtail.losses import class_balanced_weights
    out = tmp_path / "run"
    run_training({**TINY, "mode": "linear", "epochs": 2, "drw_epoch": 1, "val_fraction": 0.0, "output_dir": str(out)},
                 log=_quiet)
    preds = np.load(out / "predictions.npz")
    counts = pd.read_csv(out / "classes.csv")["train_count"].tolist()
    z, y = torch.as_tensor(preds["logits"], dtype=torch.float64), torch.as_tensor(preds["labels"])
    weights = class_balanced_weights(counts, DEFAULTS["drw_beta"]).double()
    weighted = F.cross_entropy(z, y, weight=weights).item()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["thesis_balanced/train_loss"] == pytest.approx(weighted, rel=1e-9)
    assert weighted != pytest.approx(F.cross_entropy(z, y).item(), rel=1e-3)  # the weights matter here


def test_data_summary_groups_are_the_runs_groups(tmp_path, tmp_cache):
    """Groups and long-tailed test weights come from the whole long-tailed set, as in a run, not from
    what is left of it after the validation split (a held-out image can move a class across a cut)."""
    from longtail import data, datasummary
    params = dict(dataset="synthetic", dataset_params={"num_classes": 9, "train_per_class": 12, "test_per_class": 4,
                                                       "image_size": 16}, backbone="resnet32", mode="linear",
                  epochs=1, image_size=16, imbalance_factor=4, class_order="random", val_fraction=0.34,
                  save_checkpoints=False)
    run_training({**params, "output_dir": str(tmp_path / "run")}, log=_quiet)
    run_classes = pd.read_csv(tmp_path / "run" / "classes.csv")
    # long-tailed counts 3 3 8 6 12 10 7 4 5, after the split 2 2 5 4 8 7 5 3 3: the 7 and the 8 tie at 5
    # and the 5 and the 4 at 3, and thirds (ties by class index) cut the two ties differently
    table = datasummary.class_table(data.load_dataset("synthetic", **params["dataset_params"]), imbalance_factor=4,
                                    class_order="random", val_fraction=0.34)
    assert run_classes["longtailed_count"].tolist() == [3, 3, 8, 6, 12, 10, 7, 4, 5]
    assert table["group"].tolist() == run_classes["group"].tolist()
    assert table["longtailed"].tolist() == run_classes["train_count"].tolist()
