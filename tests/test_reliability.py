"""Issue 12: parameters that cannot run code, "done" meaning the notebook completed, every value
checked before any work, the same result cold or warm, caches that heal, I/O faults."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from longtail import grid as G
from longtail.params import ParameterError, json_type_errors, validate

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "params" / "tiny.yaml"


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("LT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LT_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    return tmp_path


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
    r = G.run_one(run)
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
    assert G.injection_problems({"dataset_params": {"k": value}, "data_root": value}) == []
