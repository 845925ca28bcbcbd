"""Given training and test sets (``train_balanced/`` ... ``test_longtailed/``, or ``splits.csv``) on a
generated tree of real EU Moths images: every combination of given and derived sets through the real
grid (papermill) and the report with ``eval_protocol: thesis``, and the errors, before any training."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from longtail import config, data
from longtail.subsets import longtail_counts

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 24  # "some tens of classes"
TRAIN_PER_CLASS = 6
TEST_PER_CLASS = 2


def _eu_moths_by_class(data_root: Path) -> tuple[dict, dict, list[str]]:
    ds = data.load_eu_moths(data_root)
    names = ds.class_names[:CLASSES]
    train = {c: [p for p, y in zip(ds.train.paths, ds.train.labels) if y == i][:TRAIN_PER_CLASS] for i, c in enumerate(names)}
    test = {c: [p for p, y in zip(ds.test.paths, ds.test.labels) if y == i][:TEST_PER_CLASS] for i, c in enumerate(names)}
    return train, test, names


def _copy(files: dict[str, list[str]], folder: Path) -> None:
    for cls, paths in files.items():
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for p in paths:
            shutil.copy(p, folder / cls / Path(p).name)


@pytest.fixture(scope="module")
def trees(tmp_path_factory, data_root):
    """Four roots: ``all`` (the four folders), ``balanced_only`` (train_balanced + test_balanced: the
    long-tailed sets derived), ``longtailed_only`` (train_longtailed + both test sets) and ``manifest``
    (splits.csv naming the images of ``all`` without copying them)."""
    tmp = tmp_path_factory.mktemp("given")
    train, test, names = _eu_moths_by_class(data_root)
    lt_counts = longtail_counts(TRAIN_PER_CLASS, CLASSES, 6.0)  # 6 ... 1 images a class
    lt_train = {c: train[c][:k] for c, k in zip(names, lt_counts)}
    lt_test = {c: test[c][:1 + (i < CLASSES // 3)] for i, c in enumerate(names)}  # 2 (first third) or 1 image
    roots = {k: tmp / k for k in ("all", "balanced_only", "longtailed_only")}
    for name, sets in (("all", dict(train_balanced=train, train_longtailed=lt_train, test_balanced=test,
                                    test_longtailed=lt_test)),
                       ("balanced_only", dict(train_balanced=train, test_balanced=test)),
                       ("longtailed_only", dict(train_longtailed=lt_train, test_balanced=test, test_longtailed=lt_test))):
        for s, files in sets.items():
            _copy(files, roots[name] / s)
    manifest = tmp / "manifest"
    manifest.mkdir()
    with open(manifest / data.MANIFEST, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "class", "split"])
        for s in data.GIVEN_SETS:
            for cls in sorted(os.listdir(roots["all"] / s)):
                for img in sorted(os.listdir(roots["all"] / s / cls)):
                    w.writerow([f"../all/{s}/{cls}/{img}", cls, s])
    roots["manifest"] = manifest
    return roots, lt_counts, {c: len(v) for c, v in lt_test.items()}


def test_given_sets_are_loaded_as_they_are(trees):
    roots, lt_counts, lt_test = trees
    for name in ("all", "manifest"):
        ds = data.load_dataset("imagefolder", roots[name])
        assert ds.num_classes == CLASSES and ds.info["given"] == list(data.GIVEN_SETS)
        part = ds.train.part
        assert np.bincount(ds.train.labels[part == "train_longtailed"], minlength=CLASSES).tolist() == lt_counts
        assert (np.bincount(ds.train.labels[part == "train_balanced"]) == TRAIN_PER_CLASS).all()
        assert np.bincount(ds.test.labels[ds.test.part == "test_longtailed"]).tolist() == list(lt_test.values())
    ds_all, ds_man = (data.load_dataset("imagefolder", roots[n]) for n in ("all", "manifest"))
    assert ds_all.class_names == ds_man.class_names
    assert [Path(p).resolve() for p in ds_man.train.paths] == [Path(p).resolve() for p in ds_all.train.paths]


def test_a_class_absent_from_one_training_set_is_allowed_and_reported(tmp_path, trees):
    roots, _, _ = trees
    root = tmp_path / "absent"
    shutil.copytree(roots["all"], root)
    victim = sorted(os.listdir(root / "train_longtailed"))[-1]
    shutil.rmtree(root / "train_longtailed" / victim)
    ds = data.load_dataset("imagefolder", root)
    assert ds.num_classes == CLASSES and ds.info["absent"] == {"train_longtailed": [victim]}


@pytest.mark.parametrize("breakage,message", [
    ("extra_set", "folder(s) validation beside the given sets are not set names; choose among train_balanced"),
    ("empty_set", "the given set(s) test_longtailed hold no image"),
    ("unknown_test_class", "test_balanced holds class(es) with no training image in train_balanced or "
                           "train_longtailed: zz_unknown_species"),
    ("no_test_balanced", "the balanced test set test_balanced is required"),
    ("no_training_set", "no training set"),
    ("manifest_split", "line 2: split 'training' is not a set name; choose one of train_balanced"),
    ("manifest_missing", "1 listed image(s) not found"),
])
def test_bad_given_sets_are_named(tmp_path, trees, breakage, message):
    roots, _, _ = trees
    root = tmp_path / breakage
    if breakage.startswith("manifest"):
        root.mkdir()
        rows = list(csv.reader(open(roots["manifest"] / data.MANIFEST)))
        rows = [[("../../" + r[0][3:]) if i else r[0], r[1], r[2]] for i, r in enumerate(rows)]
        rows = [rows[0]] + [[f"{roots['all']}/{r[0][9:]}", r[1], r[2]] for r in rows[1:]]
        if breakage == "manifest_split":
            rows[1][2] = "training"
        else:
            rows[1][0] = str(tmp_path / "nowhere.jpg")
        with open(root / data.MANIFEST, "w", newline="") as f:
            csv.writer(f).writerows(rows)
    else:
        shutil.copytree(roots["all"], root)
        if breakage == "extra_set":
            (root / "validation" / "x").mkdir(parents=True)
        elif breakage == "empty_set":
            shutil.rmtree(root / "test_longtailed")
            (root / "test_longtailed").mkdir()
        elif breakage == "unknown_test_class":
            src = next((root / "test_balanced").glob("*/*.jpg"))
            (root / "test_balanced" / "zz_unknown_species").mkdir()
            shutil.copy(src, root / "test_balanced" / "zz_unknown_species" / src.name)
        elif breakage == "no_test_balanced":
            shutil.rmtree(root / "test_balanced")
        elif breakage == "no_training_set":
            shutil.rmtree(root / "train_balanced")
            shutil.rmtree(root / "train_longtailed")
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        data.load_dataset("imagefolder", root)
    assert message in str(err.value)


@pytest.mark.slow
def test_every_combination_through_the_grid_and_the_report(tmp_path, trees):
    """2 training sets x 4 roots through ``python -m longtail.grid`` (a random ResNet-32 on 32 px, linear
    mode: the plumbing, not the accuracy), then ``python -m longtail.report`` with eval_protocol thesis."""
    roots, lt_counts, lt_test = trees
    env = {**os.environ, "LT_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    files, runs = [], {}
    for root in ("all", "balanced_only", "longtailed_only", "manifest"):  # data_root is not in the run id: a grid each
        spec = {"name": f"given_{root}", "output_root": str(tmp_path / "runs" / root),
                "base": {"dataset": "imagefolder", "data_root": str(roots[root]), "backbone": "resnet32",
                         "pretrained": None, "mode": "linear", "image_size": 32, "val_fraction": 0.0, "epochs": 2,
                         "batch_size": 16, "device": "cpu", "channels_last": False, "save_checkpoints": False,
                         "imbalance_factor": 6, "eval_protocol": "thesis", "group_scheme": "thirds", "loss": "ce"},
                "grid": {"train_set": ["balanced", "longtailed"]}}
        files.append(tmp_path / f"given_{root}.yaml")
        files[-1].write_text(yaml.safe_dump(spec, sort_keys=False))
        grid = subprocess.run([sys.executable, "-m", "longtail.grid", str(files[-1]), "--jobs", "2"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=600)
        if root == "longtailed_only":  # the impossible combination fails before training, named
            assert grid.returncode != 0 and "1 failed" in grid.stdout, grid.stdout + grid.stderr
        else:
            assert grid.returncode == 0, grid.stdout + grid.stderr
        for d in (tmp_path / "runs" / root).iterdir():
            if (d / "params.json").exists():
                runs[(root, json.loads((d / "params.json").read_text())["train_set"])] = d
    assert len(runs) == 8
    failed = runs[("longtailed_only", "balanced")]
    assert "train_set='balanced' needs a given train_balanced set" in (failed / "failure.json").read_text()
    assert not (failed / "history.csv").exists()  # before any training
    for (root, train_set), d in runs.items():
        if (root, train_set) == ("longtailed_only", "balanced"):
            continue
        cls = pd.read_csv(d / "classes.csv")
        m = json.loads((d / "metrics.json").read_text())
        given_lt_train = root in ("all", "longtailed_only", "manifest")
        if given_lt_train:  # the given long-tailed training set, exactly as it is
            assert cls["longtailed_count"].tolist() == lt_counts
        else:  # derived by the profile from train_balanced: exp, n_max 6, IF 6
            assert cls["longtailed_count"].tolist() == longtail_counts(TRAIN_PER_CLASS, CLASSES, 6.0)
        assert cls["train_count"].tolist() == (cls["longtailed_count"].tolist() if train_set == "longtailed"
                                               else [TRAIN_PER_CLASS] * CLASSES)
        assert cls["test_count"].tolist() == [TEST_PER_CLASS] * CLASSES
        if root != "balanced_only":  # the given physical long-tailed test set
            assert cls["test_longtailed_count"].tolist() == list(lt_test.values())
        n_lt = m["thesis_longtailed/n"]
        assert n_lt == cls["test_longtailed_count"].sum() == m["longtailed_sampled/n"]
        assert sum(m[f"thesis_{g}/n"] for g in ("head", "middle", "tail")) == n_lt  # groups partition it
        hits = sum(m[f"thesis_{g}/n"] * m[f"thesis_{g}/acc1"] for g in ("head", "middle", "tail"))
        assert hits / n_lt == pytest.approx(m["thesis_longtailed/acc1"])
        assert m["balanced/n"] == TEST_PER_CLASS * CLASSES and np.isfinite(m["thesis_longtailed/train_loss"])
    out = tmp_path / "report"
    rep = subprocess.run([sys.executable, "-m", "longtail.report", *map(str, files), "--out", str(out)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    html = (out / "index.html").read_text()
    assert "evaluation protocol &#x27;thesis&#x27;" in html or "evaluation protocol 'thesis'" in html


def test_data_summary_shows_the_given_sets(trees):
    from longtail import datasummary
    roots, lt_counts, lt_test = trees
    t = datasummary.class_table(data.load_dataset("imagefolder", roots["all"]), imbalance_factor=6, val_fraction=0.0)
    assert t["longtailed"].tolist() == lt_counts and t["balanced"].tolist() == [TRAIN_PER_CLASS] * CLASSES
    assert t["test_longtailed_sampled"].tolist() == list(lt_test.values())
    assert t["test_balanced"].tolist() == [TEST_PER_CLASS] * CLASSES
    only_lt = datasummary.class_table(data.load_dataset("imagefolder", roots["longtailed_only"]), imbalance_factor=6,
                                      val_fraction=0.0)
    assert only_lt["balanced"].sum() == 0 and only_lt["longtailed"].tolist() == lt_counts


def test_a_test_image_in_a_training_set_is_an_error_naming_it(tmp_path, trees):
    """Folders: a file of equal content under another name; the manifest: the same path in both."""
    roots, _, _ = trees
    root = tmp_path / "leak"
    shutil.copytree(roots["all"], root)
    test_image = sorted((root / "test_balanced").glob("*/*.jpg"))[0]
    copy = root / "train_balanced" / test_image.parent.name / "renamed_copy.jpg"
    shutil.copy(test_image, copy)
    with pytest.raises(ValueError) as err:
        data.load_dataset("imagefolder", root)
    # the image and its copy in test_longtailed (the fixture's test_longtailed copies test_balanced's first images)
    assert "2 test image(s) are also training images" in str(err.value)
    assert f"test_balanced: {test_image} = train_balanced: {copy}" in str(err.value)
    assert f"test_longtailed: {str(test_image).replace('test_balanced', 'test_longtailed')} = train_balanced: {copy}" \
        in str(err.value)
    manifest = tmp_path / "leak_manifest"
    manifest.mkdir()
    rows = list(csv.reader(open(roots["manifest"] / data.MANIFEST)))
    rows = [rows[0]] + [[str((roots["manifest"] / r[0]).resolve()), r[1], r[2]] for r in rows[1:]]
    listed_twice = next(r for r in rows[1:] if r[2] == "test_longtailed")
    rows.append([listed_twice[0], listed_twice[1], "train_longtailed"])
    with open(manifest / data.MANIFEST, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(ValueError, match=r"also training images .*test_longtailed: .*"
                                         + Path(listed_twice[0]).name + " = train_longtailed"):
        data.load_dataset("imagefolder", manifest)


def _given_run(root, out, log, **params):
    from longtail.run import run_training
    return run_training({"dataset": "imagefolder", "data_root": str(root), "backbone": "resnet32", "pretrained": None,
                         "mode": "linear", "image_size": 32, "epochs": 1, "batch_size": 16, "device": "cpu",
                         "channels_last": False, "save_checkpoints": False, "output_dir": str(out), **params},
                        log=log)


def test_given_sets_have_no_validation_split_unless_asked_and_the_log_says_so(tmp_path, tmp_cache, trees):
    from longtail import predictions
    roots, lt_counts, lt_test = trees
    lines: list[str] = []
    _given_run(roots["all"], tmp_path / "default", lines.append)
    classes = pd.read_csv(tmp_path / "default" / "classes.csv")
    assert classes["val_count"].sum() == 0 and classes["train_count"].tolist() == lt_counts  # nothing held out
    assert "validation: none (given sets are used as they are); model selection: the last epoch is kept" in lines
    # the groups (thirds of the long-tailed counts 6 ... 1) and the given long-tailed test set, in the log
    # and from the run folder: 8 classes a group; 2 test images for the first 8 classes, 1 for the others
    sizes = predictions.group_sizes(tmp_path / "default")
    assert sizes["classes"].tolist() == [8, 8, 8, 24]
    assert sizes["test_images"].tolist() == [16, 8, 8, 32] and sizes.loc["tail", "test_share"] == 25.0
    assert sizes["balanced_test_images"].tolist() == [16, 16, 16, 48]
    assert ("groups (auto: thirds, thresholds [100, 20] leave a group empty): head 8 / middle 8 / tail 8 classes; long-tailed test set (given): "
            "32 images, head 16 / middle 8 / tail 8, tail share 25.0 %") in lines
    assert predictions.group_sizes_text(tmp_path / "default") == ("head / middle / tail: 8 / 8 / 8 classes; long-tailed "
                                                              "test set 32 images, 16 / 8 / 8 (tail 25.0 %)")
    lines.clear()
    _given_run(roots["all"], tmp_path / "asked", lines.append, val_fraction=0.5)
    assert pd.read_csv(tmp_path / "asked" / "classes.csv")["val_count"].sum() > 0
    assert any(line.startswith("validation: ") and "held out of the given longtailed training set (val_fraction 0.5)"
               in line for line in lines)
    with pytest.raises(ValueError, match="τ is tuned on a validation split, and this run has none"):
        _given_run(roots["all"], tmp_path / "tau", lines.append, posthoc="logit_adjust", posthoc_tau_grid=[0.5, 1.0])
    assert not (tmp_path / "tau" / "history.csv").exists()  # before any training


def test_unused_validation_never_holds_a_copy_of_a_training_image(tmp_path, tmp_cache, trees):
    """The given long-tailed set is copied out of the given balanced one: the unused validation set
    of a long-tailed run is the balanced set's other images, never a copy of one it trains on; a
    balanced run, which trains on all of train_balanced, has none left, an error before training."""
    roots, _, _ = trees
    _given_run(roots["all"], tmp_path / "lt", _quiet, val_source="unused", val_fraction=0.0)
    with np.load(tmp_path / "lt" / "predictions.npz") as z:
        val_ids, train_ids = list(z["val_ids"]), list(z["train_ids"])
    assert len(val_ids) > 0
    content = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in val_ids + train_ids}
    assert not {content[v] for v in val_ids} & {content[t] for t in train_ids}
    with pytest.raises(ValueError, match="no image is left to validate on"):
        _given_run(roots["all"], tmp_path / "bal", _quiet, val_source="unused", val_fraction=0.0,
                   train_set="balanced")
    assert not (tmp_path / "bal" / "history.csv").exists()


def _quiet(_):
    pass
