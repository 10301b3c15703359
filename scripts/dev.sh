#!/usr/bin/env bash
# dev.sh - `make dev`: the demo on a fresh machine.
#  * Docker engine answers: the docker-compose stack (ScyllaDB with CDC,
#    Redpanda + Console, Prometheus, Grafana, outboxd), then the demo orders.
#  * Otherwise: the embedded SQLite store plus a real local Kafka
#    (scripts/kafka-local.sh), `outboxd run` in the background, the demo orders.
# Leaves the servers running; `make stop` stops them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh

if docker info >/dev/null 2>&1; then
  echo "dev: Docker engine found: starting the compose stack"
  docker compose up -d --build --wait
  OUTBOXD=(docker compose exec -T outboxd outboxd)
  "${OUTBOXD[@]}" schema
  bash scripts/demo.sh "${OUTBOXD[@]}"
  cat <<'MSG'

The stack is up:
  command API   http://127.0.0.1:8080      metrics/health http://127.0.0.1:9090/{metrics,health}
  Redpanda UI   http://127.0.0.1:8088      Grafana http://127.0.0.1:3000   Prometheus http://127.0.0.1:9091
  watch events  docker compose exec redpanda rpk topic consume order-events
  tables        make cqlsh   then   SELECT aggregate_id, sequence_number, event_type FROM event_store;
  stop          docker compose down
MSG
  exit 0
fi

echo "dev: no Docker engine: embedded store + local Kafka"
export KAFKA_LOCAL_DIR="${KAFKA_LOCAL_DIR:-$PWD/.local/kafka}"
KAFKA_BROKERS=$(bash scripts/kafka-local.sh start | sed -n 's/^KAFKA_BROKERS=//p' | tail -1)
cargo build --release --locked --bin outboxd
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/outboxd
mkdir -p .local/dev
export OUTBOX_STORE__PATH="$PWD/.local/dev/outbox.db"
export OUTBOX_KAFKA__BROKERS="$KAFKA_BROKERS"
export OUTBOX_RELAY__POLL_INTERVAL_MS=100
"$BIN" schema
if [ -f .local/outboxd.pid ] && kill -0 "$(cat .local/outboxd.pid)" 2>/dev/null; then
  echo "dev: outboxd already running (pid $(cat .local/outboxd.pid))"
else
  nohup "$BIN" run >.local/outboxd.log 2>&1 &
  echo $! >.local/outboxd.pid
  sleep 1
  echo "dev: outboxd run started (pid $(cat .local/outboxd.pid), log .local/outboxd.log)"
fi
bash scripts/demo.sh "$BIN"
sleep 1
echo
echo "dev: the relay published (from the local Kafka at $KAFKA_BROKERS):"
if command -v kcat >/dev/null 2>&1; then
  kcat -b "$KAFKA_BROKERS" -C -t order-events -e -q -f '%k seq=%h\n' 2>/dev/null | sed -E 's/seq=.*ce_type=([A-Za-z]+).*ce_sequence=([0-9]+).*/\1 #\2/' | tail -12 || true
fi
cat <<MSG

Running now:
  Kafka         $KAFKA_BROKERS   (scripts/kafka-local.sh status)
  outboxd       pid $(cat .local/outboxd.pid), log .local/outboxd.log, store $OUTBOX_STORE__PATH
  command API   http://127.0.0.1:8080      metrics/health http://127.0.0.1:9090/{metrics,health}
Watch the topic:   kcat -b $KAFKA_BROKERS -C -t order-events -f 'key=%k %h\\n%s\\n\\n'
Read the store:    sqlite3 $OUTBOX_STORE__PATH 'SELECT position, aggregate_id, sequence_number, event_type FROM event_store ORDER BY position DESC LIMIT 10'
Relay progress:    sqlite3 $OUTBOX_STORE__PATH 'SELECT * FROM checkpoints'
Stop everything:   make stop
MSG
