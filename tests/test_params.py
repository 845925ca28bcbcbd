import pytest

from longtail.params import DEFAULTS, ParameterError, describe, validate


def test_defaults_validate():
    assert validate({}) == DEFAULTS


@pytest.mark.parametrize("bad,expected", [
    ({"sampler": "power"}, "needs parameter(s) q"),
    ({"loss": "weighted_ce", "loss_params": {"scheme": "foo"}}, "inverse, inverse_sqrt, log"),
    ({"loss": "focal", "loss_params": {"gama": 1}}, "valid: gamma"),
    ({"loss": "ce", "loss_params": {"weight": [1.0, 2.0]}}, "are not parameters of loss 'ce'; valid: label_smoothing"),
    ({"loss": "class_balanced", "drw_epoch": 2}, "use one of ce, focal"),
    ({"dataset": "imagenet"}, "eu_moths, cifar10, imagefolder, synthetic"),
    ({"mode": "full"}, "linear, finetune, crt"),
    ({"backbone": "resnet9000"}, "mobilenetv2, resnet50v2, vit_b16, convnext_base"),
    ({"device": "tpu"}, "auto, cpu, cuda, cuda:N, mps"),
    ({"epochs": -1}, "positive integer"),
    ({"imbalance_factor": 0.5}, ">= 1"),
    ({"lr_rate": 0.1}, "unknown parameter 'lr_rate'"),
    ({"group_thresholds": [20, 100]}, "group_thresholds=[20, 100]: needs 0 <= few < many"),
    ({"group_thresholds": [100, -1]}, "group_thresholds=[100, -1]: needs 0 <= few < many"),
    ({"group_thresholds": 100}, "group_thresholds=100: must be [many, few], two integers"),
    ({"test_longtailed_rule": "floor"}, "test_longtailed_rule='floor': choose one of at_least_one, proportional"),
    ({"val_source": "unused", "val_fraction": 0.1}, "set val_fraction null or 0"),
])
def test_each_bad_value_is_named_with_its_choices(bad, expected):
    with pytest.raises(ParameterError) as err:
        validate(bad)
    assert expected in str(err.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(ParameterError) as err:
        validate({"loss": "focall", "sampler": "x", "mode": "y"})
    assert str(err.value).count("choose one of") == 3


def test_describe_lists_every_parameter():
    table = describe()
    assert all(f"`{k}`" in table for k in DEFAULTS)


def test_the_notebook_parameters_cell_is_the_schema():
    """notebooks/train.py's parameters cell is ``params.notebook_cell`` of its values, line by line
    (names, order, help strings), and its values are the main job's first long-tailed CE run
    (params/default.yaml's base, loss ce, the long-tailed set, seed 0)."""
    import re
    from pathlib import Path

    import yaml

    from longtail import params
    root = Path(__file__).resolve().parents[1]
    text = (root / "notebooks" / "train.py").read_text()
    cell = re.search(r'# %% tags=\["parameters"\]\n(.*?)(?=# %%)', text, re.S).group(1)
    values = {}
    exec(cell, {}, values)  # noqa: S102 - the project's own notebook
    expected = params.notebook_cell(values)
    for got, want in zip(cell.splitlines(), expected.splitlines()):
        assert got == want, f"notebooks/train.py's parameters cell drifted from SCHEMA:\n  {got}\nshould be\n  {want}"
    assert cell == expected, "the parameters cell and SCHEMA differ in their parameters (params.notebook_cell())"
    main_job = yaml.safe_load((root / "params" / "default.yaml").read_text())["base"]
    assert values == {**params.DEFAULTS, **main_job, "loss": "ce", "train_set": "longtailed", "seed": 0}


def test_group_and_validation_defaults():
    p = validate({})
    assert p["group_thresholds"] == [100, 20] and p["test_longtailed_rule"] == "at_least_one"
    assert p["val_fraction"] is None  # 0.1 of derived sets, none of given sets (selection.validation_fraction)
    assert validate({"group_scheme": "thresholds", "group_thresholds": [5, 0]})["group_thresholds"] == [5, 0]
    assert validate({"val_source": "unused"})["val_fraction"] is None  # needs no explicit 0 any more


def test_validation_fraction_of_derived_and_given_sets():
    from longtail.selection import DERIVED_VAL_FRACTION, validation_fraction
    assert DERIVED_VAL_FRACTION == 0.1
    assert validation_fraction(None, "split", given=False) == 0.1
    assert validation_fraction(None, "split", given=True) == 0.0  # given sets are used as they are
    assert validation_fraction(None, "unused", given=False) == 0.0
    assert validation_fraction(0.2, "split", given=True) == 0.2  # asked for: held out of the given set


def test_run_ids_of_earlier_runs_are_kept_and_new_choices_get_their_own():
    """group_thresholds and test_longtailed_rule at their defaults compute what runs computed before
    they existed: those runs keep their ids (the values pinned were computed before the two were
    added); away from the defaults a run has an id of its own."""
    from longtail.rundir import run_id
    main_job = {"dataset": "eu_moths", "imbalance_factor": 8, "val_fraction": 0.0}
    assert run_id(main_job) == "b521993ad8f1"
    assert run_id({"val_fraction": 0.1}) == "b4e67336299f"  # the former default of val_fraction
    assert run_id({**main_job, "group_thresholds": [100, 20], "test_longtailed_rule": "at_least_one"}) == "b521993ad8f1"
    assert len({run_id(main_job), run_id({**main_job, "group_thresholds": [5, 2]}),
                run_id({**main_job, "test_longtailed_rule": "proportional"})}) == 3
