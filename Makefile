# One entry point. Every target makes the virtualenv first if it is missing or stale.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum backend/pyproject.toml | cut -d' ' -f1)
BACKEND := cd backend &&

.PHONY: install run migrate test fuzz lint format bench cleanup vapid-keys test-push

install: $(STAMP)

$(STAMP): backend/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e 'backend[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

## Serve on http://$HOST:$PORT (default 127.0.0.1:8000), migrating the database first.
run: install migrate
	$(BACKEND) ../$(BIN)/python -m app

## The admin's command: alembic upgrade head on DATABASE_URL.
migrate: install
	$(BACKEND) ../$(BIN)/alembic upgrade head

## The whole suite (needs PostgreSQL on 127.0.0.1:5432 and Redis on 6379).
test: install
	$(BACKEND) ../$(BIN)/pytest $(PYTEST_ARGS)

## The fuzz tests with many more examples than `make test` runs (minutes, not seconds).
fuzz: install
	$(BACKEND) HYPOTHESIS_PROFILE=long ../$(BIN)/pytest tests/test_fuzz.py --timeout=3600 $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check backend bench
	$(BIN)/ruff format --check backend bench
	$(BACKEND) ../$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix backend bench
	$(BIN)/ruff format backend bench

## Benchmarks (PostgreSQL and Redis, fake push providers); BENCH_ARGS="--quick" for a short run.
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

## Run the daily cleanup once, now.
cleanup: install
	$(BACKEND) ../$(BIN)/python -m app.cli cleanup

## Print a fresh VAPID key pair in the form .env takes.
vapid-keys: install
	$(BACKEND) ../$(BIN)/python -m app.cli vapid-keys

## Send a test push to every device of a user: make test-push TO=alice
test-push: install
	$(BACKEND) ../$(BIN)/python -m app.cli test-push $(TO)
