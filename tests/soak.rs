//! The soak group: long faults under a production-like workload, judged by an
//! independent consumer against the store (tests/harness/check.rs). Every
//! test here is named `soak_*`; `make test` runs them after the fast suite,
//! one at a time (`--test-threads 1`): each owns a private broker or several
//! daemons and the timing of its faults.
//!
//! Every daemon here runs with short timeouts (`soak_config`, `soak_env`:
//! message timeout, breaker open time, transaction timeout, backoff cap,
//! lease TTL), and every fault outlasts the longest of them.
//!
//! - outage: two broker outages (stopped) and one hang (SIGSTOP) longer than
//!   every timeout in the path while 16 writers keep going: no loss, per-key
//!   order, duplicates only inside the outage windows, nothing dead-lettered;
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
/// `kafka.message_timeout_ms` of the soak daemons (librdkafka also bounds an
/// in-flight produce request by it).
const MESSAGE_TIMEOUT_MS: u64 = 2000;
/// `relay.breaker.open_timeout_ms`: the open circuit's wait before a probe.
const BREAKER_OPEN_MS: u64 = 1000;
/// `relay.transaction_timeout_ms` (exactly-once; at least the message timeout).
const TRANSACTION_TIMEOUT_MS: u64 = 3000;
/// `relay.retry.max_backoff_ms`.
const MAX_BACKOFF_MS: u64 = 1000;
/// The longest timeout in the path from the store to the broker: every
/// soak fault (outage, hang, pause) lasts longer than it.
const LONGEST_TIMEOUT_MS: u64 = TRANSACTION_TIMEOUT_MS;
// The longest one is the longest; and the configuration check refuses an
// exactly-once producer whose messages outlive its transaction.
const _: () = assert!(
    TTL_MS <= LONGEST_TIMEOUT_MS
        && MESSAGE_TIMEOUT_MS <= LONGEST_TIMEOUT_MS
        && BREAKER_OPEN_MS <= LONGEST_TIMEOUT_MS
        && MAX_BACKOFF_MS <= LONGEST_TIMEOUT_MS
        && MESSAGE_TIMEOUT_MS <= TRANSACTION_TIMEOUT_MS
);

/// A soak daemon's configuration: `daemon_config` with the soak's message timeout.
fn soak_config(brokers: &str, dir: &Path) -> Config {
    let mut cfg = daemon_config(brokers, dir);
    cfg.kafka.message_timeout_ms = MESSAGE_TIMEOUT_MS;
    cfg
}

/// Environment of a soak daemon: fault injection, a short lease, `delivery`,
/// short timeouts (breaker, transaction, backoff cap) and a progress topic
/// of its own (the default one is shared by every test on the broker, keyed
/// by the consumer name).
fn soak_env(cfg: &Config, delivery: &str) -> Vec<(&'static str, String)> {
    assert_eq!(cfg.kafka.message_timeout_ms, MESSAGE_TIMEOUT_MS, "a soak daemon starts from soak_config");
    vec![
        fault_injection(),
        // Where the broker put each event: explains a missing one.
        ("RUST_LOG", DELIVERY_LOG.to_string()),
        ("OUTBOX_RELAY__LEASE_TTL_MS", TTL_MS.to_string()),
        ("OUTBOX_RELAY__DELIVERY", delivery.to_string()),
        ("OUTBOX_RELAY__PROGRESS_TOPIC", format!("{}progress", cfg.kafka.topic_prefix)),
        ("OUTBOX_RELAY__RETRY__MAX_BACKOFF_MS", MAX_BACKOFF_MS.to_string()),
        ("OUTBOX_RELAY__BREAKER__OPEN_TIMEOUT_MS", BREAKER_OPEN_MS.to_string()),
        ("OUTBOX_RELAY__TRANSACTION_TIMEOUT_MS", TRANSACTION_TIMEOUT_MS.to_string()),
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
