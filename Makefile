# eslabon — `make run` runs a real chain on the bundled local model; `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROBLEMA ?= Tengo 3 manzanas y me como una. ¿Cuántas me quedan?

.PHONY: run test lint typecheck unit bench schema clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# First install builds llama-cpp-python from source (a few minutes); pip caches the wheel.
$(VENV)/.stamp-local: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[local]'
	touch $@

# The huggingface extra's torch: a CPU build (PyPI's default torch is the CUDA one, several GB).
TORCH ?= torch==2.13.0

$(VENV)/.stamp-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q '$(TORCH)'
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.stamp-local

run: $(VENV)/.stamp-local
	$(BIN)/eslabon run chains/analizar_planificar_resolver.yaml -i problema="$(PROBLEMA)" --stream

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(VENV)/.stamp-dev
	$(BIN)/mypy

unit: $(VENV)/.stamp-dev
	$(BIN)/python -m pytest -q

test: lint typecheck unit

bench: $(VENV)/.stamp-dev
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/stream_latency.py
	$(BIN)/python bench/retrieval.py
	$(BIN)/python bench/structured_local.py
	$(BIN)/python bench/batch_throughput.py

schema: $(VENV)/.stamp-dev
	$(BIN)/eslabon schema > docs/chain.schema.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
