# From a fresh clone: `make test` and `make demo` do all the set-up themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo-installed
DOCS_STAMP := $(VENV)/.docs-installed

.PHONY: docs test lint typecheck pytest generate demo bench mutants test-free-threaded clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

$(DEMO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[demo]'
	touch $(DEMO_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples tools
	$(BIN)/ruff format --check src tests benchmarks examples tools

# The sync pool's shared methods (pool_base.py) are written from async_pool_base.py;
# tests/test_generated.py fails while the two disagree.
generate: $(STAMP)
	$(BIN)/python tools/gen_sync.py

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

$(DOCS_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

# The documentation site in site/, from docs/ and the docstrings; any warning fails it.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Curated mutation testing (docs/testing.md): each deliberate bug in tools/mutants.py
# must make its tests fail. 5-7.5 minutes on two cores; not part of `make test`.
mutants: $(STAMP)
	$(BIN)/python tools/mutants.py $(MUTANTS_ARGS)

demo: $(DEMO_STAMP)
	$(BIN)/poolkeeper demo

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

# The thread-safety stress test and the sync suites on a free-threaded CPython (3.13t or
# 3.14t), GIL disabled. Set FT_PYTHON, or have one on PATH or in /opt/py31xt; without one
# it prints SKIPPED and exits 0, so CI on a machine without one still passes but says so
# (docs/free-threading.md builds one in a few minutes).
FT_PYTHON ?= $(firstword $(wildcard /opt/py314t/bin/python3.14t /opt/py313t/bin/python3.13t) \
	$(shell command -v python3.14t python3.13t 2>/dev/null))
FT_VENV := .venv-ft
FT_TESTS := tests/test_stress.py tests/test_pool.py tests/behaviour tests/test_database.py \
	tests/test_self_healing.py tests/test_redaction.py \
	tests/faults/test_backend_loss.py tests/faults/test_retirement.py \
	tests/faults/test_server_outage.py tests/faults/test_credentials.py

test-free-threaded:
	@if [ -z "$(FT_PYTHON)" ]; then \
		echo "SKIPPED: no free-threaded CPython found (looked for FT_PYTHON, python3.14t and"; \
		echo "python3.13t on PATH, /opt/py314t, /opt/py313t); nothing was tested with the GIL off."; \
		echo "Build one (docs/free-threading.md) and set FT_PYTHON to run these tests."; \
		exit 0; \
	fi; \
	set -e; \
	$(FT_PYTHON) -m venv $(FT_VENV); \
	$(FT_VENV)/bin/pip install --quiet --upgrade pip; \
	$(FT_VENV)/bin/pip install --quiet -e '.[embedded]' 'pytest>=8' 'pytest-timeout>=2.3' \
		'pytest-asyncio>=0.24'; \
	$(FT_VENV)/bin/python -X gil=0 -c 'import sys, poolkeeper, psycopg; \
		assert not sys._is_gil_enabled(), "the GIL is on"; \
		print(sys.version.split()[0], "free-threaded, GIL off; psycopg", psycopg.pq.__impl__)'; \
	$(FT_VENV)/bin/python -X gil=0 -m pytest -p no:cacheprovider $(FT_TESTS)

clean:
	rm -rf site $(VENV) $(FT_VENV) .mypy_cache .ruff_cache .pytest_cache .mutants
