VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test demo bench experiment lint gpu-check gpu-check-example

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

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
