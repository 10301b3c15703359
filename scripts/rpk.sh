#!/usr/bin/env bash
# rpk.sh - `make rpk` (optional): build Redpanda's rpk CLI from its Go module
# into the project's cache, .local/bin/rpk, so `make topics` / `make consume`
# use rpk against the local Kafka (rpk speaks the Kafka protocol) as the
# docker-compose stack's users do inside the Redpanda container.
#
# Guarantees: builds once (a second run only prints the version; RPK_REBUILD=1
# rebuilds); prints how long the download and the build took; exit 0 when
# .local/bin/rpk works afterwards, 3 when rpk cannot be had here (no Go, or
# the Go module proxy does not serve the module/version: the reason is
# printed) -- `make topics`/`make consume` then use kcat.
#
# Environment: RPK_VERSION (default latest: the module has no semver tags of
# its own, so `latest` is the newest pseudo-version), RPK_REBUILD=1, GOFLAGS.
set -euo pipefail
cd "$(dirname "$0")/.."
MODULE=github.com/redpanda-data/redpanda/src/go/rpk
VERSION=${RPK_VERSION:-latest}
BIN_DIR=$PWD/.local/bin
note() { echo "rpk: $*" >&2; }

if [ -x "$BIN_DIR/rpk" ] && [ "${RPK_REBUILD:-0}" != 1 ] && "$BIN_DIR/rpk" version >/dev/null 2>&1; then
  note "already built: $BIN_DIR/rpk ($("$BIN_DIR/rpk" version 2>/dev/null | head -n1)); RPK_REBUILD=1 rebuilds"
  exit 0
fi
command -v go >/dev/null 2>&1 || { note "Go is not installed: rpk cannot be built here; make topics/consume use kcat"; exit 3; }

t0=$SECONDS
note "downloading $MODULE@$VERSION and its dependencies (Go module proxy)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Outside any module: `go mod download` resolves the version and fills the
# module cache. The build then runs inside the module's own directory, which
# honours its replace directives (go install pkg@version refuses those).
# A version the proxy does not serve exits non-zero with an "Error" field on
# stdout: kept (the assignment holds what was captured), for the reason below.
json=$(cd "$tmp" && go mod download -json "$MODULE@$VERSION" 2>/dev/null) || true
field() { python3 -c 'import json,sys; print(json.load(sys.stdin).get(sys.argv[1], ""))' "$1" <<<"$json" 2>/dev/null || true; }
dir=$(field Dir)
if [ -z "$dir" ]; then
  err=$(field Error)
  note "the Go module proxy does not serve $MODULE@$VERSION: ${err:-no answer}"
  note "rpk is not available here; make topics/consume use kcat (RPK_VERSION=<pseudo-version> tries another)"
  exit 3
fi
note "downloaded $(field Version) in $((SECONDS - t0)) s; building ./cmd/rpk (go build)"
t1=$SECONDS
mkdir -p "$BIN_DIR"
if ! (cd "$dir" && go mod download >/dev/null 2>&1 && go build -trimpath -o "$BIN_DIR/rpk.tmp" ./cmd/rpk); then
  rm -f "$BIN_DIR/rpk.tmp"
  note "go build failed (see above); make topics/consume use kcat"
  exit 3
fi
mv "$BIN_DIR/rpk.tmp" "$BIN_DIR/rpk"
note "built $BIN_DIR/rpk in $((SECONDS - t1)) s (total $((SECONDS - t0)) s): $("$BIN_DIR/rpk" version 2>/dev/null | head -n1)"
