# paperchart: the two set-up commands are `make run` and `make test`; everything else is a helper.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# A CPU build of torch: sentence-transformers would otherwise pull a ~3 GB CUDA build.
# On these machines pip finds torch 2.13.0+cpu in its local wheel folder; elsewhere point
# pip at a CPU wheel index through PIP_EXTRA_INDEX_URL, or override TORCH_SPEC.
TORCH_SPEC ?= torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run test lint typecheck bench clean bootstrap install install-dev

run: install
	$(BIN)/paperchart serve --host $(HOST) --port $(PORT)

test: install-dev
	$(BIN)/python -m pytest

lint: install-dev
	$(BIN)/ruff check server terminology fhir_profiles mcp_tools tests bench
	$(BIN)/ruff format --check server terminology fhir_profiles mcp_tools tests bench

typecheck: install-dev
	$(BIN)/mypy

bench: install-dev
	$(BIN)/python bench/pipeline.py

bootstrap:
	bash scripts/bootstrap-debian.sh

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel

$(VENV)/.installed: pyproject.toml $(BIN)/python scripts/bootstrap-debian.sh
	bash scripts/bootstrap-debian.sh
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[semantic]"
	touch $@

# the tests add Chromium (Debian's), which the review page's browser tests drive
$(VENV)/.installed-dev: $(VENV)/.installed
	PAPERCHART_WITH_BROWSER=1 bash scripts/bootstrap-debian.sh
	$(BIN)/pip install --quiet -e ".[semantic,dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
