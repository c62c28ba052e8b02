# Prospect: `make run` starts the dashboard, `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.install-stamp
EXTRAS := torch,mlx,dev

.PHONY: install run test lint bench clean chromium

install: $(STAMP)

# Re-installs only when pyproject.toml changes; the stamp makes a second `make` instant.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# On Linux take torch 2.13.0 first: where a CPU build lies in pip's find-links (CI, these
	@# machines) pip uses it instead of pulling a multi-GB CUDA build.
	@if [ "$$(uname -s)" = Linux ] && ! $(BIN)/python -c "import torch" 2>/dev/null; then \
		$(BIN)/python -m pip install --disable-pip-version-check -q torch==2.13.0; fi
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[$(EXTRAS)]'
	@touch $(STAMP)

run: install
	$(BIN)/prospect init
	$(BIN)/prospect serve

# Browser tests need Debian's chromium; install it when missing and we are root on Debian.
chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && [ -f /etc/debian_version ]; then \
			apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
		else echo "chromium is missing: install it (browser tests will be skipped)"; fi; fi

test: install chromium
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python bench/overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
