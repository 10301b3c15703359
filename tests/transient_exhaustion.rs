//! `relay.dlq_on_transient_exhaustion = true` on the position feed, against a
//! private broker that goes away while the relay runs: an event whose retries run out on transient
//! errors becomes a dead letter, but a discard marker never does (it has no
//! dead letter to become): it keeps retrying behind the breaker, the
//! discard request stays open, and once the broker is back the marker is on
//! the topic in the event's place.

mod harness;

use harness::*;
use std::time::Duration;

use outboxd::store::requests::{RelayRequest, RequestKind, RequestStatus};

/// The `publish` retries counted so far.
fn publish_retries(m: &outboxd::metrics::Metrics) -> u64 {
    m.retry_attempts.with_label_values(&["publish"]).get()
}

async fn wait_until(what: &str, timeout: Duration, mut ok: impl AsyncFnMut() -> bool) {
    let end = tokio::time::Instant::now() + timeout;
    while !ok().await {
        assert!(tokio::time::Instant::now() < end, "{what}: not after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_dead_letters_events_but_never_a_discard_marker() {
    if shared_brokers().is_none() {
        return;
    }
    let kafka = tokio::task::block_in_place(PrivateKafka::start);
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(&kafka.brokers, &dir.path().join("s.db"));
    c.kafka.message_timeout_ms = 1_000;
    c.relay.dlq_on_transient_exhaustion = true;
    c.relay.retry.max_attempts = 2;
    c.relay.retry.initial_backoff_ms = 10;
    c.relay.retry.max_backoff_ms = 50;
    c.relay.breaker.open_timeout_ms = 200;
    let store = open_store(&c).await;
    let consumer = c.relay.consumer_name.clone();

    // 1. The broker is up: an unreadable row parks its order (position 1).
    let poisoned = uuid::Uuid::now_v7();
    let event = insert_unreadable(&c.store.path, "order", poisoned, 1);
    let mut relay = start_relay(&c, store.clone());
    relay.wait_checkpoint(1, Duration::from_secs(60)).await;
    assert_eq!(store.parked(&consumer).await.unwrap().len(), 1, "parked at its unreadable row");

    // 2. The broker goes away while the term runs; meanwhile a new event of
    //    another order, and the discard of the unreadable one.
    tokio::task::block_in_place(|| kafka.stop());
    let other = uuid::Uuid::now_v7();
    store.append(other, 0, order_events(other, 0, 1)).await.unwrap();
    let discard = RelayRequest::new(
        &consumer,
        RequestKind::Discard { event_id: event.to_string(), reason: "written by a broken tool".into() },
        "test",
    );
    store.request_submit(&discard).await.unwrap();
    wait_until("the other order's event dead-lettered", Duration::from_secs(60), async || {
        store.dlq_list(10).await.unwrap().iter().any(|l| l.aggregate_id == other)
    })
    .await;
    // The marker's own retries go on well past its two attempts.
    let from = publish_retries(&relay.metrics);
    wait_until("the marker retried past max_attempts", Duration::from_secs(60), async || {
        publish_retries(&relay.metrics) >= from + 3
    })
    .await;
    let letters = store.dlq_list(10).await.unwrap();
    assert_eq!(letters.len(), 1, "only the event is a dead letter, never the marker: {letters:?}");
    let open = store.request_get(discard.id).await.unwrap().unwrap();
    assert!(!matches!(open.status, RequestStatus::Done | RequestStatus::Failed), "{open:?}");
    assert_eq!(store.parked(&consumer).await.unwrap().len(), 1, "still parked until its marker is out");

    // 3. The broker is back: the same term carries the discard out, its
    //    marker on the topic in the event's place.
    tokio::task::block_in_place(|| kafka.restart());
    let finished = request_finished(&store, discard.id).await;
    assert_eq!(finished.status, RequestStatus::Done, "{:?}", finished.result);
    assert!(store.parked(&consumer).await.unwrap().is_empty(), "unparked");
    // Everything the topics hold (until 5 s pass without a record), not
    // just the first: a second marker must show.
    let records = consume_until(&kafka.brokers, &topics(&c), usize::MAX, Duration::from_secs(5), |_| false);
    let markers: Vec<&Record> = records.iter().filter(|r| r.key == poisoned.to_string()).collect();
    assert_eq!(markers.len(), 1, "{records:?}");
    assert_eq!(markers[0].headers["ce_type"], "outboxd.EventDiscarded");
    assert_eq!(markers[0].headers["ce_id"], event.to_string());
    relay.stop().await;
}
