"""The thesis's published numbers beside ours: the reference data, its defects found in the numbers,
the side-by-side table and the findings' verdicts on hand-made runs, and the class-balanced ablation."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from longtail import results, tables, thesis

SPLITS = ("balanced", "longtailed", "head", "middle", "tail")


def test_reference_is_the_published_table():
    ref = thesis.reference()
    assert len(ref) == 1120 and ref["value"].isna().sum() > 0
    wide = thesis.reference_wide()
    assert wide.loc[("MobileNetV2", "balanced", "ce"), "balanced"] == 0.7978
    assert wide.loc[("ConvNeXt Base", "longtailed", "class_balanced"), "balanced"] == 0.0142
    assert wide.loc[("ResNet50V2", "longtailed", "ce"), "table"] == "A.7"
    # the thesis's long-tailed top-1 is the image-weighted mean of head / middle / tail (844 + 169 + 38)
    row = wide.loc[("MobileNetV2", "longtailed", "ce")]
    assert (844 * row["head"] + 169 * row["middle"] + 38 * row["tail"]) / 1051 == pytest.approx(row["longtailed"], abs=1e-4)


def test_known_defects_are_found_in_the_numbers():
    d = thesis.known_defects()
    assert d[("ConvNeXt Base", "balanced", "ldam")].startswith("missing")
    assert d[("ConvNeXt Base", "longtailed", "ldam")].startswith("missing")
    assert d[("ViT-B/16", "longtailed", "ldam")] == "a copy of the balanced-training row (A.9), not a result"
    assert {k for k, v in d.items() if v.startswith("collapse")} == {
        (bb, "longtailed", "class_balanced") for bb in thesis.BACKBONES}
    assert len(d) == 7


def make_run(root: Path, rid: str, acc: dict, **params) -> Path:
    """A finished run whose thesis-protocol and weighted top-1 are ``acc`` (split -> fraction)."""
    p = {"dataset": "eu_moths", "backbone": "mobilenetv2", "train_set": "longtailed", "imbalance_factor": 8.0,
         "loss": "ce", "loss_params": {}, "drw_epoch": None, "sampler": "instance", "posthoc": "none", "seed": 0,
         "subset_seed": 0, "mode": "linear", "eval_protocol": "thesis", **params}
    d = root / rid
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps({**p, "output_dir": str(d)}))
    m = {k: p[k] for k in ("dataset", "backbone", "train_set", "imbalance_factor", "loss", "seed", "drw_epoch")}
    m["loss_params"] = json.dumps(p["loss_params"], sort_keys=True)
    for s in SPLITS:
        v = acc.get(s, acc.get("balanced"))
        m.update({f"{s}/acc1": v, f"thesis_{s}/acc1": v, f"thesis_{s}/weighted_f1": v, f"thesis_{s}/train_loss": 1.0,
                  f"{s}/macro_f1": v, f"{s}/loss": 1.0, f"{s}/n": 10, f"thesis_{s}/n": 10})
    (d / "metrics.json").write_text(json.dumps(m))
    return d


#: our seeds: each run's top-1 is its setting's value plus these offsets (mean 0, standard error 1 point)
SEED_OFFSETS = (-0.01, 0.0, 0.01)


def make_seeds(root: Path, rid: str, acc: dict, **params) -> None:
    for seed, off in enumerate(SEED_OFFSETS):
        make_run(root, f"{rid}_s{seed}", {k: v + off for k, v in acc.items()}, seed=seed, **params)


LT = {"ce": dict(balanced=0.50, head=0.80, tail=0.20), "balanced_softmax": dict(balanced=0.55, head=0.78, tail=0.50),
      "weighted_ce": dict(balanced=0.45, head=0.70, tail=0.30), "ldam": dict(balanced=0.40, head=0.60, tail=0.20),
      "focal": dict(balanced=0.505, head=0.80, tail=0.21), "class_balanced": dict(balanced=0.10, head=0.0, tail=0.3)}


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "default"
    make_seeds(root, "a_ce_bal", {"balanced": 0.80}, train_set="balanced")
    for loss, acc in LT.items():
        make_seeds(root, f"b_{loss}", acc, loss=loss)
    make_seeds(root, "c_ldam_drw", dict(balanced=0.9, head=0.9, tail=0.9), loss="ldam", drw_epoch=20)
    return results.collect_runs(root)


READING = "Reading of the thesis's tables"


def test_findings_verdicts_are_computed(runs):
    f = thesis.findings(runs).set_index(READING)
    assert set(f["Backbone"]) == {"mobilenetv2"} and set(f["Setting"]) == {"–"}
    cost = f.loc["Long-tailed training costs Softmax balanced-test top-1 (points)"]
    # two means of 3 seeds with standard error 1/sqrt(3) point each: the difference's is sqrt(2/3) = 0.8
    assert cost["Ours"] == "-30.0 ± 0.8" and cost["Verdict"] == "holds (within the thesis's range)"
    # the thesis's value of every backbone, computed from its tables (MobileNetV2 .5282 - .7978, ...)
    wide = thesis.reference_wide()
    costs = [wide.loc[(bb, "longtailed", "ce"), "balanced"] - wide.loc[(bb, "balanced", "ce"), "balanced"]
             for bb in thesis.BACKBONES]
    assert cost["Thesis"] == "; ".join(f"{bb} {100 * c:+.1f}" for bb, c in zip(thesis.BACKBONES, costs))
    bs = f.loc["Balanced softmax gives the largest tail gain over Softmax (points of tail top-1)"]
    assert bs["Ours"] == "+30.0 ± 0.8" and bs["Verdict"].startswith(
        "holds: the largest tail gain (margin +20.0 ± 0.8); head -2.0 ± 0.8 points")
    assert f.loc["Weighted softmax lowers balanced-test top-1 (points against Softmax)", "Verdict"] == \
        "holds (within the thesis's range)"
    # LDAM: plain LDAM (-10 points), not LDAM-DRW; the thesis's copied ViT-B/16 row is left out
    ldam = f.loc["LDAM lowers balanced-test top-1 (points against Softmax)"]
    assert ldam["Ours"] == "-10.0 ± 0.8" and ldam["Verdict"].startswith("holds")
    assert "ViT-B/16 –" in ldam["Thesis"]
    # focal: +0.5 ± 0.8 against the thesis's largest |difference| 0.8: the standard error straddles it
    assert f.loc["Focal ≈ Softmax (balanced-test top-1, points against Softmax)", "Verdict"] == \
        "undetermined (the thesis's largest |Δ|, 0.8, is within one standard error)"
    cb = f.loc["Class-balanced collapses (balanced-test top-1, %)"]
    assert cb["Ours"] == "10.0 ± 0.6" and cb["Verdict"].startswith("holds: collapses")
    assert cb["Thesis"] == "MobileNetV2 19.4; ResNet50V2 20.5; ViT-B/16 5.6; ConvNeXt Base 1.4"


def test_a_verdict_needs_the_difference_to_exceed_its_standard_error(tmp_path):
    """Weighted softmax 1 point below Softmax with seeds 3 points apart: no verdict either way; with a
    single seed there is no standard error at all."""
    root = tmp_path / "g"
    for seed, (ce, wce) in enumerate([(0.50, 0.52), (0.53, 0.49), (0.47, 0.46)]):
        make_run(root, f"ce{seed}", {"balanced": ce}, seed=seed)
        make_run(root, f"w{seed}", {"balanced": wce}, seed=seed, loss="weighted_ce")
    f = thesis.findings(results.collect_runs(root)).set_index(READING)
    row = f.loc["Weighted softmax lowers balanced-test top-1 (points against Softmax)"]
    assert row["Ours"] == "-1.0 ± 2.4" and row["Verdict"] == "undetermined (within one standard error of 0)"
    one = tmp_path / "one"
    make_run(one, "ce", {"balanced": 0.5})
    make_run(one, "w", {"balanced": 0.3}, loss="weighted_ce")
    row = thesis.findings(results.collect_runs(one)).set_index(READING).loc[
        "Weighted softmax lowers balanced-test top-1 (points against Softmax)"]
    assert row["Ours"] == "-20.0 (one seed)" and row["Verdict"] == "undetermined (one seed: no standard error)"


def test_range_verdict():
    E = thesis.Estimate
    thesis_values = [-0.188, -0.027, -0.1]
    assert thesis.range_verdict(E(-0.05, 0.01), thesis_values) == "holds (within the thesis's range)"
    assert thesis.range_verdict(E(-0.01, 0.005), thesis_values) == "holds (smaller than the thesis's)"
    assert thesis.range_verdict(E(-0.3, 0.01), thesis_values) == "holds (larger than the thesis's)"
    assert thesis.range_verdict(E(0.05, 0.01), thesis_values) == "does not hold"
    assert thesis.range_verdict(E(-0.05, 0.06), thesis_values) == "undetermined (within one standard error of 0)"
    assert thesis.range_verdict(E(float("nan"), 0.0), thesis_values) == "no runs"
    assert thesis.range_verdict(E(-0.05, 0.01), [-0.1, 0.02]).startswith("the thesis is not unanimous")


def test_side_by_side(runs):
    t = thesis.side_by_side(runs)
    key = ("A.3", "MobileNetV2", "longtailed", "Class-balanced", "–")
    assert key in t.index
    row = t.loc[key]
    assert row[("Balanced", "Thesis")] == "19.4" and row[("Balanced", "Ours")] == "10.0 ± 1.0"
    assert row[("Thesis row", "")].startswith("collapse") and row[("Seeds", "")] == 3
    ldam = t.loc[("A.3", "MobileNetV2", "longtailed", "LDAM", "–")]
    assert ldam[("Balanced", "Ours")] == "40.0 ± 1.0"  # plain LDAM, not the LDAM-DRW run
    assert ("A.1", "MobileNetV2", "balanced", "Softmax", "–") in t.index and len(t) == 7


def test_settings_are_never_pooled(tmp_path):
    """A linear probe (74 %) and a fine-tuned run (58.6 %) of one backbone, training set and loss are
    two settings: two rows, never "66.3 ± 8.4 (6 seeds)"; so are two epoch counts of one mode."""
    root = tmp_path / "g"
    make_seeds(root, "lin", {"balanced": 0.74}, train_set="balanced")
    make_seeds(root, "ft", {"balanced": 0.586}, train_set="balanced", mode="finetune")
    make_seeds(root, "ft60", {"balanced": 0.60}, train_set="balanced", mode="finetune", epochs=60)
    make_seeds(root, "ft60lt", {"balanced": 0.40}, mode="finetune", epochs=60)
    runs = results.collect_runs(root)
    t = thesis.side_by_side(runs).xs(("A.1", "MobileNetV2", "balanced", "Softmax"))
    assert t[("Balanced", "Ours")].to_dict() == {"mode=linear, epochs=nan": "74.0 ± 1.0",
                                                 "mode=finetune, epochs=nan": "58.6 ± 1.0",
                                                 "mode=finetune, epochs=60": "60.0 ± 1.0"}
    assert set(t[("Seeds", "")]) == {3}
    f = thesis.findings(runs)  # the one reading these runs allow, in the one setting that has both sets
    assert f[[READING, "Setting", "Ours"]].values.tolist() == [
        ["Long-tailed training costs Softmax balanced-test top-1 (points)", "mode=finetune, epochs=60", "-20.0 ± 0.8"]]


def test_class_balanced_ablation(tmp_path):
    grid = tmp_path / "class_balanced"
    make_run(tmp_path / "default", "ce", dict(balanced=0.50, head=0.8, tail=0.2))
    for i, (lp, acc) in enumerate([({"beta": 0.9999, "base": "softmax", "reduction": "batch"}, dict(balanced=0.52, head=0.7, tail=0.4)),
                                   ({"beta": 0.9999, "base": "sigmoid", "reduction": "batch", "weight_order": "reversed"},
                                    dict(balanced=0.03, head=0.0, tail=0.05)),
                                   ({"beta": 0.9, "base": "focal", "reduction": "weights", "normalize": False},
                                    dict(balanced=0.20, head=0.1, tail=0.3))]):
        make_run(grid, f"cb{i}", acc, loss="class_balanced", loss_params=lp)
    runs = results.collect_runs([tmp_path / "default", grid])
    t = thesis.class_balanced_ablation(runs)
    assert t["slip"].tolist() == ["none", "weights in reversed class order", "unnormalised weights"]
    assert t["top-1 < 5 %"].tolist() == [False, True, False]
    assert t["thesis-like collapse"].tolist() == [False, True, True]
    text = thesis.ablation_summary(t)
    assert text.startswith("1 of 3 class-balanced settings collapse to a balanced-test top-1 below 5 %: beta 0.9999, "
                           "sigmoid, reduction batch, slip weights in reversed class order (3.0 %).")
    assert "2 of 3 show the thesis's pattern (top-1 below half of Softmax's 50.0 %" in text
    assert "is reproduced by the settings above." in text


def test_thesis_protocol_tables_and_the_class_balanced_note(tmp_path):
    root = tmp_path / "g"
    counts = [8, 6, 4, 3, 2, 1]
    for rid, loss in (("a", "ce"), ("b", "weighted_ce"), ("c", "class_balanced")):
        acc = dict(balanced=0.5, tail=0.3) if loss != "ce" else dict(balanced=0.6, tail=0.2)
        d = make_run(root, rid, acc, loss=loss, loss_params={"beta": 0.9999} if loss == "class_balanced" else {})
        pd.DataFrame({"class": range(6), "train_count": counts}).to_csv(d / "classes.csv", index=False)
    appendix = tables.appendix_tables(results.collect_runs(root))
    top1, split = appendix
    assert "evaluation protocol 'thesis'" in top1.caption and "support-weighted F1" in split.caption
    assert "Loss (the method's own training loss)" in split.caption
    assert top1.caption.endswith("test images: balanced 10, long-tailed 10 = head 10 + middle 10 + tail 10 (tail 100.0 %).")
    # by hand: class-balanced weights (1-b)/(1-b^n) normalised to mean 1 against 1/n normalised to mean 1
    b = 0.9999
    cb = np.array([(1 - b) / (1 - b ** n) for n in counts])
    inv = np.array([1 / n for n in counts])
    diff = np.abs(cb / cb.mean() - inv / inv.mean()).max()
    assert top1.notes == [f"The rows Weighted CE, Class-balanced coincide in every digit. With beta = 0.9999 and at "
                          f"most 8 images a class, the class-balanced weights equal inverse frequency to {diff:.1e} "
                          "(weights of mean 1)."]
