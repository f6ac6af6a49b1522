# Set-up and the two README commands. Every target that runs code depends on
# `setup`, which is idempotent: it rebuilds .venv only when a pin changes.
PYTHON ?= python3
# The CPU wheel of torch 2.13.0 is on this machine's local wheel list; on a GPU
# machine override it, e.g. make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean
setup:
	@if [ -f $(STAMP) ] && [ "$$(cat $(STAMP))" = "$(TORCH) $$(cat requirements.txt pyproject.toml | cksum)" ]; then \
		exit 0; fi; \
	set -e; \
	echo "setting up $(VENV) ($(TORCH))"; \
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV); \
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH); \
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt; \
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .; \
	echo "$(TORCH) $$(cat requirements.txt pyproject.toml | cksum)" > $(STAMP)

demo: setup
	$(BIN)/alexnet summary --arch alexnet

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
