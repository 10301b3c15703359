#!/usr/bin/env bash
# test-summary.sh LOG [SKIPS] - the summary of a `cargo test` run, from its
# output LOG and the run-time skips recorded in SKIPS.
#
# Role: `make test` and `make integration-test` print, at the end, every
# skipped test with its reason and one line "N passed, N failed, N skipped".
# An ignored test (`#[ignore = "reason"]`) counts as skipped, and so does a
# test that skipped all its work at run time: a test that did not run is
# never reported as passed.
# SKIPS: the file the run's OUTBOXD_SKIP_LOG named (tests/harness), one line
# per run-time skip, `<test>\t<whole|part>\t<reason>`. libtest counts such a
# test as passed (and hides its "SKIPPED: ..." stderr); here each `whole` line
# prints "SKIPPED: <test>: <reason>" and moves one test from passed to
# skipped (once per test, and only for a test the log shows passed: another
# is listed as partly skipped), each `part` line (the rest of the test ran)
# prints "PARTLY SKIPPED: <test>: <reason>" and changes no count. A missing
# or empty SKIPS changes nothing.
# Guarantee: reads LOG and SKIPS only; counts come from libtest's own "test
# result:" lines (less the `whole` skips), names and reasons from its "test
# NAME ... ignored, REASON" and "test NAME ... FAILED" lines and from SKIPS.
# The last line is always the counts. Exit 0 always (the caller keeps cargo's
# status).
set -euo pipefail
log="${1:?usage: test-summary.sh LOG [SKIPS]}"
skips="${2:-}"
[ -n "$skips" ] && [ -f "$skips" ] || skips=/dev/null
awk -v skips="$skips" '
  FILENAME == skips {
    # SKIPS: name TAB whole|part TAB reason (the reason may hold no tab).
    if ($0 == "") next
    name = $0; sub(/\t.*$/, "", name)
    kind = substr($0, length(name) + 2); reason = kind
    sub(/\t.*$/, "", kind)
    if (!sub(/^[^\t]*\t/, "", reason) || reason == "") reason = "(no reason given)"
    if (kind == "whole" && (name in seen)) next
    # Moved from passed only for a test the log shows passed, once.
    if (kind == "whole" && (name in ok)) { seen[name] = 1; skipped[++ns] = name ": " reason; wholes++ }
    else if (kind == "whole") partly[++np] = name " (not found passed in the log): " reason
    else if (kind == "part") partly[++np] = name ": " reason
    else partly[++np] = "(unreadable skip-log line) " $0
    next
  }
  /^test .* \.\.\. ignored/ {
    line = $0
    sub(/^test /, "", line)
    name = line; sub(/ \.\.\. ignored.*$/, "", name)
    reason = line; if (!sub(/^.* \.\.\. ignored, /, "", reason)) reason = "(no reason given)"
    skipped[++ns] = name ": " reason
  }
  /^test .* \.\.\. ok$/ {
    name = $0; sub(/^test /, "", name); sub(/ \.\.\. ok$/, "", name)
    ok[name] = 1
  }
  # --nocapture (the soak group): "test NAME ... " then the output of the test,
  # and "ok" on a line of its own when it passed.
  /^test .* \.\.\. / { running = $0; sub(/^test /, "", running); sub(/ \.\.\. .*$/, "", running) }
  /^ok$/ { if (running != "") ok[running] = 1 }
  /^FAILED$/ { if (running != "") failed[++nf] = running }
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
    for (i = 1; i <= np; i++) print "PARTLY SKIPPED: " partly[i]
    for (i = 1; i <= nf; i++) print "FAILED: " failed[i]
    printf "%d passed, %d failed, %d skipped\n", p - wholes, f, s + wholes
  }
' "$log" "$skips"
