# Everything runs from a virtual environment this Makefile creates, so nothing depends
# on what the machine had besides Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
# Debian packages the tests drive for real: Chromium (the UI test), PostgreSQL (the prod
# profile test) and valgrind (the overhead bench's instruction counts). Installed from
# Debian, never downloaded by a test tool.
SYSTEM_PACKAGES := chromium postgresql valgrind
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps demo test lint ui bench
setup: $(VENV)/.installed

system-deps:
	@command -v chromium >/dev/null && command -v valgrind >/dev/null && [ -d /usr/lib/postgresql ] || { \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; }

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/cost-pipeline demo

# One worker per core (at most 4): most tests wait on processes they start, so a worker per core
# keeps the cores busy.
test: setup system-deps lint
	$(BIN)/python -m pytest --numprocesses=auto --maxprocesses=4 --dist=worksteal

# ruff's lint and format rules and mypy's types (pyproject.toml): a finding fails the test command, so CI.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The UI and its daemon on the project's instance, and the cost dashboard its asset page links, served beside it;
# UI_PORT and DASHBOARD_PORT pick other ports.
UI_PORT ?= 3000
DASHBOARD_PORT ?= 3001
ui: setup
	$(BIN)/cost-pipeline dashboard --serve --port $(DASHBOARD_PORT) & board=$$!; trap 'kill $$board' EXIT; \
	COST_PIPELINE_DASHBOARD_URL=http://127.0.0.1:$(DASHBOARD_PORT)/ VIRTUAL_ENV=$(CURDIR)/$(VENV) \
	$(BIN)/dg dev --host 127.0.0.1 --port $(UI_PORT)

# Every bench at its full size; each records its figure in docs/performance.json, from which
# docs/performance.md is written.
bench: setup system-deps
	export BENCH_RESULTS=$(CURDIR)/docs/performance.json; \
	$(BIN)/python bench/partition_write.py && \
	$(BIN)/python bench/rate_limit.py && \
	$(BIN)/python bench/gemini_overhead.py && \
	$(BIN)/python bench/gemini_overhead.py --instructions && \
	$(BIN)/python bench/vertex_labels.py && \
	$(BIN)/python bench/rollup.py && \
	$(BIN)/python bench/invoice_match.py && \
	$(BIN)/python bench/recorded_responses.py && \
	$(BIN)/python bench/crash_resume.py --turns 6000 --latency-ms 0 && \
	$(BIN)/python bench/crash_resume.py --turns 6000 --latency-ms 0 --store lake && \
	$(BIN)/python bench/lake_store.py && \
	$(BIN)/python bench/peak_rss.py && \
	$(BIN)/python bench/ledger_growth.py && \
	$(BIN)/python bench/backfill_overlap.py && \
	$(BIN)/python bench/backfill_overlap.py --store lake
	$(BIN)/python bench/performance_page.py
