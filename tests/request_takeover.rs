//! Operator requests left running by a former relay term of the same lease
//! holder (a term that ended on a store or producer error in the middle of
//! one; the next term runs under the same epoch): the running term takes
//! them over and carries them out, in both delivery modes, instead of
//! leaving them `running` until the lease changes hands. A real `outboxd
//! run` against real Kafka; the orphan is the row such a term leaves,
//! written with `sqlite3` at the holder's epoch.

mod harness;

use harness::*;
use std::time::Duration;
use uuid::Uuid;

fn orphan_is_taken_over(delivery: &str) {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(&brokers, dir.path());
    let mut env = vec![("OUTBOX_RELAY__DELIVERY", delivery.to_string())];
    if delivery == "exactly-once" {
        env.push(("OUTBOX_RELAY__PROGRESS_TOPIC", format!("{}progress", cfg.kafka.topic_prefix)));
    }
    let d = Daemon::start(&cfg, &env);
    create_order(&d, Uuid::now_v7(), "TAKEOVER-1");
    caught_up(&d);
    let db = &cfg.store.path;
    let lease = sqlite3(db, "SELECT epoch || '|' || name FROM relay_leases WHERE name = 'kafka-relay'");
    let (epoch, consumer) = lease.trim().split_once('|').expect("the relay holds its lease");
    let id = Uuid::now_v7();
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    sqlite3(
        db,
        &format!(
            "INSERT INTO relay_requests (id, consumer, kind, status, requested_by, created_at, claimed_epoch) \
             VALUES ('{id}', '{consumer}', '{{\"kind\":\"replay_all_parked\"}}', 'running', 'a former term', '{at}', {epoch})"
        ),
    );
    let done = eventually(Duration::from_secs(20), "the running term to take the request over", || {
        let v = d.admin("GET", &format!("/relay/requests/{id}")).json()["request"].clone();
        (v["status"] != "running").then_some(v)
    });
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["claimed_epoch"].as_i64(), epoch.parse().ok(), "under the same epoch: {done}");
    assert_eq!(done["result"]["replayed_aggregates"], 0, "{done}");
    d.stop();
}

#[test]
fn a_request_left_running_by_a_former_term_is_taken_over_at_least_once() {
    orphan_is_taken_over("at-least-once");
}

#[test]
fn a_request_left_running_by_a_former_term_is_taken_over_exactly_once() {
    orphan_is_taken_over("exactly-once");
}
