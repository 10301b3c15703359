#!/usr/bin/env bash
# bench.sh - `make bench`: every benchmark in release mode, against real
# servers started like `make test` does. Prints ratios; see docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export KAFKA_LOCAL_DIR="${KAFKA_LOCAL_DIR:-$PWD/.local/kafka}"
export CASSANDRA_LOCAL_DIR="${CASSANDRA_LOCAL_DIR:-$PWD/.local/cassandra}"
cargo build --release --locked --bin outboxd
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/outboxd
# Pass --json to get each benchmark's figures as one JSON object on stdout.
"$BIN" bench append "$@"
"$BIN" bench append --concurrency 256 "$@"
"$BIN" bench snapshots "$@"
"$BIN" bench rebuild "$@"
KAFKA_BROKERS=$(bash scripts/kafka-local.sh start | sed -n 's/^KAFKA_BROKERS=//p' | tail -1)
OUTBOX_KAFKA__BROKERS=$KAFKA_BROKERS "$BIN" bench relay "$@"
OUTBOX_KAFKA__BROKERS=$KAFKA_BROKERS "$BIN" bench http "$@"
OUTBOX_KAFKA__BROKERS=$KAFKA_BROKERS "$BIN" bench backlog "$@"
CASSANDRA_URI=$(bash scripts/cassandra-local.sh start | sed -n 's/^CASSANDRA_URI=//p' | tail -1)
OUTBOX_STORE__CQL__URI=$CASSANDRA_URI "$BIN" bench cql "$@"
