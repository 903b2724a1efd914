# sigma: error bars for Keras networks. `make help` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
EXTRAS := notebooks,distributed,dev
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.py))
REPORTS := reports
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONHASHSEED ?= 0
PYTEST_ARGS ?=  # e.g. make test PYTEST_ARGS="-x -k laplace"

.PHONY: help env test test-fast test-unit test-notebooks fuzz run notebooks lab lint format bench bench-peer figure clean

help: ## list the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z_-]+:.*## /{printf "  \033[1m%-15s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml tests/zoo-requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || { \
	  echo "sigma needs Python 3.11 (TensorFlow 2.21 and Keras 3.15 are pinned for it); '$(PYTHON)' is" \
	    "$$($(PYTHON) --version 2>&1 || echo 'not found'). Run: make $(MAKECMDGOALS) PYTHON=python3.11" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	-$(PY) -m pip uninstall --quiet --yes sigma 2>/dev/null  # the distribution's name before 0.3
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	$(PY) -m pip install --quiet --no-deps -r tests/zoo-requirements.txt  # keras-hub: the file says why
	touch $@

env: $(STAMP) ## create .venv (plain venv + pip, from pyproject.toml) if missing

# Tests run on every core (pytest-xdist; JOBS=1 for one process) and print the ten slowest.
JOBS ?= auto
PYTEST := $(PY) -m pytest -q -n $(JOBS) --durations=10

test: $(STAMP) ## the whole suite, as CI runs it: unit tier, wheel, subprocesses, notebooks (≤ 5 min on 2 cores)
	$(PYTEST) $(PYTEST_ARGS)

test-fast: $(STAMP) ## core math, API and errors only: no notebooks, subprocesses or wheel (≤ 60 s on 2 cores)
	$(PYTEST) -m "core and not slow" $(PYTEST_ARGS)

test-unit: $(STAMP) ## everything but the notebook tier
	$(PYTEST) -m "not notebook" $(PYTEST_ARGS)

test-notebooks: $(STAMP) ## notebook tier only: papermill with small parameters
	$(PYTEST) -m notebook $(PYTEST_ARGS)

FUZZ_SCALE ?= 50  # examples per fuzz test: this many times the default profile's
fuzz: $(STAMP) ## deep property-based fuzzing of the public boundary (tests/test_fuzz.py, hypothesis "fuzz" profile, fresh seed)
	SIGMA_FUZZ_SCALE=$(FUZZ_SCALE) $(PY) -m pytest -q tests/test_fuzz.py \
	  --hypothesis-profile=fuzz --hypothesis-show-statistics $(PYTEST_ARGS)

run: $(STAMP) ## execute every notebook at its defaults into reports/ and render HTML (a progress bar per notebook)
	$(PY) -m sigma.sweep run $(NOTEBOOKS) --out $(REPORTS)

notebooks: $(STAMP) ## (re)generate the paired notebooks/*.ipynb from the .py sources (jupytext --sync)
	$(PY) -m jupytext --sync $(NOTEBOOKS)

# jupyter_config/ holds this repository's Jupyter settings (jupytext's contents manager; .py
# opens as a notebook on double click); JUPYTER_CONFIG_PATH adds it to your own, changes nothing
# in your home directory.
LAB_ARGS ?=  # e.g. make lab LAB_ARGS="--no-browser --port 8890" (as root: --allow-root)
lab: $(STAMP) ## JupyterLab with jupytext: notebooks/*.py open as notebooks, paired with their .ipynb
	JUPYTER_CONFIG_PATH="$(CURDIR)/jupyter_config$(if $(JUPYTER_CONFIG_PATH),:$(JUPYTER_CONFIG_PATH))" \
	  $(PY) -m jupyterlab --ServerApp.root_dir="$(CURDIR)" $(LAB_ARGS)

GRID ?= sweeps/beta_epochs.yaml
WORKERS ?= $(shell nproc 2>/dev/null || echo 1)
SCHEDULER ?=
SWEEP_DIR ?= $(REPORTS)/sweeps/01_original
.PHONY: sweep report

sweep: $(STAMP) ## run the grid GRID=sweeps/beta_epochs.yaml on WORKERS processes (or SCHEDULER=tcp://host:8786); resumable
	$(PY) -m sigma.sweep grid $(GRID) --workers $(WORKERS) --out $(REPORTS)/sweeps $(if $(SCHEDULER),--scheduler $(SCHEDULER))

report: sweep ## sweep, then notebooks/03_sweep_report.py, HTML of every executed notebook, reports/index.html
	$(PY) -m sigma.sweep run notebooks/03_sweep_report.py --out $(REPORTS) -p sweep_dir=$(SWEEP_DIR)
	$(PY) -m sigma.sweep render --out $(REPORTS)
	$(PY) -m sigma.sweep index --out $(REPORTS)

lint: $(STAMP) ## ruff check then ruff format --check
	$(PY) -m ruff check sigma tests bench notebooks docs jupyter_config
	$(PY) -m ruff format --check sigma tests bench notebooks docs jupyter_config

format: $(STAMP) ## ruff check --fix then ruff format
	$(PY) -m ruff check --fix sigma tests bench notebooks docs jupyter_config
	$(PY) -m ruff format sigma tests bench notebooks docs jupyter_config

bench: $(STAMP) ## print the benchmark tables (bench/*.py, except the laplace-torch comparison)
	for b in $(filter-out bench/peer%,$(sort $(wildcard bench/*.py))); do echo "== $$b"; $(PY) $$b || exit 1; done

# The laplace-torch comparison has its own environment: torch is never a dependency of sigma.
PEER_VENV := .venv-peer
PEER_PY := $(PEER_VENV)/bin/python
PEER_STAMP := $(PEER_VENV)/.installed-stamp
PEER_PIP_ARGS ?=  # extra pip options, e.g. an index serving CPU-only torch wheels
PEER_ARGS ?=  # options of bench/peer.py, e.g. PEER_ARGS="--n 2000 --test 100 --mlp-repeats 1"

$(PEER_STAMP): bench/peer-requirements.txt
	test -x $(PEER_PY) || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_PY) -m pip install --quiet --upgrade pip
	$(PEER_PY) -m pip install --quiet $(PEER_PIP_ARGS) "$$(grep -E '^torch==' bench/peer-requirements.txt)"
	$(PEER_PY) -m pip install --quiet --no-deps $(PEER_PIP_ARGS) -r bench/peer-requirements.txt
	touch $@

bench-peer: $(STAMP) $(PEER_STAMP) ## sigma vs laplace-torch on the same data and weights (builds .venv-peer)
	$(PY) bench/peer.py --peer-python $(PEER_PY) $(PEER_ARGS)

figure: $(STAMP) ## redraw the README figures docs/regression_sigma.png and docs/iris_sigma.png
	$(PY) docs/make_figure.py

clean: ## remove generated reports, caches and paired .ipynb files (keeps .venv)
	rm -rf $(REPORTS) .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
	rm -f notebooks/*.ipynb
