# Two entry points a fresh machine needs: `make test` and `make quickstart`.
# Each creates .venv if missing and installs the project (with the dev extra) into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORKDIR ?= /tmp/motif_quickstart
PYTEST_WORKERS ?= 2

.PHONY: test test-slow quickstart venv clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -q -m "not slow" tests

test-slow: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -q -m slow tests

quickstart: $(STAMP)
	$(BIN)/python -m experiments.quickstart --workdir=$(WORKDIR)

clean:
	rm -rf $(VENV)
