# engagementd developer entry points. Everything runs from the project venv in .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install system-deps run test lint fmt bench loadtest clean

install: system-deps $(STAMP)

system-deps:
	@scripts/install-system-deps.sh

# Re-run pip only when pyproject.toml changes (or the venv is new).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

run: install
	$(BIN)/engagementd dev $(if $(PORT),--port $(PORT))

test: install
	@scripts/install-system-deps.sh --test
	$(BIN)/pytest -q --durations=15 $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/python -m loadtest.bench

# locust, headless, against a running service (make run's by default): SCENARIO=viral|views|likes|bulk|
# browse|live (empty: all), USERS, DURATION, HOST. The CSV and HTML reports go to loadtest/results/.
SCENARIO ?=
USERS ?= 50
DURATION ?= 30s
HOST ?= http://127.0.0.1:8080
loadtest: install
	@mkdir -p loadtest/results
	ENGAGEMENT_JWT_SECRET="$${ENGAGEMENT_JWT_SECRET:-$$(cat .data/jwt_secret 2>/dev/null)}" \
	$(BIN)/locust -f loadtest/locustfile.py --headless -u $(USERS) -r $(USERS) -t $(DURATION) \
		--host $(HOST) $(if $(SCENARIO),--tags $(SCENARIO)) \
		--csv loadtest/results/locust$(if $(SCENARIO),-$(SCENARIO)) \
		--html loadtest/results/locust$(if $(SCENARIO),-$(SCENARIO)).html

clean:
	rm -rf $(VENV) .data .pytest_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
