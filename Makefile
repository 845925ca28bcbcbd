# The project's task runner.  `make` runs the main job, `make test` the tests; both set up the
# environment first (a .venv with the pinned packages, the package in editable mode, the Jupyter
# kernel "longtail" that JupyterLab and papermill share, and JupyterLab's settings for this venv).
SHELL  := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# the grids of the main job: the default grid and the class-balanced ablation
PARAMS ?= params/default.yaml params/class_balanced.yaml
JOBS   ?= 2
# JupyterLab's defaults for this venv only (jupytext .py files open as notebooks): an overrides.d
# file below the venv's prefix, never the user's ~/.jupyter.
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.d/longtail.json
LAB_PORT ?= 8888
LAB_ARGS ?=

# Data and weights: a sibling ../shared copy when there is one, else <project>/data and weights.
export LT_DATA_ROOT    ?= $(firstword $(wildcard $(CURDIR)/../shared/data) $(CURDIR)/data)
export LT_WEIGHTS_DIR  ?= $(firstword $(wildcard $(CURDIR)/../shared/weights) $(CURDIR)/weights)
export PYTHONUNBUFFERED = 1

.PHONY: all setup test grid report lab bench slurm-up slurm-down clean
all: grid report  ## the main job: default grid, then the report

$(STAMP): requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name longtail --display-name "Python (longtail)" >/dev/null
	touch $(STAMP)

$(LAB_SETTINGS): jupyter/lab-overrides.json $(STAMP)
	mkdir -p $(@D)
	cp $< $@

setup: $(STAMP) $(LAB_SETTINGS)

test: setup
	$(PY) -m pytest -q

grid: setup
	for p in $(PARAMS); do $(PY) -m longtail.grid $$p --jobs $(JOBS) || exit 1; done

report: setup
	$(PY) -m longtail.report $(PARAMS)
	@echo "report: $(CURDIR)/report/index.html"

# Served from the project root (jupytext reads jupytext.toml there), opening notebooks/train.py;
# --allow-root where the user is root (a container).  Remote: LAB_ARGS="--no-browser" (README).
lab: setup
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/notebooks/train.py \
	  --ServerApp.port=$(LAB_PORT) $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

bench: setup  ## speed benchmarks; tables land in bench/results/ and in the next report
	mkdir -p bench/results
	$(PY) bench/main_job.py | tee bench/results/main_job.md
	$(PY) bench/throughput.py | tee bench/results/throughput.md
	$(PY) bench/throughput.py --features | tee bench/results/features.md
	$(PY) bench/papermill_overhead.py | tee bench/results/papermill_overhead.md
	$(PY) bench/scaling.py | tee bench/results/scaling.md

# A one-node SLURM cluster on localhost (root, Debian: installs slurmctld, slurmd, slurm-client, munge
# where missing) for tests/test_slurm.py and for trying `--executor slurm`; idempotent.  slurm-down
# stops its daemons.
slurm-up:
	tests/slurm/local_cluster.sh up

slurm-down:
	tests/slurm/local_cluster.sh down

clean:
	rm -rf runs report/*.html report/figures report/tables
