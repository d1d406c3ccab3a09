# Two entry points, each doing the whole set-up itself on a fresh machine (Python, pip, apt):
#   make run     JupyterLab on notebooks/ (HEADLESS=1: run the quick-start without a screen)
#   make test    every test
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sglbench-installed
TORCH_VERSION ?= 2.13.0
# Extra pip arguments for torch, e.g. a CPU wheel index on machines whose default index serves CUDA builds.
TORCH_PIP_ARGS ?=
APT_PACKAGES := graphviz chromium
HEADLESS ?= 0
PORT ?= 8888

.PHONY: run test setup system-packages clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-packages
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if $(PY) -c "import torch" 2>/dev/null; then echo "torch already installed"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q "torch==$(TORCH_VERSION)" $(TORCH_PIP_ARGS); \
	else echo "no NVIDIA GPU: installing the CPU build of torch"; $(PY) -m pip install -q "torch==$(TORCH_VERSION)" $(TORCH_PIP_ARGS); fi
	$(PY) -m pip install -q -e ".[dev]"
	@# an editable install skips data files: the JupyterLab setting that saves widget state with notebooks
	install -D -m 644 sglbench/viz/lab_settings/sglbench.json $(VENV)/share/jupyter/lab/settings/overrides.d/sglbench.json
	@touch $(STAMP)

# graphviz's dot draws program graphs; chromium runs the browser tests. Skipped without root/sudo.
system-packages:
	@missing=""; command -v dot >/dev/null || missing="$$missing graphviz"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; \
	else echo "warning: cannot install$$missing (no root); related features fall back or skip"; exit 0; fi; \
	echo "installing Debian packages:$$missing"; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null

run: setup
	@if [ "$(HEADLESS)" = 1 ]; then SGLBENCH_STATIC=1 $(PY) -m sglbench quickstart --report reports/quickstart.html; \
	else $(VENV)/bin/jupyter lab --notebook-dir=notebooks --ip=127.0.0.1 --port=$(PORT) --no-browser; fi

# Unit tests and the example notebooks (nbval re-runs them against their stored outputs, widgets in
# static mode, timings and ids masked by notebooks/sanitize.cfg).
test: setup
	SGLBENCH_STATIC=1 $(PY) -m pytest -q tests notebooks --nbval --nbval-sanitize-with notebooks/sanitize.cfg

clean:
	rm -rf $(VENV) reports .pytest_cache
