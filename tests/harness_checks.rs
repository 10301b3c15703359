//! The test harness's own checks, shown able to fail: a metric missing
//! from the page is not read as 0 (`Metrics::sample`), the soak
//! workload's stop fails when one of its writers panicked, and a test that
//! skips at run time is counted skipped by `make test`'s summary, not passed.

mod harness;

use harness::*;
use std::time::Duration;

/// The harness reads a 0 only from a series on the page (`Metrics::sample`):
/// `value` sums no series to 0, so an "equals 0" passed for a missing metric.
#[test]
fn a_metric_missing_from_the_page_is_not_a_zero() {
    let m = Metrics::parse("# TYPE dlq_depth gauge\ndlq_depth 0\n");
    assert_eq!(m.sample("dlq_depth", &[]), 0.0);
    assert_eq!(m.value("dlq_parked_aggregates", &[]), 0.0, "value() reads a missing metric as 0");
    let missing = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.sample("dlq_parked_aggregates", &[])));
    assert!(missing.is_err(), "sample() panics on a missing metric");
    let other = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.sample("dlq_depth", &[("role", "x")])));
    assert!(other.is_err(), "and on a metric without the labels asked for");
}

/// The soak workload's stop fails when a writer panicked (the panic was
/// ignored); writers stopped by the flag, refused at every request, do not.
#[test]
fn a_load_writer_that_panicked_fails_the_stop() {
    let closed: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let load = Load::start(vec![closed], LoadSpec { writers: 2, ..LoadSpec::default() });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(load.stop().ok(), 0, "refused requests only");
    // No target at all: each writer panics at its first pick (`w % 0`).
    let load = Load::start(Vec::new(), LoadSpec { writers: 2, ..LoadSpec::default() });
    let stop = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| load.stop()));
    let msg = stop.expect_err("stop() reports the panic");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("a load writer panicked"), "{msg}");
}

/// Review finding: a test that skipped at run time (no server, a tool
/// missing) passed for libtest and `make test`'s summary counted it passed,
/// its reason hidden. The harness records the skip under the test's name
/// (`OUTBOXD_SKIP_LOG`), and scripts/test-summary.sh counts it skipped (a
/// whole skip, once, of a test the log shows passed) or lists it (a part).
#[test]
fn a_test_skipped_at_run_time_is_counted_skipped_by_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let skips = dir.path().join("skips");
    let record = |name: &str, whole: bool, reason: &'static str| {
        let (skips, name) = (skips.clone(), name.to_string());
        std::thread::Builder::new()
            .name(name)
            .spawn(move || record_skip(&skips, whole, reason).unwrap())
            .unwrap()
            .join()
            .unwrap();
    };
    record("needs_kafka", true, "set KAFKA_BROKERS");
    record("needs_kafka", true, "set KAFKA_BROKERS");
    record("has_a_part", false, "rpk not built");
    let lines = std::fs::read_to_string(&skips).unwrap();
    assert!(lines.starts_with("needs_kafka\twhole\tset KAFKA_BROKERS\n"), "{lines}");
    // The summary of a cargo test output `log` with these skips.
    let summary = |log: &str| {
        let path = dir.path().join("log");
        std::fs::write(&path, log).unwrap();
        let script = repo_root().join("scripts/test-summary.sh");
        let out = std::process::Command::new("bash").arg(script).args([&path, &skips]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let out = summary(
        "test has_a_part ... ok\ntest needs_kafka ... ok\ntest other ... ok\ntest result: ok. 3 passed; 0 failed; 0 ignored\n",
    );
    assert_eq!(
        out,
        "SKIPPED: needs_kafka: set KAFKA_BROKERS\nPARTLY SKIPPED: has_a_part: rpk not built\n2 passed, 0 failed, 1 skipped\n",
        "{out}"
    );
    // The soak group runs with --nocapture: a test's output comes between
    // "test NAME ... " and its "ok" (or "FAILED") on a line of its own.
    let out = summary(
        "test needs_kafka ... SKIPPED: set KAFKA_BROKERS\nok\ntest broken ... figures\nFAILED\ntest result: FAILED. 1 passed; 1 failed; 0 ignored\n",
    );
    assert!(out.starts_with("SKIPPED: needs_kafka: set KAFKA_BROKERS\n"), "{out}");
    assert!(out.contains("FAILED: broken\n") && out.ends_with("0 passed, 1 failed, 1 skipped\n"), "{out}");
}
