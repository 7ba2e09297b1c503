# Quick start: `make run` starts the charging function with a demo store; `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
TEST_STAMP = $(VENV)/.installed-test

.PHONY: run test lint format bench-engine clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(TEST_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(STAMP)
	$(BIN)/chf init --demo --if-empty
	$(BIN)/chf serve

test: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(TEST_STAMP)
	$(BIN)/ruff format .

# Engine throughput with 1,000,000 preloaded lines (see loadtest/bench_engine.py --help).
bench-engine: $(STAMP)
	$(BIN)/python -m loadtest.bench_engine

# Long run of the charging core's stateful property test (2000 examples; the suite runs 200).
.PHONY: bench-properties
bench-properties: $(TEST_STAMP)
	HYPOTHESIS_PROFILE=long $(BIN)/python -m pytest -q tests/test_properties.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .hypothesis
