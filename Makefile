VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test demo bench experiment lint

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
