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
    assert b["Method"].tolist()[:2] == ["Balanced softmax", "Ensemble: CE & Balanced softmax"]
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
    assert "best balanced-test top-1 66.7 % (Balanced softmax" in text and "No method reaches" in text
    assert "8.3 points short on balanced" in text
    table = leaderboard.table(b)
    assert table.loc[(1, "Balanced softmax"), "Balanced top-1 (%)"] == "66.7 ± 0.0"
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
