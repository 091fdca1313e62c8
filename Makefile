# The two commands a newcomer needs are `make run` and `make test`; the rest is for developers.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo

.PHONY: help run test test-unit test-it lint soak bench clean-test-dbs

help:
	@echo "make run    build, start PostgreSQL + embedded broker + service + demo traffic"
	@echo "make test   everything: unit, integration (real broker + PostgreSQL) and build-failure tests"
	@echo "make lint   rustfmt + clippy"

run:
	scripts/run-local.sh

test: clean-test-dbs
	scripts/ensure-build-deps.sh
	scripts/ensure-postgres.sh
	$(CARGO) test --workspace --no-fail-fast

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean-test-dbs:
	@scripts/ensure-postgres.sh
	@scripts/drop-test-databases.sh
