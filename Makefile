# finetune-recipe. `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
# Stage commands in dvc.yaml say `python`: make it the project's interpreter.
export PATH := $(BIN):$(PATH)
PORT ?= 5000

.DEFAULT_GOAL := help
.PHONY: help setup repro test test-fast lint params sweep seeds compare search ui bench clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(VENV)/.installed ## create .venv and install the project (torch, dvc, mlflow, ...)

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

repro: setup ## run the whole recipe: dvc repro
	dvc repro

test: setup ## run the whole test suite, the end-to-end DVC runs included (two processes; JOBS=1 for one)
	python -m pytest -n $(or $(JOBS),2) --dist loadfile

lint: setup ## ruff: lint and import order (pyproject.toml's [tool.ruff]); CI runs it before the tests
	python -m ruff check .

test-fast: setup ## the unit tests only (skips tests marked slow)
	python -m pytest -m "not slow" -n $(or $(JOBS),2) --dist loadfile

params: setup ## recompose params.yaml from conf/ (as dvc exp run -S does)
	python -m recipe.core.compose

sweep: setup ## queue a grid and run it: SWEEP="-S 'finetune.lr=choice(0.0001,0.001)'" JOBS=2
	@test -n "$(SWEEP)" || { echo "make sweep: set SWEEP, e.g. SWEEP=\"-S 'finetune.lr=choice(0.0001,0.001)'\""; exit 2; }
	dvc exp run --queue $(SWEEP)
	dvc queue start -j $(or $(JOBS),2)

seeds: setup ## the current settings (and SET="-S key=value ...") over N seeds (N=3: 42 1 2; or SEEDS="1 2"), then compare
	for s in $(or $(SEEDS),$(wordlist 1,$(or $(N),3),42 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19)); do \
	  dvc exp run --queue -S seed=$$s $(SET) || exit 1; done
	dvc exp run --run-all -j $(or $(JOBS),1)
	python -m recipe.compare

compare: setup ## HEAD and every DVC experiment, grouped by setting: mean, spread, paired tests (outputs/compare/)
	python -m recipe.compare $(ARGS)

search: setup ## Bayesian search, one dvc exp run per trial (SPACE=tiny TRIALS=8; conf/search/)
	python -m recipe.search --space $(or $(SPACE),default) $(if $(TRIALS),--trials $(TRIALS))

ui: setup ## open the MLflow UI on 127.0.0.1 (PORT=5000 by default)
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port $(PORT)

bench: setup ## run the benchmarks in bench/ (prints ratios)
	python bench/audit_throughput.py
	python bench/neardup_scaling.py
	python bench/data_throughput.py
	python bench/fit_overhead.py
	python bench/head_cache.py
	python bench/lr_find_cost.py
	python bench/train_step.py
	python bench/export.py
	python bench/digits.py

clean: ## remove outputs and the local MLflow store (keeps .venv and the DVC cache)
	rm -rf outputs mlflow.db mlartifacts
