//! Exactly-once operator requests carried out by the relay library against
//! a real Kafka broker: a replay (also at least once, for the parked count)
//! or a dead-letter replay that fails again,
//! a batch split around a park position (also in a dead-letter replay; its
//! progress never moved to a letter's own position), and
//! a replay resumed by the next
//! term after the former one committed it but could not remove the park
//! record. Every test uses its own topics (prefix), consumer and database
//! file; the daemon-level crash tests are in tests/exactly_once_replay.rs.

mod harness;

use harness::*;
use std::time::Duration;

use outboxd::app::{CommandService, ServiceOptions};
use outboxd::relay::pipeline::RelayError;

/// Exactly-once: an operator replay whose second event still cannot be
/// published commits the first alone, parks the aggregate again, and never
/// moves the committed progress back (the replayed events' positions are in
/// the past; a regressed progress made the next term re-publish everything
/// after them to read_committed consumers).
///
/// Both modes: the aggregate parked again counts once in the relay's status
/// (/health `relay.parked_aggregates`) and `dlq_parked_aggregates` (review
/// finding: it counted twice, the replay's unpark never having been counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_replay_that_fails_again_keeps_the_progress() {
    replay_that_fails_again(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_least_once_replay_that_fails_again_counts_the_aggregate_once() {
    replay_that_fails_again(false).await;
}

async fn replay_that_fails_again(eos: bool) {
    use outboxd::domain::{Currency, Money, Order, OrderCommand, OrderItem, Sku};
    use outboxd::envelope::Metadata;
    use outboxd::store::requests::RequestStatus;
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (c, topic, store) = small_topic(&brokers, dir.path(), eos).await;
    let svc = CommandService::new(store.clone(), ServiceOptions::default());
    let eur = Currency::new("EUR").unwrap();
    let items = |n: usize, tag: &str| -> Vec<OrderItem> {
        (0..n)
            .map(|k| {
                OrderItem::new(
                    Sku::new(format!("{tag}-{k:03}-{}", "X".repeat(54))).unwrap(),
                    1,
                    Money::new(1, eur).unwrap(),
                )
                .unwrap()
            })
            .collect()
    };
    let order = uuid::Uuid::now_v7();
    let run = |cmd: OrderCommand| {
        let svc = svc.clone();
        async move { svc.execute::<Order>(order, &cmd, Metadata::default(), None).await.unwrap() }
    };
    run(OrderCommand::Create { customer_id: uuid::Uuid::now_v7(), items: items(1, "A") }).await;
    run(OrderCommand::UpdateItems { items: items(50, "B") }).await; // ~7 KB: over 6000, under 12000
    run(OrderCommand::UpdateItems { items: items(100, "C") }).await; // ~14 KB: over both
    let other = uuid::Uuid::now_v7();
    svc.execute::<Order>(
        other,
        &OrderCommand::Create { customer_id: other, items: items(1, "D") },
        Metadata::default(),
        None,
    )
    .await
    .unwrap();
    let head = store.head_position().await.unwrap();
    let mut relay = start_relay(&c, store.clone());
    relay.wait_checkpoint(head, Duration::from_secs(60)).await;
    assert_eq!(store.parked(&c.relay.consumer_name).await.unwrap().len(), 1, "parked at its second event");

    let (b, t) = (brokers.clone(), topic.clone());
    tokio::task::spawn_blocking(move || alter_topic(&b, &t, "max.message.bytes", "12000")).await.unwrap();
    let replay = replay_of(&c.relay.consumer_name, order);
    store.request_submit(&replay).await.unwrap();
    let finished = request_finished(&store, replay.id).await;
    assert_eq!(finished.status, RequestStatus::Failed, "the third event failed again: {:?}", finished.result);
    assert_eq!(store.parked(&c.relay.consumer_name).await.unwrap().len(), 1, "parked again, at its third event");
    // The request is failed before the park is counted: give the count time to settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(relay.status.borrow().parked_aggregates, 1, "one aggregate parked in the status");
    assert_eq!(relay.metrics.dlq_parked_aggregates.get(), 1, "dlq_parked_aggregates");
    if !eos {
        return;
    }

    let records =
        consume_until(&brokers, std::slice::from_ref(&c.relay.progress_topic), 1, Duration::from_secs(5), |_| false);
    let last = records.iter().rev().find(|r| r.key == c.relay.consumer_name).expect("a progress record");
    assert!(
        last.value["position"].as_i64().unwrap() >= head,
        "the committed progress never went back: {:?}",
        last.value
    );
    // To the end: a second copy of the replayed event would show.
    let events = consume_to_end(&brokers, std::slice::from_ref(&topic), Duration::from_secs(30));
    let seqs: Vec<&str> =
        events.iter().filter(|r| r.key == order.to_string()).map(|r| r.headers["ce_sequence"].as_str()).collect();
    assert_eq!(seqs, vec!["1", "2"], "the order's first event, then the replayed second one");
    assert_eq!(check_order_and_count_dups(&events), 0, "no second copy on the topic");
    assert_eq!(events.len(), 3, "the order's two events and the other order's one");
    relay.stop().await;
}

/// Exactly-once: a dead-letter replay whose second letter still cannot be
/// published commits the first, stops at the second (the letters after it
/// are not tried), keeps both, and fails naming it; nothing is parked. It
/// used to park the letter's aggregate at its old position (a later replay
/// of that aggregate re-published everything after it) and remove every
/// letter as replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_dead_letter_replay_that_fails_again_keeps_the_letter() {
    use outboxd::store::requests::RequestStatus;
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (c, topic, store) = exactly_once_small_topic(&brokers, dir.path()).await;
    // Three orders' events, published before (the checkpoint is past them),
    // each a dead letter now; the second is over the topic's limit.
    let mut letters = Vec::new();
    for (i, big) in [false, true, false].into_iter().enumerate() {
        let id = uuid::Uuid::now_v7();
        let mut env = order_events(id, 0, 1).remove(0);
        if big {
            env.payload["note"] = serde_json::Value::String("x".repeat(8000));
        }
        store.append(id, 0, vec![env.clone()]).await.unwrap();
        let letter = dead_letter(&env, Some(i as i64 + 1));
        store.dlq_insert(letter.clone()).await.unwrap();
        letters.push(letter);
    }
    store.set_checkpoint(&c.relay.consumer_name, 3).await.unwrap();
    let mut relay = start_relay(&c, store.clone());
    relay.wait_checkpoint(3, Duration::from_secs(60)).await;

    let finished = replay_all_letters(&store, &c.relay.consumer_name).await;
    assert_eq!(finished.status, RequestStatus::Failed, "{:?}", finished.result);
    assert_eq!(finished.result.as_ref().unwrap()["id"], letters[1].id.to_string(), "{:?}", finished.result);
    let mut left: Vec<uuid::Uuid> = store.dlq_list(10).await.unwrap().into_iter().map(|l| l.id).collect();
    left.sort();
    assert_eq!(left, vec![letters[1].id, letters[2].id], "the failed letter and the one after it stay");
    assert!(store.parked(&c.relay.consumer_name).await.unwrap().is_empty(), "nothing is parked");
    let events = consume_to_end(&brokers, std::slice::from_ref(&topic), Duration::from_secs(30));
    let ids: Vec<String> = events.iter().map(|r| r.event_id()).collect();
    assert_eq!(ids, vec![letters[0].event_id.to_string()], "only the first letter's event, once");
    relay.stop().await;
}

/// Exactly-once, review finding: a dead-letter replay whose transaction
/// was refused as a whole (two letters over the topic's limit together, each
/// under it alone) committed the first alone, then dropped the rest of the
/// batch that belongs to a parked aggregate, as feed traffic is, yet
/// removed every chosen letter: that letter's event was on no topic and in
/// no table. Letters go whatever the parks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_letter_replay_split_publishes_a_parked_aggregates_letter() {
    use outboxd::store::requests::RequestStatus;
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    // One partition: both letters in one record batch, over the limit together.
    let (c, topic, store) = small_topic_with(&brokers, dir.path(), true, 1).await;
    let (x, y) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let mut ex = order_events(x, 0, 1).remove(0);
    ex.payload["note"] = serde_json::Value::String("x".repeat(3500));
    store.append(x, 0, vec![ex.clone()]).await.unwrap(); // position 1
    let mut ey = order_events(y, 0, 2);
    ey[1].payload["note"] = serde_json::Value::String("y".repeat(3500));
    store.append(y, 0, ey.clone()).await.unwrap(); // positions 2, 3
    store.park(&order_parked_at(&c.relay.consumer_name, y, 2)).await.unwrap();
    let letters = [dead_letter(&ex, Some(1)), dead_letter(&ey[1], Some(3))];
    for l in &letters {
        store.dlq_insert(l.clone()).await.unwrap();
    }
    store.set_checkpoint(&c.relay.consumer_name, 3).await.unwrap();
    let mut relay = start_relay(&c, store.clone());
    relay.wait_checkpoint(3, Duration::from_secs(60)).await;

    let finished = replay_all_letters(&store, &c.relay.consumer_name).await;
    assert_eq!(finished.status, RequestStatus::Done, "{:?}", finished.result);
    let left = store.dlq_list(10).await.unwrap();
    let records = consume_to_end(&brokers, std::slice::from_ref(&topic), Duration::from_secs(30));
    let ids: Vec<String> = records.iter().map(|r| r.event_id()).collect();
    // Each letter is on the topic once, or still a dead letter: never neither.
    for l in &letters {
        let published = ids.iter().filter(|id| **id == l.event_id.to_string()).count();
        let kept = left.iter().any(|k| k.id == l.id);
        assert!(
            published == 1 || (published == 0 && kept),
            "letter {}: published {published}, kept {kept}",
            l.event_id
        );
    }
    relay.stop().await;
}

/// Exactly-once, review finding: a replay sent every held event in one
/// transaction (a large backlog outlasted `transaction.timeout.ms`: the
/// broker aborted it, every term again). It keeps to
/// `relay.transaction_max_events`, each event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_replay_keeps_to_the_transaction_size() {
    use outboxd::store::requests::RequestStatus;
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (mut c, store) = exactly_once_quick(&brokers, dir.path()).await;
    c.relay.transaction_max_events = 10;
    let agg = uuid::Uuid::now_v7();
    store.append(agg, 0, order_events(agg, 0, 25)).await.unwrap();
    store.park(&order_parked_at(&c.relay.consumer_name, agg, 1)).await.unwrap();
    let mut relay = start_relay(&c, store.clone());
    relay.wait_checkpoint(25, Duration::from_secs(60)).await;
    let committed = |r: &RunningRelay| r.metrics.relay_transactions.with_label_values(&["committed"]).get();
    let before = committed(&relay);
    let replay = replay_of(&c.relay.consumer_name, agg);
    store.request_submit(&replay).await.unwrap();
    let finished = request_finished(&store, replay.id).await;
    assert_eq!(finished.status, RequestStatus::Done, "{:?}", finished.result);
    let records = consume_to_end(&brokers, &topics(&c), Duration::from_secs(30));
    let expected: Vec<String> = (1..=25).map(|s| s.to_string()).collect();
    assert_eq!(sequences_of(&records, agg), expected, "each held event once, in order");
    assert!(committed(&relay) - before >= 3, "25 events in transactions of at most 10");
    relay.stop().await;
}

/// Exactly-once: a batch split around an event refused for good keeps a
/// parked aggregate's events before its park position (read again after a
/// rewind); the split filtered the rest by aggregate alone and dropped them
/// while the progress moved past.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_split_keeps_events_before_a_park_position() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (c, topic, store) = exactly_once_small_topic(&brokers, dir.path()).await;
    let (big, parked) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let mut env = order_events(big, 0, 1).remove(0);
    env.payload["note"] = serde_json::Value::String("x".repeat(8000));
    store.append(big, 0, vec![env]).await.unwrap(); // position 1, over the topic's limit
    store.append(parked, 0, order_events(parked, 0, 3)).await.unwrap(); // positions 2-4
    store.park(&order_parked_at(&c.relay.consumer_name, parked, 4)).await.unwrap();
    let mut relay = start_relay(&c, store.clone());
    relay.wait_checkpoint(4, Duration::from_secs(60)).await;
    let records = consume_to_end(&brokers, std::slice::from_ref(&topic), Duration::from_secs(30));
    let seqs = |agg: uuid::Uuid| sequences_of(&records, agg);
    assert_eq!(seqs(parked), ["1", "2"], "the events before the park position, once");
    assert!(seqs(big).is_empty());
    assert_eq!(store.parked(&c.relay.consumer_name).await.unwrap().len(), 2, "the big one parked too");
    relay.stop().await;
}

/// Exactly-once: a replay resumed by the next term (the former one
/// committed the held events, then could not remove the park record), whose
/// first read of the held rows fails. The request is taken again at the
/// next round and finishes: done, the record gone, each event once. It was
/// recorded done at once ("carried out before a restart") with the record
/// left: the aggregate held for good, and the replay an operator would ask
/// for next published its events a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resumed_replay_whose_store_read_fails_is_taken_again_not_recorded_done() {
    use outboxd::store::faults::{AGGREGATE_ROWS, UNPARK};
    use outboxd::store::requests::RequestStatus;
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (c, store) = exactly_once_quick(&brokers, dir.path()).await;
    let faults = store.faults().expect("the SQLite store has the fault seam");
    let (order, other) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    store.append(order, 0, order_events(order, 0, 3)).await.unwrap(); // positions 1-3
    store.park(&order_parked_at(&c.relay.consumer_name, order, 2)).await.unwrap();
    store.append(other, 0, order_events(other, 0, 1)).await.unwrap(); // position 4
    let mut relay = start_relay(&c, store.clone());
    relay.wait_checkpoint(4, Duration::from_secs(60)).await;

    // The first term commits the held events, then every try of the unpark fails: it ends.
    faults.fail_next(UNPARK, 5);
    let replay = replay_of(&c.relay.consumer_name, order);
    store.request_submit(&replay).await.unwrap();
    let end = relay.ended(Duration::from_secs(60)).await;
    assert!(matches!(&end, Err(RelayError::Store(m)) if m.contains("park record could not be removed")), "{end:?}");

    // The next term resumes it; its first read of the held rows fails.
    faults.fail_next(AGGREGATE_ROWS, 1);
    let relay = start_relay(&c, store.clone());
    let finished = request_finished(&store, replay.id).await;
    assert_eq!(faults.armed(AGGREGATE_ROWS), 0, "the read failed once, as armed");
    assert_eq!(finished.status, RequestStatus::Done, "{:?}", finished.result);
    assert!(store.parked(&c.relay.consumer_name).await.unwrap().is_empty(), "the park record is gone");
    // Read to the end: a second copy would show.
    let records = consume_to_end(&brokers, &topics(&c), Duration::from_secs(30));
    let seqs = |agg: uuid::Uuid| sequences_of(&records, agg);
    assert_eq!(seqs(order), ["1", "2", "3"], "each event of the replayed order once, in order");
    assert_eq!(seqs(other), ["1"]);
    relay.stop().await;
}

/// Exactly-once: a replay of named dead letters whose former term committed
/// both and removed only the first (a crash between the two removals, or a
/// store error on the second). The next term removes the second and records
/// the request done, publishing nothing again. It took the missing first
/// letter for "some of the given dead letters do not exist", recorded the
/// request done as carried out, and left the second letter: replayed again
/// later, its event went out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resumed_replay_of_named_dead_letters_removes_the_ones_left() {
    use outboxd::store::faults::DLQ_REMOVE;
    use outboxd::store::requests::{RelayRequest, RequestKind, RequestStatus};
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (c, store) = exactly_once_quick(&brokers, dir.path()).await;
    let faults = store.faults().expect("the SQLite store has the fault seam");
    let letters = seeded_letters(&store, false).await;
    // Published before (the checkpoint is past them), dead letters now.
    store.set_checkpoint(&c.relay.consumer_name, 2).await.unwrap();
    let relay = start_relay(&c, store.clone());
    faults.fail_next(DLQ_REMOVE, 1);
    let ids = letters.iter().map(|l| l.id).collect();
    let replay = RelayRequest::new(&c.relay.consumer_name, RequestKind::ReplayDeadLetters { ids: Some(ids) }, "test");
    store.request_submit(&replay).await.unwrap();
    let end = relay.ended(Duration::from_secs(60)).await;
    assert!(matches!(&end, Err(RelayError::Store(m)) if m.contains("could not be removed")), "{end:?}");
    // As after a crash between the two removals: the first letter is gone.
    assert!(store.dlq_remove(letters[0].id).await.unwrap());

    let relay = start_relay(&c, store.clone());
    let finished = request_finished(&store, replay.id).await;
    assert_eq!(finished.status, RequestStatus::Done, "{:?}", finished.result);
    let left: Vec<uuid::Uuid> = store.dlq_list(10).await.unwrap().into_iter().map(|l| l.id).collect();
    assert!(left.is_empty(), "the second letter, committed by the first term, is removed: {left:?}");
    // Read to the end: a second copy would show.
    let records = consume_to_end(&brokers, &topics(&c), Duration::from_secs(30));
    let mut ids: Vec<String> = records.iter().map(|r| r.event_id()).collect();
    ids.sort();
    let mut want: Vec<String> = letters.iter().map(|l| l.event_id.to_string()).collect();
    want.sort();
    assert_eq!(ids, want, "each letter's event once");
    relay.stop().await;
}

/// Exactly-once: an operator request is carried out while writes go on (a
/// page of the feed is then ready at every turn of the loop, which served
/// the pages first: requests waited until the feed was idle, a rewind's
/// catch-up included).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_requests_are_carried_out_under_steady_writes() {
    use outboxd::store::requests::RequestStatus;
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (c, store) = exactly_once_quick(&brokers, dir.path()).await;
    let order = uuid::Uuid::now_v7();
    store.append(order, 0, order_events(order, 0, 2)).await.unwrap();
    store.park(&order_parked_at(&c.relay.consumer_name, order, 2)).await.unwrap();
    let mut relay = start_relay(&c, store.clone());
    relay.wait_checkpoint(2, Duration::from_secs(60)).await;

    // Other aggregates' events, one every 2 ms, for up to 30 s.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let until = std::time::Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < until {
                let id = uuid::Uuid::now_v7();
                store.append(id, 0, order_events(id, 0, 1)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let replay = replay_of(&c.relay.consumer_name, order);
    store.request_submit(&replay).await.unwrap();
    let finished = request_finished(&store, replay.id).await;
    assert!(!writer.is_finished(), "carried out while the writes went on, not after them");
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    assert_eq!(finished.status, RequestStatus::Done, "{:?}", finished.result);
    assert!(store.parked(&c.relay.consumer_name).await.unwrap().is_empty());
    relay.stop().await;
}

/// Exactly-once, the CLI's requests-only term (no daemon running): the
/// replay committed the held events, then the park record could not be
/// removed and the term failed. The CLI's withdrawal leaves the request
/// open, and the next relay term resumes it: each event once. Withdrawn, it
/// was failed "cancelled", the mark dropped, and the replay an operator
/// submitted again published the held events a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cli_replay_that_committed_is_left_open_for_the_next_term() {
    use outboxd::relay::operator;
    use outboxd::store::faults::UNPARK;
    use outboxd::store::requests::{RelayRequest, RequestKind, RequestStatus};
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (c, store) = exactly_once_quick(&brokers, dir.path()).await;
    let order = uuid::Uuid::now_v7();
    store.append(order, 0, order_events(order, 0, 3)).await.unwrap();
    store.park(&order_parked_at(&c.relay.consumer_name, order, 2)).await.unwrap();
    store.set_checkpoint(&c.relay.consumer_name, 3).await.unwrap();
    let kind = RequestKind::ReplayAggregate { aggregate_id: order.to_string() };
    let replay = RelayRequest::new(&c.relay.consumer_name, kind, "cli@test");
    store.request_submit(&replay).await.unwrap();

    // The CLI's term: commits events 2 and 3, then every unpark fails.
    store.faults().expect("the SQLite store has the fault seam").fail_next(UNPARK, 5);
    let (relay, _status) = outboxd::relay::Relay::standalone(&c, store.clone(), outboxd::metrics::Metrics::new());
    let end = relay.requests_only().run_exactly_once(outboxd::shutdown::Shutdown::never()).await;
    assert!(matches!(&end, Err(RelayError::Store(_))), "{end:?}");
    let why = "the CLI could not carry it out";
    let left = operator::withdraw(&store, replay.id, Some(0), why, true).await.unwrap();
    assert_eq!(left.status, RequestStatus::Running, "left open: {:?}", left.result);

    let relay = start_relay(&c, store.clone());
    let finished = request_finished(&store, replay.id).await;
    assert_eq!(finished.status, RequestStatus::Done, "{:?}", finished.result);
    assert!(store.parked(&c.relay.consumer_name).await.unwrap().is_empty());
    // Read to the end: a second copy would show.
    let records = consume_to_end(&brokers, &topics(&c), Duration::from_secs(30));
    let seqs: Vec<&str> = records.iter().map(|r| r.headers["ce_sequence"].as_str()).collect();
    assert_eq!(seqs, ["2", "3"], "the held events once (event 1 went out before the park)");
    relay.stop().await;
}

/// Exactly-once, review finding: a dead-letter replay split around a
/// refused letter committed its prefix with the progress just below the
/// refused letter's own position (a letter is not feed traffic: its
/// position can be ahead of this consumer's progress, after a rewind or for
/// another consumer's letter). A term that ended there, as the CLI's
/// requests-only term does, left the checkpoint past feed events never
/// published: the next relay started after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_letter_replay_never_moves_the_progress_past_the_feed() {
    use outboxd::relay::Relay;
    use outboxd::store::requests::RequestStatus;
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (c, topic, store) = exactly_once_small_topic(&brokers, dir.path()).await;
    // Ten orders' events, none published yet (positions 1..10).
    let mut stored = Vec::new();
    for _ in 0..10 {
        let id = uuid::Uuid::now_v7();
        let env = order_events(id, 0, 1).remove(0);
        store.append(id, 0, vec![env.clone()]).await.unwrap();
        stored.push(env.event_id.to_string());
    }
    // Two letters from positions 8 and 9 (another consumer's), the second
    // over the topic's limit.
    let mut letters = Vec::new();
    for (big, position) in [(false, 8), (true, 9)] {
        let mut env = order_events(uuid::Uuid::now_v7(), 0, 1).remove(0);
        if big {
            env.payload["note"] = serde_json::Value::String("x".repeat(8000));
        }
        let letter = dead_letter(&env, Some(position));
        store.dlq_insert(letter.clone()).await.unwrap();
        letters.push(letter);
    }
    // The replay carried out by a requests-only term (the CLI's, no relay running).
    let (relay, _) = Relay::standalone(&c, store.clone(), outboxd::metrics::Metrics::new());
    let trigger = outboxd::shutdown::Trigger::new();
    let term = tokio::spawn(relay.requests_only().run_exactly_once(trigger.subscribe()));
    let finished = replay_all_letters(&store, &c.relay.consumer_name).await;
    assert_eq!(finished.status, RequestStatus::Failed, "the big letter is refused again: {:?}", finished.result);
    trigger.fire();
    term.await.unwrap().unwrap();
    let checkpoint = store.get_checkpoint(&c.relay.consumer_name).await.unwrap().unwrap_or(0);
    assert_eq!(checkpoint, 0, "no feed event was published");

    // The relay: every feed event, once.
    let mut relay = start_relay(&c, store.clone());
    relay.wait_checkpoint(10, Duration::from_secs(60)).await;
    let records = consume_to_end(&brokers, std::slice::from_ref(&topic), Duration::from_secs(30));
    let ids: Vec<String> = records.iter().map(|r| r.event_id()).collect();
    for (i, id) in stored.iter().enumerate() {
        assert_eq!(ids.iter().filter(|x| *x == id).count(), 1, "position {}: once: {ids:?}", i + 1);
    }
    assert_eq!(ids.iter().filter(|x| **x == letters[0].event_id.to_string()).count(), 1, "the good letter, once");
    relay.stop().await;
}
