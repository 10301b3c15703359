//! Ordered delivery under the faults a relay meets in production, checked by
//! an independent consumer against the store (tests/harness/check.rs):
//!
//! - a row nobody can decode, written with the sqlite3 tool between valid
//!   events: its aggregate is parked, everything else keeps flowing, /health
//!   and `outboxd dlq list` say why; a transient read failure resumes alone;
//! - poison inside a stream (event 3 of 5 over the topic's limit): 1, 2 on
//!   the topic, 3-5 held; `dlq replay --aggregate` (CLI) delivers 3, 4, 5 in
//!   order through the running relay; `POST /dlq/discard` (admin API)
//!   publishes a marker in 3's place, then 4, 5, and keeps an audit row;
//! - the checker itself, on synthetic records: it fails on a missing id, a
//!   reorder at first arrival, an unknown id, a copy with another key or
//!   sequence, a key in two partitions, and a duplicate beyond one per
//!   covering window; the checkpoint its windows start at is read or the
//!   test stops (a read error is no checkpoint 0); the consumer of exact
//!   counts reads to the end, a late second copy included.
//!
//! The long faults (outage, kill -9 chaos) are in tests/soak.rs.

mod harness;

use harness::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// POSTs `path` with `body` until it answers 2xx (an actor may be restarting).
fn post_ok(d: &Daemon, path: &str, body: serde_json::Value) -> serde_json::Value {
    eventually(Duration::from_secs(30), path, || {
        let r = d.post(path, &body);
        match r.status {
            200 | 201 => Some(r.json()),
            503 => None,
            s => panic!("POST {path}: {s} {}", r.text()),
        }
    })
}

fn small_items(n: usize, tag: &str) -> serde_json::Value {
    (0..n)
        .map(|k| serde_json::json!({"sku": format!("{tag}-{k}"), "quantity": 1, "unit_price": {"amount_minor": 500, "currency": "EUR"}}))
        .collect()
}

/// 100 items with 64-character random SKUs: ~14 KB that compresses badly.
fn huge_items() -> serde_json::Value {
    (0..100)
        .map(|_| {
            let sku = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
            serde_json::json!({"sku": sku, "quantity": 1, "unit_price": {"amount_minor": 1, "currency": "EUR"}})
        })
        .collect()
}

/// An order with 5 events whose third is `third_items`; returns its id.
fn five_event_order(d: &Daemon, third_items: serde_json::Value) -> Uuid {
    let id = Uuid::now_v7();
    post_ok(
        d,
        "/orders",
        serde_json::json!({"id": id, "customer_id": Uuid::from_u128(7), "items": small_items(1, "A")}),
    );
    post_ok(d, &format!("/orders/{id}/items"), serde_json::json!({"items": small_items(2, "B")}));
    post_ok(d, &format!("/orders/{id}/items"), serde_json::json!({ "items": third_items }));
    post_ok(d, &format!("/orders/{id}/confirm"), serde_json::json!({}));
    post_ok(d, &format!("/orders/{id}/ship"), serde_json::json!({"tracking_number": "T1", "carrier": "DHL"}));
    id
}

fn sequences(records: &[Record], id: Uuid) -> Vec<(i64, String)> {
    by_key(records).remove(&id.to_string()).unwrap_or_default()
}

#[test]
fn undecodable_row_parks_its_aggregate_and_a_transient_read_failure_resumes_alone() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(&brokers, dir.path());
    let db = cfg.store.path.clone();
    let d = Daemon::start(&cfg, &[fault_injection(), ("OUTBOX_HEALTH__FEED_UNHEALTHY_AFTER_MS", "60000".into())]);
    let customer = Uuid::now_v7();
    for i in 0..3 {
        create_order(&d, customer, &format!("BEFORE-{i}"));
    }
    // A foreign tool writes a row nobody can decode, between valid events.
    let bad = Uuid::now_v7();
    sqlite3(
        &db,
        &format!(
            "INSERT INTO event_store (event_id, aggregate_type, aggregate_id, sequence_number, event_type, event_version, payload, correlation_id, timestamp) \
             VALUES ('{}', 'Order', '{bad}', 1, 'OrderCreated', 1, '{{not json', '{}', '2026-12-02T00:00:00.000Z')",
            Uuid::now_v7(),
            Uuid::now_v7()
        ),
    );
    let after: Vec<Uuid> = (0..3).map(|i| create_order(&d, customer, &format!("AFTER-{i}"))).collect();
    // Events after the bad row reach the topic within seconds.
    let started = Instant::now();
    let head = wait_caught_up(&db, RELAY, Duration::from_secs(30));
    eprintln!("relay passed the bad row and caught up (head {head}) in {:?}", started.elapsed());
    let is_bad = |r: &StoredRow| r.aggregate_id == bad.to_string();
    let stored = stored_rows(&db);
    let records =
        consume_until(&brokers, &topics(&cfg), 1, Duration::from_secs(10), |rs| Verdict::covers(rs, &stored, is_bad));
    assert!(after.iter().all(|a| sequences(&records, *a).len() == 1), "orders created after the bad row");
    let v = Verdict::judge(&records, &stored, is_bad, &[]);
    v.assert_sound("after an undecodable row");
    assert_eq!(v.duplicate_copies(), 0, "{}", v.summary());

    // The parked aggregate is visible: CLI, /health, metrics, projections.
    let (code, out, err) = cli(&cfg, &["dlq", "list"]);
    assert_eq!(code, 0, "{err}");
    let parked: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["kind"] == "parked")
        .collect();
    assert_eq!(parked.len(), 1, "{out}");
    assert_eq!(parked[0]["aggregate_id"], bad.to_string());
    assert_eq!(parked[0]["held_events"], 1);
    assert!(parked[0]["error"].as_str().unwrap().contains("payload"), "{}", parked[0]);
    let h = eventually(Duration::from_secs(5), "/health to show the parked aggregate", || {
        let (_, h) = d.health();
        (component(&h, "cdc_processor").0 == "degraded").then_some(h)
    });
    assert!(component(&h, "cdc_processor").1.contains("parked"), "{h}");
    assert_eq!(d.metrics().value("dlq_parked_aggregates", &[]), 1.0);
    let (code, out, _) = cli(&cfg, &["projections", "status"]);
    assert_eq!(code, 0);
    let p: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(p["parked_aggregates"], 1, "the projector parks the bad aggregate too: {p}");
    assert_eq!(p["checkpoint"], p["head"], "and projects everything else: {p}");
    assert_eq!(p["lag_events"], 1, "the held event still counts as lag (it is not projected): {p}");

    // A transient read failure (longer than the poll interval and backoffs)
    // while writes continue: the relay reports it, then resumes by itself.
    let errors_before = d.metrics().value("relay_feed_errors_total", &[]);
    let r = d.admin("POST", "/debug/store?fail_reads_ms=4000");
    assert_eq!(r.status, 202, "{}", r.text());
    let during: Vec<Uuid> = (0..5).map(|i| create_order(&d, customer, &format!("DURING-{i}"))).collect();
    let (_, h) = d.health();
    let (status, detail) = component(&h, "cdc_processor");
    assert_ne!(status, "healthy", "feed failing shows in /health: {detail}");
    assert!(d.metrics().value("relay_feed_errors_total", &[]) > errors_before);
    let pid = d.pid();
    wait_caught_up(&db, RELAY, Duration::from_secs(30));
    assert_eq!(d.pid(), pid, "no restart needed");
    let stored = stored_rows(&db);
    let records =
        consume_until(&brokers, &topics(&cfg), 1, Duration::from_secs(10), |rs| Verdict::covers(rs, &stored, is_bad));
    assert!(during.iter().all(|a| sequences(&records, *a).len() == 1), "orders created during the failure");
    Verdict::judge(&records, &stored, is_bad, &[]).assert_sound("after a transient read failure");
    d.stop();
}

#[test]
fn poison_inside_a_stream_is_held_then_replayed_or_discarded_in_order() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(&brokers, dir.path());
    cfg.kafka.compression = outboxd::config::Compression::None;
    let topic = format!("{}order-events", cfg.kafka.topic_prefix);
    create_topic(&brokers, &topic, 3, &[("max.message.bytes", "8000")]);
    let env = [
        ("OUTBOX_RELAY__RETRY__INITIAL_BACKOFF_MS", "20".to_string()),
        ("OUTBOX_RELAY__RETRY__MAX_BACKOFF_MS", "100".into()),
    ];
    let d = Daemon::start(&cfg, &env);
    let db = cfg.store.path.clone();
    let customer = Uuid::now_v7();
    create_order(&d, customer, "OTHER-0");
    let replayed = five_event_order(&d, huge_items());
    create_order(&d, customer, "OTHER-1");
    let discarded = five_event_order(&d, huge_items());
    let clean = five_event_order(&d, small_items(3, "C"));
    create_order(&d, customer, "OTHER-2");
    wait_caught_up(&db, RELAY, Duration::from_secs(60));

    let held = |r: &StoredRow| {
        (r.aggregate_id == replayed.to_string() || r.aggregate_id == discarded.to_string()) && r.sequence >= 3
    };
    let stored = stored_rows(&db);
    // Partitions arrive in any order: read until every deliverable event is in.
    let records = consume_until(&brokers, std::slice::from_ref(&topic), 1, Duration::from_secs(10), |rs| {
        Verdict::covers(rs, &stored, held)
    });
    let seqs = |rs: &[Record], id| sequences(rs, id).into_iter().map(|(s, _)| s).collect::<Vec<_>>();
    assert_eq!(seqs(&records, replayed), vec![1, 2], "only the events before the poison");
    assert_eq!(seqs(&records, discarded), vec![1, 2]);
    assert_eq!(seqs(&records, clean), vec![1, 2, 3, 4, 5], "other aggregates complete");
    Verdict::judge(&records, &stored, held, &[]).assert_sound("while parked");
    let (code, out, _) = cli(&cfg, &["dlq", "list"]);
    assert_eq!(code, 0);
    let parked: HashMap<String, serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "parked")
        .map(|v| (v["aggregate_id"].as_str().unwrap().to_string(), v))
        .collect();
    assert_eq!(parked.len(), 2, "{out}");
    for id in [replayed, discarded] {
        let p = &parked[&id.to_string()];
        assert_eq!((p["sequence"].as_i64(), p["held_events"].as_i64()), (Some(3), Some(3)), "{p}");
        assert!(p["error"].as_str().unwrap().to_lowercase().contains("too large"), "{p}");
    }
    assert_eq!(sqlite3(&db, "SELECT COUNT(*) FROM dead_letter_queue").trim(), "0", "nothing is dead-lettered");
    // Each poison event was resent alone and then given up once: one count
    // each, however many attempts it took.
    let publish = [("operation", "publish")];
    eventually(Duration::from_secs(5), "retry_failure_total 2", || {
        (d.metrics().sample("retry_failure_total", &publish) == 2.0).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.metrics().sample("retry_failure_total", &publish), 2.0, "one per event given up, not more");

    // Replay through the running relay (the CLI writes a request row and waits).
    alter_topic(&brokers, &topic, "max.message.bytes", "1000000");
    let (code, out, err) = cli(&cfg, &["dlq", "replay", "--aggregate", &replayed.to_string(), "--no-progress"]);
    assert_eq!(code, 0, "{out}{err}");
    // Discard through the admin API: a marker in 3's place, then 4 and 5.
    let third = sqlite3(
        &db,
        &format!("SELECT event_id FROM event_store WHERE aggregate_id = '{discarded}' AND sequence_number = 3"),
    );
    let r = d.admin_post(
        "/dlq/discard",
        &serde_json::json!({"event_id": third.trim(), "reason": "bad import, re-sent by hand"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(d.metrics().value("relay_discards_total", &[]), 1.0, "the discard is counted (it never was)");

    let records = consume_until(&brokers, std::slice::from_ref(&topic), 1, Duration::from_secs(20), |rs| {
        sequences(rs, replayed).len() == 5
            && sequences(rs, discarded).len() == 5
            && Verdict::covers(rs, &stored, |_| false)
    });
    assert_eq!(seqs(&records, replayed), vec![1, 2, 3, 4, 5], "replay delivers 3, 4, 5 in order");
    let marker = sequences(&records, discarded);
    assert_eq!(marker.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    assert_eq!(marker[2].1, "outboxd.EventDiscarded", "a marker keeps the sequence without a gap");
    assert_eq!(marker[3].1, "OrderConfirmed");
    let audit = sqlite3(
        &db,
        &format!(
            "SELECT reason, aggregate_id, sequence_number FROM discarded_events WHERE event_id = '{}'",
            third.trim()
        ),
    );
    assert_eq!(
        audit.trim(),
        format!("bad import, re-sent by hand|{discarded}|3"),
        "the audit row keeps the event and the reason"
    );
    let (code, out, _) = cli(&cfg, &["dlq", "list"]);
    assert_eq!(code, 0);
    assert!(!out.contains("\"parked\""), "nothing parked any more: {out}");
    eventually(Duration::from_secs(5), "the parked gauge to return to 0", || {
        (d.metrics().sample("dlq_parked_aggregates", &[]) == 0.0).then_some(())
    });
    Verdict::judge(&records, &stored_rows(&db), |_| false, &[]).assert_sound("after replay and discard");
    d.stop();
}

/// The soak tests explain a missing event from the relay's delivery log: the
/// line names where the broker acknowledged it, and the explanation says
/// what the consumer read at that place (the event, or nothing).
#[test]
fn the_delivery_log_says_where_the_broker_put_each_event() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = kept_on_failure();
    let cfg = daemon_config(&brokers, dir.path());
    let db = cfg.store.path.clone();
    let d = Daemon::start(&cfg, &[("RUST_LOG", DELIVERY_LOG.to_string())]);
    create_order(&d, Uuid::now_v7(), "LOGGED");
    wait_caught_up(&db, RELAY, Duration::from_secs(30));
    let stored = stored_rows(&db);
    let records = consume_all(&brokers, &topics(&cfg), 1, Duration::from_secs(10));
    let r = records.iter().find(|r| r.event_id() == stored[0].event_id).expect("the event is on the topic");
    let place = format!("acknowledged at {} partition {} offset {}", r.topic, r.partition, r.offset);
    let found = explain_missing(dir.path(), &stored[..1], &records);
    assert!(found.contains(&place) && found.contains(&stored[0].event_id), "{found}");
    let lost = explain_missing(dir.path(), &stored[..1], &[]);
    assert!(lost.contains(&place) && lost.contains("the consumer read there: nothing"), "{lost}");
    d.stop();
}

/// The read behind every exact count: up to each partition's end when
/// asked, so a copy sent after the originals is read too (`consume_all`,
/// stopping at the expected count, never saw it).
#[test]
fn reading_to_the_end_finds_a_copy_sent_after_the_originals() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let Some(brokers) = shared_brokers() else { return };
    let topic = format!("t{}.late-copy", Uuid::now_v7().simple());
    create_topic(&brokers, &topic, 2, &[]); // one key: the other partition stays empty
    let producer: BaseProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    for id in ["e1", "e2", "e1"] {
        let headers = OwnedHeaders::new().insert(Header { key: "ce_id", value: Some(id) });
        producer.send(BaseRecord::to(&topic).key("k").payload("{}").headers(headers)).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    let topics = [topic];
    assert_eq!(consume_all(&brokers, &topics, 2, Duration::from_secs(10)).len(), 2, "stops at the count asked for");
    let ids: Vec<String> =
        consume_to_end(&brokers, &topics, Duration::from_secs(10)).iter().map(|r| r.event_id()).collect();
    assert_eq!(ids, ["e1", "e2", "e1"], "every record up to the end, the late copy included");
}

/// The checkpoint every "unconfirmed since the checkpoint" window starts
/// at: 0 for no row, a panic for a store it cannot read (read as 0, the
/// window covered every position and explained every duplicate).
#[test]
fn a_checkpoint_that_cannot_be_read_is_not_a_checkpoint_0() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    sqlite3(
        &db,
        "CREATE TABLE checkpoints (consumer TEXT PRIMARY KEY, position INTEGER NOT NULL, updated_at TEXT NOT NULL)",
    );
    assert_eq!(checkpoint(&db, RELAY), 0, "no row yet");
    sqlite3(&db, &format!("INSERT INTO checkpoints VALUES ('{RELAY}', 7, '2026-12-06T00:00:00.000Z')"));
    assert_eq!(checkpoint(&db, RELAY), 7);
    let other = dir.path().join("other.db");
    sqlite3(&other, "CREATE TABLE unrelated (x)");
    let read = std::panic::catch_unwind(|| checkpoint(&other, RELAY));
    assert!(read.is_err(), "a store without a checkpoints table is an error, not checkpoint 0");
}

/// The checker itself on synthetic records (no broker): it fails on each
/// fault it exists to catch, and the duplicate cap holds per window.
mod judge {
    use super::harness::{check_order_and_count_dups, Record, StoredRow, Verdict, Window};
    use std::collections::HashMap;

    const A: &str = "0190a0a0-0000-7000-8000-00000000000a";
    const B: &str = "0190a0a0-0000-7000-8000-00000000000b";

    /// Positions 1..=4: A seq 1, B seq 1, A seq 2, B seq 2.
    fn stored() -> Vec<StoredRow> {
        [(A, 1), (B, 1), (A, 2), (B, 2)]
            .iter()
            .enumerate()
            .map(|(i, (agg, seq))| StoredRow {
                position: i as i64 + 1,
                event_id: format!("e{}", i + 1),
                aggregate_id: agg.to_string(),
                sequence: *seq,
            })
            .collect()
    }

    /// Records in partition order: (event id, key, ce_sequence); one partition per key.
    fn records(copies: &[(&str, &str, i64)]) -> Vec<Record> {
        let mut offsets: HashMap<&str, i64> = HashMap::new();
        copies
            .iter()
            .map(|(id, key, seq)| {
                let offset = offsets.entry(key).or_default();
                *offset += 1;
                let headers = [("ce_id", id.to_string()), ("ce_sequence", seq.to_string())];
                Record {
                    topic: "t".into(),
                    partition: i32::from(*key == B),
                    offset: *offset,
                    key: key.to_string(),
                    headers: headers.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                    value: serde_json::Value::Null,
                    raw: Vec::new(),
                }
            })
            .collect()
    }

    const ALL: [(&str, &str, i64); 4] = [("e1", A, 1), ("e2", B, 1), ("e3", A, 2), ("e4", B, 2)];

    fn judge(copies: &[(&str, &str, i64)], windows: &[Window]) -> Verdict {
        Verdict::judge(&records(copies), &stored(), |_| false, windows)
    }

    /// `assert_sound` panics, naming `what`.
    fn fails(v: &Verdict, what: &str) {
        let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| v.assert_sound("synthetic")));
        let msg = panic.expect_err("the verdict is unsound");
        let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains(what), "{what:?} not in {msg:?}");
    }

    #[test]
    fn a_complete_topic_in_order_is_sound() {
        let v = judge(&ALL, &[]);
        v.assert_sound("synthetic");
        assert_eq!((v.delivered, v.duplicate_copies()), (4, 0));
        assert_eq!(check_order_and_count_dups(&records(&ALL)), 0);
    }

    /// A's seq 2 in partition 2, its seq 1 in partition 0: each partition is
    /// in order, yet a consumer may read seq 2 first.
    fn split_key() -> Vec<Record> {
        let mut split = records(&ALL);
        assert_eq!((split[2].key.as_str(), split[2].partition), (A, 0));
        split[2].partition = 2;
        split
    }

    #[test]
    fn a_key_in_two_partitions_fails() {
        let v = Verdict::judge(&split_key(), &stored(), |_| false, &[]);
        assert!(v.order_violations.is_empty() && v.mismatched.is_empty(), "only the split: {}", v.summary());
        assert_eq!(v.split_keys.len(), 1, "{}", v.summary());
        fails(&v, &format!("key {A} in partitions t[0] and t[2]"));
    }

    #[test]
    #[should_panic(expected = "in partitions t[0] and t[2]")]
    fn the_order_check_fails_on_a_key_in_two_partitions() {
        check_order_and_count_dups(&split_key());
    }

    #[test]
    fn a_missing_id_fails() {
        let v = judge(&[ALL[0], ALL[1], ALL[2]], &[]);
        assert_eq!(v.missing.iter().map(|r| r.event_id.as_str()).collect::<Vec<_>>(), ["e4"]);
        fails(&v, "missing from the topic");
    }

    #[test]
    fn a_reorder_at_first_arrival_fails() {
        // A's seq 2 sits before its seq 1 in its partition.
        let v = judge(&[ALL[2], ALL[0], ALL[1], ALL[3]], &[]);
        assert!(!v.order_violations.is_empty(), "{}", v.summary());
        fails(&v, "order violations at first arrival");
    }

    #[test]
    fn an_unknown_id_fails() {
        let v = judge(&[ALL[0], ALL[1], ALL[2], ALL[3], ("never-stored", A, 3)], &[]);
        assert_eq!(v.unknown, ["never-stored"]);
        fails(&v, "were never stored");
    }

    #[test]
    fn a_duplicate_outside_every_window_fails() {
        // e3 (position 3) twice; the window covers positions 1 and 2 only.
        let v = judge(&[ALL[0], ALL[1], ALL[2], ALL[2], ALL[3]], &[Window::new("kill 1", 0, 2)]);
        assert_eq!(v.duplicate_copies(), 1);
        fails(&v, "duplicates outside every window");
    }

    #[test]
    fn a_window_explains_one_extra_copy_per_position() {
        let once = [ALL[0], ALL[1], ALL[2], ALL[2], ALL[3]];
        let v = judge(&once, &[Window::new("kill 1", 2, 4)]);
        v.assert_sound("one extra copy, one window");
        // A third copy needs a second window covering position 3.
        let twice = [ALL[0], ALL[1], ALL[2], ALL[2], ALL[2], ALL[3]];
        let v = judge(&twice, &[Window::new("kill 1", 2, 4)]);
        fails(&v, "extra copy 2, 1 windows cover it");
        let v = judge(&twice, &[Window::new("kill 1", 2, 4), Window::new("kill 2", 0, 3)]);
        v.assert_sound("two extra copies, two windows");
        assert_eq!(v.explained_by.values().copied().collect::<Vec<_>>(), [1, 1], "{}", v.summary());
    }

    #[test]
    fn a_copy_with_another_key_or_sequence_fails() {
        // e3 is A's seq 2: under B's key, or carrying seq 1, it is not the stored event.
        let v = judge(&[ALL[0], ALL[1], ("e3", B, 2), ALL[3]], &[]);
        fails(&v, "another key or ce_sequence");
        let v = judge(&[ALL[0], ALL[1], ("e3", A, 1), ALL[3]], &[]);
        fails(&v, "ce_sequence 1, stored 2");
    }
}
