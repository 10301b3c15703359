# outboxd: `make dev` runs the demo, `make test` runs every test.
# Both install what is missing and start the servers they need
# (real Apache Kafka and Apache Cassandra from Maven Central, no Docker needed).

SHELL := /bin/bash
CARGO ?= cargo
LOCAL := $(CURDIR)/.local
KAFKA_DIR ?= $(LOCAL)/kafka
CASSANDRA_DIR ?= $(LOCAL)/cassandra
DB ?= $(LOCAL)/dev/outbox.db
export KAFKA_LOCAL_DIR := $(KAFKA_DIR)
export CASSANDRA_LOCAL_DIR := $(CASSANDRA_DIR)

.PHONY: dev test unit-test lint schema clean stop kafka cassandra deps metrics health topics cqlsh integration-test bench compose-check

## dev: the demo (Docker stack when a Docker engine answers, else embedded store + local Kafka)
dev:
	@bash scripts/dev.sh

## test: fmt + clippy, install what is missing, start Kafka and Cassandra, run every test, stop them;
## ends with every skipped test and its reason and "N passed, N failed, N skipped"
test: deps
	@bash scripts/test.sh

## unit-test: tests that need no server
unit-test:
	$(CARGO) test --lib --locked

## lint: formatting (rustfmt.toml) and clippy, both fatal; `make test` runs the same checks first
lint:
	@bash scripts/lint.sh

## schema: create/upgrade the store's tables (idempotent); OUTBOX_* selects the backend
schema:
	$(CARGO) run --quiet --locked -- --db $(DB) schema

deps:
	@bash scripts/deps.sh

kafka:
	@bash scripts/kafka-local.sh start

cassandra:
	@bash scripts/cassandra-local.sh start

## stop: stop the local servers and the dev daemon started by `make dev`
stop:
	@if [ -f $(LOCAL)/outboxd.pid ]; then kill $$(cat $(LOCAL)/outboxd.pid) 2>/dev/null || true; rm -f $(LOCAL)/outboxd.pid; fi
	@bash scripts/kafka-local.sh stop
	@bash scripts/cassandra-local.sh stop

metrics:
	@curl -sf http://127.0.0.1:9090/metrics | grep -v '^#' | grep -E 'cdc_|relay_|dlq_|circuit_|retry_|actor_|event_end' || echo "daemon not running? start it with make dev"

health:
	@curl -s http://127.0.0.1:9090/health; echo

## topics: show the demo topics (kcat from Debian, or rpk with the Docker stack)
topics:
	@if docker info >/dev/null 2>&1 && docker compose ps -q redpanda >/dev/null 2>&1; then docker compose exec redpanda rpk topic list; \
	 else eval "$$(bash scripts/kafka-local.sh env)"; kcat -b "$$KAFKA_BROKERS" -L | grep topic; fi

cqlsh:
	@if docker info >/dev/null 2>&1; then docker compose exec scylla cqlsh -k outbox; \
	 else command -v cqlsh >/dev/null 2>&1 || pip install -q scylla-cqlsh; \
	 eval "$$(bash scripts/cassandra-local.sh env)"; cqlsh $${CASSANDRA_URI%:*} $${CASSANDRA_URI#*:} -k outbox; fi

## integration-test: the ScyllaDB-only tests (scylla-cdc end to end) against docker-compose's ScyllaDB
## (or SCYLLA_URI); without one they are reported as SKIPPED with the reason, never as passed
integration-test:
	@bash scripts/integration-test.sh

compose-check:
	@if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then docker compose -f docker-compose.yml config -q && echo "docker-compose.yml is valid (docker compose config)"; \
	 else echo "SKIPPED: no docker compose client to validate docker-compose.yml"; fi

## bench: every benchmark (figures in docs/BENCHMARKS.md)
bench: deps
	@bash scripts/bench.sh

clean:
	@$(MAKE) --no-print-directory stop || true
	rm -rf $(LOCAL) data
	$(CARGO) clean
