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
