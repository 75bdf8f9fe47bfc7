# enrollstream — everything a newcomer runs goes through here. Each target makes its own virtual
# environment and installs the package first, so a brand-new machine needs only Python 3.11, Java 17
# and Maven (the Kafka jars are fetched by Maven into ~/.cache/enrollstream on first use).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo demo-quick test check unit integration soak chaos bench bench-quick bench-peer-venv stack-up stack-down schemas schema-sql clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	sh scripts/install-debian-package.sh chromium /usr/bin/chromium -- the console tests drive it
	sh scripts/install-debian-package.sh dovecot-imapd /usr/sbin/dovecot /usr/lib/dovecot/imap -- the receiver tests poll it
	touch $(STAMP)

## The demo (README "The demo"): a 3-step email campaign for 300 contacts, live, with replies, a bounce, an
## unenroll and an MX skip; its summary checks the SMTP sink against the read models. About a minute.
demo: $(STAMP)
	$(BIN)/enrollstream demo

## The same demo short (delays of 1-2 seconds, 40 contacts), as the acceptance suite runs it.
demo-quick: $(STAMP)
	$(BIN)/enrollstream demo --quick --contacts 40

## The whole suite: static checks, then unit, integration and acceptance tests against real servers.
test: $(STAMP) check
	$(BIN)/python -m pytest -n 2  # two workers on one shared stack (tests/conftest.py)

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m enrollstream.schemas_gen --check

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration tests/acceptance

## The soak tests make test leaves out (marked `soak`): a short crash run and the bench harness's smoke.
soak: $(STAMP)
	$(BIN)/python -m pytest -m soak

## The crash suite: SIGKILL the workers at random while commands flow, then verify exactly-once (minutes).
chaos: $(STAMP)
	$(BIN)/enrollstream chaos

## Benchmarks (docs/benchmarks.md): each role against its raw baseline in one run; writes bench/results.json.
## Brings the local stack up (or reuses it) and stops what it started. Full sizes take several minutes.
bench: $(STAMP)
	$(BIN)/python -m bench

## The CI smoke of the same harness: small sizes, under two minutes.
bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

## The bench peer's own venv (bench/peer/.venv: Quix Streams pins older pydantic and confluent-kafka).
## The peer scenario makes it on first use; this makes it ahead (about a minute).
bench-peer-venv: $(STAMP)
	$(BIN)/python -m bench.peer.venv

schemas: $(STAMP)
	$(BIN)/python -m enrollstream.schemas_gen --write

## projections/schema.sql from the migrations (on ENROLLSTREAM_DATABASE_URL, else the local stack).
schema-sql: $(STAMP)
	$(BIN)/python -m enrollstream.adapters.postgres.schema_dump --write

stack-up: $(STAMP)
	$(BIN)/enrollstream stack up

stack-down: $(STAMP)
	$(BIN)/enrollstream stack down

clean:
	rm -rf $(VENV) bench/peer/.venv .pytest_cache .mypy_cache .ruff_cache .hypothesis
