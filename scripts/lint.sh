#!/usr/bin/env bash
# lint.sh - `make lint` (and the first step of `make test`): fails on code
# that `cargo fmt` would change (rustfmt.toml) and on any clippy warning.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "lint: cargo fmt --check"
if ! cargo fmt --all --check; then
  echo "lint: FAILED: run \`cargo fmt\` and commit the result" >&2
  exit 1
fi
echo "lint: cargo clippy --all-targets --locked -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings
