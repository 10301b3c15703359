#!/usr/bin/env bash
# test.sh - `make test`: fmt + clippy (scripts/lint.sh), start real Kafka and
# two Cassandra nodes (the plain one, and `--secure`: password auth + TLS, for
# the production-shape CQL tests) with scripts/*-local.sh, check the deploy
# files (promtool, openapi-spec-validator, docker compose config), run every
# cargo test against them (the soak group last and alone), print the
# summary (scripts/test-summary.sh: skips with their reasons, then "N passed, N failed, N skipped"), stop exactly
# what this run started.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${KAFKA_LOCAL_DIR:=$PWD/.local/kafka}"
: "${CASSANDRA_LOCAL_DIR:=$PWD/.local/cassandra}"
export KAFKA_LOCAL_DIR CASSANDRA_LOCAL_DIR

started=()   # "script [args]" of each server this run started
# shellcheck disable=SC2317 # run by the EXIT trap below
cleanup() {
  local s
  for s in "${started[@]}"; do
    # shellcheck disable=SC2086 # "cassandra --secure" -> script + flag
    bash "scripts/${s%% *}-local.sh" stop ${s#"${s%% *}"} >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

# Formatting and clippy first: unformatted code or a clippy warning fails the run.
make --no-print-directory lint

# Build first so the servers don't compete with the compiler for the 2 cores.
cargo build --locked --tests --bins

if ! bash scripts/kafka-local.sh status >/dev/null 2>&1; then started+=(kafka); fi
KAFKA_BROKERS=$(bash scripts/kafka-local.sh start | sed -n 's/^KAFKA_BROKERS=//p' | tail -1)
# A node this run starts begins empty: every test makes its own keyspace
# and none drops it, so data kept from earlier runs piles up tables until
# the node's 1 GB heap runs out (a few runs of `make test` in one checkout).
# The config and the chosen ports stay; a node already running is left alone.
wipe_cassandra_data() {
  # superuser-ready too: the wiped node makes the role again, and its
  # readiness must wait for that (scripts/cassandra-local.sh).
  rm -rf "$1"/{data,commitlog,saved_caches,hints,cdc_raw,superuser-ready}
}
if ! bash scripts/cassandra-local.sh status >/dev/null 2>&1; then
  started+=(cassandra)
  wipe_cassandra_data "$CASSANDRA_LOCAL_DIR"
fi
CASSANDRA_URI=$(bash scripts/cassandra-local.sh start | sed -n 's/^CASSANDRA_URI=//p' | tail -1)
if ! bash scripts/cassandra-local.sh status --secure >/dev/null 2>&1; then
  started+=("cassandra --secure")
  wipe_cassandra_data "${CASSANDRA_SECURE_DIR:-$CASSANDRA_LOCAL_DIR-secure}"
fi
secure_env=$(bash scripts/cassandra-local.sh start --secure | grep -E '^CASSANDRA_SECURE_[A-Z_]+=')
eval "$secure_env"
export KAFKA_BROKERS CASSANDRA_URI CASSANDRA_SECURE_URI CASSANDRA_SECURE_CA CASSANDRA_SECURE_USER CASSANDRA_SECURE_PASSWORD
if [ -n "${CASSANDRA_SECURE_CLIENT_CERT:-}" ]; then export CASSANDRA_SECURE_CLIENT_CERT CASSANDRA_SECURE_CLIENT_KEY; fi
echo "test: KAFKA_BROKERS=$KAFKA_BROKERS CASSANDRA_URI=$CASSANDRA_URI CASSANDRA_SECURE_URI=$CASSANDRA_SECURE_URI (CA $CASSANDRA_SECURE_CA)"

make --no-print-directory deploy-check openapi-check
make --no-print-directory compose-check

# Every test; the summary at the end lists each skipped test (ignored, or
# skipped at run time) with its reason and counts skips as skips, never as passes.
log=$(mktemp)
# Tests that skip at run time write one line each here (tests/harness:
# `<test>\t<whole|part>\t<reason>`): the summary counts a whole skip as
# skipped, not passed, and lists a partial one.
OUTBOXD_SKIP_LOG=$(mktemp)
export OUTBOXD_SKIP_LOG
set +e
cargo test --locked --no-fail-fast -- --test-threads "${TEST_THREADS:-2}" --skip soak_ 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The soak group (tests/soak.rs: long faults, several daemons, private brokers)
# runs alone, one test at a time (printing its figures: events, faults,
# duplicates, takeover time), after the Cassandra nodes this run started
# (not needed there) stopped, so it has the machine's memory and cores.
for s in "${started[@]}"; do
  # shellcheck disable=SC2086 # "cassandra --secure" -> script + flag
  if [[ $s == cassandra* ]]; then bash scripts/cassandra-local.sh stop ${s#cassandra} >/dev/null 2>&1 || true; fi
done
# tests/make_dev.rs (`make dev` and `make stop` as README.md shows them)
# runs here too: its build replaces the suite's binary for a while.
cargo test --locked --test soak --test make_dev -- --test-threads 1 --nocapture 2>&1 | tee -a "$log"
soak=${PIPESTATUS[0]}
if [ "$status" -eq 0 ]; then status=$soak; fi
set -e
bash scripts/test-summary.sh "$log" "$OUTBOXD_SKIP_LOG" | sed '$ s/^/test: /'
rm -f "$log" "$OUTBOXD_SKIP_LOG"
exit "$status"
