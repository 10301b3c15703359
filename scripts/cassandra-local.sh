#!/usr/bin/env bash
# cassandra-local.sh — run a REAL Apache Cassandra 5.0 single node on loopback,
# without Docker, for outboxd's local runs and CI.
#
# Usage: scripts/cassandra-local.sh start|stop|status|env
#
# Role
#   Fetches org.apache.cassandra:cassandra-all (plus its runtime classpath) from
#   Maven Central with scripts/cassandra/pom.xml into a per-version cache, writes
#   a minimal single-node config and runs org.apache.cassandra.service.CassandraDaemon
#   with Java 17, detached from the calling shell.
#
# Guarantees
#   - Binds only to 127.0.0.1 (CQL, storage/gossip, JMX). Ports are picked free
#     on first start (CQL overridable with CASSANDRA_PORT), recorded in the port
#     file and reused on later starts, so CASSANDRA_URI is stable per state dir.
#   - `start` is idempotent: if the node of this state dir is already running it
#     only prints the URI. Otherwise it returns only once CQL answers (the port
#     accepts connections and the log says "Startup complete"), or fails with
#     exit 1 after CASSANDRA_START_TIMEOUT seconds (default 180), printing the
#     last 60 log lines and stopping the half-started JVM.
#   - The last line `start` prints on stdout is `CASSANDRA_URI=127.0.0.1:<port>`
#     (the same line `env` prints); progress messages go to stderr.
#   - Data survives stop/start (same CASSANDRA_LOCAL_DIR). Delete that dir to wipe.
#   - `stop` signals exactly the recorded pid (after checking it is still this
#     node's JVM): SIGTERM, up to 30 s, then SIGKILL. Never kills by name.
#     Exit 0 also when nothing was running.
#   - `status` exits 0 when running, 3 when stopped.
#   - Exit 2 when java (17+) or mvn is missing.
#   - Lightweight transactions (Paxos: IF conditions, conditional batches) work
#     with the default Paxos settings.
#
# Environment
#   CASSANDRA_LOCAL_DIR      state dir (default: $PWD/.local/cassandra)
#   CASSANDRA_PORT           CQL port (default: free port, reused from port file)
#   CASSANDRA_VERSION        cassandra-all version (default below)
#   OUTBOXD_CACHE            cache root (default: $HOME/.cache/outboxd)
#   CASSANDRA_START_TIMEOUT  seconds to wait for CQL (default 180)
#   CASSANDRA_HEAP_MIN / CASSANDRA_HEAP_MAX   JVM heap (default 512m / 1g)
#   CASSANDRA_JVM_EXTRA      extra JVM flags (word-split)
#   JAVA_HOME                java to use (default: java on PATH)
#
# State dir layout: data/ commitlog/ saved_caches/ hints/ cdc_raw/ triggers/
#   cassandra.yaml logback.xml cassandra.pid ports cassandra.log (+ .1 previous)
set -euo pipefail

CASSANDRA_VERSION="${CASSANDRA_VERSION:-5.0.9}"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$SCRIPT_DIR/cassandra/pom.xml"
CACHE_ROOT="${OUTBOXD_CACHE:-$HOME/.cache/outboxd}"
CACHE="$CACHE_ROOT/cassandra-$CASSANDRA_VERSION"
LIB="$CACHE/lib"
MARKER="$CACHE/.complete"

DIR="${CASSANDRA_LOCAL_DIR:-$PWD/.local/cassandra}"
[[ "$DIR" == /* ]] || DIR="$PWD/$DIR"
PID_FILE="$DIR/cassandra.pid"
PORT_FILE="$DIR/ports"
LOG_FILE="$DIR/cassandra.log"
YAML="$DIR/cassandra.yaml"
LOGBACK="$DIR/logback.xml"
HOST=127.0.0.1
START_TIMEOUT="${CASSANDRA_START_TIMEOUT:-180}"
STOP_TIMEOUT=30
MAIN_CLASS=org.apache.cassandra.service.CassandraDaemon

log() { echo "cassandra-local: $*" >&2; }
die() { local code="$1"; shift; log "$*"; exit "$code"; }

usage() {
  echo "usage: $0 start|stop|status|env" >&2
  exit 64
}

# ---------------------------------------------------------------- prerequisites

JAVA=""
find_java() {
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
    JAVA="$JAVA_HOME/bin/java"
  elif command -v java >/dev/null 2>&1; then
    JAVA="$(command -v java)"
  else
    die 2 "java not found: install a Java 17 JDK (e.g. apt-get install openjdk-17-jdk-headless) or set JAVA_HOME"
  fi
  local ver major
  ver="$("$JAVA" -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -n1)"
  major="${ver%%.*}"
  if ! [[ "$major" =~ ^[0-9]+$ ]] || (( major < 17 )); then
    die 2 "Cassandra $CASSANDRA_VERSION needs Java 17 (found '${ver:-unknown}' at $JAVA)"
  fi
  if (( major > 17 )); then
    log "warning: Java $major found; Cassandra 5.0 supports Java 11 and 17 only"
  fi
}

fetch_jars() {
  if [[ -f "$MARKER" ]] && compgen -G "$LIB/cassandra-all-$CASSANDRA_VERSION.jar" >/dev/null; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 \
    || die 2 "mvn not found: install Maven (apt-get install maven) to fetch cassandra-all $CASSANDRA_VERSION"
  [[ -f "$POM" ]] || die 2 "missing $POM"
  mkdir -p "$CACHE"
  # Serialize concurrent fetches into the same cache.
  exec 8>"$CACHE/.fetch.lock"
  flock 8
  if [[ -f "$MARKER" ]] && compgen -G "$LIB/cassandra-all-$CASSANDRA_VERSION.jar" >/dev/null; then
    exec 8>&-
    return 0
  fi
  log "fetching cassandra-all $CASSANDRA_VERSION and dependencies into $LIB (one-time)"
  rm -rf "$LIB.tmp"
  if ! mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
        -Dcassandra.version="$CASSANDRA_VERSION" \
        -DoutputDirectory="$LIB.tmp" >"$CACHE/fetch.log" 2>&1; then
    tail -n 40 "$CACHE/fetch.log" >&2 || true
    rm -rf "$LIB.tmp"
    die 1 "maven failed to fetch cassandra-all $CASSANDRA_VERSION (log: $CACHE/fetch.log)"
  fi
  [[ -f "$LIB.tmp/cassandra-all-$CASSANDRA_VERSION.jar" ]] \
    || die 1 "maven did not produce cassandra-all-$CASSANDRA_VERSION.jar"
  rm -rf "$LIB"
  mv "$LIB.tmp" "$LIB"
  date -u +%FT%TZ >"$MARKER"
  exec 8>&-
}

# ---------------------------------------------------------------- process state

# Prints the recorded pid if that process is alive and is this node's JVM.
running_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(tr -dc '0-9' <"$PID_FILE")"
  [[ -n "$pid" ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # Guard against pid reuse: the command line must be our daemon with our yaml.
  if [[ -r "/proc/$pid/cmdline" ]]; then
    local cmd
    cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    [[ "$cmd" == *"$MAIN_CLASS"* && "$cmd" == *"$YAML"* ]] || return 1
  fi
  echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# A loopback port nobody listens on (checked by connecting, both above and via ss).
free_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 30000 ))
    [[ " ${TAKEN_PORTS:-} " == *" $p "* ]] && continue
    port_open "$p" && continue
    if command -v ss >/dev/null 2>&1 && ss -Htan "sport = :$p" 2>/dev/null | grep -q .; then
      continue
    fi
    TAKEN_PORTS="${TAKEN_PORTS:-} $p"
    echo "$p"
    return 0
  done
  die 1 "could not find a free loopback port"
}

read_ports() {
  NATIVE_PORT=""; STORAGE_PORT=""; JMX_PORT=""
  if [[ -f "$PORT_FILE" ]]; then
    NATIVE_PORT="$(sed -n 's/^native_transport_port=\([0-9]*\)$/\1/p' "$PORT_FILE")"
    STORAGE_PORT="$(sed -n 's/^storage_port=\([0-9]*\)$/\1/p' "$PORT_FILE")"
    JMX_PORT="$(sed -n 's/^jmx_port=\([0-9]*\)$/\1/p' "$PORT_FILE")"
  fi
}

choose_ports() {
  read_ports
  TAKEN_PORTS=""
  if [[ -n "${CASSANDRA_PORT:-}" ]]; then
    [[ "$CASSANDRA_PORT" =~ ^[0-9]+$ ]] || die 1 "CASSANDRA_PORT must be a number"
    NATIVE_PORT="$CASSANDRA_PORT"
  fi
  local name var
  for name in native_transport_port storage_port jmx_port; do
    case "$name" in
      native_transport_port) var=NATIVE_PORT ;;
      storage_port) var=STORAGE_PORT ;;
      jmx_port) var=JMX_PORT ;;
    esac
    if [[ -n "${!var}" ]]; then
      if port_open "${!var}"; then
        if [[ "$var" == NATIVE_PORT && -n "${CASSANDRA_PORT:-}" ]]; then
          die 1 "CASSANDRA_PORT=$CASSANDRA_PORT is already in use on $HOST"
        fi
        log "warning: recorded $name ${!var} is taken by another process; picking a new one"
        printf -v "$var" '%s' "$(free_port)"
      else
        TAKEN_PORTS="$TAKEN_PORTS ${!var}"
      fi
    else
      printf -v "$var" '%s' "$(free_port)"
    fi
  done
  {
    echo "native_transport_port=$NATIVE_PORT"
    echo "storage_port=$STORAGE_PORT"
    echo "jmx_port=$JMX_PORT"
  } >"$PORT_FILE.tmp"
  mv "$PORT_FILE.tmp" "$PORT_FILE"
}

uri_line() { echo "CASSANDRA_URI=$HOST:$1"; }

# ---------------------------------------------------------------- config files

write_config() {
  cat >"$YAML" <<EOF
# Generated by scripts/cassandra-local.sh on every start; edits are overwritten.
# Single-node, loopback-only Cassandra for tests.
cluster_name: outboxd-local
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "$HOST:$STORAGE_PORT"
listen_address: $HOST
rpc_address: $HOST
storage_port: $STORAGE_PORT
start_native_transport: true
native_transport_port: $NATIVE_PORT

authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
role_manager: CassandraRoleManager
network_authorizer: AllowAllNetworkAuthorizer

data_file_directories:
  - $DIR/data
commitlog_directory: $DIR/commitlog
saved_caches_directory: $DIR/saved_caches
hints_directory: $DIR/hints
cdc_raw_directory: $DIR/cdc_raw

commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 8MiB

# Fast and small for tests.
auto_snapshot: false
snapshot_before_compaction: false
incremental_backups: false
memtable_heap_space: 64MiB
memtable_offheap_space: 64MiB
key_cache_size: 16MiB
counter_cache_size: 4MiB
file_cache_size: 64MiB
concurrent_compactors: 1
hinted_handoff_enabled: false

# Generous timeouts: the test machine is small and shared (Kafka, cargo).
read_request_timeout: 10000ms
range_request_timeout: 20000ms
write_request_timeout: 5000ms
counter_write_request_timeout: 10000ms
cas_contention_timeout: 5000ms
truncate_request_timeout: 60000ms
request_timeout: 20000ms
EOF

  cat >"$LOGBACK" <<'EOF'
<!-- Generated by scripts/cassandra-local.sh: INFO to stdout (redirected to cassandra.log). -->
<configuration scan="false">
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <logger name="org.apache.cassandra" level="INFO"/>
  <logger name="com.thinkaurelius.thrift" level="ERROR"/>
  <root level="INFO">
    <appender-ref ref="STDOUT"/>
  </root>
</configuration>
EOF
}

jvm_opts() {
  JVM_OPTS=(
    "-Xms${CASSANDRA_HEAP_MIN:-512m}" "-Xmx${CASSANDRA_HEAP_MAX:-1g}"
    -Xss256k
    -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1
    -XX:G1HeapRegionSize=16m -XX:MaxGCPauseMillis=300
    -XX:+UseThreadPriorities -XX:+PerfDisableSharedMem -XX:+ExitOnOutOfMemoryError
    -ea -da:net.openhft...
    -Djava.net.preferIPv4Stack=true
    -Djava.awt.headless=true
    # Java 17 module access Cassandra 5.0 needs (conf/jvm17-server.options).
    -Djdk.attach.allowAttachSelf=true
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports java.base/jdk.internal.ref=ALL-UNNAMED
    --add-exports java.base/sun.nio.ch=ALL-UNNAMED
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED
    --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-opens java.base/java.lang.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens java.base/java.io=ALL-UNNAMED
    --add-opens java.base/java.nio=ALL-UNNAMED
    --add-opens java.base/java.util.concurrent=ALL-UNNAMED
    --add-opens java.base/java.util=ALL-UNNAMED
    --add-opens java.base/java.util.concurrent.atomic=ALL-UNNAMED
    --add-opens java.base/java.lang=ALL-UNNAMED
    --add-opens java.base/java.math=ALL-UNNAMED
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens java.base/java.net=ALL-UNNAMED
    -Dio.netty.tryReflectionSetAccessible=true
    -Dio.netty.allocator.useCacheForAllThreads=true
    -Dio.netty.allocator.maxOrder=11
    # Memory measurement agent, as cassandra-env.sh does.
    "-javaagent:$LIB/jamm-0.4.0.jar"
    # Config, paths, ports.
    "-Dcassandra.config=file://$YAML"
    "-Dlogback.configurationFile=file://$LOGBACK"
    "-Dcassandra.storagedir=$DIR"
    "-Dcassandra.logdir=$DIR"
    "-Dcassandra.triggers_dir=$DIR/triggers"
    "-Dcassandra.jmx.local.port=$JMX_PORT"
    -Dcassandra-foreground=yes
    # Faster boot of a fresh single node.
    -Dcassandra.skip_wait_for_gossip_to_settle=0
    -Dcassandra.ring_delay_ms=1000
    -Dcassandra.superuser_setup_delay_ms=0
    -Dcassandra.auth_bcrypt_gensalt_log2_rounds=4
    # Faster stop: no 2 s gossip shutdown announcement (nobody to tell).
    -Dcassandra.shutdown_announce_in_ms=0
  )
  if [[ ! -f "$LIB/jamm-0.4.0.jar" ]]; then
    # Different cassandra-all version: use whatever jamm it ships with.
    local jamm
    jamm="$(compgen -G "$LIB/jamm-*.jar" | head -n1 || true)"
    local i
    for i in "${!JVM_OPTS[@]}"; do
      if [[ "${JVM_OPTS[$i]}" == -javaagent:* ]]; then
        if [[ -n "$jamm" ]]; then JVM_OPTS[i]="-javaagent:$jamm"; else unset "JVM_OPTS[$i]"; fi
      fi
    done
  fi
  if [[ -n "${CASSANDRA_JVM_EXTRA:-}" ]]; then
    # shellcheck disable=SC2206
    JVM_OPTS+=($CASSANDRA_JVM_EXTRA)
  fi
}

# ---------------------------------------------------------------- commands

cmd_env() {
  local port="${CASSANDRA_PORT:-}"
  if [[ -z "$port" ]]; then
    read_ports
    port="$NATIVE_PORT"
  fi
  [[ -n "$port" ]] || die 1 "no port recorded in $PORT_FILE; run '$0 start' first"
  uri_line "$port"
}

cmd_status() {
  local pid
  read_ports
  if pid="$(running_pid)"; then
    echo "running pid=$pid address=$HOST:$NATIVE_PORT dir=$DIR"
    return 0
  fi
  echo "stopped dir=$DIR"
  return 3
}

stop_pid() {
  local pid="$1" i
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  log "pid $pid did not exit within ${STOP_TIMEOUT}s after SIGTERM; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  die 1 "pid $pid still alive after SIGKILL"
}

cmd_stop() {
  local pid
  if [[ -d "$DIR" ]]; then
    exec 9>"$DIR/.lock"
    flock 9
  fi
  if pid="$(running_pid)"; then
    log "stopping pid $pid"
    stop_pid "$pid"
    log "stopped"
  else
    log "not running"
  fi
  rm -f "$PID_FILE"
}

# Waits until the node answers CQL: the JVM is alive, the log (rotated at each
# start) says "Startup complete" and the CQL port accepts connections.
wait_ready() {
  local pid="$1"
  local deadline=$((SECONDS + START_TIMEOUT))
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "Cassandra exited during startup; last 60 log lines of $LOG_FILE:"
      tail -n 60 "$LOG_FILE" >&2 || true
      rm -f "$PID_FILE"
      exit 1
    fi
    if grep -q -e "Startup complete" "$LOG_FILE" 2>/dev/null && port_open "$NATIVE_PORT"; then
      return 0
    fi
    if (( SECONDS >= deadline )); then
      log "CQL did not come up within ${START_TIMEOUT}s; last 60 log lines of $LOG_FILE:"
      tail -n 60 "$LOG_FILE" >&2 || true
      log "stopping the half-started node (pid $pid)"
      stop_pid "$pid" || true
      rm -f "$PID_FILE"
      exit 1
    fi
    sleep 0.5
  done
}

cmd_start() {
  mkdir -p "$DIR"
  exec 9>"$DIR/.lock"
  flock 9   # one start/stop at a time per state dir

  local pid
  if pid="$(running_pid)"; then
    exec 9>&-
    read_ports
    log "already running (pid $pid)"
    wait_ready "$pid"   # another start may still be booting it
    uri_line "$NATIVE_PORT"
    return 0
  fi

  find_java
  fetch_jars
  mkdir -p "$DIR"/{data,commitlog,saved_caches,hints,cdc_raw,triggers}
  choose_ports
  write_config
  jvm_opts

  [[ -f "$LOG_FILE" ]] && mv -f "$LOG_FILE" "$LOG_FILE.1"
  local t0=$SECONDS
  log "starting Cassandra $CASSANDRA_VERSION on $HOST:$NATIVE_PORT (storage $STORAGE_PORT, jmx $JMX_PORT), state in $DIR"
  # setsid: own session, so the node outlives the caller's shell/job control.
  # In a non-interactive shell the background job is not a group leader, so
  # setsid execs in place and $! is the JVM's pid.
  # The lock fds (8, 9) are closed for the JVM so it never holds the locks.
  (cd "$DIR" && exec nohup setsid "$JAVA" "${JVM_OPTS[@]}" -cp "$LIB/*" "$MAIN_CLASS" \
      </dev/null >>"$LOG_FILE" 2>&1 8>&- 9>&-) &
  pid=$!
  echo "$pid" >"$PID_FILE"
  exec 9>&-   # don't hand the lock fd to waiters; pid file now exists

  wait_ready "$pid"
  log "up after $((SECONDS - t0))s (pid $pid)"
  uri_line "$NATIVE_PORT"
}

[[ $# -eq 1 ]] || usage
case "$1" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  -h|--help|help) usage ;;
  *) usage ;;
esac
