#!/usr/bin/env bash
# deps.sh [dev|test] - install what `make dev` or `make test` needs and is
# missing on a fresh Debian machine. Idempotent and quiet when everything is
# present; says what it installs and why.
#
#   dev   (make dev)  Java 17+ and Maven (the local Kafka), a C toolchain +
#                     cmake (librdkafka), perl (OpenSSL), the libcurl headers
#                     (OAuth/OIDC), curl (the daemon's readiness), kcat
#                     (optional: shows the published events). Rust itself is
#                     not installed here: cargo must be on PATH (rustup).
#   test  (make test, the default)  everything of `dev`, plus rustfmt and
#                     clippy (`rustup component add`, for `make lint`), sqlite3 (the
#                     tests read and change the store as an operator would,
#                     with the sqlite3 command-line tool), openssl (the local
#                     broker's OAuth key and token), curl and jq (the
#                     docs/HTTP.md walkthroughs run as written), promtool (Debian
#                     package prometheus: alert rules are checked and unit
#                     tested), shellcheck (`make lint` checks the
#                     scripts), the Python tools that validate and fuzz the HTTP
#                     API (openapi-spec-validator, schemathesis), and, where a
#                     docker client without the compose plugin exists and Go is
#                     present, the compose plugin built from its Go module so
#                     docker-compose.yml can be validated (minutes, once).
#
# Exit 2 when something required is missing and cannot be installed here
# (not root / no apt-get): the message names it. Optional tools never fail it.
set -euo pipefail

mode=${1:-test}
case "$mode" in dev|test) ;; *) echo "usage: $0 [dev|test]" >&2; exit 64 ;; esac
note() { echo "deps: $*" >&2; }

command -v cargo >/dev/null 2>&1 || { note "cargo missing: install Rust first: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh"; exit 2; }
# make lint (the first step of make test) runs cargo fmt and cargo clippy.
if [ "$mode" = test ] && ! { cargo fmt --version && cargo clippy --version; } >/dev/null 2>&1; then
  if command -v rustup >/dev/null 2>&1; then
    note "installing rustfmt and clippy (rustup component add)"
    rustup component add rustfmt clippy >/dev/null 2>&1 || { note "rustup component add rustfmt clippy failed: run it by hand"; exit 2; }
  else
    note "cargo fmt / cargo clippy missing and no rustup: install rustfmt and clippy for your Rust toolchain"
    exit 2
  fi
fi
need_apt=()
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v perl >/dev/null 2>&1 || need_apt+=(perl) # OpenSSL (rdkafka ssl-vendored) is built with it
# librdkafka links the system libcurl for OAuth/OIDC (rdkafka `curl`); without
# its headers the build still succeeds but refuses sasl.oauthbearer.method=oidc.
curl_headers=1
pkg-config --exists libcurl 2>/dev/null || { curl_headers=0; need_apt+=(pkg-config libcurl4-openssl-dev); }
command -v curl >/dev/null 2>&1 || need_apt+=(curl) # dev.sh: is the daemon's admin server up
if [ "$mode" = test ]; then
  command -v sqlite3 >/dev/null 2>&1 || need_apt+=(sqlite3)
  command -v jq >/dev/null 2>&1 || need_apt+=(jq)
  command -v openssl >/dev/null 2>&1 || need_apt+=(openssl) # KAFKA_TLS=1 scripts/kafka-local.sh: the OAuth key and token
  command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
  command -v shellcheck >/dev/null 2>&1 || need_apt+=(shellcheck) # make lint: the scripts
  command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
fi
optional_kcat=0
command -v kcat >/dev/null 2>&1 || command -v kafkacat >/dev/null 2>&1 || optional_kcat=1

if [ ${#need_apt[@]} -gt 0 ] || [ "$optional_kcat" = 1 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    note "apt-get update (package lists for: ${need_apt[*]} $([ "$optional_kcat" = 1 ] && echo kcat))"
    timeout 300 apt-get update -qq >/dev/null 2>&1 || true
    if [ ${#need_apt[@]} -gt 0 ]; then
      note "installing ${need_apt[*]}"
      # prometheus is installed only for promtool: its service must not
      # start (it would take :9090, outboxd's admin port). policy-rc.d
      # exiting 101 forbids starting services during this install; an
      # existing one is put back afterwards, whatever happens.
      policy=/usr/sbin/policy-rc.d policy_saved=""
      # shellcheck disable=SC2317 # run by the trap
      restore_policy() {
        if [ -n "$policy_saved" ]; then mv -f "$policy_saved" "$policy"; else rm -f "$policy"; fi
      }
      if [ -e "$policy" ]; then policy_saved=$(mktemp); cp -p "$policy" "$policy_saved"; fi
      trap restore_policy EXIT
      trap 'exit 130' INT TERM HUP
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
      apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
      restore_policy
      trap - EXIT INT TERM HUP
      # The package still enables the unit (started at the next boot):
      # disable it, and stop it should it run.
      if [[ " ${need_apt[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1 \
         && { systemctl is-enabled --quiet prometheus 2>/dev/null || systemctl is-active --quiet prometheus 2>/dev/null; }; then
        note "prometheus.service (installed only for promtool) would take :9090, outboxd's admin port: systemctl disable --now prometheus"
        systemctl disable --now prometheus >/dev/null 2>&1 || systemctl disable prometheus >/dev/null 2>&1 \
          || note "could not disable prometheus.service: run systemctl disable --now prometheus"
      fi
    fi
    # A librdkafka built before the headers were there has no OAuth/OIDC,
    # and cargo does not rebuild it by itself: have it rebuilt.
    if [ "$curl_headers" = 0 ] && pkg-config --exists libcurl 2>/dev/null; then
      note "libcurl headers installed: rdkafka-sys is rebuilt with them (OAuth/OIDC)"
      cargo clean --quiet --manifest-path "$(dirname "$0")/../Cargo.toml" -p rdkafka-sys >/dev/null 2>&1 || true
    fi
    if [ "$optional_kcat" = 1 ]; then
      if timeout 300 apt-get install -y -qq kcat >/dev/null 2>&1; then
        note "installed kcat"
      else
        note "kcat not installed (optional)"
      fi
    fi
  elif [ ${#need_apt[@]} -gt 0 ]; then
    note "please install: ${need_apt[*]}"
    exit 2
  fi
fi

[ "$mode" = test ] || exit 0

# Python tools (PyPI): for the HTTP API checks the OpenAPI document is
# validated by openapi-spec-validator, the running daemon fuzzed by
# schemathesis; cqlsh reads the CQL store.
py_missing=()
command -v openapi-spec-validator >/dev/null 2>&1 || py_missing+=(openapi-spec-validator)
command -v schemathesis >/dev/null 2>&1 || command -v st >/dev/null 2>&1 || py_missing+=(schemathesis)
# cqlsh (`make cqlsh` without Docker, and tests/make_cqlsh.rs).
command -v cqlsh >/dev/null 2>&1 || py_missing+=(scylla-cqlsh)
if [ ${#py_missing[@]} -gt 0 ]; then
  note "installing ${py_missing[*]} (pip)"
  pip_flags=(-q --disable-pip-version-check)
  # Debian's system Python refuses global installs (PEP 668) unless told.
  if python3 -m pip install "${pip_flags[@]}" "${py_missing[@]}" >/dev/null 2>&1 \
     || python3 -m pip install "${pip_flags[@]}" --break-system-packages "${py_missing[@]}" >/dev/null 2>&1; then
    hash -r
  else
    note "could not pip install ${py_missing[*]}"
    exit 2
  fi
fi

# `make test` validates docker-compose.yml with `docker compose config` where a
# docker client exists. The client here may lack the compose plugin: build it
# from the Go module proxy (best effort, ~2-5 min once; cached afterwards).
if command -v docker >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1 && command -v go >/dev/null 2>&1; then
  note "building the docker compose plugin (github.com/docker/compose/v2) for docker-compose.yml validation (a few minutes, once)"
  mkdir -p "$HOME/.docker/cli-plugins"
  # `go install pkg@version` refuses this module (its go.mod has exclude
  # directives), so build it inside its own module directory instead.
  if dir=$(cd /tmp && timeout 300 go mod download -json github.com/docker/compose/v2@v2.39.4 2>/dev/null | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p') && [ -n "$dir" ] \
     && (cd "$dir" && timeout 900 go build -o "$HOME/.docker/cli-plugins/docker-compose" ./cmd >/dev/null 2>&1); then
    note "docker compose plugin installed"
  else
    note "docker compose plugin not built; docker-compose.yml validation will be skipped"
  fi
fi
