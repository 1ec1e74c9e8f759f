# Portrait3D for threestudio. `make help` lists the targets.
#   make demo    the whole pipeline on tiny random models (no weights), then prints where the results are
#   make test    the test suite (threestudio's own launch.py included)
# Both set up, once: a virtualenv in .venv/, this repository installed in it, threestudio at the pinned
# commit in .deps/threestudio (or $THREESTUDIO_ROOT) with the extension linked into it, and the report
# pages' 3D viewer in node_modules/ (npm).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# the threestudio commit this extension is tested with
THREESTUDIO_COMMIT := 28d9d80
# a local source archive of that commit, if any (this project's machines keep one beside the checkout);
# without one, threestudio is cloned from GitHub
THREESTUDIO_ARCHIVE ?= $(wildcard ../shared/vendor/threestudio-$(THREESTUDIO_COMMIT).tar.gz)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
VIEWER := node_modules/.installed
CONFIG ?= configs/portrait3d.yaml
PROMPT ?=

.PHONY: help setup demo test lint portrait clean

help:  ## list the targets
	@grep -hE '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z]+):.*## /  make \1\t/' | expand -t 20

$(INSTALLED): requirements.txt requirements-threestudio.txt setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@echo "Installing PyTorch, diffusers, transformers, Lightning, Ray and the rest of requirements*.txt into $(VENV)/"
	@echo "(first time only: about 2 min with a fast network; 2.7 GB with PyTorch's CPU build, 6.5 GB with"
	@echo " PyPI's CUDA build; README: the CPU build)"
	$(PY) -m pip install -q -r requirements.txt -r requirements-threestudio.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

# the report pages' 3D viewer (@google/model-viewer from npm; copied next to each page)
$(VIEWER): package.json package-lock.json
	@command -v npm >/dev/null || { echo "error: npm not found: install Node.js 18+ (it brings npm) for the report pages' 3D viewer" >&2; exit 2; }
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

setup: $(INSTALLED) $(VIEWER)  ## the virtualenv, threestudio and the viewer (done once; later runs take seconds)
	@THREESTUDIO_ARCHIVE="$(THREESTUDIO_ARCHIVE)" $(PY) -m portrait3d.threestudio_env --commit $(THREESTUDIO_COMMIT) >/dev/null

# one thread per process for the tiny models: their tensors are too small to gain from torch's thread
# pool, and on a busy CPU its spinning threads slow the run several times (README: Time and memory)
demo: export OMP_NUM_THREADS ?= 1
demo: setup  ## the whole pipeline on tiny random models: prompt ... videos, .obj/.glb
	$(PY) -m portrait3d run --config configs/portrait3d-tiny.yaml

portrait: setup  ## one real portrait: make portrait PROMPT="..." (weights: see README)
	@test -n "$(PROMPT)" || { echo 'error: give the prompt: make portrait PROMPT="upper body photo, portrait of ..."' >&2; exit 2; }
	$(PY) -m portrait3d run --config $(CONFIG) system.prompt_processor.prompt="$(PROMPT)"

# the tests too: two pytest workers, each starting launch.py and Ray processes, on 2 cores; with torch's
# default thread pool per process the suite took 18 min 48 s, with one thread 10 min 33 s (README: Tests)
test: export OMP_NUM_THREADS ?= 1
test: setup  ## the README's test command (CI runs this)
	$(PY) -m pytest -q -rs -n 2 --dist loadfile --durations=20 tests  # two workers, one test file each

lint: $(INSTALLED)  ## ruff check + ruff format --check (pyproject.toml); CI runs it
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:  ## remove .venv/, .deps/ and node_modules/ (results in outputs/ are kept)
	rm -rf $(VENV) .deps node_modules
