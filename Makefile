# Set-up and the two README commands. Every target that runs code depends on
# `setup`, which is idempotent: it rebuilds .venv only when a pin changes.
PYTHON ?= python3
# The CPU wheel of torch 2.13.0 is on this machine's local wheel list; on a GPU
# machine override it, e.g. make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
DEMO_RUN ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)
DATA_DIR ?= data
PYTEST_ARGS ?=
FASHION_DEB := /usr/share/datasets/fashion-mnist

.PHONY: setup data demo test explore bench clean
setup:
	@if [ -f $(STAMP) ] && [ "$$(cat $(STAMP))" = "$(TORCH) $$(cat requirements.txt pyproject.toml | cksum)" ]; then \
		exit 0; fi; \
	set -e; \
	echo "setting up $(VENV) ($(TORCH))"; \
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV); \
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH); \
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt; \
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .; \
	$(BIN)/python -c "from alexnet.kernels import available as k; k() or print('C++ kernels not built: using torch ops for the LRN and the optimizer')"; \
	echo "$(TORCH) $$(cat requirements.txt pyproject.toml | cksum)" > $(STAMP)

# Fashion-MNIST from Debian's package where apt works (root), else `prepare` downloads it.
data: setup
	@if [ ! -d $(FASHION_DEB) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
		|| echo "apt could not install dataset-fashion-mnist; prepare will download it"; fi
	$(BIN)/alexnet prepare fashion-mnist $(DATA_DIR)/fashion-mnist

# The main job: Fashion-MNIST -> packed store -> small AlexNet -> evaluation -> RUN/report.md
demo: data
	$(BIN)/alexnet train --preset demo --data $(DATA_DIR)/fashion-mnist --out $(DEMO_RUN)
	$(BIN)/alexnet evaluate --checkpoint $(DEMO_RUN) --data $(DATA_DIR)/fashion-mnist --flip
	@echo "report: $(DEMO_RUN)/report.md"

# Debian's packages the tests use, where apt works as root: Fashion-MNIST (real data) and
# chromium + its driver (the explorer's page in a real browser); without them those tests skip.
test: setup
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		missing=""; \
		[ -d $(FASHION_DEB) ] || missing="$$missing dataset-fashion-mnist"; \
		[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || missing="$$missing chromium chromium-driver"; \
		if [ -n "$$missing" ]; then \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
			|| echo "apt could not install$$missing: the tests that need them are skipped"; fi; fi
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The explorer on the demo net: the newest runs/demo-*/ with a last.pt, trained first when there is none.
EXPLORE_PORT ?= 8000
explore: data
	@run=$$(ls -dt runs/demo-*/ 2>/dev/null | while read d; do [ -f "$$d/last.pt" ] && echo "$$d" && break; done); \
	if [ -z "$$run" ]; then \
		run=$(DEMO_RUN); \
		echo "no runs/demo-*/ with a last.pt: training the demo net into $$run first (~6-8 min on 2 cores)"; \
		$(BIN)/alexnet train --preset demo --data $(DATA_DIR)/fashion-mnist --out $$run || exit 1; \
	fi; \
	exec $(BIN)/alexnet serve --checkpoint "$${run%/}" --data $(DATA_DIR)/fashion-mnist --port $(EXPLORE_PORT)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
