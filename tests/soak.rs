//! The soak group: long faults under a production-like workload, judged by an
//! independent consumer against the store (tests/harness/check.rs). Every
//! test here is named `soak_*`; `make test` runs them after the fast suite,
//! one at a time (`--test-threads 1`): each owns a private broker or several
//! daemons and the timing of its faults.
//!
//! - outage: two broker outages longer than every timeout in the path while
//!   16 writers keep going: no loss, per-key order, duplicates only inside the
//!   outage windows, nothing dead-lettered;
//! - chaos: 10 kill -9 and a broker outage under load, at-least-once
//!   (duplicates only in each kill's unconfirmed window) and exactly-once (a
//!   read_committed consumer sees every event once);
//! - ha: two daemons on one SQLite file: one publisher, kill -9 takeover
//!   within 3 TTL, a paused "zombie" leader refused and stepping down, a
//!   restart of all instances;
//! - exactly_once: a zombie paused mid-transaction is fenced by the broker,
//!   a transaction whose commit and abort both time out in a broker outage
//!   ends the term without loss or a visible duplicate, and a store moves
//!   from at-least-once to exactly-once.

mod harness;

#[path = "soak/chaos.rs"]
mod chaos;
#[path = "soak/exactly_once.rs"]
mod exactly_once;
#[path = "soak/ha.rs"]
mod ha;
#[path = "soak/outage.rs"]
mod outage;

use harness::*;
use outboxd::config::Config;
use std::path::Path;
use std::time::Duration;

/// Lease TTL of the soak daemons: short, so takeovers fit the suite's budget.
const TTL_MS: u64 = 3000;

/// Environment of a soak daemon: fault injection, a short lease, `delivery`,
/// and a progress topic of its own (the default one is shared by every test
/// on the broker, keyed by the consumer name).
fn soak_env(cfg: &Config, delivery: &str) -> Vec<(&'static str, String)> {
    vec![
        fault_injection(),
        // Where the broker put each event: explains a missing one.
        ("RUST_LOG", DELIVERY_LOG.to_string()),
        ("OUTBOX_RELAY__LEASE_TTL_MS", TTL_MS.to_string()),
        ("OUTBOX_RELAY__DELIVERY", delivery.to_string()),
        ("OUTBOX_RELAY__PROGRESS_TOPIC", format!("{}progress", cfg.kafka.topic_prefix)),
        ("OUTBOX_RELAY__RETRY__MAX_BACKOFF_MS", "1000".into()),
    ]
}

/// Waits until the relay checkpoint covers the store, reads the topics until
/// every stored event is there, and judges them.
fn settle_and_judge(brokers: &str, cfg: &Config, db: &Path, windows: &[Window]) -> Verdict {
    wait_caught_up(db, RELAY, Duration::from_secs(180));
    let stored = stored_rows(db);
    let records = consume_until(brokers, &topics(cfg), stored.len(), Duration::from_secs(30), |rs| {
        Verdict::covers(rs, &stored, |_| false)
    });
    let mut verdict = Verdict::judge(&records, &stored, |_| false, windows);
    if !verdict.missing.is_empty() {
        // The daemons log into the test directory, beside the store's.
        let dir = db.parent().and_then(Path::parent).unwrap_or(db);
        verdict.notes = explain_missing(dir, &verdict.missing, &records);
    }
    verdict
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}
