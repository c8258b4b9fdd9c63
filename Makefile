# make setup | make demo | make test [PYTEST_ARGS="-k packet -x"] | make lint
SHELL := /bin/bash
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: setup demo test lint

setup:
	@VENV=$(VENV) bash tools/setup_env.sh

demo: setup
	$(VENV)/bin/discover demo

test: setup
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
