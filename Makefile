# resode: `make run` sets everything up and runs the demo; `make test` runs the test suite.
# Both create .venv (if missing) and install the project into it from pyproject.toml.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

.PHONY: install run test test-slow lint bench docs docs-serve clean

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
	$(VENV)/bin/ruff check resode tests benchmarks experiments docs
	$(VENV)/bin/ruff format --check resode tests benchmarks experiments docs

$(VENV)/.installed-bench: $(STAMP) benchmarks/constraints.txt
	$(PY) -m pip install --quiet -c benchmarks/constraints.txt -e ".[dev,bench]"
	touch $@

bench: $(VENV)/.installed-bench
	$(PY) benchmarks/bench_rk.py
	$(PY) benchmarks/bench_fixed_point.py
	$(PY) benchmarks/bench_layers.py
	$(PY) benchmarks/bench_train.py

# The documentation site (MkDocs, Material theme, mkdocstrings): built into site/ with --strict,
# so a broken link or cross-reference, a missing page or a public name without a docstring fails.
$(VENV)/.installed-docs: $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,docs]"
	touch $@

docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

docs-serve: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

clean:
	rm -rf $(VENV) .pytest_cache build dist site *.egg-info
