"""The environment's one source of truth: requirements.txt; environment.yml repeats it for conda."""
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _requirements():
    return [ln.strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()
            if ln.strip() and not ln.strip().startswith("#")]


def test_environment_yml_equals_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == _requirements()
    assert "python=3.11" in env["dependencies"]


def test_torch_pins_stay_on_the_served_versions():
    reqs = _requirements()
    assert "torch==2.14.1" in reqs and "torchvision==0.29.1" in reqs


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == "make test"


def test_notebook_parameters_cell_matches_the_schema():
    """Every parameter, with the main job's values (params/default.yaml's base) where it sets one
    and the schema's default elsewhere: Run All in a fresh Lab trains the main job's first model."""
    import jupytext
    from longtail.params import DEFAULTS
    nb = jupytext.read(ROOT / "notebooks" / "train.py")
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    ns: dict = {}
    exec(cell.source, ns)
    main_job = yaml.safe_load((ROOT / "params" / "default.yaml").read_text())["base"]
    assert {k: ns[k] for k in DEFAULTS} == {**DEFAULTS, **main_job}
    assert ns["dataset"] == "eu_moths" and ns["pretrained"] == "inat_insects" and ns["mode"] == "linear"
    assert set(k for k in ns if not k.startswith("__")) == set(DEFAULTS)


def test_git_state_names_the_commit_and_changed_tracked_files(tmp_path):
    import subprocess

    from longtail import config
    assert config.git_state(tmp_path) == (None, None)  # no repository
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=tmp_path,  # noqa: E731
                                    check=True, capture_output=True, text=True)
    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-q", "-m", "a")
    head = git("rev-parse", "HEAD").stdout.strip()
    (tmp_path / "untracked.txt").write_text("not part of the code\n")
    assert config.git_state(tmp_path) == (head, False)
    (tmp_path / "a.py").write_text("x = 2\n")  # the code that runs is not the commit's
    assert config.git_state(tmp_path) == (head, True)
