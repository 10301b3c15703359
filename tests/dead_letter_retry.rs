//! A dead-letter write whose outcome the relay cannot know (stored, but its
//! reply lost) is retried under the same letter, which the store counts
//! once: the row's `failure_count` is that of one failure, not two, and the
//! relay moves on past the skipped event (`relay.on_permanent_failure =
//! skip`, a real broker, SQLite).

mod harness;

use harness::*;
use std::time::Duration;

use outboxd::config::PermanentFailurePolicy;
use outboxd::store::faults::DLQ_INSERT_REPLY_LOST;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_written_again_after_a_lost_reply_counts_once() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(&brokers, &dir.path().join("s.db"));
    c.relay.on_permanent_failure = PermanentFailurePolicy::Skip;
    let store = open_store(&c).await;
    let faults = store.faults().expect("the SQLite store has a fault seam");
    // The first dead-letter write is stored, then reported failed (twice:
    // the retry of the retry must not count either).
    faults.fail_next(DLQ_INSERT_REPLY_LOST, 2);

    // Position 1: a row no relay can decode (skipped into the DLQ);
    // position 2: an ordinary event of another order, published after it.
    let poisoned = uuid::Uuid::now_v7();
    let event = insert_unreadable(&c.store.path, "order", poisoned, 1);
    let other = uuid::Uuid::now_v7();
    store.append(other, 0, order_events(other, 0, 1)).await.unwrap();

    let mut relay = start_relay(&c, store.clone());
    relay.wait_checkpoint(2, Duration::from_secs(60)).await;
    assert_eq!(faults.armed(DLQ_INSERT_REPLY_LOST), 0, "both lost replies happened");
    let letters = store.dlq_list(10).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].event_id, event);
    assert_eq!(letters[0].failure_count, 1, "one failure, written three times: {letters:?}");
    let records = consume_until(&brokers, &topics(&c), usize::MAX, Duration::from_secs(5), |_| false);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].key, other.to_string(), "the next event went out");
    relay.stop().await;
}
