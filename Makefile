# Chorus developer commands. `make test` on a fresh machine creates .venv, installs and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel of torch; GPU users install a CUDA build of torch first and it is kept (pyproject asks torch>=2.4).
TORCH_PIN ?= torch==2.13.0

.PHONY: install test lint format bench clean serve
HOST ?= 127.0.0.1
PORT ?= 8000

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e ".[test,lint]"
	touch $@

# Runtime only (plus PyAV for m4a/mp4/webm uploads): what `make serve` needs.
$(VENV)/.installed-serve: $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e ".[av]"
	touch $@

# Starts Chorus on the embedded default (./data/store; the bundled demo model) at http://$(HOST):$(PORT).
serve: $(VENV)/.installed-serve
	$(BIN)/chorus serve --host $(HOST) --port $(PORT)

install: $(VENV)/.installed

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q

# Every comparison of docs/benchmarks.md in one run (tens of minutes on a 2-core CPU); rewrites that file and its plot.
bench: install
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python -m benchmarks

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .bench build *.egg-info
