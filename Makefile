# Prospect: `make run` starts the dashboard, `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Not --no-compile: it halves the install's CPU, but where PYTHONDONTWRITEBYTECODE is set (CI,
# these VMs) no module is ever cached and every server start compiles its imports (README).
PIP    := python -m pip install --disable-pip-version-check -q
# torch first on Linux: where a CPU build of this version lies in pip's find-links (CI, these
# machines) pip takes it (2.13.0+cpu sorts above 2.13.0) instead of a multi-GB CUDA build.
TORCH  := 2.13.0

# The exact tested set (README, "Versions"): `make install CONSTRAINTS=` installs without it.
ifeq ($(shell uname -s),Darwin)
CONSTRAINTS ?= constraints/macos-arm64.txt
else
CONSTRAINTS ?= constraints/linux-cpu.txt
endif
PIN := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

# Two stamps: running needs core + torch + mlx; the tests add the dev tools on top, so
# `make test` after `make run` installs only those. A stamp is redone when pyproject.toml,
# the constraints file or the CONSTRAINTS choice changes.
RUN_STAMP := $(VENV)/.install-run-stamp
DEV_STAMP := $(VENV)/.install-dev-stamp
CHOICE    := $(VENV)/.constraints-choice

.PHONY: install install-run run test lint bench clean chromium lock test-latest FORCE

install: $(DEV_STAMP)
install-run: $(RUN_STAMP)

# Rewritten only when the value differs, so its date tells make when the choice changed.
$(CHOICE): FORCE
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo '$(CONSTRAINTS)' | cmp -s - $@ || echo '$(CONSTRAINTS)' > $@

# $(1): the venv's bin folder. Installs torch $(TORCH) on Linux unless a torch is there.
define torch_first
	@if [ "$$(uname -s)" = Linux ] && ! $(1)/python -c "import torch" 2>/dev/null; then \
		$(1)/$(PIP) $(2) torch==$(TORCH); fi
endef

$(RUN_STAMP): pyproject.toml $(CONSTRAINTS) $(CHOICE)
	$(call torch_first,$(BIN),$(PIN))
	$(BIN)/$(PIP) $(PIN) -e '.[torch,mlx]'
	@touch $@

$(DEV_STAMP): $(RUN_STAMP)
	$(BIN)/$(PIP) $(PIN) -e '.[torch,mlx,dev]'
	@touch $@

# `make run PORT=8010 HOST=0.0.0.0` (or PROSPECT_PORT / PROSPECT_HOST in the environment);
# empty: the settings' defaults, 127.0.0.1:8000.
PORT ?=
HOST ?=
run: install-run
	$(BIN)/prospect init
	$(BIN)/prospect serve $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

# Browser tests need Debian's chromium; install it when missing and we are root on Debian.
chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && [ -f /etc/debian_version ]; then \
			apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
		else echo "chromium is missing: install it (browser tests will be skipped)"; fi; fi

# `make test PYTEST_ARGS="-x tests/test_doctor.py"` runs a part.
PYTEST_ARGS ?= -q
test: install chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff, then the import contracts in pyproject.toml (README, "Code map").
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: install
	$(BIN)/python bench/overhead.py

# A fresh resolve of the newest releases pyproject.toml allows, frozen into the constraints
# (the project itself left out); the macOS file is derived from it (README, "Versions").
LOCK_VENV := .venv-lock
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(call torch_first,$(LOCK_VENV)/bin,)
	$(LOCK_VENV)/bin/$(PIP) -e '.[torch,mlx,dev]'
	@{ sed -n '/^# Python /d; /^#/p' constraints/linux-cpu.txt; \
	  $(LOCK_VENV)/bin/python -c 'import sys; print("# Python %d.%d" % sys.version_info[:2])'; \
	  $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable | grep -iv '^prospect[= ]' \
	    | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > constraints/linux-cpu.txt.new
	@mv constraints/linux-cpu.txt.new constraints/linux-cpu.txt
	@{ sed -n '/^# Python /d; /^#/p' constraints/macos-arm64.txt; \
	  grep '^# Python ' constraints/linux-cpu.txt; grep -v '^#' constraints/linux-cpu.txt \
	    | sed 's/^mlx-cpu==/mlx-metal==/'; } > constraints/macos-arm64.txt.new
	@mv constraints/macos-arm64.txt.new constraints/macos-arm64.txt
	rm -rf $(LOCK_VENV)
	@git diff --stat -- constraints/ 2>/dev/null || true

# The newest allowed releases (no constraints) in their own venv, then the whole suite; what
# moved against the tested set is printed first. torch stays at $(TORCH) on Linux (the CPU
# wheel; the newest would be a CUDA build). Moving a bound: edit it, run this, look.
LATEST := .venv-latest
test-latest: chromium
	rm -rf $(LATEST) && $(PYTHON) -m venv $(LATEST)
	$(call torch_first,$(LATEST)/bin,)
	$(LATEST)/bin/$(PIP) -e '.[torch,mlx,dev]'
	@$(LATEST)/bin/python -m pip freeze --exclude-editable | sed 's/+cpu$$//' > $(LATEST)/freeze.txt
	@new=$$(grep -vxFf $(or $(CONSTRAINTS),constraints/linux-cpu.txt) $(LATEST)/freeze.txt); \
	  if [ -n "$$new" ]; then echo "$$new" | sed 's/^/not in the tested set: /'; \
	  else echo "the newest allowed releases are the tested set"; fi
	$(LATEST)/bin/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(LOCK_VENV) $(LATEST) .pytest_cache .ruff_cache *.egg-info
