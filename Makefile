VENV ?= .venv
PY := $(VENV)/bin/python
# A second environment with the current TRL (1.x) for tests_trl1/; the main one keeps
# trl 0.19.1, the version gpumask's DataCollatorForCompletionOnlyLM is a drop-in for.
TRL1_VENV ?= .venv-trl1
TRL1_PY := $(TRL1_VENV)/bin/python
# torch pinned in both: an unpinned torch pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
# The pipelines benchmark's peers, in the second environment: unsloth_zoo without its
# dependencies (they would replace trl 1.16 and torch); it imports on the CPU with
# UNSLOTH_ZOO_DISABLE_GPU_INIT=1.
UNSLOTH_ZOO := unsloth_zoo==2026.10.9

.PHONY: setup setup-trl1 setup-bench test demo bench experiment lint gpu-check gpu-check-example

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

$(TRL1_VENV)/.installed: pyproject.toml
	python3 -m venv $(TRL1_VENV)
	$(TRL1_PY) -m pip install -q --upgrade pip
	$(TRL1_PY) -m pip install -q $(TORCH)
	$(TRL1_PY) -m pip install -q -e . "trl==1.16.0" datasets accelerate pytest
	touch $@

setup: $(VENV)/.installed

setup-trl1: $(TRL1_VENV)/.installed

$(TRL1_VENV)/.bench-installed: $(TRL1_VENV)/.installed
	$(TRL1_PY) -m pip install -q matplotlib
	$(TRL1_PY) -m pip install -q --no-deps "$(UNSLOTH_ZOO)"
	touch $@

setup-bench: $(TRL1_VENV)/.bench-installed

# The suite and the docstring examples of gpumask/ (pyproject's testpaths), on every core
# (pytest-xdist), then the trl 1.x tests (with the pipelines benchmark's peers: trl 1.16 and
# unsloth_zoo).
test: setup setup-bench
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n auto
	HF_HUB_OFFLINE=1 $(TRL1_PY) -m pytest -q tests_trl1

demo: setup
	HF_HUB_OFFLINE=1 $(PY) -m gpumask.demo

# The collators side by side (.venv: trl 0.19.1), then the pipelines end to end
# (.venv-trl1: trl 1.16 and unsloth_zoo); PIPELINES_ARGS=-n 200 for a quick look.
bench: setup setup-bench
	HF_HUB_OFFLINE=1 $(PY) benchmarks/run.py
	HF_HUB_OFFLINE=1 UNSLOTH_ZOO_DISABLE_GPU_INIT=1 $(TRL1_PY) benchmarks/pipelines.py $(PIPELINES_ARGS)

experiment: setup
	HF_HUB_OFFLINE=1 $(PY) benchmarks/learns_to_stop.py

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# On a GPU machine, with its own python3 (no venv, nothing installed).
GPU_CHECK_OUT ?= gpu_check_out
gpu-check:
	PYTHONPATH=. python3 benchmarks/gpu_check.py --out $(GPU_CHECK_OUT)

# The committed example report: a CPU smoke run.
gpu-check-example: setup
	PYTHONPATH=. $(PY) benchmarks/gpu_check.py --smoke --out $(GPU_CHECK_OUT)-smoke
	cp $(GPU_CHECK_OUT)-smoke/gpu_check.json benchmarks/results/gpu_check-smoke-example.json
	cp $(GPU_CHECK_OUT)-smoke/gpu_check.md benchmarks/results/gpu_check-smoke-example.md
