//! `dlq_depth` follows the `dead_letter_queue` table through a replay of
//! dead letters (real SQLite store, real broker): a letter whose removal
//! failed is still counted. (The health actor resets the gauge from the
//! table at each check; between checks it must not under-count.)

mod harness;

use harness::*;

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
