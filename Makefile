VENV ?= .venv
PY := $(VENV)/bin/python
# A second environment with the current TRL (1.x) for tests_trl1/; the main one keeps
# trl 0.19.1, the version gpumask's DataCollatorForCompletionOnlyLM is a drop-in for.
TRL1_VENV ?= .venv-trl1
TRL1_PY := $(TRL1_VENV)/bin/python
# torch pinned in both: an unpinned torch pulls a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: setup setup-trl1 test demo bench lint

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

# The suite and the docstring examples of gpumask/ (pyproject's testpaths), then the trl 1.x tests.
test: setup setup-trl1
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q
	HF_HUB_OFFLINE=1 $(TRL1_PY) -m pytest -q tests_trl1

demo: setup
	HF_HUB_OFFLINE=1 $(PY) -m gpumask.demo

bench: setup
	HF_HUB_OFFLINE=1 $(PY) benchmarks/run.py

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
