#!/usr/bin/env bash
# lint.sh - `make lint` (and the first step of `make test`): fails on code
# that `cargo fmt` would change (rustfmt.toml), on any clippy warning, and on
# any shellcheck finding in the scripts (scripts/*.sh, .ci/run). Where the
# tool is missing (`make test` installs it: scripts/deps.sh) that step says
# SKIPPED with the reason instead.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "lint: cargo fmt --check"
if ! cargo fmt --all --check; then
  echo "lint: FAILED: run \`cargo fmt\` and commit the result" >&2
  exit 1
fi
echo "lint: cargo clippy --all-targets --locked -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings
if command -v shellcheck >/dev/null 2>&1; then
  echo "lint: shellcheck scripts/*.sh .ci/run"
  shellcheck scripts/*.sh .ci/run
else
  echo "lint: SKIPPED shellcheck: not installed (Debian \`shellcheck\`; \`make test\` installs it)"
fi
