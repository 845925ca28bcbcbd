"""The leaderboard from real run folders with hand-made predictions: ranking, ensemble, front, goal."""
import json

import matplotlib
import numpy as np
import pandas as pd
import pytest

from longtail import figures, leaderboard, metrics
from longtail.results import collect_runs

matplotlib.use("Agg")
LABELS = np.array([0, 0, 1, 1, 2, 2])
CLASSES = pd.DataFrame({"class": [0, 1, 2], "name": ["a", "b", "c"], "train_count": [4, 2, 1],
                        "longtailed_count": [4, 2, 1], "val_count": [1, 1, 1], "test_count": [2, 2, 2],
                        "group": ["head", "middle", "tail"]})
BASE = dict(dataset="synthetic", backbone="resnet32", train_set="longtailed", mode="linear", loss="ce",
            sampler="instance", posthoc="none", technique="none", tta="none", drw_epoch=None, mixup_alpha=0.0)


def _write_run(folder, params, preds, strength, val_score, cpu_s):
    """A finished run whose logits put ``strength`` on class ``preds[i]`` of test image i."""
    folder.mkdir(parents=True)
    logits = np.zeros((len(LABELS), 3), np.float32)
    logits[np.arange(len(LABELS)), preds] = strength
    val_labels = np.array([0, 1, 2])
    val_logits = np.eye(3, dtype=np.float32)[[0, 1, 2] if val_score == 1 else [1, 2, 0]] * 5
    np.savez(folder / "predictions.npz", logits=logits, labels=LABELS, val_logits=val_logits, val_labels=val_labels)
    CLASSES.to_csv(folder / "classes.csv", index=False)
    m = metrics.flatten(metrics.evaluate(logits, LABELS, CLASSES["longtailed_count"], CLASSES["group"]))
    m.update({"val/balanced_acc": float(val_score), "cpu_s": cpu_s})
    (folder / "params.json").write_text(json.dumps(params))
    (folder / "metrics.json").write_text(json.dumps(m))


@pytest.fixture
def board(tmp_path):
    root = tmp_path / "runs"
    for seed in (0, 1):
        # A: everything class 0 (head 100, tail 0); B: right on middle and tail, head wrong; C: all wrong
        _write_run(root / f"a{seed}", {**BASE, "seed": seed}, [0, 0, 0, 0, 0, 0], 3.0, 1, 1.0)
        _write_run(root / f"b{seed}", {**BASE, "loss": "balanced_softmax", "seed": seed}, [1, 1, 1, 1, 2, 2], 4.0,
                   1, 2.0)
        _write_run(root / f"c{seed}", {**BASE, "technique": "ncm", "seed": seed}, [1, 1, 2, 2, 0, 0], 3.0, 0, 0.5)
    runs = collect_runs(root)
    return leaderboard.leaderboard(runs), runs


def test_ranking_families_and_cost(board):
    b, _ = board
    # ranked on validation (CE, balanced softmax and their ensemble all 100 %; ties keep the grid's order),
    # although balanced softmax is better on test
    assert b["Method"].tolist() == ["CE", "Balanced softmax", "Ensemble: CE & Balanced softmax", "NCM"]
    row = b.set_index("Method")
    assert row.loc["Balanced softmax", "balanced_mean"] == pytest.approx(400 / 6)
    assert row.loc["CE", "head_mean"] == 100 and row.loc["CE", "tail_mean"] == 0
    assert row.loc["CE", "balanced_sd"] == 0 and row.loc["CE", "Seeds"] == 2
    assert row.loc["CE", "Family"] == "baseline"
    assert row.loc["Balanced softmax", "Family"] == "class re-balancing: logit adjustment"
    assert row.loc["NCM", "Family"] == "module improvement: classifier design"
    assert row.loc["Ensemble: CE & Balanced softmax", "cpu_s"] == 3.0  # the members' CPU seconds summed
    assert b["Rank"].tolist() == [1, 2, 3, 4]


def test_ensemble_averages_probabilities_and_is_chosen_on_validation(board):
    b, _ = board
    ens = b.set_index("Method").loc["Ensemble: CE & Balanced softmax"]  # NCM has the worst validation score
    # head image: CE p(0) = e^3/(e^3+2) = 0.909, BS p(1) = e^4/(e^4+2) = 0.965; averaged, class 1 wins
    # (0.505 vs 0.464), so the ensemble predicts like balanced softmax
    assert ens["balanced_mean"] == pytest.approx(400 / 6) and ens["tail_mean"] == 100 and ens["head_mean"] == 0
    assert ens["val_mean"] == 100


def test_front_goal_and_text(board):
    b, runs = board
    front = dict(zip(b["Method"], b["front"]))
    assert front == {"Balanced softmax": True, "Ensemble: CE & Balanced softmax": True, "CE": True, "NCM": False}
    assert not b["goal"].any()
    text = leaderboard.goal_text(b, runs)
    # the headline is the entry chosen on validation, with its test intervals, never the best on test
    assert ("chosen on validation: CE (validation 100.0 %): balanced-test top-1 33.3 % [0.0, 66.7], tail 0.0 % "
            "[0.0, 0.0] (95 % intervals over the test images). It is 41.7 points short") in text
    # (the closing sentence names each family's entry chosen on validation, not the best on test)
    assert "Balanced softmax" not in text.split(" The family that moved it most")[0]
    table = leaderboard.table(b)
    assert table.loc[(2, "Balanced softmax"), "Balanced top-1 (%)"].startswith("66.7 ± 0.0 [")
    assert table.loc[(4, "NCM"), "Front"] == ""
    fig = figures.tail_vs_head(b, 60.0)
    assert len(fig.axes[0].texts) == 3  # the front and the top three are labelled: not NCM (4th, dominated)


def test_pareto_front_by_hand():
    assert leaderboard.pareto_front([1, 2, 2, 0], [2, 1, 1, 0]).tolist() == [True, True, True, False]


def test_family_of_a_combination():
    row = {"loss": "logit_adjusted", "sampler": "class_balanced", "technique": "weight_balancing", "tta": "flip",
           "posthoc": "tau_norm", "drw_epoch": None, "mixup_alpha": 0.0}
    assert leaderboard.method_family(row) == (
        "class re-balancing: logit adjustment + class re-balancing: re-sampling + module improvement: classifier "
        "design + information augmentation: test-time augmentation + module improvement: decoupled training")


def test_test_intervals_come_from_the_predictions(board):
    """Each seed of balanced softmax gets images 2-5 right (4 of 6); its tail (class 2) both."""
    b, _ = board
    row = b.set_index("Method").loc["Balanced softmax"]
    per_image = np.array([0, 0, 1, 1, 1, 1.0])
    rng = np.random.default_rng(0)  # the bootstrap's own draw, recomputed by hand
    means = per_image[rng.integers(0, 6, size=(metrics.BOOTSTRAP_SAMPLES, 6))].mean(axis=1)
    assert (row["balanced_lo"], row["balanced_hi"]) == pytest.approx(
        (100 * np.quantile(means, 0.025), 100 * np.quantile(means, 0.975)))
    assert row["tail_lo"] == row["tail_hi"] == 100 and row["head_lo"] == row["head_hi"] == 0
    assert leaderboard.table(b).loc[(2, "Balanced softmax"), "Balanced top-1 (%)"].endswith("]")


def test_bootstrap_interval_matches_the_binomial_one():
    """552 images at 70 %: the percentile interval is p ± 1.96·sqrt(p(1−p)/n) (±3.8 points) to within
    the bootstrap's own error; averaging seeds scored on the same images does not narrow it."""
    n, p = 552, 0.7
    correct = np.zeros(n, bool)
    correct[: round(p * n)] = True
    lo, hi = metrics.bootstrap_interval(correct)
    half = 1.96 * np.sqrt(p * (1 - p) / n)
    assert lo == pytest.approx(p - half, abs=0.004) and hi == pytest.approx(p + half, abs=0.004)
    lo3, hi3 = metrics.bootstrap_interval(np.stack([correct] * 3))
    assert (lo3, hi3) == (lo, hi)
    assert np.isnan(metrics.bootstrap_interval(np.zeros((2, 0), bool))[0])


def _overwrite_val(folder, val_logits):
    """The run's validation logits replaced (labels 0, 1, 2), its score recomputed from them."""
    preds = dict(np.load(folder / "predictions.npz"))
    preds["val_logits"] = np.asarray(val_logits, np.float32)
    np.savez(folder / "predictions.npz", **preds)
    m = json.loads((folder / "metrics.json").read_text())
    m["val/balanced_acc"] = float((preds["val_logits"].argmax(1) == preds["val_labels"]).mean())
    (folder / "metrics.json").write_text(json.dumps(m))


def test_an_ensemble_of_three_is_chosen_when_it_beats_every_pair_on_validation(tmp_path):
    """Each member is right on two of the three validation images and confidently wrong (6 > 5) on the
    third, a different one each: every pair follows its wrong members on two images (1/3), all three
    outvote it (3/3).  The old pair-only choice could not find it."""
    root = tmp_path / "runs"
    wrong = {"x": 2, "y": 0, "z": 1}  # the validation image each member gets wrong
    for seed in (0, 1):
        for name, params in (("x", BASE), ("y", {**BASE, "loss": "balanced_softmax"}),
                             ("z", {**BASE, "technique": "ncm"})):
            folder = root / f"{name}{seed}"
            _write_run(folder, {**params, "seed": seed}, [0, 0, 1, 1, 2, 2], 3.0, 1, 1.0)
            val = 5 * np.eye(3)
            val[wrong[name]] = 0
            val[wrong[name], (wrong[name] + 1) % 3] = 6
            _overwrite_val(folder, val)
    runs = collect_runs(root)
    members, rows = leaderboard.best_ensemble(runs, ["CE", "Balanced softmax", "NCM"])
    assert members == ["CE", "Balanced softmax", "NCM"] and rows["val/balanced_acc"].tolist() == [1.0, 1.0]
    assert leaderboard.best_pair(runs, ["CE", "Balanced softmax", "NCM"])[1]["val/balanced_acc"].tolist() == \
        pytest.approx([1 / 3, 1 / 3])
    b = leaderboard.leaderboard(runs)
    assert b.iloc[0]["Method"] == "Ensemble: CE & Balanced softmax & NCM" and b.iloc[0]["cpu_s"] == 3.0


def test_the_family_that_moved_it_most_is_named_from_validation_choices(board):
    b, runs = board
    gains = leaderboard.family_gains(b)
    # per family, the entry best on validation; balanced softmax gains 400/6 - 200/6 points over CE
    assert gains[0][:2] == ("class re-balancing: logit adjustment", "Balanced softmax")
    assert gains[0][2] == pytest.approx(100 / 3) and gains[0][3] == pytest.approx(100)
    assert ("The family that moved it most on its own: class re-balancing: logit adjustment (its entry best on validation, "
            "Balanced softmax, +33.3 points balanced and +100.0 tail against CE") in leaderboard.goal_text(b, runs)


def test_balanced_vs_tail_figure_draws_both_goal_lines(board):
    b, _ = board
    fig = figures.balanced_vs_tail(b, leaderboard.GOAL)
    ax = fig.axes[0]
    lines = {tuple(line.get_xdata()) + tuple(line.get_ydata()) for line in ax.get_lines()}
    assert (75.0, 75.0, 0, 1) in lines and (0, 1, 60.0, 60.0) in lines  # axvline at 75, axhline at 60
    assert "goal: balanced 75 %" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_runs_at_another_input_size_rank_in_the_same_board_named_by_their_size(tmp_path):
    """A 320 px run is one more method of the 224 px board (not a board of its own, where it would
    be "chosen" alone), named with its size; the old boards split on the input size."""
    root = tmp_path / "runs"
    for seed in (0, 1):
        _write_run(root / f"a{seed}", {**BASE, "seed": seed, "image_size": 224}, [0, 0, 0, 0, 0, 0], 3.0, 1, 1.0)
        _write_run(root / f"n{seed}", {**BASE, "technique": "ncm", "seed": seed, "image_size": 224}, [1, 1, 2, 2, 0, 0],
                   3.0, 0, 0.5)
        _write_run(root / f"b{seed}", {**BASE, "seed": seed, "image_size": 320}, [1, 1, 1, 1, 2, 2], 4.0, 0, 2.0)
    b = leaderboard.leaderboard(collect_runs(root))
    assert b["Setting"].nunique() == 1 and "CE at 320 px" in set(b["Method"]) and "CE" in set(b["Method"])
    assert (b.set_index("Method").loc["CE at 320 px", "Seeds"], b.set_index("Method").loc["CE", "Seeds"]) == (2, 2)


def test_another_data_sets_own_input_size_is_not_a_size_variant(tmp_path):
    """Two data sets' boards side by side (EU Moths at 224 px, a synthetic set at 16 px): each board's
    methods keep their names; a size is a variant only within one data set, backbone and training set."""
    root = tmp_path / "runs"
    for seed in (0, 1):
        _write_run(root / f"m{seed}", {**BASE, "dataset": "eu_moths", "seed": seed, "image_size": 224},
                   [0, 0, 0, 0, 0, 0], 3.0, 1, 1.0)
        _write_run(root / f"t{seed}", {**BASE, "seed": seed, "image_size": 16}, [1, 1, 1, 1, 2, 2], 4.0, 0, 2.0)
    b = leaderboard.leaderboard(collect_runs(root))
    assert b["Setting"].nunique() == 2 and set(b["Method"]) == {"CE"}
