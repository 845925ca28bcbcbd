"""Reliability: parameters that cannot run code, "done" meaning the notebook completed, every value
checked before any work, the same result cold or warm, caches that heal, I/O faults."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from longtail import executors, notebook, rundir
from longtail import grid as G
from longtail.params import ParameterError, json_type_errors, validate

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "params" / "tiny.yaml"


# ------------------------------------------------------------------ 1. a parameter cannot run code

def _payload(marker: Path) -> bytes:
    """Bytes whose str() closes papermill's quotes and calls os.system (ran before the fix)."""
    return f'", __import__("os").system("touch {marker}"), "'.encode()


def _evil_files(tmp_path: Path, marker: Path) -> dict[str, Path]:
    b64 = base64.b64encode(_payload(marker)).decode()
    files = {
        "binary": f"base:\n  data_root: !!binary {b64}\n",
        "binary_nested": f"base:\n  dataset_params: {{num_classes: 4, x: !!binary {b64}}}\n",
        "set": 'base:\n  dataset_params:\n    x: !!set {\'", __import__("os").system("touch ' + str(marker) + '"), "\': null}\n',
        "python": f"base:\n  data_root: !!python/object/apply:os.system [\"touch {marker}\"]\n",
        "override_key": f"base: {{}}\noverrides:\n  loss:\n    ? !!binary {b64}\n    : {{epochs: 1}}\n",
        "date": "base:\n  data_root: 2024-01-01\n",
    }
    out = {}
    for name, text in files.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"extends: {TINY}\n{text}")
        out[name] = path
    return out


@pytest.mark.parametrize("kind", ["binary", "binary_nested", "set", "python", "override_key", "date"])
def test_crafted_yaml_values_are_refused_before_any_run(tmp_path, env, kind, capsys):
    marker = tmp_path / "pwned"
    path = _evil_files(tmp_path, marker)[kind]
    with pytest.raises(G.GridError) as err:
        G.load_grid(path)
    assert str(path) in str(err.value)
    assert G.main([str(path), "--only", "loss=ce", "--only", "train_set=balanced"]) == 2
    assert not marker.exists() and not (tmp_path / "runs").exists()
    if kind != "python":  # the SafeLoader refuses python tags itself (a YAML error naming the tag)
        assert "JSON types" in str(err.value)


@pytest.mark.parametrize("value", ['!!binary IiwgX19pbXBvcnRfXygib3MiKS5zeXN0ZW0oInRvdWNoIHgiKSwgIg==',
                                   "!!set {a: null}", '!!python/object/apply:os.system ["true"]', ".nan"])
def test_crafted_set_values_are_refused(tmp_path, env, value, capsys):
    assert G.main([str(TINY), "--dry-run", "--set", f"dataset_params.x={value}"]) == 2
    assert "--set dataset_params.x" in capsys.readouterr().err


@pytest.mark.parametrize("value", [b"abc", {"a"}, float("nan"), float("inf"), (1, 2), {1: "a"}, [1, {"x": b"y"}]])
def test_validate_accepts_only_json_types(value):
    for key in ("data_root", "dataset_params", "pretrained", "weights_dir", "output_dir"):
        with pytest.raises(ParameterError, match=key):
            validate({key: value})


def test_run_one_refuses_a_value_whose_cell_would_not_be_a_literal(tmp_path):
    """Defence in depth: a caller that skipped validation still gets no code run, and no kernel."""
    marker = tmp_path / "pwned"
    run = {**validate({}), "output_dir": str(tmp_path / "run"), "data_root": _payload(marker)}
    r = executors.run_one(run)
    assert r["status"] == G.FAILED and "data_root" in r["error"] and not marker.exists()
    assert not (tmp_path / "run").exists()


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_every_json_value_is_injected_as_an_equal_literal(value):
    """Quotes, backslashes, newlines, unicode, nested containers: papermill's source of any accepted
    value is a literal that evaluates back to the value."""
    assert json_type_errors(value, "x") == []
    assert notebook.injection_problems({"dataset_params": {"k": value}, "data_root": value}) == []


# ------------------------------------------------------ 2. done means the whole notebook completed

def test_status_of_a_run_folder(tmp_path):
    from longtail import rundir as R

    def folder(name, files: dict):
        d = tmp_path / name
        d.mkdir()
        for f, text in files.items():
            (d / f).write_text(text)
        return d

    nb = lambda end, exc: json.dumps({"metadata": {"papermill": {"end_time": end, "exception": exc}}})  # noqa: E731
    st_ = lambda s: json.dumps({"status": s})  # noqa: E731
    cases = {
        "todo": ({}, R.TODO),
        "direct_done": ({R.RESULT_FILE: "{}"}, R.DONE),  # run_training called without a grid
        "grid_done": ({R.RESULT_FILE: "{}", R.STATUS_FILE: st_("done"), R.NOTEBOOK_FILE: nb("t", False)}, R.DONE),
        # the notebook failed after run_training wrote metrics.json (a plotting cell)
        "failed_after_metrics": ({R.RESULT_FILE: "{}", R.STATUS_FILE: st_("failed")}, R.FAILED),
        "failed_notebook_no_status": ({R.RESULT_FILE: "{}", R.NOTEBOOK_FILE: nb("t", True)}, R.FAILED),
        # the grid was killed while the notebook ran, after metrics.json
        "killed_after_metrics": ({R.RESULT_FILE: "{}", R.STATUS_FILE: st_("running")}, R.PARTIAL),
        "killed_unfinished_notebook": ({R.RESULT_FILE: "{}", R.NOTEBOOK_FILE: nb(None, False)}, R.PARTIAL),
        "run_training_failed": ({R.PARAMS_FILE: "{}", R.FAILURE_FILE: "{}"}, R.FAILED),
        "done_record_without_metrics": ({R.STATUS_FILE: st_("done")}, R.PARTIAL),
        "started": ({R.PARAMS_FILE: "{}"}, R.PARTIAL),
    }
    for name, (files, expected) in cases.items():
        assert R.status(folder(name, files)) == expected, name


def test_a_notebook_failing_after_metrics_is_failed_redone_and_never_reported(tmp_path, env, capsys):
    """The last cell fails after run_training wrote metrics.json: FAILED now, failed on disk
    (--dry-run), run again by the next call, and absent from the collected results."""
    from longtail.results import collect_runs

    notebook = tmp_path / "train_failing_plot.py"
    notebook.write_text((ROOT / "notebooks" / "train.py").read_text()
                        + '\n# %%\nraise RuntimeError("a plotting cell failed")\n')
    path = tmp_path / "g.yaml"
    path.write_text(f"extends: {TINY}\nnotebook: {notebook}\n")
    only = {"loss": ["ce"], "train_set": ["balanced"]}
    first = G.run_grid(path, only=only)
    (o,) = [o for o in first.outcomes if o.status != G.TODO]
    assert o.status == G.FAILED and "a plotting cell failed" in o.error
    assert (Path(o.output_dir) / "metrics.json").exists()  # run_training did finish
    assert rundir.status(o.output_dir) == G.FAILED
    G.print_dry_run(G.load_grid(path).select(only))
    assert f"failed   {o.id}" in capsys.readouterr().out
    runs = collect_runs(Path(o.output_dir).parent)
    assert len(runs) == 0 and runs.attrs["unfinished"] == [o.output_dir]
    second = G.run_grid(path, only=only)  # redone, not skipped
    assert [x.status for x in second.outcomes if x.status != G.TODO] == [G.FAILED]
    assert not second.skipped


# -------------------------------------------------------------- 4. every value checked before work

#: for every parameter of the schema: values of a wrong type and, where it has one, out of its range
BAD_VALUES = {
    "dataset": [3, "imagenet"], "data_root": [3, "", ["a"]],
    "dataset_params": ["abc", [1], {"num_class": 2}, {"num_classes": "2"}, {"noise": "high"}],
    # (cifar10's jpeg_quality out of range: test_jpeg_quality_is_checked_before_any_work)
    "train_set": [True, "long"], "imbalance_factor": ["abc", 0.5, True], "profile": [1, "linear"],
    "class_order": [None, "sorted"], "n_max": ["abc", 0, 2.5], "balanced_size": [1, "half"],
    "subset_seed": ["abc", -1, 1.5, 2**32], "val_fraction": ["abc", 1.0, -0.1],
    "group_scheme": [0, "quartiles"], "group_thresholds": [None, 100, [100], [20, 100], [100, -1], [100.0, 20]],
    "test_longtailed_rule": [None, "floor"], "on_error": [False, "ignore"],
    "backbone": [5, None, "resnet9000"], "pretrained": [True, "inat_insect", 3], "weights_dir": [1, ""],
    "cosine_head": ["yes", 1], "image_size": [-5, 0, "224", 22.4], "mode": [1, "full"],
    "partial_blocks": [-1, "2", 1.5, None], "partial_views": [0, "4", None],
    "loss": [None, "ldamm"], "loss_params": ["gamma", [2.0], {"gama": 1}],
    "drw_epoch": ["abc", -1, 2.5], "drw_beta": ["abc", 1.0, -0.5], "sampler": [1, "bogus"],
    "sampler_params": [0.5, {"qq": 1}], "posthoc": [None, "tau"], "posthoc_tau": ["abc", -1],
    "epochs": [0, True, "abc", -1, 2.0], "crt_epochs": [0, "abc"], "batch_size": [0, "abc", 1.5],
    "eval_batch_size": [0, None], "optimizer": [1, "adam"], "lr": ["abc", -1, 0, None],
    "momentum": ["abc", 1.0, -0.1], "weight_decay": ["abc", -1e-4], "schedule": [1, "linear"],
    "warmup_epochs": [-1, "abc", 0.5], "lr_steps": ["60", [60, "80"], [-1], 60], "lr_gamma": [0, "abc"],
    "grad_clip": ["abc", 0, -1], "augment": [True, "strong"], "randaugment": [1, "yes", None],
    "mixup_alpha": [-0.1, "abc"], "cutmix_alpha": [-1, None], "device": ["cuda:abc", "tpu", 0],
    "precision": ["fp16", 16], "channels_last": ["true", 1], "compile": [None, "no"], "cuda_graph": ["yes", 2], "seed": [-1, "abc", 0.5],
    "save_checkpoints": [0, "false"], "output_dir": [1, ""],
    "subset_method": ["first", 1], "nesterov": [1, "yes"], "decay_norm_and_bias": [None, "true"],
    "warmup_unit": ["steps", True], "monitor_test": [1, "no"], "eval_protocol": ["paper", 1],
    "val_source": ["held_out", 1], "val_per_class": [0, "2", 1.5], "posthoc_tau_grid": [0.5, ["a"], "1,2"],
    "technique": ["lsw", None], "technique_params": ["k", [1], {"kk": 2}], "tta": ["crop", True],
    "label": [3, "", ["a"]],
    # frozen-feature preparation and tuning on validation
    "feature_power": ["half", -1.0, True], "feature_standardize": ["yes", 1], "tune": [["tau"], {"lr": [0.1]}, {"loss_params": []}],
    # the fine-tuning recipe (checked with mode finetune below: mode linear refuses any other value)
    "freeze_bn": ["yes", True, None], "head_init": ["probe", 1, None], "backbone_lr_scale": ["abc", -0.1, None, True],
}
#: parameters whose values only a fine-tuning mode takes
FINETUNE_ONLY = ("freeze_bn", "head_init", "backbone_lr_scale")


def test_the_bad_value_table_covers_the_whole_schema():
    from longtail.params import SCHEMA
    assert set(BAD_VALUES) == set(SCHEMA)


@pytest.mark.parametrize("key,value", [(k, v) for k, vs in BAD_VALUES.items() for v in vs],
                         ids=lambda x: repr(x)[:30])
def test_each_wrong_typed_or_out_of_range_value_is_refused(key, value):
    params = {key: value}
    if key == "drw_epoch":
        params["loss"] = "ldam"  # a loss DRW applies to: only the value itself is wrong
    if key in FINETUNE_ONLY:
        params["mode"] = "finetune"  # a mode the parameter applies to: only the value itself is wrong
    with pytest.raises(ParameterError) as err:
        validate(params)
    lines = str(err.value).splitlines()[1:]
    assert any(line.strip().startswith((f"{key}=", f"{key} ", f"{key}_params", f"{key}.")) or
               f"{key}=" in line for line in lines), lines


@pytest.mark.parametrize("text,expected", [
    ("# comments only\n", "the file is empty"),
    (b"base: {lr: 0.1}\n# \xe9t\xe9\n", "not UTF-8 text"),
    (f"extends: {TINY}\noverrides:\n  loss:\n    ldamm: {{epochs: 1}}\n", "'ldamm' matches no run"),
    (f"extends: {TINY}\noverrides:\n  loss:\n    ce: {{epoch: 1}}\n", "unknown parameter(s) ['epoch']"),
    (f"extends: {TINY}\nbase:\n  lr: .nan\n", "lr=nan: not a finite number"),
    (f"extends: {TINY}\nbase:\n  epochs: 0\n", "epochs=0: must be a positive integer"),
    (f"extends: {TINY}\nbase:\n  dataset_params: {{num_class: 2}}\n", "not parameters of dataset 'synthetic'"),
])
def test_bad_grid_files_are_refused_before_any_run(tmp_path, env, text, expected, capsys):
    path = tmp_path / "g.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert G.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and str(path) in err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ 7. same parameters, same result

TINY_LINEAR = dict(dataset="synthetic", backbone="resnet32", mode="linear", image_size=16, imbalance_factor=4,
                   dataset_params={"num_classes": 4, "train_per_class": 24, "test_per_class": 8, "image_size": 16},
                   val_fraction=0.2, epochs=3, batch_size=16, lr=0.05, device="cpu", channels_last=False,
                   save_checkpoints=False, seed=1)


def test_cold_and_warm_feature_cache_give_identical_metrics(tmp_path, tmp_cache):
    """Cold, the backbone is built (drawing random numbers) before the head; warm, it is not: the
    head's initialisation must not depend on that (before: balanced loss 54799 cold, 68864 warm)."""
    import pandas as pd

    from longtail.run import run_training

    cold = run_training({**TINY_LINEAR, "output_dir": str(tmp_path / "cold")}, log=lambda *a: None)
    assert len(list((tmp_cache / "features").glob("*.npy"))) == 2  # train and test features now cached
    warm = run_training({**TINY_LINEAR, "output_dir": str(tmp_path / "warm")}, log=lambda *a: None)
    skip = ("wall_s", "cpu_s", "run_dir")  # timings and the folder differ; everything computed must not
    assert {k: v for k, v in cold.metrics.items() if k not in skip} == \
           {k: v for k, v in warm.metrics.items() if k not in skip}
    cols = ["train_loss", "train_acc", "val_loss", "val_acc"]
    pd.testing.assert_frame_equal(cold.history[cols], warm.history[cols])


def test_a_random_backbone_has_features_per_seed(tmp_path, tmp_cache):
    """Features of a randomly initialised backbone depend on its seed: not shared between seeds."""
    from longtail.run import run_training

    for seed in (1, 2):
        run_training({**TINY_LINEAR, "seed": seed, "epochs": 1, "output_dir": str(tmp_path / str(seed))},
                     log=lambda *a: None)
    assert len(list((tmp_cache / "features").glob("*.npy"))) == 4


# ---------------------------------------------------------------------------- 5. caches that heal

def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _scramble(path: Path) -> None:
    """Same size, different contents (past the .npy header)."""
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data), 7):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _scramble], ids=["truncated", "same-size"])
def test_a_bad_image_cache_entry_is_rebuilt_with_a_warning(tmp_path, tmp_cache, damage):
    import numpy as np
    from PIL import Image

    from longtail.imagecache import decoded_images

    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        p = tmp_path / f"img{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    first, kept = decoded_images(paths, 16, progress=False)
    first = np.array(first)
    (array_file,) = (tmp_cache / "images").glob("*.npy")
    damage(array_file)
    with pytest.warns(UserWarning, match=f"image cache {array_file}: .*decoding the images again"):
        again, kept2 = decoded_images(paths, 16, progress=False)
    np.testing.assert_array_equal(np.array(again), first)
    np.testing.assert_array_equal(kept2, kept)


@pytest.mark.parametrize("damage", [_truncate, _scramble], ids=["truncated", "same-size"])
def test_a_bad_feature_cache_entry_is_rebuilt_and_the_run_unchanged(tmp_path, tmp_cache, damage):
    """Before: a truncated entry failed every run ('mmap length ...', no file named); a same-size
    corruption passed silently and changed the result."""
    from longtail.run import run_training

    params = {**TINY_LINEAR, "epochs": 2}
    first = run_training({**params, "output_dir": str(tmp_path / "a")}, log=lambda *a: None).metrics
    entries = sorted((tmp_cache / "features").glob("*.npy"))
    assert len(entries) == 2
    for entry in entries:
        damage(entry)
    with pytest.warns(UserWarning, match="feature cache .*npy: .*extracting the features again") as record:
        again = run_training({**params, "output_dir": str(tmp_path / "b")}, log=lambda *a: None).metrics
    named = {str(e) for e in entries}
    assert {m for w in record for m in named if m in str(w.message)} == named  # each bad file is named
    assert again["balanced/acc1"] == first["balanced/acc1"] and again["balanced/loss"] == first["balanced/loss"]


def _photo_tree(root: Path, classes=("a", "b", "c"), per_class=8) -> Path:
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / c / f"{i}.jpg")
    return root


def test_a_linear_run_on_cached_features_does_not_read_the_image_cache(tmp_path, tmp_cache):
    """The decoded-image cache's checksum (0.3 s of a 0.9 s EU Moths run) is paid only by a run that
    reads the images: a linear run whose features are cached never does, so a damaged image entry
    goes unnoticed by it (before: every run read and checked the whole array, and rebuilt it); a run
    that must extract features again reads them, and the damage is found and healed then."""
    import warnings

    import numpy as np

    from longtail.run import run_training

    params = {**TINY_LINEAR, "dataset": "imagefolder", "dataset_params": {"test_fraction": 0.4},
              "data_root": str(_photo_tree(tmp_path / "photos")), "imbalance_factor": 2, "val_fraction": 0.0}
    first = run_training({**params, "output_dir": str(tmp_path / "a")}, log=lambda *a: None).metrics
    array_files = sorted((tmp_cache / "images").glob("*.npy"))  # the training and the test split's
    assert len(array_files) == 2
    for array_file in array_files:
        _scramble(array_file)
    damaged = [f.read_bytes() for f in array_files]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # before: "image cache ...: ... decoding the images again"
        warm = run_training({**params, "output_dir": str(tmp_path / "b")}, log=lambda *a: None).metrics
    assert [f.read_bytes() for f in array_files] == damaged  # not read, so not rebuilt
    skip = ("wall_s", "cpu_s", "run_dir")
    assert {k: v for k, v in warm.items() if k not in skip} == {k: v for k, v in first.items() if k not in skip}
    for entry in (tmp_cache / "features").glob("*.npy"):
        entry.unlink()  # features to extract again: the images are read, the damage found
    with pytest.warns(UserWarning, match="image cache .*decoding the images again") as record:
        cold = run_training({**params, "output_dir": str(tmp_path / "c")}, log=lambda *a: None).metrics
    assert {str(f) for f in array_files} <= {str(f) for w in record for f in array_files if str(f) in str(w.message)}
    assert all(f.read_bytes() != d for f, d in zip(array_files, damaged))
    assert {k: v for k, v in cold.items() if k not in skip} == {k: v for k, v in first.items() if k not in skip}
    assert all(np.load(f).std() > 10 for f in array_files)


def test_images_on_use_give_the_verified_images_and_their_kept_rows(tmp_path, tmp_cache):
    """``decoded_images_on_use``: ``kept`` from the entry's description at once, the images (checked,
    healed when bad) at the first call of ``load``; no entry yet: decoded at once."""
    import numpy as np

    from longtail.imagecache import decoded_images, decoded_images_on_use

    paths = sorted((_photo_tree(tmp_path / "photos")).rglob("*.jpg"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    paths.insert(3, bad)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        load, kept = decoded_images_on_use(paths, 16, on_error="skip", progress=False)  # no entry: decoded now
    (array_file,) = (tmp_cache / "images").glob("*.npy")
    reference = np.array(load())
    assert kept.tolist() == [i for i in range(len(paths)) if i != 3] and reference.shape == (len(kept), 16, 16, 3)
    _scramble(array_file)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        load, kept_again = decoded_images_on_use(paths, 16, on_error="skip", progress=False)
    assert kept_again.tolist() == kept.tolist()  # from the description, the array not read
    with pytest.warns(UserWarning, match=f"image cache {array_file}: .*decoding the images again"):
        np.testing.assert_array_equal(np.array(load()), reference)
    assert load() is load()  # verified once
    np.testing.assert_array_equal(np.array(decoded_images(paths, 16, on_error="skip", progress=False)[0]), reference)


# ---------------------------------------------------------- 3. interrupts and kills stop everything

def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _default_interrupt() -> None:
    """Ctrl-C as in a terminal: a shell without job control (a CI script run in the background)
    starts its children with SIGINT ignored, and Python then installs no KeyboardInterrupt handler."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_grid(out: Path, jobs: int):
    """The tiny grid in a process of its own session (as a terminal runs it); returns it once a run's
    kernel is working, with the pids of its workers and kernels."""
    import subprocess
    import sys
    import time

    g = G.load_grid(TINY, output_root=out)
    proc = subprocess.Popen([sys.executable, "-m", "longtail.grid", str(TINY), "--jobs", str(jobs),
                             "--output-root", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, text=True,
                            preexec_fn=_default_interrupt)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        started = [Path(r["output_dir"], "params.json").exists() and rundir.status(r["output_dir"]) != "done"
                   for r in g.runs]
        if any(started):
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    return g, proc, executors._descendants(proc.pid)


def _gone(pids, timeout=15.0) -> bool:
    import time
    deadline = time.time() + timeout
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    return not any(_alive(p) for p in pids)


def _snapshot(out: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and ".locks" not in p.parts}


@pytest.mark.parametrize("signum,jobs,group,code", [("SIGINT", 2, True, 130), ("SIGTERM", 2, False, 143),
                                                    ("SIGINT", 1, True, 130)])
def test_an_interrupt_stops_workers_and_kernels_with_one_line(tmp_path, env, signum, jobs, group, code):
    """Ctrl-C (SIGINT to the terminal's process group) or SIGTERM (to the grid): every worker and kernel
    stops, no run starts after it, one line says what is left, exit 128 + signal.  Before: a worker
    started another run, tracebacks and asyncio noise, exit after the runs."""
    import os
    import signal as S
    import time

    out = tmp_path / "out"
    g, proc, pids = _start_grid(out, jobs)
    assert len(pids) >= (1 if jobs == 1 else jobs + 1)  # the worker(s) and at least one kernel
    sig = getattr(S, signum)
    os.killpg(proc.pid, sig) if group else os.kill(proc.pid, sig)
    t0 = time.time()
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, (stdout, stderr)
    assert time.time() - t0 < 20
    assert _gone(pids), [p for p in pids if _alive(p)]
    assert "Traceback" not in stdout + stderr and "Task was destroyed" not in stderr, stderr
    lines = [line for line in stdout.splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1 and "will be run by the next call of the same command" in lines[0], stdout
    before = _snapshot(out)
    time.sleep(2)
    assert _snapshot(out) == before  # nothing runs on
    states = g.statuses()
    assert "done" not in states or states.count("done") < len(g)
    assert f"{states.count('done')} of {len(g)} runs done" in lines[0]


def test_a_killed_grid_takes_its_workers_and_kernels_along(tmp_path, env):
    """SIGKILL of the grid alone (no handler can run): before, the workers were re-parented to init and
    one finished another run after the grid was dead."""
    import os
    import signal as S
    import time

    out = tmp_path / "out"
    g, proc, pids = _start_grid(out, 2)
    os.kill(proc.pid, S.SIGKILL)
    proc.communicate(timeout=30)
    assert _gone(pids, timeout=10), [p for p in pids if _alive(p)]
    before = _snapshot(out)
    time.sleep(2)
    assert _snapshot(out) == before
    assert "done" not in g.statuses() or g.statuses().count("done") < len(g)


# --------------------------------------------------------------- 6. full disk and other I/O faults

class _FullDisk:
    """A file object whose writes fail as on a full disk (ENOSPC)."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        import errno
        import os
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _full_disk(monkeypatch):
    import os as os_mod

    from longtail import fileio
    real = os_mod.fdopen
    monkeypatch.setattr(fileio.os, "fdopen", lambda fd, *a, **k: _FullDisk(real(fd, *a, **k)))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)


def test_an_atomic_write_on_a_full_disk_names_the_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    from longtail.fileio import atomic_write_json
    _full_disk(monkeypatch)
    with pytest.raises(OSError, match=f"no space left on device while writing {tmp_path / 'x.json'}"):
        atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_the_image_cache_on_a_full_disk_leaves_nothing_behind(tmp_path, tmp_cache, monkeypatch):
    """Before: the sparse memmap's page writes killed the kernel (SIGBUS), its temp file stayed."""
    import errno

    import numpy as np
    from PIL import Image

    from longtail import imagecache

    paths = []
    for i in range(3):
        Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    real = np.lib.format.open_memmap

    def full(*a, **k):  # the file is created, then its blocks cannot be allocated
        real(*a, **k)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(imagecache.np.lib.format, "open_memmap", full)
    with pytest.raises(OSError, match="no space left on device while writing the image cache .*_16px.npy"):
        imagecache.decoded_images(paths, 16, progress=False)
    assert _leftovers(tmp_cache) == []
    monkeypatch.undo()
    images, kept = imagecache.decoded_images(paths, 16, progress=False)  # space again: it works
    assert images.shape == (3, 16, 16, 3) and list(kept) == [0, 1, 2]


def _done_folder(out: Path) -> None:
    from longtail import rundir as R
    out.mkdir(parents=True)
    (out / R.RESULT_FILE).write_text("{}")
    (out / R.STATUS_FILE).write_text(json.dumps({"status": "done"}))


def test_the_summary_is_printed_when_runs_csv_cannot_be_written(tmp_path, env, monkeypatch, capsys):
    """Before: writing runs.csv in a finally raised on a full disk and no summary was printed."""
    out = tmp_path / "out"
    g = G.load_grid(TINY, output_root=out)
    for r in g.runs:
        _done_folder(Path(r["output_dir"]))
    _full_disk(monkeypatch)
    assert G.main([str(TINY), "--output-root", str(out)]) == 1
    text = capsys.readouterr().out
    assert f"grid tiny: {len(g)} runs: 0 done, {len(g)} skipped (done before), 0 failed" in text
    assert f"table NOT written: no space left on device while writing {out / 'runs.csv'}" in text
    assert _leftovers(out) == []


def test_a_full_disk_fails_the_run_without_start_up_retries(tmp_path, env, monkeypatch, capsys):
    """Before: a full disk was taken for a kernel start-up failure and retried."""
    run = {**G.load_grid(TINY, output_root=tmp_path / "out").runs[0]}
    _full_disk(monkeypatch)
    r = executors.run_one(run)
    assert r["status"] == G.FAILED and r["attempts"] == 1
    assert "no space left on device while writing" in r["error"] and "status.json" in r["error"]
    assert "retrying" not in capsys.readouterr().err


# ------------------------------------------------------------------------------ 8. smaller ones

def test_atomic_writes_respect_the_umask(tmp_path):
    """Before: mkstemp's 0600, so a cluster group could not read results and caches."""
    import os

    from longtail.fileio import atomic_write_text
    old = os.umask(0o002)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o664


def _report_run(root: Path, rid: str, metrics_text: str | None = None) -> Path:
    d = root / rid
    d.mkdir(parents=True)
    p = {**validate({}), "output_dir": str(d)}
    (d / "params.json").write_text(json.dumps(p))
    m = {k: p[k] for k in ("dataset", "backbone", "train_set", "imbalance_factor", "loss", "seed")}
    for s in ("balanced", "longtailed", "head", "middle", "tail"):
        m.update({f"{s}/acc1": 0.5, f"{s}/macro_f1": 0.4, f"{s}/loss": 1.0, f"{s}/n": 10})
    (d / "metrics.json").write_text(json.dumps(m) if metrics_text is None else metrics_text)
    return d


@pytest.mark.parametrize("bad", ["", "{\"balanced/acc1\": 0.5,"])
def test_a_corrupt_metrics_file_is_named_and_its_run_skipped(tmp_path, bad):
    """Before: a JSONDecodeError naming no file, and no report."""
    from longtail.results import collect_runs

    _report_run(tmp_path / "runs", "good")
    broken = _report_run(tmp_path / "runs", "broken", bad)
    with pytest.warns(UserWarning, match=f"{broken / 'metrics.json'}: not valid JSON .*; run skipped"):
        runs = collect_runs(tmp_path / "runs")
    assert list(runs["run_id"]) == ["good"] and runs.attrs["unfinished"] == [str(broken)]


def test_report_of_a_missing_parameter_file_is_one_line(tmp_path, capsys):
    from longtail import report
    assert report.main([str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.yaml does not exist" in err


def test_the_report_header_counts_runs_without_results_when_none_finished(tmp_path):
    """Before: '0 finished, 0 without results' for a grid of 8 runs not run yet."""
    from longtail import report
    from longtail.results import collect_runs

    for i in range(8):
        (tmp_path / "runs" / f"r{i}").mkdir(parents=True)
    runs = collect_runs(tmp_path / "runs")
    info = report.provenance([str(tmp_path / "runs")], runs)
    assert "0 finished, 8 without results" in report.header_html(info, None, [])


def test_missing_weights_in_linear_mode_give_the_weights_hint(tmp_path, tmp_cache):
    """Before: a bare os.stat FileNotFoundError; the LT_WEIGHTS_DIR hint was never reached."""
    from longtail.run import run_training

    with pytest.raises(FileNotFoundError, match="pretrained weights .*mobilenetv2_100.coral_inat_insects.pt not "
                                                "found .*set LT_WEIGHTS_DIR or weights_dir"):
        run_training({"dataset": "synthetic", "mode": "linear", "pretrained": "inat_insects",
                      "weights_dir": str(tmp_path / "empty"), "output_dir": str(tmp_path / "run")})


def test_a_set_variant_keeps_the_grid_table(tmp_path, env, capsys):
    """Before: a --set variant (other run ids, same output root) replaced the grid's runs.csv."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "runs.csv").write_text("the main grid's table\n")
    variant = G.load_grid(TINY, output_root=out, sets={"epochs": 1})
    for r in variant.runs:
        _done_folder(Path(r["output_dir"]))
    assert G.main([str(TINY), "--output-root", str(out), "--set", "epochs=1"]) == 0
    assert (out / "runs.csv").read_text() == "the main grid's table\n"
    assert variant.table_path.name.startswith("runs-set-") and variant.table_path.exists()
    assert f"table: {variant.table_path}" in capsys.readouterr().out


def test_two_grids_on_one_folder_both_finish_and_agree(tmp_path, env):
    """Before: the second grid's runs.csv said busy for runs the first one finished, and both exited 1."""
    import subprocess
    import sys
    import time

    import pandas as pd

    out = tmp_path / "out"
    g = G.load_grid(TINY, output_root=out)
    first = subprocess.Popen([sys.executable, "-m", "longtail.grid", str(TINY), "--output-root", str(out)],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not Path(g.runs[0]["output_dir"], "params.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    second = G.run_grid(TINY, output_root=out)
    text = first.communicate(timeout=600)[0]
    assert first.returncode == 0, text
    assert second.ok and {o.status for o in second.outcomes} <= {G.DONE, G.SKIPPED}
    assert second.skipped  # at least run 0 was finished by the first grid
    assert set(pd.read_csv(out / "runs.csv")["status"]) == {"done"}
    assert g.statuses() == ["done"] * len(g)


def test_jpeg_quality_is_checked_before_any_work():
    for bad in (0, 101, 75.5, "75", True):
        with pytest.raises(ParameterError, match=r"dataset_params.jpeg_quality=.*must be an integer in 1..100"):
            validate({"dataset": "cifar10", "dataset_params": {"jpeg_quality": bad}})
    assert validate({"dataset": "cifar10", "dataset_params": {"jpeg_quality": 75}})["dataset_params"] == {"jpeg_quality": 75}
