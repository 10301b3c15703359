#!/usr/bin/env bash
# test-summary.sh LOG - the summary of a `cargo test` run, from its output.
#
# Role: `make test` and `make integration-test` print, at the end, every
# skipped test with its reason and one line "N passed, N failed, N skipped".
# An ignored test (`#[ignore = "reason"]`) counts as skipped: a test that did
# not run is never reported as passed.
# Guarantee: reads LOG only; counts come from libtest's own "test result:"
# lines, names and reasons from its "test NAME ... ignored, REASON" and
# "test NAME ... FAILED" lines. Exit 0 always (the caller keeps cargo's status).
set -euo pipefail
log="${1:?usage: test-summary.sh LOG}"
awk '
  /^test .* \.\.\. ignored/ {
    line = $0
    sub(/^test /, "", line)
    name = line; sub(/ \.\.\. ignored.*$/, "", name)
    reason = line; if (!sub(/^.* \.\.\. ignored, /, "", reason)) reason = "(no reason given)"
    skipped[++ns] = name ": " reason
  }
  /^test .* \.\.\. FAILED$/ {
    name = $0; sub(/^test /, "", name); sub(/ \.\.\. FAILED$/, "", name)
    failed[++nf] = name
  }
  /^test result: / {
    for (i = 1; i <= NF; i++) {
      v = $i; gsub(/[;.]/, "", $(i + 1))
      if ($(i + 1) == "passed") p += v
      if ($(i + 1) == "failed") f += v
      if ($(i + 1) == "ignored") s += v
    }
  }
  END {
    for (i = 1; i <= ns; i++) print "SKIPPED: " skipped[i]
    for (i = 1; i <= nf; i++) print "FAILED: " failed[i]
    printf "%d passed, %d failed, %d skipped\n", p, f, s
  }
' "$log"
