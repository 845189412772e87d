# The front door: `make up` runs the platform, `make test` checks everything.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
comma := ,

.PHONY: install up test lint protos bench clean deploy-check browser console-screenshots

# A venv with the project installed (editable) and the extras named: $(call venv_with,EXTRAS).
define venv_with
	$(PYTHON) -c 'import sys; sys.exit("Python 3.11 or newer is required") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[$(1)]'
	touch $@
endef

$(BIN)/.installed: pyproject.toml
	$(call venv_with,dev)

install: $(BIN)/.installed

# `dcp up` needs the platform and its embedded stores, not the development tools.
$(BIN)/.installed-up: pyproject.toml
	$(call venv_with,embedded)

up: $(BIN)/.installed-up
	$(BIN)/dcp up

lint: install
	$(BIN)/python scripts/gen_protos.py --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	PYTHON=$(BIN)/python bash scripts/ensure_buf.sh lint protos

test: lint browser
	$(BIN)/pytest

# The console's browser tests need a Chromium; installed from the distribution when missing.
browser:
	bash scripts/ensure_chromium.sh

# Renews the screenshots in docs/console/ (docs/console.md shows them) from the console's browser tests.
console-screenshots: install browser
	DCP_CONSOLE_SCREENSHOTS=docs/console $(BIN)/pytest tests/console -q -p no:cacheprovider

$(BIN)/.installed-bench: pyproject.toml
	$(call venv_with,dev$(comma)bench)

# The REST bench drives the gateway with wrk, installed from the distribution when missing.
bench: $(BIN)/.installed-bench
	$(BIN)/python -m bench.profiles_bench
	$(BIN)/python -m bench.import_bench
	$(BIN)/python -m bench.audience_bench
	$(BIN)/python -m bench.engine_bench
	$(BIN)/python -m bench.rest_bench

protos: install
	$(BIN)/python scripts/gen_protos.py

# Offline checks of deploy/ (Dockerfile, kustomize base and overlays); its tools live in .venv-deploy.
deploy-check:
	PYTHON=$(PYTHON) bash scripts/check_deploy.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
