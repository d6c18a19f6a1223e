# NeuROK: `make help` lists the targets. Every target sets up .venv on first use.
SHELL := /bin/bash
PY := .venv/bin/python
NEUROK := .venv/bin/neurok
STAMP := .venv/.installed

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install the project with its dev extra

demo: $(STAMP) ## generate the default dataset and print its card
	$(NEUROK) data generate datasets/default.yaml --out datasets/out/default.zarr
	$(NEUROK) data validate datasets/out/default.zarr
	$(NEUROK) data inspect datasets/out/default.zarr

test: $(STAMP) ## fast test suite (what CI runs)
	$(PY) -m pytest -q

test-full: $(STAMP) ## every test, slow end-to-end ones included
	$(PY) -m pytest -q -m ''

lint: $(STAMP) ## ruff
	.venv/bin/ruff check platform tests benchmarks

bench: $(STAMP) ## benchmarks: JSON + markdown table under benchmarks/results/
	$(PY) benchmarks/run.py

.PHONY: help setup demo test test-full lint bench
