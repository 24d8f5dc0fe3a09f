# Puhui: the single list of commands.
#
#   make demo    create .venv if needed, install Puhui, run the demo: the ledger, payments, then risk control (data in ./puhui-data)
#   make test    install the dev tools, then ruff, mypy --strict (the kernels compile meanwhile)
#                and pytest (TEST_WORKERS=2 processes)
#   make lint    ruff (lint and format check) and mypy --strict only
#   make bench   run the benchmarks (benchmarks/ledger.py, payments.py, risk.py; BENCH_ARGS=--quick for a smoke run)
#   make clean   remove caches and build output (keeps .venv and ./puhui-data)
#   make distclean   also remove .venv and ./puhui-data
#
# Installs are stamped: a second `make test` does not reinstall unless pyproject.toml changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check --quiet
STAMP := $(VENV)/.installed
STAMP_DEV := $(VENV)/.installed-dev
LINT_PATHS := src tests $(wildcard benchmarks)
BENCH_ARGS ?=
# pytest-xdist workers for `make test` (the PostgreSQL tests share one; see tests/conftest.py)
TEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help demo test lint bench clean distclean

help:
	@sed -n 's/^#   make /make /p' $(MAKEFILE_LIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	@touch $@

$(STAMP_DEV): pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[dev]'
	@touch $@ $(STAMP)

demo: $(STAMP)
	$(BIN)/puhui demo

lint: $(STAMP_DEV)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

# The numba kernels compile (once per checkout) beside the linters, not in every pytest
# worker's first test; --durations lists the slowest tests in every run's output, to keep the
# suite well under 15 minutes.
test: $(STAMP_DEV)
	@$(BIN)/python -P tests/warm_kernels.py & warm=$$!; \
	$(MAKE) --no-print-directory lint; linted=$$?; \
	wait $$warm; warmed=$$?; \
	test $$linted -eq 0 && test $$warmed -eq 0
	$(BIN)/pytest -n $(TEST_WORKERS) --durations=25

bench: $(STAMP)
	$(BIN)/python benchmarks/ledger.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/payments.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/risk.py $(BENCH_ARGS)

clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find src tests $(wildcard benchmarks) -name __pycache__ -type d -prune -exec rm -rf {} +
	find src -name '*.egg-info' -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) puhui-data
