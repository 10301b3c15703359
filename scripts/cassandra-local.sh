#!/usr/bin/env bash
# cassandra-local.sh — run a REAL Apache Cassandra 5.0 single node on loopback,
# without Docker, for outboxd's local runs and CI.
#
# Usage: scripts/cassandra-local.sh start|stop|status|env [--secure]
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
# --secure: a second, independent node in production shape (own state dir,
#   own ports, own pid; runs beside the plain one):
#   - PasswordAuthenticator + CassandraAuthorizer + CassandraRoleManager; the
#     default superuser cassandra/cassandra exists before `start` returns
#     (superuser_setup_delay_ms 0; readiness waits for the role).
#   - Client encryption from a PKCS12 keystore the script makes once with the
#     JDK's keytool (state dir tls/): a local CA (tls/ca.pem, PEM for clients)
#     and a node certificate signed by it for IP 127.0.0.1 and DNS localhost
#     (EKU serverAuth). Encryption is optional on the CQL port by default, so
#     plaintext clients with credentials work too (grants tests); TLS clients
#     get the node certificate. With openssl on PATH a client certificate and
#     key signed by the same CA are made too (tls/client.pem, tls/client.key);
#     CASSANDRA_SECURE_CLIENT_AUTH=1 makes the node require one on TLS
#     connections (require_client_auth, truststore = the CA).
#   - `start --secure` / `env --secure` print, last line last:
#       CASSANDRA_SECURE_CA=<dir>/tls/ca.pem
#       CASSANDRA_SECURE_USER=cassandra
#       CASSANDRA_SECURE_PASSWORD=cassandra
#       [CASSANDRA_SECURE_CLIENT_CERT=<dir>/tls/client.pem]
#       [CASSANDRA_SECURE_CLIENT_KEY=<dir>/tls/client.key]
#       CASSANDRA_SECURE_URI=127.0.0.1:<port>
#   - Smaller heap by default (256m / 512m): it only serves tests.
#
# Environment
#   CASSANDRA_LOCAL_DIR      state dir (default: $PWD/.local/cassandra)
#   CASSANDRA_PORT           CQL port (default: free port, reused from port file)
#   CASSANDRA_SECURE_DIR     --secure state dir (default: $CASSANDRA_LOCAL_DIR-secure)
#   CASSANDRA_SECURE_PORT    --secure CQL port (default: free port, reused)
#   CASSANDRA_SECURE_TLS_OPTIONAL  --secure: 1 (default) plaintext also accepted, 0 TLS only
#   CASSANDRA_SECURE_CLIENT_AUTH   --secure: 1 requires a client certificate on TLS (default 0)
#   CASSANDRA_VERSION        cassandra-all version (default below)
#   OUTBOXD_CACHE            cache root (default: $HOME/.cache/outboxd)
#   CASSANDRA_START_TIMEOUT  seconds to wait for CQL (default 180)
#   CASSANDRA_HEAP_MIN / CASSANDRA_HEAP_MAX   JVM heap (default 512m / 1g;
#                            --secure 256m / 512m)
#   CASSANDRA_JVM_EXTRA      extra JVM flags (word-split)
#   JAVA_HOME                java to use (default: java on PATH)
#
# State dir layout: data/ commitlog/ saved_caches/ hints/ cdc_raw/ triggers/
#   cassandra.yaml logback.xml cassandra.pid ports cassandra.log (+ .1 previous)
#   --secure also: tls/ (ca.p12, ca.pem, keystore.p12, truststore.p12,
#   client.pem, client.key, password) and superuser-ready
set -euo pipefail

COMMAND="${1:-}"
SECURE=0
if [[ $# -eq 2 && "$2" == --secure ]]; then
  SECURE=1
elif [[ $# -ne 1 ]]; then
  COMMAND=usage
fi

CASSANDRA_VERSION="${CASSANDRA_VERSION:-5.0.9}"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$SCRIPT_DIR/cassandra/pom.xml"
CACHE_ROOT="${OUTBOXD_CACHE:-$HOME/.cache/outboxd}"
CACHE="$CACHE_ROOT/cassandra-$CASSANDRA_VERSION"
LIB="$CACHE/lib"
MARKER="$CACHE/.complete"

DIR="${CASSANDRA_LOCAL_DIR:-$PWD/.local/cassandra}"
if (( SECURE )); then
  DIR="${CASSANDRA_SECURE_DIR:-$DIR-secure}"
  CASSANDRA_PORT="${CASSANDRA_SECURE_PORT:-}"
  : "${CASSANDRA_HEAP_MIN:=256m}" "${CASSANDRA_HEAP_MAX:=512m}"
fi
[[ "$DIR" == /* ]] || DIR="$PWD/$DIR"
TLS_DIR="$DIR/tls"
SUPERUSER_READY="$DIR/superuser-ready"
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
  echo "usage: $0 start|stop|status|env [--secure]" >&2
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

# Maven over the network: checksums must match (-C: a corrupt download
# fails instead of being cached), and a stalled transfer fails after 60 s
# and is retried (the defaults wait up to 30 min per request).
MVN_NET=(-C -Dmaven.wagon.rto=60000 -Dmaven.wagon.http.retryHandler.count=3
  -Daether.connector.requestTimeout=60000 -Daether.connector.connectTimeout=20000)

# The marker holds this hash: a changed pom (a dependency added) fetches again.
pom_hash() { { echo "$CASSANDRA_VERSION"; cat "$POM"; } | sha256sum | cut -d' ' -f1; }

cache_complete() {
  [[ -f "$MARKER" && "$(cat "$MARKER")" == "$(pom_hash)" ]] && compgen -G "$LIB/cassandra-all-$CASSANDRA_VERSION.jar" >/dev/null
}

fetch_jars() {
  cache_complete && return 0
  command -v mvn >/dev/null 2>&1 \
    || die 2 "mvn not found: install Maven (apt-get install maven) to fetch cassandra-all $CASSANDRA_VERSION"
  [[ -f "$POM" ]] || die 2 "missing $POM"
  mkdir -p "$CACHE"
  # Serialize concurrent fetches into the same cache.
  exec 8>"$CACHE/.fetch.lock"
  flock 8
  if cache_complete; then
    exec 8>&-
    return 0
  fi
  log "fetching cassandra-all $CASSANDRA_VERSION and dependencies into $LIB (one-time)"
  rm -rf "$LIB.tmp"
  if ! mvn -q -B "${MVN_NET[@]}" -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
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
  pom_hash >"$MARKER"
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

# The address lines `start` and `env` print (usable with eval); the URI last.
uri_line() {
  if (( SECURE )); then
    echo "CASSANDRA_SECURE_CA=$TLS_DIR/ca.pem"
    echo "CASSANDRA_SECURE_USER=cassandra"
    echo "CASSANDRA_SECURE_PASSWORD=cassandra"
    if [[ -f "$TLS_DIR/client.key" ]]; then
      echo "CASSANDRA_SECURE_CLIENT_CERT=$TLS_DIR/client.pem"
      echo "CASSANDRA_SECURE_CLIENT_KEY=$TLS_DIR/client.key"
    fi
    echo "CASSANDRA_SECURE_URI=$HOST:$1"
  else
    echo "CASSANDRA_URI=$HOST:$1"
  fi
}

# ---------------------------------------------------------------- TLS material (--secure)

# kt STORE ARGS...: the JDK's keytool on a PKCS12 store with our password.
kt() {
  local store="$1"; shift
  "$KEYTOOL" -noprompt -storetype PKCS12 -keystore "$store" -storepass "$TLS_PASSWORD" "$@"
}

# Makes (once per state dir) a local CA, the node's keystore (key + chain
# signed by the CA, SAN 127.0.0.1/localhost), a truststore holding the CA,
# ca.pem for clients, and with openssl a client certificate + PKCS#8 key.
make_tls() {
  KEYTOOL="$(dirname "$JAVA")/keytool"
  [[ -x "$KEYTOOL" ]] || KEYTOOL="$(command -v keytool || true)"
  [[ -n "$KEYTOOL" ]] || die 2 "keytool not found (it ships with the JDK): needed for --secure"
  mkdir -p "$TLS_DIR"
  [[ -s "$TLS_DIR/password" ]] || od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$TLS_DIR/password"
  TLS_PASSWORD="$(<"$TLS_DIR/password")"
  [[ -s "$TLS_DIR/keystore.p12" && -s "$TLS_DIR/ca.pem" && -s "$TLS_DIR/truststore.p12" ]] && return 0
  log "making a local CA and the node's TLS keystore in $TLS_DIR (keytool)"
  rm -f "$TLS_DIR"/{ca.p12,ca.pem,keystore.p12,truststore.p12,node.csr,node.pem,client.*}
  local ext=(-ext "SAN=ip:127.0.0.1,dns:localhost")
  kt "$TLS_DIR/ca.p12" -genkeypair -alias ca -keyalg RSA -keysize 2048 -validity 3650 \
     -dname "CN=outboxd local test CA" -ext bc:c -ext KU:c=keyCertSign,cRLSign >/dev/null 2>&1 \
     || die 1 "keytool could not make the CA"
  kt "$TLS_DIR/ca.p12" -exportcert -rfc -alias ca -file "$TLS_DIR/ca.pem" >/dev/null 2>&1
  kt "$TLS_DIR/keystore.p12" -genkeypair -alias node -keyalg RSA -keysize 2048 -validity 3650 \
     -dname "CN=localhost" "${ext[@]}" >/dev/null 2>&1 || die 1 "keytool could not make the node key"
  kt "$TLS_DIR/keystore.p12" -certreq -alias node -file "$TLS_DIR/node.csr" >/dev/null 2>&1
  kt "$TLS_DIR/ca.p12" -gencert -alias ca -rfc -validity 3650 -infile "$TLS_DIR/node.csr" \
     -outfile "$TLS_DIR/node.pem" "${ext[@]}" -ext KU:c=digitalSignature,keyEncipherment \
     -ext EKU=serverAuth >/dev/null 2>&1 || die 1 "keytool could not sign the node certificate"
  kt "$TLS_DIR/keystore.p12" -importcert -alias ca -file "$TLS_DIR/ca.pem" >/dev/null 2>&1
  kt "$TLS_DIR/keystore.p12" -importcert -alias node -file "$TLS_DIR/node.pem" >/dev/null 2>&1 \
     || die 1 "keytool could not import the signed node certificate"
  kt "$TLS_DIR/truststore.p12" -importcert -alias ca -file "$TLS_DIR/ca.pem" >/dev/null 2>&1
  if command -v openssl >/dev/null 2>&1; then
    # Client certificate for the mutual-TLS variant: key made by openssl so
    # the Rust client can read it as PEM (keytool cannot export keys).
    if ! { openssl req -new -newkey rsa:2048 -nodes -subj "/CN=outboxd-test-client" \
             -keyout "$TLS_DIR/client.key" -out "$TLS_DIR/client.csr" >/dev/null 2>&1 \
           && kt "$TLS_DIR/ca.p12" -gencert -alias ca -rfc -validity 3650 -infile "$TLS_DIR/client.csr" \
                -outfile "$TLS_DIR/client.pem" -ext KU:c=digitalSignature -ext EKU=clientAuth >/dev/null 2>&1; }; then
      log "warning: no client certificate made (openssl/keytool failed)"
      rm -f "$TLS_DIR"/client.*
    fi
    rm -f "$TLS_DIR/client.csr"
  fi
  rm -f "$TLS_DIR/node.csr"
}

# cassandra.yaml lines for authentication/authorisation and client TLS.
security_config() {
  if (( ! SECURE )); then
    cat <<EOF
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
role_manager: CassandraRoleManager
network_authorizer: AllowAllNetworkAuthorizer
EOF
    return 0
  fi
  local optional=true client_auth=false
  [[ "${CASSANDRA_SECURE_TLS_OPTIONAL:-1}" == 0 ]] && optional=false
  [[ "${CASSANDRA_SECURE_CLIENT_AUTH:-0}" == 1 ]] && client_auth=true
  cat <<EOF
authenticator: PasswordAuthenticator
authorizer: CassandraAuthorizer
role_manager: CassandraRoleManager
network_authorizer: AllowAllNetworkAuthorizer
# Short auth caches: tests change grants and expect them to apply quickly.
roles_validity: 2000ms
permissions_validity: 2000ms
credentials_validity: 2000ms

client_encryption_options:
  enabled: true
  optional: $optional
  keystore: $TLS_DIR/keystore.p12
  keystore_password: $TLS_PASSWORD
  truststore: $TLS_DIR/truststore.p12
  truststore_password: $TLS_PASSWORD
  store_type: PKCS12
  require_client_auth: $client_auth
  accepted_protocols: [TLSv1.2, TLSv1.3]
EOF
}

# ---------------------------------------------------------------- config files

write_config() {
  local CLUSTER_NAME=outboxd-local
  (( SECURE )) && CLUSTER_NAME=outboxd-local-secure
  cat >"$YAML" <<EOF
# Generated by scripts/cassandra-local.sh on every start; edits are overwritten.
# Single-node, loopback-only Cassandra for tests.
cluster_name: $CLUSTER_NAME
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

$(security_config)

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

# --secure: the default superuser exists (created once, shortly after the
# first start; remembered in the state dir).
superuser_ready() {
  (( SECURE )) || return 0
  [[ -f "$SUPERUSER_READY" ]] && return 0
  if grep -q -e "Created default superuser role" "$LOG_FILE" 2>/dev/null; then
    date -u +%FT%TZ >"$SUPERUSER_READY"
    return 0
  fi
  return 1
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
    if grep -q -e "Startup complete" "$LOG_FILE" 2>/dev/null && port_open "$NATIVE_PORT" && superuser_ready; then
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
  if (( SECURE )); then make_tls; fi
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

case "$COMMAND" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  -h|--help|help) usage ;;
  *) usage ;;
esac
