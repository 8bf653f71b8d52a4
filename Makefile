# rnnexp: `make run` and `make test` each set everything up on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RNNEXP := $(BIN)/rnnexp
# The CPU build this machine's package index serves; an unpinned torch pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup run train compare test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The main job: the notebook's four-model experiment in both target modes (8 trainings).
run: setup
	$(RNNEXP) compare --config configs/compare.yaml

# One model; pick the config with CONFIG=..., add overrides with ARGS="train.lr=3e-4".
CONFIG ?= configs/default.yaml
ARGS ?=
train: setup
	$(RNNEXP) train --config $(CONFIG) $(ARGS)

# Several models side by side; COMPARE=... picks the config, ARGS as for train.
COMPARE ?= configs/compare.yaml
compare: setup
	$(RNNEXP) compare --config $(COMPARE) $(ARGS)

test: setup
	$(BIN)/python -m pytest

# Speed against the notebook's own loop and torch's native modules (several minutes; not a test).
# BENCH_ARGS="--scaling" adds the cost-growth table, "--skip-full" leaves out the whole-experiment timing.
BENCH_ARGS ?=
bench: setup
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info rnnexp.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Parallel sweeps (make -j2 sweep-lr, make -j2 sweep-gradscan): the grids and rules are in sweeps.mk.
include sweeps.mk
