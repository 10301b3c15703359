//! The relay library against a real Apache Kafka broker: round trip with
//! headers, the same in exactly-once mode (also run by `make
//! integration-test` against the compose Redpanda), per-event-type routing,
//! bad configuration, a term that cannot read its parked aggregates. Every test uses its own topics (prefix) and database
//! file. Poison events are in tests/ordered_delivery.rs; kill -9, outages and
//! several instances in the soak group (tests/soak.rs).

mod harness;

use harness::*;
use std::collections::HashMap;
use std::time::Duration;

use outboxd::app::{CommandService, ServiceOptions};
use outboxd::metrics::Metrics;
use outboxd::relay::Relay;
use outboxd::shutdown::Trigger;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_trip_order_headers_and_exactly_once_per_event_id() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = test_config(&brokers, &dir.path().join("s.db"));
    let store = open_store(&c).await;
    let mut relay = start_relay(&c, store.clone());
    let svc = CommandService::new(store.clone(), ServiceOptions::default());
    // 300 orders through their lifecycles + 40 customers, 16 at a time.
    write_concurrently(&svc, 16, 300, 40).await;
    let head = store.head_position().await.unwrap();
    relay.wait_checkpoint(head, Duration::from_secs(60)).await;
    let stored: Vec<_> = store
        .read_feed(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| outboxd::envelope::StoredEvent { position: r.position(), envelope: r.envelope().unwrap() })
        .collect();
    assert_eq!(stored.len() as i64, head);
    // Everything on the topics up to their end, a late second copy included.
    let records = consume_to_end(&brokers, &topics(&c), Duration::from_secs(30));
    assert_eq!(check_order_and_count_dups(&records), 0, "no duplicate, per-aggregate order, one partition per key");
    assert_eq!(records.len(), stored.len(), "every stored event is on the topic exactly once");

    let by_id: HashMap<String, &harness::Record> = records.iter().map(|r| (r.event_id(), r)).collect();
    for s in &stored {
        let e = &s.envelope;
        let r = by_id.get(&e.event_id.to_string()).unwrap_or_else(|| panic!("event {} missing", e.event_id));
        assert_eq!(r.topic, format!("{}{}-events", c.kafka.topic_prefix, e.aggregate_type));
        assert_eq!(r.key, e.aggregate_id.to_string(), "key = aggregate id");
        let h = &r.headers;
        assert_eq!(h["ce_specversion"], "1.0");
        assert_eq!(h["ce_id"], e.event_id.to_string());
        assert_eq!(h["ce_type"], e.event_type);
        assert_eq!(h["ce_source"], format!("/outboxd/{}", e.aggregate_type));
        assert_eq!(h["ce_subject"], e.aggregate_id.to_string());
        assert_eq!(chrono::DateTime::parse_from_rfc3339(&h["ce_time"]).unwrap(), e.timestamp);
        assert_eq!(h["ce_sequence"], e.sequence.to_string());
        assert_eq!(h["ce_correlationid"], e.correlation_id.to_string());
        assert_eq!(h["content-type"], "application/json");
        let value: outboxd::envelope::EventEnvelope = serde_json::from_value(r.value.clone()).unwrap();
        assert_eq!(&value, e, "value is the event JSON");
    }
    let m = &relay.metrics;
    assert_eq!(m.cdc_events_processed.with_label_values(&["OrderCreated"]).get(), 300);
    assert_eq!(store.backlog(&c.relay.consumer_name).await.unwrap().events, Some(0), "nothing left unpublished");
    relay.stop().await;
    assert_eq!(
        store.get_checkpoint(&c.relay.consumer_name).await.unwrap(),
        Some(head),
        "checkpoint persisted at shutdown"
    );
}

/// Exactly-once mode on the broker at KAFKA_BROKERS (Kafka in make test, the
/// compose Redpanda in make integration-test): concurrent writers while the
/// transactional relay runs, then a `read_committed` consumer finds every
/// stored event once, in order per aggregate, and the progress topic holds
/// the committed position.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_round_trip_to_read_committed_consumers() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(&brokers, &dir.path().join("s.db"));
    c.relay.delivery = outboxd::config::DeliveryMode::ExactlyOnce;
    // The transactional id derives from the consumer name: unique per run, or
    // two runs on one broker would fence each other.
    c.relay.consumer_name = format!("eos-{}", uuid::Uuid::now_v7().simple());
    c.relay.progress_topic = format!("{}progress", c.kafka.topic_prefix);
    c.relay.transaction_max_events = 50;
    let store = open_store(&c).await;
    let mut relay = start_relay(&c, store.clone());
    let svc = CommandService::new(store.clone(), ServiceOptions::default());
    write_concurrently(&svc, 8, 80, 0).await;
    let head = store.head_position().await.unwrap();
    relay.wait_checkpoint(head, Duration::from_secs(60)).await;
    let records = consume_to_end(&brokers, &topics(&c), Duration::from_secs(30));
    assert_eq!(check_order_and_count_dups(&records), 0, "no duplicate, per-aggregate order, one partition per key");
    assert_eq!(records.len() as i64, head, "every stored event is on the topic exactly once");
    let at_head = |r: &harness::Record| r.key == c.relay.consumer_name && r.value["position"] == head;
    let progress =
        consume_until(&brokers, std::slice::from_ref(&c.relay.progress_topic), 1, Duration::from_secs(10), |rs| {
            rs.iter().any(at_head)
        });
    let last = progress.iter().rev().find(|r| r.key == c.relay.consumer_name).expect("a progress record");
    assert_eq!(last.value["position"], head, "the last committed progress is the head: {:?}", last.value);
    let (partitions, config) = topic_config(&brokers, &c.relay.progress_topic).await;
    assert_eq!(partitions, 1, "one partition for the progress topic");
    assert_eq!(
        config.get("cleanup.policy").map(String::as_str),
        Some("compact"),
        "compacted: the last record per consumer counts"
    );
    assert!(
        relay.metrics.relay_transactions.with_label_values(&["committed"]).get() >= (head as u64).div_ceil(50),
        "batches of at most transaction_max_events"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_event_type_routing_reproduces_seed_topics() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(&brokers, &dir.path().join("s.db"));
    c.kafka.topic_routing = outboxd::config::TopicRouting::PerEventType;
    let store = open_store(&c).await;
    let mut relay = start_relay(&c, store.clone());
    let svc = CommandService::new(store.clone(), ServiceOptions::default());
    order_lifecycle(&svc, 0).await; // created, updated x4
    order_lifecycle(&svc, 3).await; // created, updated, cancelled
    let head = store.head_position().await.unwrap();
    relay.wait_checkpoint(head, Duration::from_secs(30)).await;
    let records = consume_to_end(&brokers, &topics(&c), Duration::from_secs(30));
    let count = |t: &str| records.iter().filter(|r| r.topic == format!("{}{t}", c.kafka.topic_prefix)).count();
    assert_eq!((count("OrderCreated"), count("OrderUpdated"), count("OrderCancelled")), (2, 5, 1));
    relay.stop().await;
}

/// A term that cannot read the parked aggregates does not start (without the
/// list it would publish a parked aggregate's held events); the next term,
/// once reads work again, holds the parked aggregate and publishes the rest.
/// The read fails between the checkpoint read and the parked read: armed as
/// soon as the term reports its checkpoint, while it checks the topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_term_that_cannot_read_the_parked_list_publishes_nothing() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = test_config(&brokers, &dir.path().join("s.db"));
    let store = open_store(&c).await;
    let (parked, free) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    store.append(parked, 0, order_events(parked, 0, 3)).await.unwrap();
    store.append(free, 0, order_events(free, 0, 2)).await.unwrap();
    store.park(&order_parked_at(&c.relay.consumer_name, parked, 1)).await.unwrap();

    let (relay, mut status) = Relay::standalone(&c, store.clone(), Metrics::new());
    let trigger = Trigger::new();
    let term = tokio::spawn(relay.run(trigger.subscribe()));
    status.wait_for(|s| s.checkpoint.is_some()).await.unwrap();
    store.faults().expect("the SQLite store has the fault seam").fail_reads_for(Duration::from_secs(3));
    let exit = tokio::time::timeout(Duration::from_secs(30), term).await.expect("the term ends").unwrap();
    match exit {
        Err(outboxd::relay::pipeline::RelayError::Store(m)) => assert!(m.contains("parked"), "{m}"),
        other => panic!("the term must end with a store error, not {other:?}"),
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut relay = start_relay(&c, store.clone());
    let head = store.head_position().await.unwrap();
    relay.wait_checkpoint(head, Duration::from_secs(30)).await;
    let records = consume_to_end(&brokers, &topics(&c), Duration::from_secs(30));
    let keys: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, vec![free.to_string(); 2], "only the free aggregate's 2 events are published");
    relay.stop().await;
}

/// A progress topic created like an event topic (as versions before
/// 2026-12-04 did) is reported at start with the command that fixes it; the
/// one the relay creates now is not.
#[tokio::test(flavor = "multi_thread")]
async fn an_uncompacted_progress_topic_is_reported_with_its_fix() {
    use outboxd::relay::admin::{ensure_progress_topic, ensure_topics, progress_topic_problem};
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = test_config(&brokers, &dir.path().join("s.db"));
    let t = Duration::from_secs(10);
    // A broker may describe a topic created a moment ago before its configs
    // are visible: ask until the answer is the expected one, or fail with the
    // last answer after 10 s.
    let described = |topic: String, expect: fn(&Option<String>) -> bool| {
        let kafka = c.kafka.clone();
        async move {
            let deadline = tokio::time::Instant::now() + t;
            loop {
                let got = progress_topic_problem(&kafka, &topic, t).await;
                match got {
                    Ok(ref p) if expect(p) => return p.clone(),
                    _ if tokio::time::Instant::now() > deadline => panic!("{topic} described as {got:?}"),
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
    };
    let old = format!("{}old.progress", c.kafka.topic_prefix);
    ensure_topics(&c.kafka, std::slice::from_ref(&old), t).await.unwrap();
    let problem = described(old.clone(), Option::is_some).await.expect("reported");
    assert!(problem.contains("cleanup.policy=delete"), "{problem}");
    assert!(problem.contains(&format!("--entity-name {old} --add-config cleanup.policy=compact")), "{problem}");
    // The relay checks only a progress topic it did not create itself.
    assert_eq!(ensure_progress_topic(&c.kafka, &old, t).await, Ok(false), "an existing topic is left as it is");
    let new = format!("{}new.progress", c.kafka.topic_prefix);
    assert_eq!(ensure_progress_topic(&c.kafka, &new, t).await, Ok(true), "created by this call");
    assert_eq!(ensure_progress_topic(&c.kafka, &new, t).await, Ok(false), "then it exists");
    assert_eq!(described(new, Option::is_none).await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_config_exits_2_and_unreachable_broker_degrades_without_panic() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let run = |envs: Vec<(&str, String)>| {
        std::process::Command::new(env!("CARGO_BIN_EXE_outboxd"))
            .arg("run")
            .env("OUTBOX_STORE__PATH", &db)
            .envs(envs)
            .output()
            .unwrap()
    };
    let out = run(vec![("OUTBOX_KAFKA__BROKERS", "no-port-here".into())]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kafka.brokers") && err.lines().count() == 1, "{err}");
    let out = run(vec![("OUTBOX_KAFKA__TOPIC_PREFIX", "bad prefix/".into())]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("topic name"));

    // A syntactically valid but unreachable broker: the daemon stays up, degraded.
    let port = free_port();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .arg("run")
        .env("OUTBOX_STORE__PATH", &db)
        .env("OUTBOX_KAFKA__BROKERS", format!("127.0.0.1:{port}"))
        .env("OUTBOX_HTTP__LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("OUTBOX_HTTP__ADMIN_LISTEN", admin.to_string())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(child.try_wait().unwrap().is_none(), "daemon must not exit on an unreachable broker");
    // /health says why: the broker is unreachable (degraded, not down).
    let kafka = tokio::task::spawn_blocking(move || request(admin, "GET", "/health", &[], None).json()).await.unwrap()
        ["components"]["kafka"]
        .clone();
    assert_eq!(kafka["status"], "degraded", "{kafka}");
    assert!(kafka["detail"].as_str().unwrap_or_default().contains("broker unreachable"), "{kafka}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

/// A rewind whose checkpoint write fails is recorded failed and not counted
/// (it was recorded done and counted before the write, so an operator was
/// told events would come again that never did); the next rewind, with the
/// store writable, is done and publishes everything after it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rewind_whose_checkpoint_write_fails_is_reported_failed() {
    use outboxd::store::faults::CHECKPOINT;
    use outboxd::store::requests::{RelayRequest, RequestKind, RequestStatus};
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = test_config(&brokers, &dir.path().join("s.db"));
    let store = open_store(&c).await;
    let order = uuid::Uuid::now_v7();
    store.append(order, 0, order_events(order, 0, 3)).await.unwrap();
    let mut relay = start_relay(&c, store.clone());
    relay.wait_checkpoint(3, Duration::from_secs(60)).await;
    let name = &c.relay.consumer_name;

    store.faults().expect("the SQLite store has the fault seam").fail_next(CHECKPOINT, 1);
    let rewind = RelayRequest::new(name, RequestKind::RewindToPosition { position: 0 }, "test");
    store.request_submit(&rewind).await.unwrap();
    let r = request_finished(&store, rewind.id).await;
    assert_eq!(r.status, RequestStatus::Failed, "{:?}", r.result);
    assert!(r.result.as_ref().unwrap()["error"].as_str().unwrap_or_default().contains("injected"), "{:?}", r.result);
    assert_eq!(relay.metrics.relay_rewinds.get(), 0, "a rewind that did not happen is not counted");
    assert_eq!(store.get_checkpoint(name).await.unwrap(), Some(3), "the checkpoint did not move");
    // The term ended as a failed one (a runner backs off and starts the
    // next), not as "rewound" (the runner logged a rewind that did not happen).
    let end = relay.ended(Duration::from_secs(30)).await;
    assert!(
        matches!(&end, Err(outboxd::relay::pipeline::RelayError::Store(e)) if e.contains("the rewind to position 0 did not happen")),
        "{end:?}"
    );
    let relay = start_relay(&c, store.clone());

    let rewind = RelayRequest::new(name, RequestKind::RewindToPosition { position: 0 }, "test");
    store.request_submit(&rewind).await.unwrap();
    let r = request_finished(&store, rewind.id).await;
    assert_eq!(r.status, RequestStatus::Done, "{:?}", r.result);
    assert_eq!(r.result.as_ref().unwrap()["rewound_to"], 0, "{:?}", r.result);
    assert_eq!(relay.metrics.relay_rewinds.get(), 1);
    assert_eq!(store.get_checkpoint(name).await.unwrap(), Some(0), "moved back");
    relay.stop().await;
    let mut relay = start_relay(&c, store.clone());
    relay.wait_checkpoint(3, Duration::from_secs(60)).await;
    // Three events, then the same three again after the rewind, and no more.
    let records = consume_to_end(&brokers, &topics(&c), Duration::from_secs(30));
    let seqs: Vec<&str> = records.iter().map(|r| r.headers["ce_sequence"].as_str()).collect();
    assert_eq!(seqs, ["1", "2", "3", "1", "2", "3"], "published once, then once again from the rewind");
    relay.stop().await;
}

/// Exactly-once, then at-least-once, then exactly-once again on the same
/// consumer: the third term starts from the store's checkpoint, past its
/// own last progress record, so what at-least-once published in between is
/// not published again (it resumed at the stale record and sent it twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_after_a_spell_of_at_least_once_resumes_at_the_checkpoint() {
    use outboxd::config::DeliveryMode;
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (mut c, store) = exactly_once_quick(&brokers, dir.path()).await;
    let mut head = 0;
    for (mode, n) in [(DeliveryMode::ExactlyOnce, 3), (DeliveryMode::AtLeastOnce, 2), (DeliveryMode::ExactlyOnce, 1)] {
        let id = uuid::Uuid::now_v7();
        store.append(id, 0, order_events(id, 0, n)).await.unwrap();
        head += n as i64;
        c.relay.delivery = mode;
        let mut relay = start_relay(&c, store.clone());
        relay.wait_checkpoint(head, Duration::from_secs(60)).await;
        relay.stop().await;
    }
    // Read to the end: the 2 duplicates would show.
    let records = consume_to_end(&brokers, &topics(&c), Duration::from_secs(30));
    assert_eq!(
        records.len(),
        6,
        "each of the 6 events once: {:?}",
        records.iter().map(|r| r.event_id()).collect::<Vec<_>>()
    );
    assert_eq!(check_order_and_count_dups(&records), 0);
}

/// A parked aggregate's events before its park position are published when
/// the relay reads them (from a checkpoint below it: a rewind, a topic
/// rebuilt from 0); they were held like the later ones, so the rebuilt
/// topic never had them and no replay brought them back. Both modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_before_a_park_position_are_published_when_read_again() {
    use outboxd::config::DeliveryMode;
    let Some(brokers) = shared_brokers() else { return };
    for mode in [DeliveryMode::AtLeastOnce, DeliveryMode::ExactlyOnce] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = test_config(&brokers, &dir.path().join("s.db"));
        c.relay.delivery = mode;
        c.relay.consumer_name = format!("park-{}", uuid::Uuid::now_v7().simple());
        c.relay.progress_topic = format!("{}progress", c.kafka.topic_prefix);
        let store = open_store(&c).await;
        let (parked, free) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        store.append(parked, 0, order_events(parked, 0, 3)).await.unwrap();
        store.append(free, 0, order_events(free, 0, 2)).await.unwrap();
        store.park(&order_parked_at(&c.relay.consumer_name, parked, 3)).await.unwrap();
        let mut relay = start_relay(&c, store.clone());
        relay.wait_checkpoint(5, Duration::from_secs(60)).await;
        // Read to the end: the held third event would show.
        let records = consume_to_end(&brokers, &topics(&c), Duration::from_secs(30));
        let seqs = |agg: uuid::Uuid| sequences_of(&records, agg);
        assert_eq!(seqs(parked), ["1", "2"], "{mode:?}: the events before the park position, not the parked one");
        assert_eq!(seqs(free), ["1", "2"], "{mode:?}");
        relay.stop().await;
    }
}

/// The discard marker of an unreadable customer row goes to
/// `customer-events`, where its aggregate's other events are (the park
/// record had no aggregate type, and the marker defaulted to `order`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_marker_of_a_discarded_unreadable_row_goes_to_its_aggregates_topic() {
    use outboxd::store::requests::{RelayRequest, RequestKind, RequestStatus};
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = test_config(&brokers, &dir.path().join("s.db"));
    let store = open_store(&c).await;
    let event = insert_unreadable(&c.store.path, "customer", uuid::Uuid::now_v7(), 1);
    let mut relay = start_relay(&c, store.clone());
    relay.wait_checkpoint(1, Duration::from_secs(60)).await;
    assert_eq!(store.parked(&c.relay.consumer_name).await.unwrap().len(), 1, "parked at its unreadable row");
    let discard = RelayRequest::new(
        &c.relay.consumer_name,
        RequestKind::Discard { event_id: event.to_string(), reason: "written by a broken tool".into() },
        "test",
    );
    store.request_submit(&discard).await.unwrap();
    let finished = request_finished(&store, discard.id).await;
    assert_eq!(finished.status, RequestStatus::Done, "{:?}", finished.result);
    let records = consume_all(&brokers, &topics(&c), 2, Duration::from_secs(5));
    let found: Vec<(&str, &str)> = records.iter().map(|r| (r.topic.as_str(), r.headers["ce_type"].as_str())).collect();
    let topic = format!("{}customer-events", c.kafka.topic_prefix);
    assert_eq!(found, vec![(topic.as_str(), "outboxd.EventDiscarded")], "one marker, on the customer topic");
    relay.stop().await;
}

/// A record whose time the topic refuses (outside
/// `message.timestamp.after.max.ms`: INVALID_TIMESTAMP, which no retry
/// heals) parks its aggregate at that event; the other aggregates flow and
/// the checkpoint passes it. It was taken for transient: retried for ever,
/// holding the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_time_the_topic_refuses_parks_its_aggregate() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (c, topic, store) = small_topic(&brokers, dir.path(), false).await;
    let (b, t) = (brokers.clone(), topic.clone());
    tokio::task::spawn_blocking(move || alter_topic(&b, &t, "message.timestamp.after.max.ms", "60000")).await.unwrap();
    let ahead = uuid::Uuid::now_v7();
    let mut events = order_events(ahead, 0, 2);
    events[1].timestamp += chrono::Duration::hours(2);
    store.append(ahead, 0, events).await.unwrap();
    let other = uuid::Uuid::now_v7();
    store.append(other, 0, order_events(other, 0, 2)).await.unwrap();
    let head = store.head_position().await.unwrap();
    let mut relay = start_relay(&c, store.clone());
    relay.wait_checkpoint(head, Duration::from_secs(60)).await;
    let parked = store.parked(&c.relay.consumer_name).await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(
        (parked[0].parked.aggregate_id.as_str(), parked[0].parked.sequence),
        (ahead.to_string().as_str(), Some(2))
    );
    let records = consume_to_end(&brokers, std::slice::from_ref(&topic), Duration::from_secs(30));
    let seqs = |id: uuid::Uuid| -> Vec<String> {
        records.iter().filter(|r| r.key == id.to_string()).map(|r| r.headers["ce_sequence"].clone()).collect()
    };
    assert_eq!(seqs(ahead), vec!["1"], "its events before the refused one");
    assert_eq!(seqs(other), vec!["1", "2"], "the other aggregate complete");
    relay.stop().await;
}

/// Exactly-once with a producer queue just large enough for a transaction's
/// events: the progress record meets a full queue and waits for room, as
/// the events do. It aborted the whole transaction instead (and retried it,
/// to meet the same full queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exactly_once_progress_record_waits_out_a_full_producer_queue() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(&brokers, &dir.path().join("s.db"));
    exactly_once(&mut c);
    c.relay.transaction_max_events = 50;
    c.kafka.extra.insert("queue.buffering.max.messages".into(), "50".into());
    let store = open_store(&c).await;
    for _ in 0..10 {
        let id = uuid::Uuid::now_v7();
        store.append(id, 0, order_events(id, 0, 50)).await.unwrap();
    }
    let head = store.head_position().await.unwrap();
    let mut relay = start_relay(&c, store.clone());
    relay.wait_checkpoint(head, Duration::from_secs(120)).await;
    let aborted = relay.metrics.relay_transactions.with_label_values(&["aborted"]).get();
    assert_eq!(aborted, 0, "no transaction thrown away for a full queue");
    let records = consume_to_end(&brokers, &topics(&c), Duration::from_secs(30));
    assert_eq!(check_order_and_count_dups(&records), 0, "no duplicate");
    assert_eq!(records.len() as i64, head, "every event once");
    relay.stop().await;
}
