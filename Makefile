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

install: $(STAMP) install-toolchains

demo: $(STAMP)
	@mkdir -p $(DEMO)
	@echo "== qirc convert: ONNX -> qir text"
	$(QIRC) convert examples/digits/digits.onnx -o $(DEMO)/digits.qir
	@echo "== qirc inspect"
	$(QIRC) inspect $(DEMO)/digits.qir
	@echo "== accuracy on the held-out split, run through qir"
	$(PY) examples/digits/evaluate.py --model $(DEMO)/digits.qir --min-accuracy 0.95

test: $(STAMP) install-toolchains
	$(PY) -m pytest -n $(JOBS) $(PYTEST_ARGS)

# Benchmarks print ratios against onnxruntime measured in the same run (never asserted in tests).
bench: $(BENCH_STAMP)
	$(PY) bench/kryo_vs_ort.py --threads 1,2 --int8
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

# Cross toolchains for the model-library tests (tests/targets/kryo/test_library.py): qemu-aarch64,
# clang-16, ld.lld-16 and the arm64 C library. apt runs only when one is missing (a machine that
# has them pays nothing); without root or apt, or if apt fails, this warns and those tests skip.
TOOLCHAIN_TOOLS ?= qemu-aarch64 clang-16 ld.lld-16
TOOLCHAIN_FILES ?= /usr/aarch64-linux-gnu/lib/libc.so.6 /usr/lib/gcc-cross/aarch64-linux-gnu/12/libgcc.a
TOOLCHAIN_PKGS  ?= qemu-user clang-16 lld-16 libc6-dev-arm64-cross libgcc-12-dev-arm64-cross
.PHONY: install-toolchains
install-toolchains:
	@missing=0; for t in $(TOOLCHAIN_TOOLS); do command -v $$t >/dev/null || missing=1; done; \
	for f in $(TOOLCHAIN_FILES); do [ -e $$f ] || missing=1; done; \
	if [ $$missing = 0 ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	     $(TOOLCHAIN_PKGS) >/dev/null) \
	  || echo "warning: could not install $(TOOLCHAIN_PKGS); the AArch64 model-library tests will skip"; \
	else echo "note: not root or no apt-get: $(TOOLCHAIN_PKGS) not installed; the AArch64 model-library tests will skip"; fi
