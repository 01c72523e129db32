# tokenpulse — make help lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.DEFAULT_GOAL := help
.PHONY: help setup chromium demo test lint typecheck unit integration fuzz faults faults-full bench clean

help: ## show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml setup.py schemas/_sigcheck.c streams/_fetch.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

setup: $(BIN)/.installed ## create .venv and install tokenpulse with its pinned dependencies

chromium: ## install Debian's Chromium (once) for the HTML report's browser test
	@sh scripts/ensure-chromium.sh

demo: setup ## fresh machine: start the local stack, run the pipeline on a simulated fleet, print the bill
	$(BIN)/tokenpulse demo

lint: setup ## ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup ## mypy --strict
	$(BIN)/mypy

unit: setup ## unit tests only (no broker)
	$(BIN)/pytest -m 'not integration' tests

integration: setup chromium ## integration tests on real Kafka and ClickHouse
	$(BIN)/pytest -m integration tests

test: setup chromium lint typecheck ## everything CI runs: lint, types, all tests on the real services
	$(BIN)/pytest tests

faults: setup ## fault injection on the real pipeline, short loads (also part of make test)
	$(BIN)/pytest -m faults tests/faults

faults-full: setup ## fault injection with bigger loads and a 30 s ClickHouse outage
	TOKENPULSE_FAULTS=full $(BIN)/pytest -m faults tests/faults

bench: setup ## end-to-end benchmark on a temporary local stack; prints the table of BENCHMARKS.md
	$(BIN)/tokenpulse bench

fuzz: setup ## long property/fuzz campaign (hypothesis "fuzz" profile, 20k examples per test)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest -q -p no:cacheprovider tests/fuzz

clean: ## remove the venv (the local stack's data stays in TOKENPULSE_HOME)
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache schemas/_sigcheck*.so streams/_fetch*.so
