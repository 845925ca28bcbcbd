# The project's task runner.  `make` runs the main job, `make test` the tests; both set up the
# environment first (a .venv with the pinned packages, the package in editable mode, and the
# Jupyter kernel "longtail" that JupyterLab and papermill share).
SHELL  := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# the grids of the main job: the default grid and the class-balanced ablation (issue 10, §5)
PARAMS ?= params/default.yaml params/class_balanced.yaml
JOBS   ?= 2

# Data and weights: a sibling ../shared copy when there is one, else <project>/data and weights.
export LT_DATA_ROOT    ?= $(firstword $(wildcard $(CURDIR)/../shared/data) $(CURDIR)/data)
export LT_WEIGHTS_DIR  ?= $(firstword $(wildcard $(CURDIR)/../shared/weights) $(CURDIR)/weights)
export PYTHONUNBUFFERED = 1

.PHONY: all setup test grid report lab bench clean
all: grid report  ## the main job: default grid, then the report

$(STAMP): requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name longtail --display-name "Python (longtail)" >/dev/null
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

grid: $(STAMP)
	for p in $(PARAMS); do $(PY) -m longtail.grid $$p --jobs $(JOBS) || exit 1; done

report: $(STAMP)
	$(PY) -m longtail.report $(PARAMS)
	@echo "report: $(CURDIR)/report/index.html"

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP)  ## speed benchmarks; tables land in bench/results/ and in the next report
	mkdir -p bench/results
	$(PY) bench/main_job.py | tee bench/results/main_job.md
	$(PY) bench/throughput.py | tee bench/results/throughput.md
	$(PY) bench/scaling.py | tee bench/results/scaling.md

clean:
	rm -rf runs report/*.html report/figures report/tables
