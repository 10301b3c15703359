#!/usr/bin/env bash
# integration-test.sh - `make integration-test`: the ScyllaDB-only tests (the
# scylla-cdc end-to-end cases, `#[ignore = "needs ScyllaDB: ..."]` in
# tests/cdc_adapter.rs and tests/cql_read_models.rs) against ScyllaDB + Kafka.
#
# ScyllaDB: the docker-compose stack when a Docker engine answers (SCYLLA_IMAGE
# picks the image, default the compose one; SCYLLA_TABLETS=1 with a 2025.4+
# image runs the CDC cases on keyspaces with tablets), plus its auth-enabled
# `scylla-auth` node for the least-privilege case (SCYLLA_AUTH_URI); otherwise
# SCYLLA_URI (and SCYLLA_AUTH_URI) pointing at running ScyllaDB nodes. Kafka:
# KAFKA_BROKERS, the compose Redpanda, or a real local Kafka from
# scripts/kafka-local.sh. Broker-outage cases start their own Kafka with
# scripts/kafka-local.sh (Java 17 and Maven, as make test). With the compose
# stack, the exactly-once relay round trip (tests/relay_kafka.rs, which make
# test runs against Apache Kafka) also runs against Redpanda's transactions.
# Guarantee: without a ScyllaDB these tests are reported as SKIPPED with the
# reason, and the final line reads "0 passed, 0 failed, N skipped": a test
# that did not run is never counted as passed. With one, they run with
# `-- --ignored` and the summary counts what libtest reports.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=(--test cdc_adapter --test cql_read_models)

eos_test=exactly_once_round_trip_to_read_committed_consumers
redpanda=""
if [ -z "${SCYLLA_URI:-}" ] && docker info >/dev/null 2>&1; then
  docker compose --profile integration up -d --wait scylla scylla-auth redpanda
  export SCYLLA_URI=127.0.0.1:9042 SCYLLA_AUTH_URI=127.0.0.1:9043 KAFKA_BROKERS=127.0.0.1:19092
  redpanda=127.0.0.1:19092
fi

if [ -z "${SCYLLA_URI:-}" ]; then
  reason="needs ScyllaDB: no Docker engine answers and SCYLLA_URI is not set"
  tests=$(cargo test --locked "${targets[@]}" -- --ignored --list | sed -n 's/: test$//p')
  n=0
  while IFS= read -r t; do
    [ -n "$t" ] || continue
    echo "SKIPPED: $t: $reason"
    n=$((n + 1))
  done <<< "$tests"
  echo "SKIPPED: relay_kafka $eos_test against Redpanda: no Docker engine answers (make test runs it against Apache Kafka)"
  n=$((n + 1))
  echo "integration-test: 0 passed, 0 failed, $n skipped"
  exit 0
fi

# A local Kafka this run starts is stopped at the end (one already running is left alone).
started=0
# shellcheck disable=SC2317 # run by the EXIT trap below
cleanup() {
  if [ "$started" = 1 ]; then bash scripts/kafka-local.sh stop >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
if [ -z "${KAFKA_BROKERS:-}" ]; then
  if ! bash scripts/kafka-local.sh status >/dev/null 2>&1; then started=1; fi
  KAFKA_BROKERS=$(bash scripts/kafka-local.sh start | sed -n 's/^KAFKA_BROKERS=//p' | tail -1)
  export KAFKA_BROKERS
fi
echo "integration-test: SCYLLA_URI=$SCYLLA_URI KAFKA_BROKERS=$KAFKA_BROKERS"
log=$(mktemp)
# Tests that skip at run time write one line each here (tests/harness): the
# summary counts them as skipped, not passed.
OUTBOXD_SKIP_LOG=$(mktemp)
export OUTBOXD_SKIP_LOG
set +e
cargo test --locked "${targets[@]}" -- --ignored --test-threads 1 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
if [ -n "$redpanda" ]; then
  echo "integration-test: exactly-once relay against Redpanda ($redpanda)"
  KAFKA_BROKERS=$redpanda cargo test --locked --test relay_kafka -- --exact "$eos_test" 2>&1 | tee -a "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
else
  echo "SKIPPED: relay_kafka $eos_test against Redpanda: SCYLLA_URI was given, the compose Redpanda was not started" | tee -a "$log"
fi
set -e
bash scripts/test-summary.sh "$log" "$OUTBOXD_SKIP_LOG" | sed '$ s/^/integration-test: /'
rm -f "$log" "$OUTBOXD_SKIP_LOG"
exit "$status"
