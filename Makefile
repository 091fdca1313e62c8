# The two commands a newcomer needs are `make run` and `make test`; the rest is for developers.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
# Where cargo builds: CARGO_TARGET_DIR when set.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
# The benchmark's binaries in TARGET_DIR, unless BENCH_ARGS names others. BENCH_SOURCE names the
# code of the service it runs (only when it is this tree's), so that the benchmark quotes a
# separate DHAT run's allocations only when that run measured the same code.
BENCH_PATHS = $(if $(findstring --service,$(BENCH_ARGS)),,--service $(TARGET_DIR)/release/event-router) \
	$(if $(findstring --python,$(BENCH_ARGS)),,--python $(TARGET_DIR)/bench-venv/bin/python)

.PHONY: help run test lint soak bench clean-test-dbs declare-topics

help:
	@echo "make run    build, start PostgreSQL + embedded broker + service + demo traffic"
	@echo "make test   everything: unit, integration (real broker + PostgreSQL), API fuzzing and build-failure tests"
	@echo "make soak   the crash test with 200,000 messages, 3 instances, 20 kills"
	@echo "make bench  end-to-end throughput and latency next to same-run ceilings"
	@echo "make lint   rustfmt + clippy + schema compatibility + deploy declarations and manifests"
	@echo "make declare-topics   regenerate the topic declarations in deploy/ from api/event/"

run:
	scripts/run-local.sh

test: clean-test-dbs
	scripts/ensure-build-deps.sh
	scripts/ensure-test-tools.sh
	$(CARGO) test --workspace --no-fail-fast
	scripts/api-fuzz.sh
	scripts/check-new-topic.sh
	scripts/check-make-run.sh
	python3 deploy/prometheus/render-prometheusrule.py --check

# The crash test, longer and with several instances sharing the partitions. 128 partitions a
# topic: the stream (each message's event and the catalog's, about 300,000 records) must fit in
# what the embedded broker keeps, about 5 MiB a partition; at 64 it dropped the oldest.
soak:
	scripts/ensure-postgres.sh
	CRASH_MESSAGES=200000 CRASH_KILLS=20 CRASH_INSTANCES=3 CRASH_PARTITIONS=128 \
	  $(CARGO) test --test it crash -- --nocapture

# Throughput and latency next to same-run ceilings; results in bench/results/. BENCH_ARGS passes
# options, e.g. make bench BENCH_ARGS="--messages 100000 --partitions 32".
bench:
	scripts/ensure-postgres.sh
	scripts/bench-python-venv.sh
	$(CARGO) build --release -p event-router --bin event-router
	$(CARGO) build --release -p bench --bin event-router-bench
	$(if $(findstring --service,$(BENCH_ARGS)),,BENCH_SOURCE=$$(scripts/source-fingerprint.sh)) $(TARGET_DIR)/release/event-router-bench $(BENCH_PATHS) $(BENCH_ARGS)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	scripts/check-schemas.sh
	scripts/validate-deploy.sh --test
	scripts/validate-deploy.sh

# The ClowdApp's kafkaTopics and deploy/kubernetes/kafka-topics.yaml, from api/event/.
declare-topics:
	$(CARGO) run --quiet --bin event-router -- schema declare --write

clean-test-dbs:
	@scripts/ensure-postgres.sh
	@scripts/drop-test-databases.sh
