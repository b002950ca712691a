# streamrag: the two commands are `make demo` and `make test` (see README.md).
# Everything is installed by these targets on a fresh machine: the Python venv from
# pyproject.toml (PyPI), the JVM jars from pom.xml (Maven Central). Every version is pinned
# in pyproject.toml; `python -m streamrag.local.versions maven` hands the JVM pins to Maven.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
CLI    := $(VENV)/bin/streamrag
JARS   := .work/jars
export HF_HUB_OFFLINE := 1
export PGPASSFILE := $(CURDIR)/.work/secrets/pgpass

.PHONY: install jars stack-up stack-down demo test test-fast bench bench-gpu bench-scale eval lint clean

install: $(VENV)/.installed jars

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

jars: $(JARS)/.resolved

$(JARS)/.resolved: pom.xml pyproject.toml
	@$(PYTHON) -m streamrag.local.versions tools
	rm -rf $(JARS)/kafka $(JARS)/debezium $(JARS)/flink $(JARS)/plugins $(JARS)/k8s-schemas
	versions="$$($(PYTHON) -m streamrag.local.versions maven)" || exit 1; \
	for profile in kafka debezium flink metrics k8s-schemas; do \
	  mvn -q -B -P $$profile $$versions dependency:copy-dependencies || exit 1; \
	done
	touch $@

stack-up: install
	$(CLI) stack up

stack-down:
	$(CLI) stack down

demo: stack-up
	$(CLI) demo

# Everything, on the real services (what .ci/run runs), on two workers (tests/conftest.py
# keeps what must share one together); ends with the 25 slowest tests and the total, and
# names any test over 120 s that does not say why. WORKERS=0 runs it in one process.
WORKERS ?= 2
test: stack-up
	$(PY) -m pytest -q -ra --durations=25 -n $(WORKERS) --dist loadgroup tests

# The tier without services: unit tests and the in-process Flink tier (about 2 minutes).
test-fast: install
	$(PY) -m pytest -q -ra --durations=10 -m "not services" tests

bench: stack-up
	$(PY) -m bench.run

# The same bench with the model on a GPU (half precision); says so and stops when torch
# sees no GPU. DEVICE=cpu runs it on the CPU.
DEVICE ?= cuda
bench-gpu: stack-up
	$(PY) -m bench.run --device $(DEVICE)

# The scale curve (about 30 minutes a store): the ingest job at 3 corpus sizes with the
# hashing model (no model cost), ending with one JSON line. SCALE_DOCS=40,400 picks other
# sizes, SCALE_STORES=milvus other stores of the stack (milvus: Milvus Lite).
SCALE_DOCS ?= 40,400,4000
SCALE_STORES ?= pgvector,milvus-server
bench-scale: stack-up
	$(PY) -m bench.scale --docs $(SCALE_DOCS) --stores $(SCALE_STORES)

# Retrieval quality on the Python documentation (a Debian package, fetched by the eval);
# no services needed. Ends with one JSON line.
eval: install
	$(PY) -m bench.retrieval_eval

# ruff (lint and format) over everything; mypy --strict over the package, jobs and connect.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check streamrag jobs connect tests bench
	$(VENV)/bin/ruff format --check streamrag jobs connect tests bench
	$(VENV)/bin/mypy

clean: stack-down
	rm -rf .work
