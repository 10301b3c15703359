//! Exactly-once: an operator's replay interrupted between its Kafka commit
//! and the store's part of it (removing the park record, recording the
//! outcome) by a crash (`OUTBOXD_ABORT_AT=after_replay_commit`, a real
//! `outboxd run` aborting there). The next start finds the request still
//! open and, from the progress record of that commit, skips what committed:
//! a read_committed consumer sees every event of the aggregate once, in
//! order; the park record is gone and the request is done.

mod harness;

use harness::*;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

/// `n` order items whose SKUs make the event about 140 bytes per item.
fn big_items(n: usize, tag: &str) -> serde_json::Value {
    let items: Vec<_> = (0..n)
        .map(|k| json!({"sku": format!("{tag}-{k:03}-{}", "X".repeat(54)), "quantity": 1, "unit_price": {"amount_minor": 1, "currency": "EUR"}}))
        .collect();
    json!(items)
}

#[test]
fn a_replay_interrupted_after_its_commit_is_not_published_again() {
    let Some(brokers) = harness::shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(&brokers, dir.path());
    cfg.kafka.compression = outboxd::config::Compression::None;
    // Events over 6000 bytes are refused for good until the topic allows 12000.
    let topic = format!("{}order-events", cfg.kafka.topic_prefix);
    create_topic(&brokers, &topic, cfg.kafka.partitions, &[("max.message.bytes", "6000")]);
    let env = vec![
        fault_injection(),
        ("OUTBOX_RELAY__DELIVERY", "exactly-once".to_string()),
        ("OUTBOX_RELAY__CONSUMER_NAME", format!("eos-{}", Uuid::now_v7().simple())),
        ("OUTBOX_RELAY__PROGRESS_TOPIC", format!("{}progress", cfg.kafka.topic_prefix)),
        ("OUTBOX_RELAY__LEASE_TTL_MS", "3000".to_string()),
        ("OUTBOX_RELAY__RETRY__INITIAL_BACKOFF_MS", "10".to_string()),
        ("OUTBOX_RELAY__RETRY__MAX_BACKOFF_MS", "50".to_string()),
    ];
    let mut crashing = env.clone();
    crashing.push(("OUTBOXD_ABORT_AT", "after_replay_commit".to_string()));
    let mut d = Daemon::start(&cfg, &crashing);

    let order = create_order(&d, Uuid::now_v7(), "SMALL-1");
    let r = d.post(&format!("/orders/{order}/items"), &json!({"items": big_items(50, "B")}));
    assert_eq!(r.status, 200, "{}", r.text());
    let other = create_order(&d, Uuid::now_v7(), "OTHER-1");
    eventually(Duration::from_secs(60), "the order to be parked at its ~7 KB event", || {
        (d.admin("GET", "/dlq").json()["parked_count"] == 1).then_some(())
    });

    alter_topic(&brokers, &topic, "max.message.bytes", "12000");
    let r = d.admin_post("/dlq/replay", &json!({"aggregate_id": order, "wait": false}));
    assert_eq!(r.status, 202, "{}", r.text());
    let request = r.json()["request"]["id"].as_str().expect("the request's id").to_string();
    let status = d.wait_exit(Duration::from_secs(60)).expect("the daemon aborts right after the replay's commit");
    assert!(!status.success(), "{status:?}");
    assert!(d.log_text().contains("aborting at an armed crash point"), "{}", d.log_text());

    // The next start carries the request to its end without publishing again.
    let d = Daemon::start(&cfg, &env);
    let done = eventually(Duration::from_secs(60), "the request to finish", || {
        let v = d.admin("GET", &format!("/relay/requests/{request}")).json()["request"].clone();
        matches!(v["status"].as_str(), Some("done" | "failed")).then_some(v)
    });
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(d.admin("GET", "/dlq").json()["parked_count"], 0);

    // Everything on the topic: read until nothing more came for 5 s.
    let records = consume_until(&brokers, std::slice::from_ref(&topic), 3, Duration::from_secs(5), |_| false);
    let seqs = |agg: Uuid| -> Vec<String> {
        records.iter().filter(|r| r.key == agg.to_string()).map(|r| r.headers["ce_sequence"].clone()).collect()
    };
    assert_eq!(seqs(order), vec!["1", "2"], "each event of the replayed order once, in order");
    assert_eq!(seqs(other), vec!["1"]);
    assert!(d.log_text().contains("resuming a replay"), "{}", d.log_text());
    d.stop();
}
