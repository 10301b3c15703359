//! Exactly-once: an operator's replay interrupted between its Kafka commit
//! and the store's part of it (removing the park record, recording the
//! outcome) by a crash (`OUTBOXD_ABORT_AT=after_replay_commit`, a real
//! `outboxd run` aborting there). The next start finds the request still
//! open and, from the progress record of that commit, skips what committed:
//! a read_committed consumer sees every event of the aggregate once, in
//! order; the park record is gone and the request is done, also when the
//! request replays several parked aggregates. A discard
//! interrupted the same way publishes its marker once and keeps one audit
//! row. A crash right after an unreadable row parks its aggregate
//! (`after_park`) finds the aggregate's earlier event of the same batch
//! committed, not held behind the park.

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

/// A daemon armed to abort after a replay's commit, with `n` orders parked
/// at their ~7 KB second event (the topic then takes it) and another order
/// delivered.
struct Parked {
    brokers: String,
    /// Holds the store and the daemon logs until the test ends.
    _dir: tempfile::TempDir,
    cfg: outboxd::config::Config,
    env: Vec<(&'static str, String)>,
    topic: String,
    d: Daemon,
    /// The first parked order (of `orders`).
    order: Uuid,
    orders: Vec<Uuid>,
    other: Uuid,
}

/// An exactly-once daemon's config whose order topic refuses events over
/// 6000 bytes (for good, until a test lets it take 12000): (dir, config,
/// topic, variables).
type Setup = (tempfile::TempDir, outboxd::config::Config, String, Vec<(&'static str, String)>);

fn exactly_once_with_a_small_topic(brokers: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(brokers, dir.path());
    cfg.kafka.compression = outboxd::config::Compression::None;
    let topic = format!("{}order-events", cfg.kafka.topic_prefix);
    create_topic(brokers, &topic, cfg.kafka.partitions, &[("max.message.bytes", "6000")]);
    let env = vec![
        fault_injection(),
        ("OUTBOX_RELAY__DELIVERY", "exactly-once".to_string()),
        ("OUTBOX_RELAY__CONSUMER_NAME", format!("eos-{}", Uuid::now_v7().simple())),
        ("OUTBOX_RELAY__PROGRESS_TOPIC", format!("{}progress", cfg.kafka.topic_prefix)),
        ("OUTBOX_RELAY__LEASE_TTL_MS", "3000".to_string()),
        ("OUTBOX_RELAY__RETRY__INITIAL_BACKOFF_MS", "10".to_string()),
        ("OUTBOX_RELAY__RETRY__MAX_BACKOFF_MS", "50".to_string()),
    ];
    (dir, cfg, topic, env)
}

fn parked_under_an_armed_crash(n: usize) -> Option<Parked> {
    let brokers = harness::shared_brokers()?;
    let (dir, cfg, topic, env) = exactly_once_with_a_small_topic(&brokers);
    let mut crashing = env.clone();
    crashing.push(("OUTBOXD_ABORT_AT", "after_replay_commit".to_string()));
    let d = Daemon::start(&cfg, &crashing);

    let orders: Vec<Uuid> = (0..n).map(|k| create_order(&d, Uuid::now_v7(), &format!("SMALL-{k}"))).collect();
    for order in &orders {
        let r = d.post(&format!("/orders/{order}/items"), &json!({"items": big_items(50, "B")}));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let other = create_order(&d, Uuid::now_v7(), "OTHER-1");
    eventually(Duration::from_secs(60), "the orders to be parked at their ~7 KB event", || {
        (d.admin("GET", "/dlq").json()["parked_count"] == n).then_some(())
    });
    // `limit` bounds the parked list too (it listed every parked aggregate);
    // parked_count still counts them all.
    let v = d.admin("GET", "/dlq?limit=1").json();
    assert_eq!((v["parked"].as_array().map(Vec::len), v["parked_count"].as_u64()), (Some(1), Some(n as u64)), "{v}");
    alter_topic(&brokers, &topic, "max.message.bytes", "12000");
    Some(Parked { brokers, _dir: dir, cfg, env, topic, d, order: orders[0], orders, other })
}

impl Parked {
    /// Submits `body` to `path` without waiting, waits for the armed abort,
    /// restarts without it and waits until the request is done.
    fn interrupt_then_finish(&mut self, path: &str, body: serde_json::Value) {
        let r = self.d.admin_post(path, &body);
        assert_eq!(r.status, 202, "{}", r.text());
        let request = r.json()["request"]["id"].as_str().expect("the request's id").to_string();
        let status = self.d.wait_exit(Duration::from_secs(60)).expect("the daemon aborts right after the commit");
        assert!(!status.success(), "{status:?}");
        assert!(self.d.log_text().contains("aborting at an armed crash point"), "{}", self.d.log_text());

        // The next start carries the request to its end without publishing again.
        self.d = Daemon::start(&self.cfg, &self.env);
        let done = eventually(Duration::from_secs(60), "the request to finish", || {
            let v = self.d.admin("GET", &format!("/relay/requests/{request}")).json()["request"].clone();
            matches!(v["status"].as_str(), Some("done" | "failed")).then_some(v)
        });
        assert_eq!(done["status"], "done", "{done}");
        assert_eq!(self.d.admin("GET", "/dlq").json()["parked_count"], 0);
        assert!(self.d.log_text().contains("resuming a replay"), "{}", self.d.log_text());
    }

    /// Everything on the topic: read until nothing more came for 5 s.
    fn topic(&self) -> Vec<Record> {
        consume_until(&self.brokers, std::slice::from_ref(&self.topic), 3, Duration::from_secs(5), |_| false)
    }
}

/// `(ce_sequence, ce_type)` of `agg`'s records, in topic order.
fn events(records: &[Record], agg: Uuid) -> Vec<(String, String)> {
    records
        .iter()
        .filter(|r| r.key == agg.to_string())
        .map(|r| (r.headers["ce_sequence"].clone(), r.headers["ce_type"].clone()))
        .collect()
}

fn seqs(events: &[(String, String)]) -> Vec<&str> {
    events.iter().map(|(s, _)| s.as_str()).collect()
}

#[test]
fn a_replay_interrupted_after_its_commit_is_not_published_again() {
    let Some(mut p) = parked_under_an_armed_crash(1) else { return };
    p.interrupt_then_finish("/dlq/replay", json!({"aggregate_id": p.order, "wait": false}));
    let records = p.topic();
    assert_eq!(seqs(&events(&records, p.order)), vec!["1", "2"], "each event of the replayed order once, in order");
    assert_eq!(seqs(&events(&records, p.other)), vec!["1"]);
    p.d.stop();
}

/// A replay of every parked aggregate, interrupted after the commit of its
/// first aggregate's held events. The progress record names that aggregate:
/// the next term skips only its committed events, whichever order it
/// replays the others in (their held events interleave in the feed with the
/// first one's, so a position alone would skip some of theirs, or publish
/// the first one's again).
#[test]
fn a_replay_of_all_parked_interrupted_after_one_aggregate_loses_and_repeats_nothing() {
    let Some(mut p) = parked_under_an_armed_crash(4) else { return };
    // A held third event each, after every order's second in the feed.
    for order in &p.orders {
        let r = p.d.post(&format!("/orders/{order}/confirm"), &json!({}));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    p.interrupt_then_finish("/dlq/replay", json!({"all_parked": true, "wait": false}));
    let records = p.topic();
    for order in &p.orders {
        assert_eq!(seqs(&events(&records, *order)), vec!["1", "2", "3"], "order {order}: each event once, in order");
    }
    assert_eq!(seqs(&events(&records, p.other)), vec!["1"]);
    p.d.stop();
}

/// Review finding: the next term served its open requests oldest first
/// by `created_at`; one stamped earlier than the replay being resumed (a
/// second host's clock behind) went first, its progress record dropped the
/// resumed replay's mark, and after a second crash right after that
/// commit the replay published its committed events again. The replay being
/// resumed goes first.
#[test]
fn a_resumed_replay_goes_before_a_request_stamped_earlier() {
    let Some(mut p) = parked_under_an_armed_crash(2) else { return };
    let r = p.d.admin_post("/dlq/replay", &json!({"aggregate_id": p.orders[0], "wait": false}));
    assert_eq!(r.status, 202, "{}", r.text());
    let first = r.json()["request"]["id"].as_str().unwrap().to_string();
    let status = p.d.wait_exit(Duration::from_secs(60)).expect("the daemon aborts right after the commit");
    assert!(!status.success(), "{status:?}");
    // The second order's replay, stamped an hour before the first one.
    let consumer = p.env.iter().find(|(k, _)| *k == "OUTBOX_RELAY__CONSUMER_NAME").unwrap().1.clone();
    let second = replay_of(&consumer, p.orders[1]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async { open_store(&p.cfg).await.request_submit(&second).await.unwrap() });
    let earlier = (second.created_at - chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    sqlite3(
        &p.cfg.store.path,
        &format!("UPDATE relay_requests SET created_at = '{earlier}' WHERE id = '{}'", second.id),
    );

    // A second start that crashes after its first replay commit, then a third.
    let mut crashing = p.env.clone();
    crashing.push(("OUTBOXD_ABORT_AT", "after_replay_commit".to_string()));
    p.d = Daemon::start(&p.cfg, &crashing);
    let status = p.d.wait_exit(Duration::from_secs(60)).expect("the second start aborts after a replay commit");
    assert!(!status.success(), "{status:?}");
    p.d = Daemon::start(&p.cfg, &p.env);
    for id in [first, second.id.to_string()] {
        let done = eventually(Duration::from_secs(60), "the requests to finish", || {
            let v = p.d.admin("GET", &format!("/relay/requests/{id}")).json()["request"].clone();
            matches!(v["status"].as_str(), Some("done" | "failed")).then_some(v)
        });
        assert_eq!(done["status"], "done", "{done}");
    }
    let records = p.topic();
    for order in &p.orders {
        assert_eq!(seqs(&events(&records, *order)), vec!["1", "2"], "order {order}: each event once, in order");
    }
    p.d.stop();
}

#[test]
fn a_discard_interrupted_after_its_commit_keeps_one_marker_and_one_audit_row() {
    let Some(mut p) = parked_under_an_armed_crash(1) else { return };
    let db = p.cfg.store.path.clone();
    let held = sqlite3(
        &db,
        &format!("SELECT event_id FROM event_store WHERE aggregate_id = '{}' AND sequence_number = 2", p.order),
    );
    let held = held.trim().to_string();
    p.interrupt_then_finish("/dlq/discard", json!({"event_id": held, "reason": "re-sent by hand", "wait": false}));
    let order = events(&p.topic(), p.order);
    assert_eq!(seqs(&order), vec!["1", "2"], "the marker once, in the discarded event's place");
    assert_eq!(order[1].1, "outboxd.EventDiscarded");
    let audit = sqlite3(&db, &format!("SELECT COUNT(*), MIN(reason) FROM discarded_events WHERE event_id = '{held}'"));
    assert_eq!(audit.trim(), "1|re-sent by hand", "one audit row for one discard");
    p.d.stop();
}

/// A valid first event of an order and a row nobody can decode behind it,
/// written in one transaction by a foreign tool (so one feed page, one
/// batch), the process killed right after the park record is written
/// (`OUTBOXD_ABORT_AT=after_park`). The event before the bad row was
/// committed first, so the next start has it on the topic once; it used to
/// be held behind a park record starting after it, published by nobody.
#[test]
fn an_unreadable_row_parks_its_aggregate_only_after_the_events_before_it_committed() {
    let Some(brokers) = harness::shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(&brokers, dir.path());
    let db = cfg.store.path.clone();
    let env = vec![
        fault_injection(),
        ("OUTBOX_RELAY__DELIVERY", "exactly-once".to_string()),
        ("OUTBOX_RELAY__PROGRESS_TOPIC", format!("{}progress", cfg.kafka.topic_prefix)),
    ];
    let mut crashing = env.clone();
    crashing.push(("OUTBOXD_ABORT_AT", "after_park".to_string()));
    let mut d = Daemon::start(&cfg, &crashing);
    let template = create_order(&d, Uuid::now_v7(), "TEMPLATE-1");
    caught_up(&d);
    let a = Uuid::now_v7();
    let cols = "event_id, aggregate_type, aggregate_id, sequence_number, event_type, event_version, payload, correlation_id, timestamp";
    sqlite3(
        &db,
        &format!(
            "BEGIN; \
             INSERT INTO event_store ({cols}) SELECT '{}', aggregate_type, '{a}', 1, event_type, event_version, payload, correlation_id, timestamp \
               FROM event_store WHERE aggregate_id = '{template}' AND sequence_number = 1; \
             INSERT INTO event_store ({cols}) VALUES ('{}', 'Order', '{a}', 2, 'OrderConfirmed', 1, '{{not json', '{}', '2026-12-02T00:00:00.000Z'); \
             COMMIT;",
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7()
        ),
    );
    let status = d.wait_exit(Duration::from_secs(60)).expect("the daemon aborts right after the park");
    assert!(!status.success(), "{status:?}");
    assert!(d.log_text().contains("aborting at an armed crash point"), "{}", d.log_text());

    d = Daemon::start(&cfg, &env);
    eventually(Duration::from_secs(30), "the order parked at its unreadable row", || {
        let v = d.admin("GET", "/dlq").json();
        (v["parked_count"] == 1 && v["parked"][0]["aggregate_id"] == a.to_string()).then_some(())
    });
    let topic = format!("{}order-events", cfg.kafka.topic_prefix);
    let records = consume_until(&brokers, std::slice::from_ref(&topic), 3, Duration::from_secs(10), |rs| {
        rs.iter().any(|r| r.key == a.to_string())
    });
    assert_eq!(seqs(&events(&records, a)), vec!["1"], "the event before the unreadable row, once");
    assert_eq!(seqs(&events(&records, template)), vec!["1"]);
    d.stop();
}

/// `outboxd dlq discard` with no relay running, when the relay's progress
/// is below the discarded event (it was parked as the last event, so no
/// transaction moved the progress past it). The CLI cannot publish the
/// marker in the event's place (the feed brings the event again after the
/// unpark): the next term publishes the marker there from the audit row,
/// and never the event itself, even with the topic now taking it.
#[test]
fn a_discard_carried_out_behind_the_progress_publishes_its_marker_in_place_never_the_event() {
    let Some(brokers) = harness::shared_brokers() else { return };
    let (_dir, cfg, topic, env) = exactly_once_with_a_small_topic(&brokers);
    let d = Daemon::start(&cfg, &env);
    let order = create_order(&d, Uuid::now_v7(), "SMALL-1");
    caught_up(&d);
    let r = d.post(&format!("/orders/{order}/items"), &json!({"items": big_items(50, "B")}));
    assert_eq!(r.status, 200, "{}", r.text());
    eventually(Duration::from_secs(60), "the order to be parked at its ~7 KB event", || {
        (d.admin("GET", "/dlq").json()["parked_count"] == 1).then_some(())
    });
    d.stop();

    let held = sqlite3(
        &cfg.store.path,
        &format!("SELECT event_id FROM event_store WHERE aggregate_id = '{order}' AND sequence_number = 2"),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .args(["dlq", "discard", "--id", held.trim(), "--reason", "too large, fixed upstream"])
        .envs(config_env(&cfg))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The topic would take the event now: only the marker may reach it.
    alter_topic(&brokers, &topic, "max.message.bytes", "12000");
    let d = Daemon::start(&cfg, &env);
    let after = create_order(&d, Uuid::now_v7(), "AFTER-1");
    caught_up(&d);
    assert_eq!(d.admin("GET", "/dlq").json()["parked_count"], 0);
    let records = consume_until(&brokers, std::slice::from_ref(&topic), 3, Duration::from_secs(10), |rs| {
        rs.iter().any(|r| r.key == after.to_string())
    });
    let got = events(&records, order);
    assert_eq!(seqs(&got), vec!["1", "2"], "the order's first event, then the marker in the second's place: {got:?}");
    assert_eq!(got[1].1, "outboxd.EventDiscarded", "{got:?}");
    d.stop();
}
