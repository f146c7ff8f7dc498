# qir: two commands from a clean clone on a fresh Debian machine (as root):
#   make demo    convert, inspect and run the bundled digits model; print its accuracy
#   make test    the whole test suite (pytest -n 2)
# Also: make bench (quantization accuracy and speed against onnxruntime, same run),
#       make conformance (the ONNX backend suite, per-suite counts),
#       make conformance-update (rewrite tests/conformance/expected_failures.txt).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV   ?= .venv
PY     := $(VENV)/bin/python
QIRC   := $(VENV)/bin/qirc
# Reinstalled only when pyproject.toml changes (or the venv is new).
STAMP  := $(VENV)/.qir-installed
DEMO   := out/demo
JOBS   ?= 2
PYTEST_ARGS ?=

.PHONY: help install demo test bench conformance conformance-update clean

help:
	@echo "make demo | test | bench | conformance | conformance-update | install | clean"

# The interpreter: python3.11 if present, else python3; Debian's venv module comes with apt.
$(PY):
	@py=$$(command -v python3.11 || command -v python3 || true); \
	if [ -z "$$py" ]; then \
	  apt-get update -qq && apt-get install -y -qq python3 python3-venv python3-pip; \
	  py=$$(command -v python3); \
	fi; \
	if ! "$$py" -m venv $(VENV); then \
	  rm -rf $(VENV); \
	  apt-get update -qq && apt-get install -y -qq python3-venv; \
	  "$$py" -m venv $(VENV); \
	fi

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev,torch,tf]'
	@touch $@

BENCH_STAMP := $(VENV)/.qir-bench-installed
$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,torch,tf,bench]'
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	@mkdir -p $(DEMO)
	@echo "== qirc convert: ONNX -> qir text"
	$(QIRC) convert examples/digits/digits.onnx -o $(DEMO)/digits.qir
	@echo "== qirc inspect"
	$(QIRC) inspect $(DEMO)/digits.qir
	@echo "== accuracy on the held-out split, run through qir"
	$(PY) examples/digits/evaluate.py --model $(DEMO)/digits.qir --min-accuracy 0.95

test: $(STAMP)
	$(PY) -m pytest -n $(JOBS) $(PYTEST_ARGS)

# Benchmarks print ratios against onnxruntime measured in the same run (never asserted in tests).
bench: $(BENCH_STAMP)
	$(PY) bench/kryo_vs_ort.py --threads 1,2
	$(PY) bench/quant_accuracy.py

conformance: $(STAMP)
	$(PY) -m pytest tests/conformance -n $(JOBS) -p no:cacheprovider $(PYTEST_ARGS)

# Without -n: the conftest hook writes the list from the main process. Failing cases are the
# point of this run (pytest exit 1); any other non-zero exit is a real error.
conformance-update: $(STAMP)
	rc=0; QIR_UPDATE_EXPECTED=1 $(PY) -m pytest tests/conformance -p no:cacheprovider $(PYTEST_ARGS) || rc=$$?; \
	[ $$rc -le 1 ]

clean:
	rm -rf $(DEMO) .pytest_cache .hypothesis
