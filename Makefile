# One command per job, for people and CI alike. Every target sets up .venv itself.
# PYTHON= picks the interpreter for .venv; by default scripts/python_env.sh finds one >= 3.11.
PYTHON ?=
VENV := .venv
PY := $(VENV)/bin/python
# MLX's backend on Linux: cpu (the default), or cuda13 / cuda12 for an NVIDIA GPU; the last one
# installed is remembered. macOS always gets Metal.
BACKEND ?= $(or $(shell cat $(VENV)/.backend 2>/dev/null),cpu)
ifeq ($(shell uname -s),Linux)
EXTRAS := $(BACKEND)
else
EXTRAS :=
endif
# What serving needs; the developer tools (pytest, ruff, mypy, ...) come with test and lint.
STAMP := $(VENV)/.installed-$(BACKEND)
DEV_STAMP := $(VENV)/.installed-dev-$(BACKEND)

.PHONY: install serve test demo models check lint bench clean

$(STAMP): pyproject.toml
	@sh scripts/python_env.sh venv $(VENV) $(PYTHON)
	$(PY) -m pip install --quiet --upgrade pip
	@# The backends' wheels ship the same libmlx.so: switching removes the one installed.
	@rm -f $(VENV)/.installed-*
	@if [ "$$(cat $(VENV)/.backend 2>/dev/null)" != "$(BACKEND)" ]; then \
		$(PY) -m pip uninstall --quiet --yes mlx-cpu mlx-cuda-12 mlx-cuda-13 2>/dev/null || true; fi
	@echo "Installing the dependencies into $(VENV) (the first time takes a few minutes)..."
	$(PY) -m pip install --progress-bar on -e ".$(if $(EXTRAS),[$(EXTRAS)])"
	echo $(BACKEND) > $(VENV)/.backend
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	@echo "Installing the developer tools into $(VENV)..."
	$(PY) -m pip install --progress-bar on -e ".[dev$(if $(EXTRAS),$(comma)$(EXTRAS))]"
	touch $(DEV_STAMP)

comma := ,

install: $(STAMP)  ## Create or repair .venv with what serving needs (serve and test do this first)

serve: $(STAMP)  ## Start the service on 127.0.0.1:8000 (SEGMENT_* variables configure it)
	$(PY) -m app

test: $(DEV_STAMP)  ## The whole suite (the torch parity test runs when `pip install -e .[parity]` was done)
	$(PY) -m pytest

demo: $(STAMP)  ## Serve a tiny RANDOM-WEIGHT model (SEGMENT_MODEL=demo): every code path runs, the masks mean nothing
	@echo "*** DEMO: random weights, outputs are meaningless. Use 'make models' + 'make serve' for the real model. ***"
	SEGMENT_MODEL=demo $(PY) -m app

models: $(STAMP)  ## Download the PaliGemma 2 mix checkpoint and vae-oid.npz into models/
	$(PY) -m scripts.download_models

check: $(STAMP)  ## After `make models`: segment a bundled photo, check the model finds the person, print one verdict line with the speeds (exit 0 pass, 1 fail, 2 no weights)
	$(PY) -m scripts.check_model

bench: $(STAMP)  ## Time the stages, write bench/results.json + RESULTS.md (BENCH_FLAGS: --list, --stage NAME, --quick, --real-size)
	$(PY) -m scripts.benchmark $(BENCH_FLAGS)

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy app scripts

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# macOS login agent (launchd). uninstall/status need only the standard library, so they fall
# back to $(PYTHON) when .venv is gone (after `make clean`).
AGENT := -m scripts.launchd_agent
AGENT_PY = $(if $(wildcard $(PY)),$(PY),$(or $(PYTHON),python3))

.PHONY: install-agent uninstall-agent restart-agent agent-status agent-logs agent-plist

install-agent: $(STAMP)  ## Run the service at login (launchd); SEGMENT_* variables set now are kept
	$(PY) $(AGENT) install

uninstall-agent:  ## Stop the login agent and remove its plist (nothing installed: no error)
	$(AGENT_PY) $(AGENT) uninstall

restart-agent:  ## Restart the login agent's service (after `make models`, or a code update)
	@$(AGENT_PY) $(AGENT) restart

agent-status:  ## Loaded? PID, the last exit explained, stale paths, /health
	@$(AGENT_PY) $(AGENT) status

agent-logs:  ## The end of the agent's logs (launchd's start-up file and the service's own)
	@$(AGENT_PY) $(AGENT) logs

agent-plist: $(STAMP)  ## Print the plist install-agent would write (any OS; installs nothing)
	@$(PY) $(AGENT) print-plist
