//! A replayed aggregate's park record that cannot be removed (the store
//! failing at that step), on the at-least-once position relay against a
//! real Kafka broker: the removal is retried at every request poll and the
//! request is done once it lands; a later event that parks the aggregate
//! again keeps its new park (the request fails naming it); a relay that
//! stops first leaves the request to the next term, which replays again.

mod harness;

use harness::*;
use std::time::Duration;

use outboxd::store::faults::{StoreFaults, UNPARK};
use outboxd::store::requests::{RelayRequest, RequestStatus};
use outboxd::store::DynStore;

/// Order `order`'s events 1 and 2 stored, the aggregate parked at 2, a
/// relay running past them, then a replay submitted while every removal of
/// the park record fails, until its first retries at the polls are seen.
async fn replay_while_removal_fails(
    c: &outboxd::config::Config,
    store: &DynStore,
    order: uuid::Uuid,
) -> (RunningRelay, RelayRequest) {
    store.append(order, 0, order_events(order, 0, 2)).await.unwrap();
    store.park(&order_parked_at(&c.relay.consumer_name, order, 2)).await.unwrap();
    let mut relay = start_relay(c, store.clone());
    relay.wait_checkpoint(2, Duration::from_secs(60)).await;
    // The replay's own five attempts fail, then the retries at the polls.
    faults(store).fail_next(UNPARK, 1_000);
    let replay = replay_of(&c.relay.consumer_name, order);
    store.request_submit(&replay).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while faults(store).armed(UNPARK) > 993 {
        assert!(std::time::Instant::now() < deadline, "no retries at the polls after 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let now = store.request_get(replay.id).await.unwrap().unwrap();
    assert_eq!(now.status, RequestStatus::Running, "not finished while the record stays: {:?}", now.result);
    (relay, replay)
}

fn faults(store: &DynStore) -> std::sync::Arc<StoreFaults> {
    store.faults().expect("the SQLite store has the fault seam")
}

/// The removal lands once the store answers: the request is done, the
/// record gone, and the aggregate's next event flows. It was failed at
/// once, the record left: later replays were refused ("not parked"), and
/// the next start parked the aggregate again, holding its new events.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_whose_park_record_removal_fails_finishes_once_it_is_removed() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = test_config(&brokers, &dir.path().join("s.db"));
    let store = open_store(&c).await;
    let order = uuid::Uuid::now_v7();
    let (mut relay, replay) = replay_while_removal_fails(&c, &store, order).await;
    faults(&store).fail_next(UNPARK, 0);
    let finished = request_finished(&store, replay.id).await;
    assert_eq!(finished.status, RequestStatus::Done, "{:?}", finished.result);
    assert!(store.parked(&c.relay.consumer_name).await.unwrap().is_empty(), "the record is gone");
    store.append(order, 2, order_events(order, 2, 1)).await.unwrap();
    relay.wait_checkpoint(3, Duration::from_secs(60)).await;
    let records = consume_to_end(&brokers, &topics(&c), Duration::from_secs(30));
    assert_eq!(sequences_of(&records, order), ["1", "2", "3"]);
    relay.stop().await;
}

/// Last read: the removal pending, a later event of the aggregate fails
/// for good and parks it again, which overwrites the park record; the
/// retried removal deleted that new park (its events then held in memory
/// only, skipped for good after a restart), and the aggregate was counted
/// twice. The replay fails with the new error, the new park stays, counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_whose_aggregate_is_parked_again_keeps_the_new_park() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (c, _topic, store) = small_topic(&brokers, dir.path(), false).await;
    let order = uuid::Uuid::now_v7();
    let (relay, replay) = replay_while_removal_fails(&c, &store, order).await;
    // Event 3, larger than the topic takes: parked again at it.
    let mut big = order_events(order, 2, 1);
    big[0].payload = serde_json::json!({ "note": "x".repeat(20_000) });
    store.append(order, 2, big).await.unwrap();
    let finished = request_finished(&store, replay.id).await;
    assert_eq!(finished.status, RequestStatus::Failed, "{:?}", finished.result);
    let why = finished.result.as_ref().unwrap()["error"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("parked again"), "{why}");
    faults(&store).fail_next(UNPARK, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let parks = store.parked(&c.relay.consumer_name).await.unwrap();
    assert_eq!(parks.len(), 1, "the new park stays: {parks:?}");
    assert_eq!(parks[0].parked.sequence, Some(3), "{parks:?}");
    assert_eq!(relay.status.borrow().parked_aggregates, 1, "{:?}", *relay.status.borrow());
    assert_eq!(relay.metrics.dlq_parked_aggregates.get(), 1);
    relay.stop().await;
}

/// The removal failing until the relay stops: the request stays running,
/// and the next start (the record still there, the aggregate parked again)
/// takes it over, publishes the held event again and the one appended
/// meanwhile in order, and removes the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_park_record_left_by_a_stopped_relay_is_removed_by_the_next_term() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = test_config(&brokers, &dir.path().join("s.db"));
    let store = open_store(&c).await;
    let order = uuid::Uuid::now_v7();
    let (relay, replay) = replay_while_removal_fails(&c, &store, order).await;
    relay.stop().await;
    let now = store.request_get(replay.id).await.unwrap().unwrap();
    assert_eq!(now.status, RequestStatus::Running, "left to the next term: {:?}", now.result);
    assert_eq!(store.parked(&c.relay.consumer_name).await.unwrap().len(), 1);
    faults(&store).fail_next(UNPARK, 0);
    store.append(order, 2, order_events(order, 2, 1)).await.unwrap();
    let mut relay = start_relay(&c, store.clone());
    let finished = request_finished(&store, replay.id).await;
    assert_eq!(finished.status, RequestStatus::Done, "{:?}", finished.result);
    assert!(store.parked(&c.relay.consumer_name).await.unwrap().is_empty(), "the record is gone");
    relay.wait_checkpoint(3, Duration::from_secs(60)).await;
    let records = consume_to_end(&brokers, &topics(&c), Duration::from_secs(30));
    // 2 once per replay (the first term's, then the taken-over one's), 3 after it.
    assert_eq!(sequences_of(&records, order), ["1", "2", "2", "3"]);
    relay.stop().await;
}
