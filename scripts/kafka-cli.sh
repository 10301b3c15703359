#!/usr/bin/env bash
# kafka-cli.sh topics | consume TOPIC - `make topics` and `make consume`.
#
# Which tool: rpk when present (.local/bin/rpk from `make rpk`, or rpk on
# PATH), kcat otherwise; KAFKA_CLI=rpk|kcat forces one. Which broker: the
# docker-compose stack's Redpanda when its container runs (rpk inside it),
# else KAFKA_BROKERS, else the local Kafka of scripts/kafka-local.sh.
#
# consume prints one line per record, the same with both tools:
#     <topic> <partition> <offset> <key> <value>
# from the beginning up to the current end, then exits (FOLLOW=1 keeps
# following, COUNT=n stops after n records). Isolation follows the relay's
# delivery mode: read_committed only when the relay runs exactly-once
# (OUTBOX_RELAY__DELIVERY=exactly-once, or relay.delivery in the effective
# configuration that `outboxd config` prints); otherwise read_uncommitted,
# the consumer default, which is what at-least-once producers write.
# The tool and isolation in use are said on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
note() { echo "kafka-cli: $*" >&2; }
usage() { echo "usage: $0 topics | consume TOPIC" >&2; exit 64; }

cmd=${1:-}; [ -n "$cmd" ] || usage

docker_stack() { docker info >/dev/null 2>&1 && [ -n "$(docker compose ps -q redpanda 2>/dev/null)" ]; }

pick_tool() {
  case "${KAFKA_CLI:-}" in
    rpk|kcat) TOOL=$KAFKA_CLI ;;
    "") if [ -x .local/bin/rpk ] || command -v rpk >/dev/null 2>&1; then TOOL=rpk; else TOOL=kcat; fi ;;
    *) note "KAFKA_CLI must be rpk or kcat, not '$KAFKA_CLI'"; exit 2 ;;
  esac
  if [ "$TOOL" = rpk ]; then
    RPK=$(command -v .local/bin/rpk || command -v rpk || true)
    [ -n "$RPK" ] || { note "rpk not found: run make rpk (or KAFKA_CLI=kcat)"; exit 2; }
  else
    KCAT=$(command -v kcat || command -v kafkacat || true)
    [ -n "$KCAT" ] || { note "neither rpk nor kcat found: apt-get install kcat, or make rpk"; exit 2; }
  fi
}

brokers() {
  if [ -z "${KAFKA_BROKERS:-}" ]; then
    KAFKA_BROKERS=$(bash scripts/kafka-local.sh env 2>/dev/null | sed -n 's/^KAFKA_BROKERS=//p' || true)
    [ -n "$KAFKA_BROKERS" ] || { note "no broker: start one with make dev / make kafka, or set KAFKA_BROKERS"; exit 2; }
  fi
}

# The relay's delivery mode: the variable wins, else the effective
# configuration of the outboxd binary (OUTBOXD, else the cargo build).
delivery() {
  if [ -n "${OUTBOX_RELAY__DELIVERY:-}" ]; then echo "$OUTBOX_RELAY__DELIVERY"; return; fi
  local bin=${OUTBOXD:-} t=${CARGO_TARGET_DIR:-target}
  [ -n "$bin" ] || for b in "$t/debug/outboxd" "$t/release/outboxd"; do [ -x "$b" ] && { bin=$b; break; }; done
  [ -n "$bin" ] || bin=$(command -v outboxd || true)
  # `outboxd config` prints pretty JSON (2 spaces a level): the "delivery"
  # member of the top-level "relay" object, nothing when there is none.
  if [ -n "$bin" ]; then
    { "$bin" config 2>/dev/null || true; } | sed -n '/^  "relay": {$/,/^  }/ s/^    "delivery": "\([^"]*\)",\{0,1\}$/\1/p'
  fi
}

case "$cmd" in
  topics)
    if docker_stack; then exec docker compose exec -T redpanda rpk topic list; fi
    pick_tool; brokers
    if [ "$TOOL" = rpk ]; then exec "$RPK" topic list -X brokers="$KAFKA_BROKERS"; fi
    "$KCAT" -b "$KAFKA_BROKERS" -L | sed -n 's/^ *topic "\([^"]*\)".*/\1/p' | sort
    ;;
  consume)
    topic=${2:-}; [ -n "$topic" ] || { note "TOPIC is required: make consume TOPIC=order-events"; exit 2; }
    mode=$(delivery)
    committed=0; [ "$mode" = exactly-once ] && committed=1
    iso=read_uncommitted; [ "$committed" = 1 ] && iso=read_committed
    count=${COUNT:-0}
    if docker_stack; then
      TOOL=rpk; RPK=(docker compose exec -T redpanda rpk); brokers_args=()
    else
      pick_tool; brokers
      RPK=("${RPK:-rpk}"); brokers_args=(-X "brokers=$KAFKA_BROKERS")
    fi
    note "$TOOL, $iso (relay delivery: ${mode:-at-least-once}), topic $topic"
    if [ "$TOOL" = rpk ]; then
      args=(topic consume "$topic" "${brokers_args[@]}" -f '%t %p %o %k %v\n')
      if [ "${FOLLOW:-0}" = 1 ]; then args+=(-o start); else args+=(-o :end); fi
      [ "$count" -gt 0 ] && args+=(-n "$count")
      [ "$committed" = 1 ] && args+=(--read-committed)
      exec "${RPK[@]}" "${args[@]}"
    fi
    args=(-b "$KAFKA_BROKERS" -C -t "$topic" -o beginning -q -f '%t %p %o %k %s\n' -X "isolation.level=$iso")
    # Following, each record is written at once (-u: kcat's stdout is
    # otherwise block-buffered into a pipe, e.g. `make consume ... | grep`).
    if [ "${FOLLOW:-0}" = 1 ]; then args+=(-u); else args+=(-e); fi
    [ "$count" -gt 0 ] && args+=(-c "$count")
    exec "$KCAT" "${args[@]}"
    ;;
  *) usage ;;
esac
