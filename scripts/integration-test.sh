#!/usr/bin/env bash
# integration-test.sh - `make integration-test`: the scylla-cdc end-to-end
# tests against ScyllaDB + Redpanda. Uses the docker-compose stack when a
# Docker engine answers; otherwise SCYLLA_URI / KAFKA_BROKERS pointing at any
# running cluster; otherwise the tests print why they are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${SCYLLA_URI:-}" ] && docker info >/dev/null 2>&1; then
  docker compose up -d --wait scylla redpanda
  export SCYLLA_URI=127.0.0.1:9042 KAFKA_BROKERS=127.0.0.1:19092
fi
if [ -z "${SCYLLA_URI:-}" ]; then
  echo "integration-test: no Docker engine and no SCYLLA_URI: the scylla-cdc tests will report SKIPPED"
fi
cargo test --locked --test cdc_adapter -- --nocapture --test-threads 1
