# Set-up is part of every target: the virtualenv is created or reused, and synced to uv.lock
# (every package pinned, with hashes) whenever pyproject.toml or uv.lock changes. uv itself comes
# from PyPI into the same virtualenv, pinned with hashes in deploy/requirements-uv.txt: nothing to
# install by hand.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
UV_REQUIREMENTS := deploy/requirements-uv.txt
UV_VERSION := $(shell sed -n 's/^uv==\([^ ]*\).*/\1/p' $(UV_REQUIREMENTS))
UV := $(BIN)/uv
# uv uses the virtualenv's Python and never downloads one; it installs into $(VENV).
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never
export UV_LINK_MODE ?= copy

.PHONY: run test bench chaos migrate stripe-sim bridgepay-sim clean lock

$(VENV)/.uv-$(UV_VERSION): $(UV_REQUIREMENTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes --only-binary :all: \
		--no-deps -r $(UV_REQUIREMENTS)
	touch $@

# --locked: fail, rather than re-resolve, when uv.lock no longer matches pyproject.toml.
$(BIN)/.installed: pyproject.toml uv.lock $(VENV)/.uv-$(UV_VERSION)
	$(UV) sync --quiet --locked --extra dev --python $(BIN)/python \
		|| { echo "uv sync failed; if uv.lock needs to be updated, run make lock" >&2; exit 1; }
	touch $@

# make lock: re-resolve uv.lock after a dependency change in pyproject.toml (LOCK_ARGS=--upgrade: newest releases allowed).
lock: $(VENV)/.uv-$(UV_VERSION)
	$(UV) lock --python $(BIN)/python $(LOCK_ARGS)

run: $(BIN)/.installed
	GATEWAY_CONFIG=$${GATEWAY_CONFIG:-deploy/dev.toml} GATEWAY_LOG_FORMAT=$${GATEWAY_LOG_FORMAT:-console} \
		$(BIN)/psp-gateway serve

migrate: $(BIN)/.installed
	GATEWAY_CONFIG=$${GATEWAY_CONFIG:-deploy/dev.toml} $(BIN)/psp-gateway migrate

# The Stripe-like simulator on 127.0.0.1:12111, sending its webhooks to a gateway on :8080
# (run the gateway with GATEWAY_CONFIG=deploy/stripe-sim.toml).
stripe-sim: $(BIN)/.installed
	$(BIN)/python -m adapters.stripe_sim --port 12111 --api-key sk_test_sim \
		--webhook-url http://127.0.0.1:$${GATEWAY_PORT:-8080}/v1/webhooks/stripe \
		--webhook-secret whsec_dev_simulator_0123456789

# The BridgePay-like simulator on 127.0.0.1:12112 (run the gateway with
# GATEWAY_CONFIG=deploy/bridgepay-sim.toml).
bridgepay-sim: $(BIN)/.installed
	$(BIN)/python -m adapters.bridgepay_sim --port 12112 --username sim_user --password sim_password \
		--merchant-code 1000 --merchant-account-code 2000

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

# The benchmark: about 15 minutes (a 5-minute soak included); prints a table, writes bench-results.json.
bench: $(BIN)/.installed
	$(BIN)/python -m tests.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache

# The chaos run: a few minutes of refunds against both simulators with faults on, the gateway
# killed and restarted, Postgres stopped once; prints the money invariants, exits 1 on a violation.
chaos: $(BIN)/.installed
	$(BIN)/python -m tests.chaos $(CHAOS_ARGS)
