# resode: `make run` sets everything up and runs the demo; `make test` runs the test suite.
# Both create .venv (if missing) and install the project into it from pyproject.toml.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

.PHONY: install run test test-slow lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/resode run configs/quickstart.yaml --out runs/quickstart

test: install
	$(PY) -m pytest -n 2 -q -m "not slow"

# Tests marked slow (end-to-end smoke tests, subprocess and kill-and-resume tests); CI runs
# them after `make test`.
test-slow: install
	$(PY) -m pytest -n 2 -q -m slow

lint: install
	$(VENV)/bin/ruff check resode tests benchmarks experiments
	$(VENV)/bin/ruff format --check resode tests benchmarks experiments

$(VENV)/.installed-bench: $(STAMP) benchmarks/constraints.txt
	$(PY) -m pip install --quiet -c benchmarks/constraints.txt -e ".[dev,bench]"
	touch $@

bench: $(VENV)/.installed-bench
	$(PY) benchmarks/bench_rk.py
	$(PY) benchmarks/bench_fixed_point.py
	$(PY) benchmarks/bench_layers.py
	$(PY) benchmarks/bench_train.py

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
