#!/usr/bin/env bash
# bench.sh - `make bench`: every benchmark in release mode, against real
# servers started like `make test` does. Prints ratios; see docs/BENCHMARKS.md.
# Stops the servers it started when it ends, however it ends (a server left
# running would keep a later `make test` from starting on an empty node).
set -euo pipefail
cd "$(dirname "$0")/.."
export KAFKA_LOCAL_DIR="${KAFKA_LOCAL_DIR:-$PWD/.local/kafka}"
export CASSANDRA_LOCAL_DIR="${CASSANDRA_LOCAL_DIR:-$PWD/.local/cassandra}"
started=()
# shellcheck disable=SC2317 # run by the EXIT trap below
cleanup() {
  local s
  for s in "${started[@]}"; do bash "scripts/$s-local.sh" stop >/dev/null 2>&1 || true; done
}
trap cleanup EXIT
cargo build --release --locked --bin outboxd
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/outboxd
# Pass --json to get each benchmark's figures as one JSON object on stdout.
"$BIN" bench append "$@"
"$BIN" bench append --concurrency 256 "$@"
"$BIN" bench snapshots "$@"
"$BIN" bench rebuild "$@"
if ! bash scripts/kafka-local.sh status >/dev/null 2>&1; then started+=(kafka); fi
KAFKA_BROKERS=$(bash scripts/kafka-local.sh start | sed -n 's/^KAFKA_BROKERS=//p' | tail -1)
OUTBOX_KAFKA__BROKERS=$KAFKA_BROKERS "$BIN" bench relay "$@"
OUTBOX_KAFKA__BROKERS=$KAFKA_BROKERS "$BIN" bench http "$@"
OUTBOX_KAFKA__BROKERS=$KAFKA_BROKERS "$BIN" bench backlog "$@"
if ! bash scripts/cassandra-local.sh status >/dev/null 2>&1; then started+=(cassandra); fi
CASSANDRA_URI=$(bash scripts/cassandra-local.sh start | sed -n 's/^CASSANDRA_URI=//p' | tail -1)
OUTBOX_STORE__CQL__URI=$CASSANDRA_URI "$BIN" bench cql "$@"
