#!/usr/bin/env bash
# dev.sh - `make dev`: the demo on a fresh machine.
#  * Docker engine answers: the docker-compose stack (ScyllaDB with CDC,
#    Redpanda + Console, Prometheus, Grafana, two outboxd replicas), then the
#    demo orders.
#  * Otherwise: the embedded SQLite store plus a real local Kafka
#    (scripts/kafka-local.sh), `outboxd run` in the background, the demo orders.
# Installs only what the demo needs (scripts/deps.sh dev: no promtool, no
# Python tools, no compose plugin build). Each long step says what it does and
# how long it took. Leaves the servers running; `make stop` stops them.
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$SECONDS
step_n=0
step() { step_n=$((step_n + 1)); echo "dev: [$step_n] $* ($(elapsed))"; }
elapsed() { local s=$((SECONDS - T0)); printf '%dm%02ds' $((s / 60)) $((s % 60)); }

step "checking tools (scripts/deps.sh dev)"
bash scripts/deps.sh dev

if docker info >/dev/null 2>&1; then
  step "Docker engine found: building the image and starting the compose stack (first time: several minutes)"
  docker compose up -d --build --wait
  OUTBOXD=(docker compose exec -T outboxd-1 outboxd)
  "${OUTBOXD[@]}" schema
  step "running the demo orders through outboxd-1"
  bash scripts/demo.sh "${OUTBOXD[@]}"
  cat <<MSG

The stack is up ($(elapsed)):
  command API   http://127.0.0.1:8080 (outboxd-1), http://127.0.0.1:8081 (outboxd-2)
  admin         http://127.0.0.1:9090/health (outboxd-1), http://127.0.0.1:9091/health (outboxd-2)
  Redpanda UI   http://127.0.0.1:8088      Grafana http://127.0.0.1:3000   Prometheus http://127.0.0.1:9099
  watch events  make consume TOPIC=order-events   (rpk inside the Redpanda container)
  tables        make cqlsh   then   SELECT aggregate_id, sequence_number, event_type FROM event_store;
  stop          docker compose down
MSG
  exit 0
fi

echo "dev: no Docker engine: embedded SQLite store + a local Kafka"
export KAFKA_LOCAL_DIR="${KAFKA_LOCAL_DIR:-$PWD/.local/kafka}"
mkdir -p .local/dev
# Kafka's jars (first run: ~100 MB from Maven Central) download while the
# compiler runs; the broker starts once the build is done.
kafka_fetch_log=.local/dev/kafka-start.log
step "fetching/starting Kafka in the background (log $kafka_fetch_log)"
( bash scripts/kafka-local.sh start >"$kafka_fetch_log" 2>&1 ) &
kafka_job=$!
step "building outboxd (cargo build --bin outboxd; the first build compiles ~400 crates: several minutes on 2 cores)"
cargo build --locked --bin outboxd
BIN=${CARGO_TARGET_DIR:-$PWD/target}/debug/outboxd
step "waiting for Kafka"
if ! wait "$kafka_job"; then
  cat "$kafka_fetch_log" >&2
  echo "dev: Kafka did not start (above)" >&2
  exit 1
fi
KAFKA_BROKERS=$(sed -n 's/^KAFKA_BROKERS=//p' "$kafka_fetch_log" | tail -1)
echo "dev: Kafka at $KAFKA_BROKERS"
export OUTBOX_STORE__PATH="$PWD/.local/dev/outbox.db"
export OUTBOX_KAFKA__BROKERS="$KAFKA_BROKERS"
export OUTBOX_RELAY__POLL_INTERVAL_MS=100
step "creating the tables (outboxd schema)"
"$BIN" schema
# The recorded pid is ours only while it runs outboxd (a pid reused after a
# reboot is some other process): argv[0] is the binary.
ours() { [ -f .local/outboxd.pid ] && tr '\0' '\n' <"/proc/$(cat .local/outboxd.pid)/cmdline" 2>/dev/null | head -1 | grep -q '/outboxd$'; }
if ours; then
  echo "dev: outboxd already running (pid $(cat .local/outboxd.pid))"
else
  # Its servers' "listening" lines at INFO whatever RUST_LOG says (a user's
  # RUST_LOG=warn hid them and the wait below timed out).
  RUST_LOG="${RUST_LOG:-info},outboxd::http=info" nohup "$BIN" run >.local/outboxd.log 2>&1 &
  pid=$!
  echo "$pid" >.local/outboxd.pid
  # Ready when its own log says the admin server listens (another process
  # answering on the port would not do) and that server answers /health/live
  # (http.admin_listen: 127.0.0.1:9090 unless OUTBOX_HTTP__ADMIN_LISTEN says
  # otherwise). A daemon that exits first (a port taken, a bad setting) is
  # reported with its log, not as running.
  admin=${OUTBOX_HTTP__ADMIN_LISTEN:-127.0.0.1:9090}
  ready=0
  deadline=$((SECONDS + 30))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -20 .local/outboxd.log >&2
      echo "dev: outboxd run exited (log .local/outboxd.log, above)" >&2
      rm -f .local/outboxd.pid
      exit 1
    fi
    if grep -q "admin server listening on" .local/outboxd.log \
      && curl -gsf -o /dev/null --max-time 1 "http://$admin/health/live"; then
      ready=1
      break
    fi
    sleep 0.1
  done
  if [ "$ready" != 1 ]; then
    tail -20 .local/outboxd.log >&2
    echo "dev: outboxd run did not say it listens within 30 s (log .local/outboxd.log)" >&2
    exit 1
  fi
  echo "dev: outboxd run started (pid $(cat .local/outboxd.pid), log .local/outboxd.log)"
fi
step "running the demo orders"
bash scripts/demo.sh "$BIN"
sleep 1
echo
echo "dev: the relay published (make consume TOPIC=order-events, last 12):"
KAFKA_BROKERS="$KAFKA_BROKERS" OUTBOXD="$BIN" bash scripts/kafka-cli.sh consume order-events 2>/dev/null | tail -12 | cut -c1-160 || true
cat <<MSG

Ready after $(elapsed). Running now:
  Kafka         $KAFKA_BROKERS   (scripts/kafka-local.sh status)
  outboxd       pid $(cat .local/outboxd.pid), log .local/outboxd.log, store $OUTBOX_STORE__PATH
  command API   http://127.0.0.1:8080      metrics/health http://127.0.0.1:9090/{metrics,health}
Watch a topic:     make consume TOPIC=order-events        (rpk when built with make rpk, else kcat)
Read the store:    sqlite3 $OUTBOX_STORE__PATH 'SELECT position, aggregate_id, sequence_number, event_type FROM event_store ORDER BY position DESC LIMIT 10'
Relay progress:    sqlite3 $OUTBOX_STORE__PATH 'SELECT * FROM checkpoints'
Stop everything:   make stop
MSG
