#!/usr/bin/env bash
# deps.sh - install what `make test` / `make dev` need and is missing on a
# fresh Debian machine: a Rust toolchain, Java 17+ and Maven (for the local
# Kafka and Cassandra), kcat (to inspect topics). Idempotent and quiet when
# everything is present; never fails on optional tools.
set -euo pipefail

need_apt=()
command -v cargo >/dev/null 2>&1 || { echo "deps: cargo missing: install Rust from your distribution or rustup" >&2; exit 2; }
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v kcat >/dev/null 2>&1 || command -v kafkacat >/dev/null 2>&1 || optional_kcat=1

if [ ${#need_apt[@]} -gt 0 ] || [ "${optional_kcat:-0}" = 1 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -qq >/dev/null 2>&1 || true
    if [ ${#need_apt[@]} -gt 0 ]; then
      echo "deps: installing ${need_apt[*]}" >&2
      apt-get install -y -qq "${need_apt[@]}" >/dev/null
    fi
    if [ "${optional_kcat:-0}" = 1 ]; then
      timeout 300 apt-get install -y -qq kcat >/dev/null 2>&1 && echo "deps: installed kcat" >&2 || echo "deps: kcat not installed (optional)" >&2
    fi
  elif [ ${#need_apt[@]} -gt 0 ]; then
    echo "deps: please install: ${need_apt[*]}" >&2
    exit 2
  fi
fi

# `make test` validates docker-compose.yml with `docker compose config` where a
# docker client exists. The client here may lack the compose plugin: build it
# from the Go module proxy (best effort, ~2-5 min once; cached afterwards).
if command -v docker >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1 && command -v go >/dev/null 2>&1; then
  echo "deps: building the docker compose plugin (github.com/docker/compose/v2) for docker-compose.yml validation" >&2
  mkdir -p "$HOME/.docker/cli-plugins"
  # `go install pkg@version` refuses this module (its go.mod has exclude
  # directives), so build it inside its own module directory instead.
  if dir=$(cd /tmp && timeout 300 go mod download -json github.com/docker/compose/v2@v2.39.4 2>/dev/null | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p') && [ -n "$dir" ] \
     && (cd "$dir" && timeout 900 go build -o "$HOME/.docker/cli-plugins/docker-compose" ./cmd >/dev/null 2>&1); then
    echo "deps: docker compose plugin installed" >&2
  else
    echo "deps: docker compose plugin not built; docker-compose.yml validation will be skipped" >&2
  fi
fi
