VENV ?= .venv
PY := $(VENV)/bin/python
# A second environment with the current TRL (1.x) for tests_trl1/; the main one keeps
# trl 0.19.1, the version gpumask's DataCollatorForCompletionOnlyLM is a drop-in for.
TRL1_VENV ?= .venv-trl1
TRL1_PY := $(TRL1_VENV)/bin/python
# torch pinned in both: an unpinned torch pulls a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: setup setup-trl1 test demo bench experiment lint gpu-check gpu-check-example

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

# The suite and the docstring examples of gpumask/ (pyproject's testpaths), on every core
# (pytest-xdist), then the trl 1.x tests.
test: setup setup-trl1
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n auto
	HF_HUB_OFFLINE=1 $(TRL1_PY) -m pytest -q tests_trl1

demo: setup
	HF_HUB_OFFLINE=1 $(PY) -m gpumask.demo

bench: setup
	HF_HUB_OFFLINE=1 $(PY) benchmarks/run.py

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
