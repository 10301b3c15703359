#!/usr/bin/env bash
# kafka-local.sh - run a real Apache Kafka 4.x broker (KRaft, single node acting
# as broker+controller) on 127.0.0.1 for local development and integration
# tests, without Docker.
#
# Usage: scripts/kafka-local.sh start|stop|status|env
#
# How it works
#   * The broker jars come from Maven Central via scripts/kafka/pom.xml
#     (`mvn dependency:copy-dependencies`) into a shared cache,
#     ${OUTBOXD_CACHE:-$HOME/.cache/outboxd}/kafka-<version>/libs. A marker file
#     records a complete download (keyed on the pom's hash), so later runs make
#     no network access and do not need mvn.
#   * Each instance lives in its own directory, KAFKA_LOCAL_DIR (default
#     $PWD/.local/kafka): server.properties, log4j2.properties, data/ (log.dirs),
#     kafka.pid, port, controller-port, cluster-id, kafka.log (kafka.log.prev
#     keeps the previous run's log), format.log. Instances in different
#     directories are fully independent and can run at the same time.
#   * JVM: -Xms256m -Xmx512m, Serial GC, C1 JIT only (small and quick to start),
#     plus an AppCDS archive in the cache that the first broker writes when it
#     is stopped; later starts use it and take ~1.5 s instead of ~2.5 s.
#
# Guarantees
#   * start: idempotent. If this directory's broker is already running, it only
#     prints the address. Otherwise it starts the broker and returns only once
#     the broker has logged "Kafka Server started" (i.e. it is unfenced and
#     serves metadata) and accepts TCP connections, or fails with exit 1 after
#     KAFKA_START_TIMEOUT seconds (default 90), printing the last 40 log lines
#     and killing the half-started broker. The last stdout line is
#     KAFKA_BROKERS=127.0.0.1:<port>.
#   * Ports: the first start picks two free loopback ports (client PLAINTEXT and
#     CONTROLLER), outside the kernel's ephemeral range, unless KAFKA_PORT /
#     KAFKA_CONTROLLER_PORT are given. They are recorded in the directory, and
#     every later start of that directory reuses them and the same data, so a
#     test can stop and restart "the same" broker at the same address and still
#     read what it wrote before.
#   * Storage is formatted (kafka.tools.StorageTool format) only on first start.
#   * stop: signals exactly the recorded pid, and only after checking that the
#     pid still is this directory's broker (its command line names this
#     server.properties): SIGTERM (controlled shutdown), up to 30 s, then
#     SIGKILL. Never kills by name. Exit 0 also when nothing was running.
#   * status: prints running/stopped and the address; exit 0 running, 3 stopped.
#   * TLS (KAFKA_TLS=1 on the first start of a directory, kept on every later
#     start): two more listeners, SSL and SASL_SSL (SCRAM-SHA-512, user
#     `outboxd` with a password made for this directory), each on its own
#     port, with a certificate for 127.0.0.1/localhost signed by a CA made
#     for this directory (keytool, in tls/). start then also prints
#     KAFKA_TLS_BROKERS=127.0.0.1:<port>, KAFKA_SASL_BROKERS=127.0.0.1:<port>,
#     KAFKA_SASL_USER, KAFKA_SASL_PASSWORD, KAFKA_TLS_CA=<dir>/tls/ca.pem
#     (the CA a client must trust) and KAFKA_OAUTH_TOKEN=<dir>/tls/oauth-token,
#     before the KAFKA_BROKERS line. The SASL_SSL listener also takes
#     OAUTHBEARER: a JWT signed by the RSA key of tls/jwks.json (made with
#     openssl for this directory; audience and issuer outboxd-local), such as
#     the one in KAFKA_OAUTH_TOKEN (re-signed on every start, valid 30 days)
#     that an OIDC token endpoint hands out; tls/broker.pem and
#     tls/broker-key.pem let such an endpoint serve HTTPS under the same CA.
#   * env: prints KAFKA_BROKERS=127.0.0.1:<port> (usable with eval); exit 3 if
#     this directory has never been started (no port recorded yet).
#   * start/stop of one directory are serialised with flock, and concurrent
#     first downloads into the cache are too.
#   * Exit 2 when java (17+) is missing, or mvn is missing and the jars are not
#     cached yet, or KAFKA_OWNER_PID is not a process id.
#   * KAFKA_OWNER_PID (start): the broker is stopped (as by `stop`) within
#     about a second of that process ending, unless the directory is gone by
#     then. A test binary killed before its cleanup ran (Ctrl-C in `make
#     test`, a timeout) leaves no broker behind; the watcher is a detached
#     shell whose pid is in owner-watch.pid, one per directory.
#
# Environment
#   KAFKA_LOCAL_DIR        instance directory (default $PWD/.local/kafka)
#   KAFKA_PORT             client port for a fresh directory or to override
#   KAFKA_CONTROLLER_PORT  controller port, likewise
#   KAFKA_TLS              1: add the TLS listeners (first start of a directory)
#   KAFKA_VERSION          Kafka version (default: <kafka.version> in the pom)
#   OUTBOXD_CACHE          cache root (default $HOME/.cache/outboxd)
#   KAFKA_HEAP_OPTS        default "-Xms256m -Xmx512m"
#   KAFKA_JVM_PERFORMANCE_OPTS  default "-XX:+UseSerialGC -XX:TieredStopAtLevel=1"
#   KAFKA_JVM_OPTS         extra JVM options
#   KAFKA_CDS              0 disables the class-data-sharing archive
#   KAFKA_START_TIMEOUT    seconds to wait for readiness (default 90)
#   KAFKA_OWNER_PID        stop the broker once this process is gone (start)

set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
POM="$SCRIPT_DIR/kafka/pom.xml"

die() { echo "kafka-local: $*" >&2; exit 1; }
note() { echo "kafka-local: $*" >&2; }

KAFKA_VERSION=${KAFKA_VERSION:-$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM" | head -n1)}
[[ -n "$KAFKA_VERSION" ]] || die "cannot determine the Kafka version from $POM"
CACHE="${OUTBOXD_CACHE:-$HOME/.cache/outboxd}/kafka-$KAFKA_VERSION"
LIBS="$CACHE/libs"
MARKER="$CACHE/.complete"

DIR=${KAFKA_LOCAL_DIR:-$PWD/.local/kafka}
[[ "${1:-}" != start ]] || mkdir -p "$DIR"
if [[ -d "$DIR" ]]; then DIR=$(cd "$DIR" && pwd); fi
PID_FILE="$DIR/kafka.pid"
PORT_FILE="$DIR/port"
CPORT_FILE="$DIR/controller-port"
TPORT_FILE="$DIR/tls-port"
SPORT_FILE="$DIR/sasl-port"
TLS_DIR="$DIR/tls"
CLUSTER_ID_FILE="$DIR/cluster-id"
PROPS="$DIR/server.properties"
LOG4J="$DIR/log4j2.properties"
LOG="$DIR/kafka.log"
DATA="$DIR/data"
START_TIMEOUT=${KAFKA_START_TIMEOUT:-90}
STOP_TIMEOUT=30
# Serial GC and C1-only JIT: ~1 s faster start-up and far less CPU on small
# machines than G1 + C2; plenty for test-sized traffic.
DEFAULT_PERF_OPTS="-XX:+UseSerialGC -XX:TieredStopAtLevel=1"
CDS_PENDING="$DIR/cds-pending"
JAVA_VERSION_TEXT=""

# ---------------------------------------------------------------- helpers

# lock FD FILE: hold an exclusive lock on FILE through file descriptor FD for
# the rest of the process (9: instance dir, 8: jar cache). No-op without flock(1).
lock() {
  command -v flock >/dev/null 2>&1 || return 0
  case $1 in
    8) exec 8>>"$2" ;;
    9) exec 9>>"$2" ;;
    *) die "lock: unsupported fd $1" ;;
  esac
  flock "$1"
}

require_java() {
  if ! command -v java >/dev/null 2>&1; then
    echo "kafka-local: 'java' not found on PATH; Kafka $KAFKA_VERSION needs Java 17+ (e.g. apt-get install openjdk-17-jre-headless)" >&2
    exit 2
  fi
  local v major
  JAVA_VERSION_TEXT=$(java -version 2>&1)
  v=$(sed -n 's/.*version "\([^"]*\)".*/\1/p' <<<"$JAVA_VERSION_TEXT" | head -n1)
  major=${v%%.*}
  if [[ "$major" =~ ^[0-9]+$ ]] && (( major < 17 )); then
    echo "kafka-local: java $v found, but Kafka $KAFKA_VERSION brokers need Java 17+" >&2
    exit 2
  fi
}

# Maven over the network: checksums must match (-C: a corrupt download
# fails instead of being cached), and a stalled transfer fails after 60 s
# and is retried (the defaults wait up to 30 min per request).
MVN_NET=(-C -Dmaven.wagon.rto=60000 -Dmaven.wagon.http.retryHandler.count=3
  -Daether.connector.requestTimeout=60000 -Daether.connector.connectTimeout=20000)

pom_hash() { { echo "$KAFKA_VERSION"; cat "$POM"; } | sha256sum | cut -d' ' -f1; }

cache_complete() { [[ -f "$MARKER" && "$(cat "$MARKER")" == "$(pom_hash)" && -d "$LIBS" ]]; }

fetch_jars() {
  cache_complete && return 0
  mkdir -p "$CACHE"
  lock 8 "$CACHE/.lock"
  cache_complete && return 0 # another process finished it while we waited
  if ! command -v mvn >/dev/null 2>&1; then
    echo "kafka-local: 'mvn' not found on PATH; it is needed once to fetch Kafka $KAFKA_VERSION into $CACHE (e.g. apt-get install maven)" >&2
    exit 2
  fi
  note "fetching Kafka $KAFKA_VERSION jars from Maven Central into $LIBS"
  local tmp="$CACHE/libs.tmp.$$"
  rm -rf "$tmp"
  if ! mvn -B "${MVN_NET[@]}" -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
        -Dkafka.version="$KAFKA_VERSION" -DoutputDirectory="$tmp" >"$CACHE/mvn.log" 2>&1; then
    tail -n 40 "$CACHE/mvn.log" >&2
    rm -rf "$tmp"
    die "mvn failed to fetch Kafka $KAFKA_VERSION (full output: $CACHE/mvn.log)"
  fi
  compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null || { rm -rf "$tmp"; die "mvn produced no kafka_2.13 jar"; }
  rm -rf "$LIBS"
  rm -f "$CACHE"/cds-*.jsa # class archives of the old jar set would be rejected
  mv "$tmp" "$LIBS"
  pom_hash >"$MARKER"
}

# alive PID: the process exists and is not a zombie (an orphaned broker is
# reaped by whatever runs as pid 1, which in containers may never happen).
# While a JVM exits, its main thread can already be a zombie ("Z") while the
# other threads still run, so look at every thread, not just the leader.
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  [[ -d "/proc/$1/task" ]] || return 0
  local t stat
  for t in "/proc/$1/task/"*; do
    stat=$(cat "$t/stat" 2>/dev/null) || continue
    stat=${stat##*) }
    [[ "${stat%% *}" == Z ]] || return 0
  done
  return 1
}

# Is the recorded pid alive and really this directory's broker?
running_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid=$(<"$PID_FILE")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  alive "$pid" || return 1
  # Guard against pid reuse: the command line must name our server.properties.
  if [[ -r "/proc/$pid/cmdline" ]]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$PROPS" || return 1
  fi
  echo "$pid"
}

port_free() { # port_free PORT -> 0 if nothing can be bound/connected there
  local port=$1
  if command -v python3 >/dev/null 2>&1; then
    python3 - "$port" <<'EOF'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
EOF
  else
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 1; fi
  fi
}

# A free port below the ephemeral range (32768+ on Linux), so a restart is
# unlikely to find it taken by some client's outgoing connection.
pick_port() {
  local avoid=${1:-0} p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
    [[ "$p" != "$avoid" ]] || continue
    if port_free "$p"; then echo "$p"; return 0; fi
  done
  die "could not find a free loopback port"
}

# A cluster id as Kafka's own Uuid.randomUuid makes it: URL-safe base64 of a
# random UUID, never starting with '-' (1 in 64 would, and would read as an
# option; the format call below passes it with '=' all the same).
new_cluster_id() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import base64, uuid
while True:
    cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not cid.startswith("-"):
        print(cid)
        break'
  else
    java -cp "$LIBS/*" kafka.tools.StorageTool random-uuid
  fi
}

broker_port() { [[ -f "$PORT_FILE" ]] && cat "$PORT_FILE"; }

print_tls() {
  [[ -f "$TPORT_FILE" ]] || return 0
  echo "KAFKA_TLS_BROKERS=127.0.0.1:$(<"$TPORT_FILE")"
  echo "KAFKA_SASL_BROKERS=127.0.0.1:$(<"$SPORT_FILE")"
  echo "KAFKA_SASL_USER=outboxd"
  echo "KAFKA_SASL_PASSWORD=$(<"$TLS_DIR/scram-password")"
  echo "KAFKA_TLS_CA=$TLS_DIR/ca.pem"
  echo "KAFKA_OAUTH_TOKEN=$TLS_DIR/oauth-token"
}

# base64url without padding of stdin (JWT and JWKS encoding).
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }

# The OAuth material of this directory (TLS mode): an RSA key whose public
# half the broker trusts (tls/jwks.json, read at start), and a JWT signed with
# it (tls/oauth-token: sub outboxd, aud and iss outboxd-local, valid 30 days,
# signed anew on every start) for a token endpoint to hand out. The broker's
# key in PEM (tls/broker-key.pem, with tls/broker.pem) lets such an endpoint
# serve HTTPS under the same CA.
make_oauth() {
  command -v openssl >/dev/null 2>&1 || die "'openssl' not found on PATH: KAFKA_TLS=1 needs it for the OAuth key"
  ( cd "$TLS_DIR"
    if [[ ! -f oauth-key.pem || ! -f jwks.json || ! -f broker-key.pem ]]; then
      openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out oauth-key.pem
      local n
      n=$(openssl rsa -in oauth-key.pem -noout -modulus | cut -d= -f2 | perl -ne 'chomp; print pack("H*", $_)' | b64url)
      printf '{"keys":[{"kty":"RSA","use":"sig","alg":"RS256","kid":"outboxd-local","n":"%s","e":"AQAB"}]}\n' "$n" >jwks.json
      openssl pkcs12 -in broker.p12 -nocerts -nodes -passin pass:outboxd-local | openssl pkey -out broker-key.pem
    fi
    local now header claims
    now=$(date +%s)
    header=$(printf '{"alg":"RS256","typ":"JWT","kid":"outboxd-local"}' | b64url)
    claims=$(printf '{"sub":"outboxd","aud":"outboxd-local","iss":"outboxd-local","iat":%d,"exp":%d,"scope":"kafka"}' \
      "$now" "$((now + 30 * 86400))" | b64url)
    printf '%s.%s.%s\n' "$header" "$claims" \
      "$(printf '%s.%s' "$header" "$claims" | openssl dgst -sha256 -sign oauth-key.pem | b64url)" >oauth-token
  ) >"$TLS_DIR/oauth.log" 2>&1 || { cat "$TLS_DIR/oauth.log" >&2; die "making the OAuth key failed (log: $TLS_DIR/oauth.log)"; }
}

# The TLS material of this directory (once): a CA, and the broker's key and
# certificate (SAN 127.0.0.1 and localhost) signed by it, in a PKCS12 store.
make_tls() {
  [[ -f "$TLS_DIR/broker.p12" && -f "$TLS_DIR/ca.pem" && -f "$TLS_DIR/scram-password" ]] && return 0
  if ! command -v keytool >/dev/null 2>&1; then
    echo "kafka-local: 'keytool' not found on PATH (it comes with Java): KAFKA_TLS=1 needs it" >&2
    exit 2
  fi
  rm -rf "$TLS_DIR" && mkdir -p "$TLS_DIR"
  # The SCRAM user's password (stored by the storage format, below).
  od -An -N12 -tx1 /dev/urandom | tr -d ' \n' >"$TLS_DIR/scram-password"
  local pw=outboxd-local k=(-storetype PKCS12 -storepass outboxd-local)
  ( cd "$TLS_DIR"
    keytool -genkeypair -alias ca -dname CN=outboxd-local-ca -ext bc:c -keyalg RSA -keysize 2048 \
      -validity 3650 -keystore ca.p12 "${k[@]}" -keypass "$pw"
    keytool -exportcert -rfc -alias ca -keystore ca.p12 "${k[@]}" -file ca.pem
    keytool -genkeypair -alias broker -dname CN=localhost -keyalg RSA -keysize 2048 \
      -validity 3650 -keystore broker.p12 "${k[@]}" -keypass "$pw"
    keytool -certreq -alias broker -keystore broker.p12 "${k[@]}" -file broker.csr
    keytool -gencert -alias ca -keystore ca.p12 "${k[@]}" -infile broker.csr -outfile broker.pem -rfc \
      -validity 3650 -ext SAN=IP:127.0.0.1,DNS:localhost -ext ku:c=digitalSignature,keyEncipherment
    keytool -importcert -noprompt -alias ca -file ca.pem -keystore broker.p12 "${k[@]}"
    keytool -importcert -alias broker -file broker.pem -keystore broker.p12 "${k[@]}"
  ) >"$TLS_DIR/keytool.log" 2>&1 || { cat "$TLS_DIR/keytool.log" >&2; die "keytool failed (log: $TLS_DIR/keytool.log)"; }
}

write_config() {
  local port=$1 cport=$2 tport=${3:-} sport=${4:-}
  local listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
  local advertised="PLAINTEXT://127.0.0.1:$port" map="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT" tls=""
  if [[ -n "$tport" ]]; then
    listeners+=",SSL://127.0.0.1:$tport,SASL_SSL://127.0.0.1:$sport"
    advertised+=",SSL://127.0.0.1:$tport,SASL_SSL://127.0.0.1:$sport"
    map+=",SSL:SSL,SASL_SSL:SASL_SSL"
    tls="ssl.keystore.type=PKCS12
ssl.keystore.location=$TLS_DIR/broker.p12
ssl.keystore.password=outboxd-local
ssl.key.password=outboxd-local
sasl.enabled.mechanisms=SCRAM-SHA-512,OAUTHBEARER
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;
listener.name.sasl_ssl.oauthbearer.sasl.server.callback.handler.class=org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler
listener.name.sasl_ssl.oauthbearer.sasl.oauthbearer.jwks.endpoint.url=file://$TLS_DIR/jwks.json
listener.name.sasl_ssl.oauthbearer.sasl.oauthbearer.expected.audience=outboxd-local
listener.name.sasl_ssl.oauthbearer.sasl.oauthbearer.expected.issuer=outboxd-local"
  fi
  cat >"$PROPS" <<EOF
# Generated by scripts/kafka-local.sh on every start; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=$listeners
advertised.listeners=$advertised
listener.security.protocol.map=$map
$tls
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$DATA

# Single node: every internal topic has one replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
num.partitions=1
group.initial.rebalance.delay.ms=0

# Keep the footprint small (2-core machines running several brokers).
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
background.threads=2
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=16777216
EOF
  cat >"$LOG4J" <<'EOF'
# Generated by scripts/kafka-local.sh: everything to stdout (= kafka.log).
status = warn
# Kafka logs its own shutdown; do not let Log4j's JVM hook stop logging first.
shutdownHook = disable
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
EOF
}

cds_archive() { echo "$CACHE/cds-$(sha256sum <<<"$JAVA_VERSION_TEXT" | cut -c1-12).jsa"; }

format_storage() {
  [[ -f "$DATA/meta.properties" ]] && return 0
  local cid
  if [[ -s "$CLUSTER_ID_FILE" ]]; then cid=$(<"$CLUSTER_ID_FILE"); else cid=$(new_cluster_id); echo "$cid" >"$CLUSTER_ID_FILE"; fi
  mkdir -p "$DATA"
  local cds=() archive scram=()
  [[ -f "$TPORT_FILE" ]] && scram=(--add-scram "SCRAM-SHA-512=[name=outboxd,password=$(<"$TLS_DIR/scram-password")]")
  archive=$(cds_archive)
  [[ "${KAFKA_CDS:-1}" != 0 && -s "$archive" ]] && cds=(-XX:SharedArchiveFile="$archive")
  java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 "${cds[@]}" -cp "$LIBS/*" -Dlog4j2.configurationFile="$LOG4J" \
    kafka.tools.StorageTool format --config "$PROPS" --cluster-id="$cid" "${scram[@]}" \
    >>"$DIR/format.log" 2>&1 || { tail -n 40 "$DIR/format.log" >&2; die "storage format failed"; }
}

launch() {
  [[ -f "$LOG" ]] && mv -f "$LOG" "$LOG.prev"
  : >"$LOG"
  rm -f "$PID_FILE"
  local heap=${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}
  local perf=${KAFKA_JVM_PERFORMANCE_OPTS:-$DEFAULT_PERF_OPTS}
  local -a cmd cds=()
  # AppCDS halves JVM start-up. The first broker started from this cache (and
  # JVM) dumps the classes it loaded when it exits via `stop`; cmd_stop then
  # publishes that archive and later starts map it. A JVM that does not match
  # the archive just ignores it (-Xshare:auto, the default). KAFKA_CDS=0 disables.
  if [[ "${KAFKA_CDS:-1}" != 0 ]]; then
    local archive
    archive=$(cds_archive)
    if [[ -s "$archive" ]]; then
      cds=(-XX:SharedArchiveFile="$archive")
    else
      cds=(-XX:ArchiveClassesAtExit="$archive.tmp.$$" '-Xlog:cds*=error')
      echo "$archive" >"$CDS_PENDING"
      echo "$archive.tmp.$$" >>"$CDS_PENDING"
    fi
  fi
  # Kafka 4 reads an OAuth JWKS only from URLs this property allows.
  local oauth=()
  [[ -f "$TLS_DIR/jwks.json" ]] && oauth=(-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls="file://$TLS_DIR/jwks.json")
  # shellcheck disable=SC2206 # word splitting of the option strings is intended
  cmd=(java $heap $perf "${cds[@]}" "${oauth[@]}" -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
       -Dlog4j2.configurationFile="$LOG4J" ${KAFKA_JVM_OPTS:-} -cp "$LIBS/*" kafka.Kafka "$PROPS")
  # The child shell records its own pid and then execs the JVM (same pid), so
  # the pid file is right whether or not setsid forks. setsid puts the broker in
  # its own session: Ctrl-C in a terminal or a test harness killing its process
  # group does not take it down; it only ever stops via `stop`. All fds other
  # than 0-2 are closed so the broker does not hold a caller's pipes open.
  local launcher=()
  command -v setsid >/dev/null 2>&1 && launcher=(setsid)
  # shellcheck disable=SC2016 # expanded by the child shell
  "${launcher[@]}" bash -c '
    for fd in /proc/$$/fd/*; do fd=${fd##*/}; (( fd > 2 )) && { eval "exec $fd>&-"; } 2>/dev/null; done
    echo $$ >"$0"; exec "$@"' "$PID_FILE" "${cmd[@]}" </dev/null >>"$LOG" 2>&1 &
  local i
  for ((i = 0; i < 50; i++)); do [[ -s "$PID_FILE" ]] && return 0; sleep 0.1; done
  die "broker process did not start (see $LOG)"
}

# wait_ready PORT -> 0 ready, 1 died, 2 timed out
wait_ready() {
  local port=$1 deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    running_pid >/dev/null || return 1
    if grep -q "Kafka Server started" "$LOG" 2>/dev/null &&
       (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.3
  done
  return 2
}

# watch_owner: with KAFKA_OWNER_PID, a detached shell (own session, no fds
# of ours: it must not hold the directory's lock) that runs `stop` once that
# process is gone, or just ends if the directory was removed (stopped and
# cleaned up by its owner). One per directory: a restart keeps the first.
watch_owner() {
  local owner=${KAFKA_OWNER_PID:-} w
  [[ -n "$owner" ]] || return 0
  # A live watcher of this directory (its command line names it: a stale
  # pid now used by another process does not count).
  w=$(cat "$DIR/owner-watch.pid" 2>/dev/null || true)
  if [[ "$w" =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$w/cmdline" 2>/dev/null | grep -qF -- "kafka-local.sh $owner $DIR"; then
    return 0
  fi
  local launcher=()
  command -v setsid >/dev/null 2>&1 && launcher=(setsid)
  # shellcheck disable=SC2016 # expanded by the child shell
  "${launcher[@]}" bash -c '
    for fd in /proc/$$/fd/*; do fd=${fd##*/}; (( fd > 2 )) && { eval "exec $fd>&-"; } 2>/dev/null; done
    while kill -0 "$1" 2>/dev/null && [[ -d "$2" ]]; do sleep 1; done
    [[ -d "$2" ]] || exit 0
    echo "owner $1 is gone: stopping the broker"
    KAFKA_LOCAL_DIR="$2" exec bash "$0" stop' "$SCRIPT_DIR/kafka-local.sh" "$owner" "$DIR" \
    </dev/null >>"$DIR/owner-watch.log" 2>&1 &
  # Written here, before this start returns (the lock on the directory is
  # still held): a start right after it finds the watcher. A background
  # child is no group leader, so setsid runs in place: $! is the watcher.
  echo $! >"$DIR/owner-watch.pid"
}

show_log_tail() { # last 40 log lines, then the first errors (often the cause)
  echo "---- last 40 lines of $LOG ----" >&2
  tail -n 40 "$LOG" >&2 || true
  if grep -qE ' (ERROR|FATAL) |Exception' "$LOG" 2>/dev/null; then
    echo "---- first errors in $LOG ----" >&2
    grep -m 5 -E ' (ERROR|FATAL) |Exception' "$LOG" >&2 || true
  fi
}

kill_pid() { # kill_pid PID: SIGTERM, wait STOP_TIMEOUT s, then SIGKILL (returns 1)
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    alive "$pid" || return 0
    sleep 0.1
  done
  note "pid $pid did not stop within ${STOP_TIMEOUT}s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.1; done
  return 1
}

# After the broker that was dumping a CDS archive has exited: publish the
# archive if the JVM exited cleanly (CLEAN=1), else discard the partial file.
settle_cds() {
  local clean=$1 archive tmp
  [[ -f "$CDS_PENDING" ]] || return 0
  { read -r archive; read -r tmp; } <"$CDS_PENDING" || true
  rm -f "$CDS_PENDING"
  [[ -n "${tmp:-}" ]] || return 0
  if ((clean)) && [[ -s "$tmp" ]]; then
    mv -f "$tmp" "$archive"
  else
    rm -f "$tmp"
  fi
}

# ---------------------------------------------------------------- commands

cmd_start() {
  require_java
  if [[ -n "${KAFKA_OWNER_PID:-}" && ! "$KAFKA_OWNER_PID" =~ ^[1-9][0-9]*$ ]]; then
    echo "kafka-local: KAFKA_OWNER_PID must be a process id, got '$KAFKA_OWNER_PID'" >&2
    exit 2
  fi
  lock 9 "$DIR/.lock"
  local port cport tport sport
  if running_pid >/dev/null; then
    port=$(broker_port || true)
    if ! wait_ready "$port"; then
      show_log_tail
      die "broker in $DIR is running but not ready"
    fi
    note "already running (pid $(<"$PID_FILE")) in $DIR"
    watch_owner
    print_tls
    echo "KAFKA_BROKERS=127.0.0.1:$port"
    return 0
  fi
  fetch_jars
  settle_cds 0 # a previous broker of this dir died without `stop`

  local fresh=0 rc
  [[ -f "$DATA/meta.properties" ]] || fresh=1
  for _ in 1 2 3; do
    port=${KAFKA_PORT:-$(broker_port || true)}
    [[ -n "$port" ]] || port=$(pick_port)
    cport=${KAFKA_CONTROLLER_PORT:-$(cat "$CPORT_FILE" 2>/dev/null || true)}
    [[ -n "$cport" ]] || cport=$(pick_port "$port")
    [[ "$port" =~ ^[0-9]+$ && "$cport" =~ ^[0-9]+$ && "$port" != "$cport" ]] ||
      die "invalid ports: client=$port controller=$cport"
    echo "$port" >"$PORT_FILE"
    echo "$cport" >"$CPORT_FILE"
    tport=$(cat "$TPORT_FILE" 2>/dev/null || true)
    sport=$(cat "$SPORT_FILE" 2>/dev/null || true)
    if [[ -z "$tport" && "${KAFKA_TLS:-0}" = 1 ]]; then
      tport=$(pick_port "$port")
      [[ "$tport" != "$cport" ]] || tport=$(pick_port "$cport")
      sport=$(pick_port "$port")
      while [[ "$sport" == "$cport" || "$sport" == "$tport" ]]; do sport=$(pick_port "$port"); done
      echo "$tport" >"$TPORT_FILE"
      echo "$sport" >"$SPORT_FILE"
    fi
    [[ -z "$tport" ]] || { make_tls; make_oauth; }

    write_config "$port" "$cport" "$tport" "$sport"
    format_storage
    launch
    rc=0
    wait_ready "$port" || rc=$?
    if ((rc == 0)); then
      note "started Kafka $KAFKA_VERSION (pid $(<"$PID_FILE")) in $DIR"
      watch_owner
      print_tls
      echo "KAFKA_BROKERS=127.0.0.1:$port"
      return 0
    fi
    if ((rc == 2)); then
      local pid
      pid=$(running_pid || true)
      if [[ -n "$pid" ]]; then kill_pid "$pid" || true; fi
      settle_cds 0
      rm -f "$PID_FILE"
      show_log_tail
      die "broker did not become ready within ${START_TIMEOUT}s (log: $LOG)"
    fi
    rm -f "$PID_FILE"
    settle_cds 0
    # Died. A brand-new instance whose auto-picked port got taken in the
    # meantime is retried on fresh ports; anything else is an error.
    if ((fresh)) && [[ -z "${KAFKA_PORT:-}${KAFKA_CONTROLLER_PORT:-}" ]] &&
       grep -q "Address already in use" "$LOG"; then
      note "port clash on first start; retrying with new ports"
      rm -rf "$DATA" "$PORT_FILE" "$CPORT_FILE" "$TPORT_FILE" "$SPORT_FILE"
      continue
    fi
    break
  done
  show_log_tail
  die "broker exited during startup (log: $LOG)"
}

cmd_stop() {
  [[ -d "$DIR" ]] || { note "not running in $DIR"; return 0; }
  lock 9 "$DIR/.lock"
  local pid
  if pid=$(running_pid); then
    local clean=1
    kill_pid "$pid" || clean=0
    if alive "$pid"; then die "could not stop pid $pid"; fi
    settle_cds "$clean"
    note "stopped broker (pid $pid) in $DIR"
  else
    settle_cds 0
    note "not running in $DIR"
  fi
  rm -f "$PID_FILE"
}

cmd_status() {
  local pid port
  port=$(broker_port || true)
  if pid=$(running_pid); then
    echo "running (pid $pid) KAFKA_BROKERS=127.0.0.1:$port dir=$DIR"
    return 0
  fi
  echo "stopped${port:+ KAFKA_BROKERS=127.0.0.1:$port} dir=$DIR"
  return 3
}

cmd_env() {
  local port
  port=$(broker_port || true)
  [[ -n "$port" ]] || { note "no broker port recorded in $DIR (run start first)"; return 3; }
  echo "KAFKA_BROKERS=127.0.0.1:$port"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 64 ;;
esac
