# One command per job, for people and CI alike. Every target sets up .venv itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR := models/paligemma2-tiny-random

.PHONY: serve test demo models lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

serve: $(STAMP)  ## Start the service on 127.0.0.1:8000 (SEGMENT_* variables configure it)
	$(PY) -m app

test: $(STAMP)  ## The whole suite (the torch parity test runs when `pip install -e .[parity]` was done)
	$(PY) -m pytest

demo: $(STAMP)  ## Serve a tiny RANDOM-WEIGHT model: every code path runs, the masks mean nothing
	$(PY) scripts/make_tiny_model.py $(DEMO_DIR)
	@echo "*** DEMO: random weights, outputs are meaningless. Use 'make models' + 'make serve' for the real model. ***"
	SEGMENT_MODEL=$(DEMO_DIR) SEGMENT_VAE_PATH=$(DEMO_DIR)/vae-oid.npz $(PY) -m app

models: $(STAMP)  ## Download the PaliGemma 2 mix checkpoint and vae-oid.npz into models/
	$(PY) scripts/download_models.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy app scripts

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
