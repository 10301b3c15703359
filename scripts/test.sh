#!/usr/bin/env bash
# test.sh - `make test`: fmt + clippy (scripts/lint.sh), start real Kafka and
# Cassandra (scripts/*-local.sh), run every cargo test against them, print
# the summary (scripts/test-summary.sh: skips with their reasons, then
# "N passed, N failed, N skipped"), stop exactly what this run started.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${KAFKA_LOCAL_DIR:=$PWD/.local/kafka}"
: "${CASSANDRA_LOCAL_DIR:=$PWD/.local/cassandra}"
export KAFKA_LOCAL_DIR CASSANDRA_LOCAL_DIR

started=()
cleanup() {
  for s in "${started[@]}"; do bash "scripts/$s-local.sh" stop >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

# Formatting and clippy first: unformatted code or a clippy warning fails the run.
bash scripts/lint.sh

# Build first so the servers don't compete with the compiler for the 2 cores.
cargo build --locked --tests --bins

if ! bash scripts/kafka-local.sh status >/dev/null 2>&1; then started+=(kafka); fi
KAFKA_BROKERS=$(bash scripts/kafka-local.sh start | sed -n 's/^KAFKA_BROKERS=//p' | tail -1)
if ! bash scripts/cassandra-local.sh status >/dev/null 2>&1; then started+=(cassandra); fi
CASSANDRA_URI=$(bash scripts/cassandra-local.sh start | sed -n 's/^CASSANDRA_URI=//p' | tail -1)
export KAFKA_BROKERS CASSANDRA_URI
echo "test: KAFKA_BROKERS=$KAFKA_BROKERS CASSANDRA_URI=$CASSANDRA_URI"

make --no-print-directory compose-check

# Every test; the summary at the end lists each skipped (ignored) test with
# its reason and counts skips as skips, never as passes.
log=$(mktemp)
set +e
cargo test --locked -- --test-threads "${TEST_THREADS:-2}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
bash scripts/test-summary.sh "$log" | sed '$ s/^/test: /'
rm -f "$log"
exit "$status"
