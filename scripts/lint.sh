#!/usr/bin/env bash
# lint.sh - `make lint` (and the first step of `make test`): fails on code
# that `cargo fmt` would change (rustfmt.toml), on any clippy warning, and on
# any shellcheck finding in the scripts (scripts/*.sh, .ci/run), and when the
# `shellcheck` tool is missing (`make deps` installs it; `make test` runs
# scripts/deps.sh first).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "lint: cargo fmt --check"
if ! cargo fmt --all --check; then
  echo "lint: FAILED: run \`cargo fmt\` and commit the result" >&2
  exit 1
fi
echo "lint: cargo clippy --all-targets --locked -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings
command -v shellcheck >/dev/null 2>&1 || { echo "lint: FAILED: shellcheck is not installed: run \`make deps\` (Debian \`shellcheck\`)" >&2; exit 1; }
echo "lint: shellcheck scripts/*.sh .ci/run"
shellcheck scripts/*.sh .ci/run
