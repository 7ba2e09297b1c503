# Quick start: `make run` starts the charging function with a demo store; `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
TEST_STAMP = $(VENV)/.installed-test
NATIVE_STAMP = $(VENV)/.built-native
# The hot path, compiled with Cython (setup.py); rebuilt in place, incrementally, when a source changes.
NATIVE_MODULES := $(shell grep -v '^\#' native-modules.txt)
NATIVE_SOURCES := $(NATIVE_MODULES) $(wildcard store/*.pxd chf/*/*.pxd gy/*.pxd nchf/*.pxd)

.PHONY: run test lint typecheck format pure bench-engine bench-reconcile bench-export bench-gy bench-import bench-nchf bench-gy-codec bench-backup bench-redis bench-chaos clean

# The editable install itself compiles nothing (CHF_PURE_PYTHON=1): $(NATIVE_STAMP) does, in parallel and
# incrementally. A plain `pip install .` compiles in one go.
$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	CHF_PURE_PYTHON=1 $(BIN)/pip install --quiet -e .
	touch $@

$(NATIVE_STAMP): $(STAMP) setup.py native-modules.txt $(NATIVE_SOURCES)
	$(BIN)/pip install --quiet 'cython>=3.0'
	$(BIN)/python setup.py --quiet build_ext --inplace
	touch $@

$(TEST_STAMP): $(STAMP) pyproject.toml
	CHF_PURE_PYTHON=1 $(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(NATIVE_STAMP)
	$(BIN)/chf init --demo --if-empty
	$(BIN)/chf serve

# The rules of the house first (seconds), then the suite (a few minutes; `pytest -m unit` for the quick part).
test: lint typecheck $(NATIVE_STAMP)
	@bash .ci/system-deps
	$(BIN)/python -m pytest -q

# Style, formatting and the floors: imports point down only (import-linter contracts in pyproject.toml).
lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

# Types ([tool.mypy] in pyproject.toml): a type error fails `make test`.
typecheck: $(TEST_STAMP)
	$(BIN)/mypy

format: $(TEST_STAMP)
	$(BIN)/ruff format .

# Engine throughput with 1,000,000 preloaded lines (see loadtest/bench_engine.py --help).
bench-engine: $(NATIVE_STAMP)
	$(BIN)/python -m loadtest.bench_engine

# Wholesale reconciliation of a month of records for 100,000 lines (see loadtest/bench_reconcile.py --help).
bench-reconcile: $(NATIVE_STAMP)
	$(BIN)/python -m loadtest.bench_reconcile
# Exporter throughput from a preloaded spool into files and NATS JetStream (see loadtest/bench_export.py --help).
bench-export: $(NATIVE_STAMP)
	$(BIN)/python -m loadtest.bench_export
# Gy over real TCP, generator included: fsync on, then off (see loadtest/gy.py --help for the knobs).
bench-gy: $(NATIVE_STAMP)
	$(BIN)/python -m loadtest.gy --durability fsync --sessions 1000 --duration 20
	$(BIN)/python -m loadtest.gy --durability os --sessions 1000 --duration 20
# `chf subscriber import` of a generated 1,000,000-line CSV (see loadtest/bench_import.py --help).
bench-import: $(NATIVE_STAMP)
	$(BIN)/python -m loadtest.bench_import
# Gy charging with and without `chf backup` running beside it (see loadtest/bench_backup.py --help).
bench-backup: $(NATIVE_STAMP)
	$(BIN)/python -m loadtest.bench_backup
# Nchf updates over HTTP/2 with h2load (Debian nghttp2-client), fsync on (see loadtest/bench_nchf.py --help).
bench-nchf: $(NATIVE_STAMP)
	$(BIN)/python -m loadtest.bench_nchf $(BENCH_ARGS)

# Gy CCR-U on a 6-node Redis Cluster (1 and 2 chf nodes) against LMDB, and the sizing model (loadtest/bench_redis.py).
bench-redis: $(NATIVE_STAMP)
	$(BIN)/python -m loadtest.bench_redis

# The chaos and fuzz suite against a real chf serve: Gy / Nchf / HTTP/2 fuzzing over the wire, atheris in process,
# slow / no-read / idle peers with RSS, 3x overload (server and generator pinned apart), SIGKILL under Gy + Nchf
# debits with a bookkeeping client; one table (see loadtest/chaos/__main__.py; `make test` runs a short version).
bench-chaos: $(NATIVE_STAMP)
	$(BIN)/python -m loadtest.chaos $(BENCH_ARGS)

# Long run of the money oracle, the whole-system stateful test (tests/test_properties.py): 20,000 examples of up
# to 80 steps (the suite runs 100 of up to 50). ORACLE_EXAMPLES=n runs n.
.PHONY: bench-properties
bench-properties: $(TEST_STAMP)
	HYPOTHESIS_PROFILE=long $(BIN)/python -m pytest -q --durations=1 tests/test_properties.py
# Gy codec: decode a CCR-U + encode the CCA-U, and the server's event-loop side (see loadtest/bench_gy_codec.py).
bench-gy-codec: $(NATIVE_STAMP)
	$(BIN)/python -m loadtest.bench_gy_codec

# Run the hot path as plain Python (e.g. to profile it with py-spy): remove the compiled modules. `make run`
# or `make test` compiles them again.
pure:
	rm -f $(NATIVE_STAMP) $(patsubst %.py,%.c,$(NATIVE_MODULES))
	for src in $(NATIVE_MODULES); do rm -f $${src%.py}.cpython-*.so $${src%.py}.abi3.so; done

clean: pure
	rm -rf $(VENV) var build .pytest_cache .ruff_cache .hypothesis
