# Set-up is part of every target: the virtualenv is created or reused, and
# refreshed whenever pyproject.toml changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test migrate clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: $(BIN)/.installed
	GATEWAY_CONFIG=$${GATEWAY_CONFIG:-deploy/dev.toml} GATEWAY_LOG_FORMAT=$${GATEWAY_LOG_FORMAT:-console} \
		$(BIN)/psp-gateway serve

migrate: $(BIN)/.installed
	GATEWAY_CONFIG=$${GATEWAY_CONFIG:-deploy/dev.toml} $(BIN)/psp-gateway migrate

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
