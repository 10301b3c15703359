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

.PHONY: dev test unit-test lint schema clean stop kafka cassandra cassandra-secure deps metrics health topics consume rpk cqlsh integration-test bench compose-check deploy-check openapi-check

## dev: the demo (Docker stack when a Docker engine answers, else embedded store + local Kafka)
dev:
	@bash scripts/dev.sh

## test: fmt + clippy + shellcheck, install what is missing, start Kafka and Cassandra, run every test, stop them;
## ends with every skipped test and its reason and "N passed, N failed, N skipped"
test: deps
	@bash scripts/test.sh

## unit-test: tests that need no server
unit-test:
	$(CARGO) test --lib --locked

## lint: formatting (rustfmt.toml), clippy and shellcheck (the scripts), all fatal; `make test` runs the same checks first
lint:
	@bash scripts/lint.sh

## schema: create/upgrade the store's tables (idempotent); OUTBOX_* selects the backend
## (DB is store.path, unused with cql: `--db` would be refused there)
schema:
	OUTBOX_STORE__PATH=$(DB) $(CARGO) run --quiet --locked -- schema

## deps: install what `make test` needs (scripts/deps.sh test; `make dev` runs deps.sh dev)
deps:
	@bash scripts/deps.sh test

kafka:
	@bash scripts/kafka-local.sh start

cassandra:
	@bash scripts/cassandra-local.sh start

## cassandra-secure: a second Cassandra with password auth + TLS (prints CASSANDRA_SECURE_*)
cassandra-secure:
	@bash scripts/cassandra-local.sh start --secure

## stop: stop the local servers and the dev daemon started by `make dev`
## (waits up to 45 s for the daemon to exit, so its ports are free afterwards)
stop:
	@rc=0; if [ -f $(LOCAL)/outboxd.pid ]; then \
	  pid=$$(cat $(LOCAL)/outboxd.pid); \
	  ours() { tr '\0' '\n' 2>/dev/null </proc/$$pid/cmdline | head -1 | grep -q '/outboxd$$'; }; \
	  if ours; then kill $$pid 2>/dev/null || true; \
	    end=$$((SECONDS + 45)); while ours && [ $$SECONDS -lt $$end ]; do sleep 0.1; done; \
	    if ours; then echo "stop: outboxd (pid $$pid) still running 45 s after SIGTERM; its pid file is kept" >&2; rc=1; fi; fi; \
	  [ $$rc = 1 ] || rm -f $(LOCAL)/outboxd.pid; fi; \
	bash scripts/kafka-local.sh stop || rc=1; \
	  bash scripts/cassandra-local.sh stop || rc=1; \
	  bash scripts/cassandra-local.sh stop --secure || rc=1; exit $$rc

metrics:
	@curl -sf http://127.0.0.1:9090/metrics | grep -v '^#' | grep -E 'cdc_|relay_|dlq_|circuit_|retry_|actor_|event_end' || echo "daemon not running? start it with make dev"

health:
	@curl -s http://127.0.0.1:9090/health; echo

## topics: list the topics (rpk when present, else kcat; rpk inside the Docker stack)
topics:
	@bash scripts/kafka-cli.sh topics

## consume: print a topic's records, e.g. make consume TOPIC=order-events [COUNT=10] [FOLLOW=1]
## (read_committed only when the relay runs exactly-once: OUTBOX_RELAY__DELIVERY=exactly-once)
consume:
	@bash scripts/kafka-cli.sh consume "$(TOPIC)"

## rpk: build Redpanda's rpk from its Go module into .local/bin (optional; needs Go)
rpk:
	@bash scripts/rpk.sh

cqlsh:
	@if docker info >/dev/null 2>&1; then docker compose exec scylla cqlsh -k outbox; \
	 else command -v cqlsh >/dev/null 2>&1 || python3 -m pip install -q scylla-cqlsh 2>/dev/null \
	   || python3 -m pip install -q --break-system-packages scylla-cqlsh; \
	 eval "$$(bash scripts/cassandra-local.sh env)"; cqlsh $${CASSANDRA_URI%:*} $${CASSANDRA_URI#*:} -k outbox; fi

## integration-test: the ScyllaDB-only tests (scylla-cdc end to end) against docker-compose's ScyllaDB
## (or SCYLLA_URI); without one they are reported as SKIPPED with the reason, never as passed
integration-test:
	@bash scripts/integration-test.sh

## deploy-check: promtool on the Prometheus config, the alert rules and their unit tests
deploy-check:
	promtool check config deploy/prometheus/prometheus.yml
	promtool check rules deploy/prometheus/alerts.yml
	promtool test rules deploy/prometheus/alerts.test.yml

## openapi-check: validate docs/openapi.json (OpenAPI 3.1) with openapi-spec-validator
openapi-check:
	openapi-spec-validator docs/openapi.json

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
