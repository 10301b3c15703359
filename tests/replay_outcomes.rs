//! What a replay leaves behind on the position relay (real SQLite store,
//! real broker): `dlq_depth` follows the `dead_letter_queue` table (a letter
//! whose removal failed is still counted; the health actor resets the gauge
//! from the table at each check, between checks it must not under-count),
//! and an event whose discard was interrupted goes out as its marker.

mod harness;

use harness::*;
use std::time::Duration;

use outboxd::store::faults::DLQ_REMOVE;
use outboxd::store::requests::{RelayRequest, RequestKind, RequestStatus};

/// At-least-once: two letters replayed, the first removal fails. The gauge
/// goes down by one (it went down by two: a letter still in the table was
/// no longer counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_letter_whose_removal_failed_stays_counted() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = test_config(&brokers, &dir.path().join("s.db"));
    let store = open_store(&c).await;
    let faults = store.faults().expect("the SQLite store has the fault seam");
    let mut ids = Vec::new();
    for position in 1..=2 {
        let id = uuid::Uuid::now_v7();
        let env = order_events(id, 0, 1).remove(0);
        store.append(id, 0, vec![env.clone()]).await.unwrap();
        let letter = dead_letter(&env, Some(position));
        store.dlq_insert(letter.clone()).await.unwrap();
        ids.push(letter.id);
    }
    // Published before (the checkpoint is past them), dead letters now.
    store.set_checkpoint(&c.relay.consumer_name, 2).await.unwrap();
    let relay = start_relay(&c, store.clone());
    relay.metrics.dlq_depth.set(2); // as the health actor counts them
    faults.fail_next(DLQ_REMOVE, 1);
    let replay = RelayRequest::new(&c.relay.consumer_name, RequestKind::ReplayDeadLetters { ids: Some(ids) }, "t");
    store.request_submit(&replay).await.unwrap();
    let finished = request_finished(&store, replay.id).await;
    assert_eq!(finished.status, RequestStatus::Done, "{:?}", finished.result);
    assert_eq!(faults.armed(DLQ_REMOVE), 0, "the injected failure fired");
    let left = store.dlq_count().await.unwrap();
    assert_eq!(left, 1, "one letter could not be removed");
    assert_eq!(relay.metrics.dlq_depth.get(), left as i64, "the gauge counts the table");
    relay.stop().await;
}

/// A discard interrupted after its audit row (its marker never confirmed,
/// the request withdrawn), the checkpoint past the parked event. A replay of
/// the aggregate in a later term publishes the marker in the event's place,
/// then the held event; the term loaded only the discards after its
/// checkpoint and the replay published the discarded event as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_after_an_interrupted_discard_publishes_the_marker() {
    use outboxd::store::parking::DiscardRecord;
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = test_config(&brokers, &dir.path().join("s.db"));
    let store = open_store(&c).await;
    let order = uuid::Uuid::now_v7();
    let events = order_events(order, 0, 3);
    store.append(order, 0, events.clone()).await.unwrap();
    let consumer = c.relay.consumer_name.clone();
    let mut parked = order_parked_at(&consumer, order, 2);
    parked.event_id = Some(events[1].event_id.to_string());
    parked.aggregate_type = Some(events[1].aggregate_type.clone());
    store.park(&parked).await.unwrap();
    store.set_checkpoint(&consumer, 3).await.unwrap();
    let (record, _) =
        outboxd::relay::plan::discard_of(&consumer, &parked, None, &events[1].event_id.to_string(), "bad import");
    let record: DiscardRecord = record;
    store.record_discard(&record).await.unwrap();

    let relay = start_relay(&c, store.clone());
    let replay = replay_of(&consumer, order);
    store.request_submit(&replay).await.unwrap();
    let finished = request_finished(&store, replay.id).await;
    assert_eq!(finished.status, RequestStatus::Done, "{:?}", finished.result);
    let records = consume_all(&brokers, &topics(&c), 2, Duration::from_secs(10));
    let got: Vec<(String, String)> = records
        .iter()
        .filter(|r| r.key == order.to_string())
        .map(|r| (r.headers["ce_sequence"].clone(), r.headers["ce_type"].clone()))
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0], ("2".to_string(), "outboxd.EventDiscarded".to_string()), "the marker, not the event");
    assert_eq!(got[1].0, "3");
    assert!(store.parked(&consumer).await.unwrap().is_empty(), "unparked");
    relay.stop().await;
}
