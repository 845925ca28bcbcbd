"""Run ids: what a run computes, not how its tables show it; folders of the older ids still found."""
import json

from longtail import gridspec, results, rundir
from longtail.params import DEFAULTS, resolve

TINY = {"dataset": "synthetic", "backbone": "resnet32", "mode": "finetune", "epochs": 2}


def _finished(folder, params):
    folder.mkdir(parents=True)
    (folder / rundir.PARAMS_FILE).write_text(json.dumps(resolve(params)))
    (folder / rundir.RESULT_FILE).write_text(json.dumps({"balanced/acc1": 0.5, "eval_protocol": params.get(
        "eval_protocol", "weighted")}))


def test_the_protocol_is_not_part_of_the_id():
    """Both protocols are computed by every run: a thesis-protocol run is its weighted twin; the
    weighted run keeps the id it had while the protocol was hashed (its legacy id)."""
    weighted, thesis = {**TINY, "eval_protocol": "weighted"}, {**TINY, "eval_protocol": "thesis"}
    assert DEFAULTS["eval_protocol"] == "weighted"
    assert rundir.run_id(thesis) == rundir.run_id(weighted) == rundir.legacy_run_id(weighted)
    assert rundir.legacy_run_id(thesis) != rundir.run_id(thesis)
    assert rundir.run_id({**TINY, "epochs": 3}) != rundir.run_id(TINY)  # what is computed still counts


def test_a_folder_of_the_legacy_id_is_found_and_shown_as_the_grid_asks(tmp_path):
    spec = tmp_path / "g.yaml"
    spec.write_text("name: g\noutput_root: " + str(tmp_path / "runs") + "\nbase: " + json.dumps(
        {**TINY, "eval_protocol": "thesis"}) + "\n")
    old = tmp_path / "runs" / rundir.legacy_run_id({**TINY, "eval_protocol": "thesis"})
    assert rundir.folder_of(tmp_path / "runs", {**TINY, "eval_protocol": "thesis"}).name == rundir.run_id(TINY)
    _finished(old, {**TINY, "eval_protocol": "thesis"})
    assert gridspec.run_folders(spec)[1] == [old]
    runs = results.collect_runs(spec)
    assert len(runs) == 1 and runs.loc[0, "eval_protocol"] == "thesis"
    # the same runs asked for under the weighted protocol: found, and shown as weighted
    spec.write_text(spec.read_text().replace('"thesis"', '"weighted"'))
    assert gridspec.run_folders(spec)[1] == [tmp_path / "runs" / rundir.run_id(TINY)]  # the weighted id's folder
    new = tmp_path / "runs" / rundir.run_id(TINY)
    _finished(new, {**TINY, "eval_protocol": "thesis"})  # run once by a thesis-protocol grid
    runs = results.collect_runs(spec)
    assert len(runs) == 1 and runs.loc[0, "eval_protocol"] == "weighted"


def test_shipped_grids_keep_the_run_ids_they_had():
    """A parameter added to SCHEMA must not rename every finished run: the first run of each grid has
    the id it had before the evaluation protocol, the group thresholds, the long-tailed test rule and
    the fine-tuning recipe's parameters existed (ids from the tree that had none of them)."""
    from pathlib import Path
    from longtail.gridspec import load_grid
    root = Path(__file__).resolve().parents[1] / "params"
    first = {name: Path(load_grid(root / f"{name}.yaml", check_backbone=False).runs[0]["output_dir"]).name
             for name in ("default", "techniques", "cifar10_lt", "tiny")}
    assert first == {"default": "0a4c43afe54d", "techniques": "c76844abf59d", "cifar10_lt": "bbc92c41296f",
                     "tiny": "f34580b79ead"}
