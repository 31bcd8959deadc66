# Everything runs from a virtual environment this Makefile creates, so nothing depends
# on what the machine had besides Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: setup demo test ui bench
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/cost-pipeline demo

test: setup
	$(BIN)/python -m pytest

ui: setup
	$(BIN)/dagster dev

bench: setup
	$(BIN)/python bench/partition_write.py
	$(BIN)/python bench/rate_limit.py
	$(BIN)/python bench/gemini_overhead.py
	$(BIN)/python bench/rollup.py
