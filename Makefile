# The project's commands. Needs only Python >= 3.11 and make: uv and the locked dependencies
# are installed into .tools/ and .venv/ on first use.

PYTHON ?= python3
UV := $(or $(shell command -v uv 2>/dev/null),.tools/bin/uv)
BIN := .venv/bin
PYTEST_WORKERS ?= 2

.PHONY: run test chaos compose-check lint audit check-tests migrate price refresh-rate bench clean

run: .venv/.synced migrate
	@rm -rf var/metrics && mkdir -p var/metrics
	PROMETHEUS_MULTIPROC_DIR="$(CURDIR)/var/metrics" PATH="$(CURDIR)/$(BIN):$$PATH" \
		$(BIN)/honcho start --procfile Procfile --port "$${PORT:-8000}"

test: lint
	node --test tests/js/*.test.js
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup

# Faults during bursts of 1,000 registrations: restarts this machine's MariaDB, Redis and RabbitMQ (serial).
chaos: .venv/.synced
	$(BIN)/pytest --chaos tests/chaos tests/cluster -p no:xdist -s

# The images and compose.yaml on a Docker engine of the project's own (deploy/check/engine.sh starts one), proved
# through the proxy's published port (deploy/check/compose_check.py); needs root for the engine.
compose-check: .venv/.synced
	$(BIN)/python deploy/check/compose_check.py

lint: .venv/.synced
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Known vulnerabilities in the locked dependencies (all groups), as uv.lock pins and hashes them. Needs PyPI's
# JSON API (or AUDIT_SERVICE=osv: api.osv.dev), so it is not part of `make test`; --strict fails the audit
# when a package could not be checked, rather than passing it unchecked.
AUDIT_SERVICE ?= pypi
audit: .venv/.synced
	@mkdir -p var
	$(UV) export --frozen --all-groups --no-emit-project --quiet -o var/audit-requirements.txt
	$(BIN)/pip-audit --strict --disable-pip --require-hashes --vulnerability-service $(AUDIT_SERVICE) \
		--requirement var/audit-requirements.txt

migrate: .venv/.synced
	@mkdir -p var
	$(BIN)/delivery migrate

price: .venv/.synced
	$(BIN)/delivery price

refresh-rate: .venv/.synced
	$(BIN)/delivery refresh-rate

bench: .venv/.synced
	$(BIN)/python bench/run.py

clean:
	rm -rf var .venv .tools

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv
