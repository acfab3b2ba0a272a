# One entry point. Every target makes the virtualenv first if it is missing or stale.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat backend/pyproject.toml clients/python/pyproject.toml | cksum | cut -d' ' -f1)
BACKEND := cd backend &&

.PHONY: install run migrate test fuzz lint format bench cleanup vapid-keys test-push email-digests test-email admin cluster-demo deploy-walkthrough

install: $(STAMP)

$(STAMP): backend/pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e 'backend[dev]' -e clients/python
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
	$(BIN)/ruff check backend bench clients/python
	$(BIN)/ruff format --check backend bench clients/python
	$(BACKEND) ../$(BIN)/mypy
	cd clients/python && ../../$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix backend bench clients/python
	$(BIN)/ruff format backend bench clients/python

## Benchmarks (PostgreSQL and Redis, fake push providers); BENCH_ARGS="--quick" for a short run.
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

## Two nodes and nginx (TLS, self-signed) on loopback ports, as docs/DEPLOY.md deploys
## them, against PostgreSQL and Redis on 127.0.0.1; Ctrl-C stops them.
cluster-demo: install
	bash deploy/demo/cluster-demo.sh

## Every block of docs/DEPLOY.md run as written on this Debian machine (root only; ports
## 80, 443, 8001 and 8002 free), in a private mount namespace; minutes, not in `make test`.
deploy-walkthrough:
	@test "$$(id -u)" = 0 || { echo "make deploy-walkthrough: run it as root (it runs DEPLOY.md's root shell: apt-get, useradd, ports 80 and 443)" >&2; exit 2; }
	bash deploy/demo/walkthrough.sh

## Run the daily cleanup once, now.
cleanup: install
	$(BACKEND) ../$(BIN)/python -m app.cli cleanup

## Print a fresh VAPID key pair in the form .env takes.
vapid-keys: install
	$(BACKEND) ../$(BIN)/python -m app.cli vapid-keys

## Send a test push to every device of a user: make test-push TO=alice
test-push: install
	$(BACKEND) ../$(BIN)/python -m app.cli test-push $(TO)

## Run one email digest pass now, every period treated as due.
email-digests: install
	$(BACKEND) ../$(BIN)/python -m app.cli email-digests

## Send a test email to a user's address: make test-email TO=alice
test-email: install
	$(BACKEND) ../$(BIN)/python -m app.cli test-email '$(TO)'

## Make a user an admin (/api/v1/admin): make admin USER=alice; REVOKE=1 takes it back.
## USER must be given on the command line: the shell's own $$USER is never taken for it.
admin: install
	@test "$(origin USER)" = "command line" || { echo "usage: make admin USER=name [REVOKE=1]" >&2; exit 2; }
	$(BACKEND) ../$(BIN)/python -m app.cli admin '$(USER)' $(if $(filter 1,$(REVOKE)),--revoke,)
