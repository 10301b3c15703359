//! A relay term that loses its lease acts no more, against a real broker:
//! one that loses it while its start retries (the store cannot be read)
//! ends there (an exactly-once term must not go on to `init_transactions`,
//! which would fence the instance that holds the lease now and abort its
//! open transaction); one whose park write is refused (fenced), or whose
//! lease went while its loop was held, sends nothing after it; an
//! exactly-once term behind an open breaker (the broker away) ends at the
//! lease's loss.

mod harness;

use harness::*;
use std::time::Duration;

use outboxd::lease::keeper::LeaseState;
use outboxd::metrics::Metrics;
use outboxd::relay::exactly_once::transactional_id;
use outboxd::relay::pipeline::{Exit, Fence, RelayError};
use outboxd::relay::Relay;
use outboxd::shutdown::Trigger;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exactly_once_term_that_loses_its_lease_while_starting_does_not_fence_the_new_holder() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(&brokers, &dir.path().join("s.db"));
    exactly_once(&mut c);
    let store = open_store(&c).await;
    let topic = format!("{}order-events", c.kafka.topic_prefix);
    let (b, t) = (brokers.clone(), topic.clone());
    tokio::task::spawn_blocking(move || create_topic(&b, &t, 3, &[])).await.unwrap();

    // A's term starts at epoch 5 while the store cannot be read: it retries
    // its checkpoint read.
    store.faults().expect("the SQLite store has the fault seam").fail_reads_for(Duration::from_secs(6));
    let (lease, rx) = tokio::sync::watch::channel(LeaseState::active(5));
    let (relay, _status) = Relay::standalone(&c, store.clone(), Metrics::new());
    let relay = relay.with_fence(Fence { epoch: 5, lease: rx });
    let trigger = Trigger::new();
    let term = tokio::spawn(relay.run_exactly_once(trigger.subscribe()));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Meanwhile B took the lease (epoch 6): its producer holds the
    // transactional id and has a transaction open.
    lease.send(LeaseState::Standby { holder: "b".into(), epoch: 6, ttl_ms: 10_000 }).unwrap();
    let b: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("transactional.id", transactional_id(&c.relay))
        .create()
        .unwrap();
    let to = topic.clone();
    let b = tokio::task::spawn_blocking(move || {
        b.init_transactions(Duration::from_secs(30)).unwrap();
        b.begin_transaction().unwrap();
        b.send(BaseRecord::to(&to).key("k").payload("from b")).map_err(|(e, _)| e).unwrap();
        b
    })
    .await
    .unwrap();

    // A ends for its lease, not after its start went through (the store
    // reads fail for 6 s).
    let exit = tokio::time::timeout(Duration::from_secs(30), term).await.expect("A's term ends").unwrap();
    assert_eq!(exit.unwrap(), Exit::LeaseLost);
    tokio::time::sleep(Duration::from_secs(7)).await;
    let committed = tokio::task::spawn_blocking(move || b.commit_transaction(Duration::from_secs(30))).await.unwrap();
    assert!(committed.is_ok(), "B was not fenced by A: {committed:?}");
    // Everything the topic holds (until 5 s pass without a record), not
    // just the first: a record of A's would show up as a second one.
    let records = consume_until(&brokers, &[topic], usize::MAX, Duration::from_secs(5), |_| false);
    assert_eq!(
        records.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        vec!["k"],
        "B's record is committed, and it alone"
    );
}

/// Review finding: a park refused because another instance holds the lease
/// purged the producer and marked the term ended, but the pump went on
/// sending every ready event of other aggregates after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_term_whose_park_is_refused_sends_nothing_after_it() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (c, _store) = term_whose_park_is_refused(&brokers, dir.path(), false).await;
    // Nothing was confirmed to read up to: whatever arrives within 5 s (the
    // 20 asked for are more than the 0 expected, so the read never stops at
    // the expected count; any record fails).
    let records = consume_all(&brokers, &topics(&c), 20, Duration::from_secs(5));
    assert!(records.is_empty(), "nothing published after the refusal: {} records", records.len());
}

/// Review finding: the pump sent the ready events without looking at the
/// lease; only the loop's wait noticed its loss, after them. The lease goes
/// while the loop is held (an injected pause, as a long GC pause) with a
/// page of 20 events of other orders in the window: none is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_term_whose_lease_went_during_a_pause_sends_nothing_after_it() {
    use outboxd::lease::pause::PauseHook;
    use outboxd::store::lease::{Lease, LeaseCas};
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(&brokers, &dir.path().join("s.db"));
    c.kafka.linger_ms = 0;
    // No request tick while the test runs: the page alone wakes the loop.
    c.relay.poll_interval_ms = 60_000;
    let store = open_store(&c).await;
    let name = c.relay.consumer_name.clone();
    let lease = Lease { name: name.clone(), holder: "me".into(), epoch: 5, counter: 0, ttl_ms: 60_000 };
    assert!(store.lease_cas(&LeaseCas { expected: None, new: lease }).await.unwrap());
    let first = uuid::Uuid::now_v7();
    store.append(first, 0, order_events(first, 0, 1)).await.unwrap();
    let (lease_tx, rx) = tokio::sync::watch::channel(LeaseState::active(5));
    let pause = PauseHook::default();
    let metrics = Metrics::new();
    let (relay, _status) = Relay::standalone(&c, store.clone(), metrics.clone());
    let relay = relay.with_fence(Fence { epoch: 5, lease: rx }).with_pause(pause.clone());
    let trigger = Trigger::new();
    let term = tokio::spawn(relay.run(trigger.subscribe()));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.get_checkpoint(&name).await.unwrap().unwrap_or(0) < 1 {
        assert!(std::time::Instant::now() < deadline, "the first event was never confirmed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // the loop waits again
    pause.pause_for(Duration::from_millis(1500));
    for _ in 0..20 {
        let id = uuid::Uuid::now_v7();
        store.append(id, 0, order_events(id, 0, 1)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    lease_tx.send_replace(LeaseState::Lost { epoch: 5 });
    let exit = tokio::time::timeout(Duration::from_secs(30), term).await.expect("the term ends").unwrap();
    assert_eq!(exit.unwrap(), Exit::LeaseLost);
    let topic = format!("{}order-events", c.kafka.topic_prefix);
    assert_eq!(metrics.messages_sent.with_label_values(&[&topic]).get(), 1, "handed to the producer after the loss");
    // The 20 must never have been sent, so none was confirmed: whatever
    // arrives within 5 s, not a read to the ends (21 asked for, more than
    // the 1 expected: a copy or a late record is read too).
    let records = consume_all(&brokers, &topics(&c), 21, Duration::from_secs(5));
    let keys: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, vec![first.to_string().as_str()], "nothing sent after the loss");
}

/// An exactly-once term whose store checkpoint is refused as fenced (the
/// lease moved to another instance in the store, this term's keeper has not
/// noticed yet) steps down at that commit. It purged a producer with no
/// transaction open and went on committing until the keeper noticed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exactly_once_term_whose_checkpoint_is_fenced_steps_down() {
    use outboxd::store::lease::{Lease, LeaseCas};
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(&brokers, &dir.path().join("s.db"));
    exactly_once(&mut c);
    let store = open_store(&c).await;
    let name = c.relay.consumer_name.clone();
    let lease = |epoch: i64, holder: &str| Lease {
        name: name.clone(),
        holder: holder.into(),
        epoch,
        counter: 0,
        ttl_ms: 60_000,
    };
    assert!(store.lease_cas(&LeaseCas { expected: None, new: lease(5, "a") }).await.unwrap());
    let first = uuid::Uuid::now_v7();
    store.append(first, 0, order_events(first, 0, 1)).await.unwrap();
    let (_keeper, rx) = tokio::sync::watch::channel(LeaseState::active(5));
    let (relay, mut status) = Relay::standalone(&c, store.clone(), Metrics::new());
    let relay = relay.with_fence(Fence { epoch: 5, lease: rx });
    let trigger = Trigger::new();
    let term = tokio::spawn(relay.run_exactly_once(trigger.subscribe()));
    tokio::time::timeout(Duration::from_secs(60), status.wait_for(|s| s.checkpoint == Some(1)))
        .await
        .expect("the term commits the first event")
        .unwrap();
    // "b" takes the lease over in the store; this term's keeper still says active.
    assert!(store.lease_cas(&LeaseCas { expected: Some((5, 0)), new: lease(6, "b") }).await.unwrap());
    let next = uuid::Uuid::now_v7();
    store.append(next, 0, order_events(next, 0, 1)).await.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(30), term).await.expect("the term steps down").unwrap();
    assert_eq!(exit.unwrap(), Exit::LeaseLost);
    assert_eq!(store.get_checkpoint(&name).await.unwrap(), Some(1), "its fenced checkpoint was not written");
    trigger.fire();
}

/// Review finding: a replay whose aggregate had nothing held to publish
/// (its park record past what the term had read) unparked it with a fenced
/// write; refused (the lease had gone), the request was finished as failed
/// at once, and the term went on. It now ends the term like any refused
/// write: the request stays running for the next holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_unpark_at_a_request_start_ends_the_term_and_leaves_the_request_running() {
    use outboxd::store::requests::RequestStatus;
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = test_config(&brokers, &dir.path().join("s.db"));
    let store = open_store(&c).await;
    let consumer = c.relay.consumer_name.clone();
    let order = uuid::Uuid::now_v7();
    store.park(&order_parked_at(&consumer, order, 100)).await.unwrap();
    // The term runs at epoch 5; the store has no lease row: fenced writes
    // are refused.
    let (_lease, rx) = tokio::sync::watch::channel(LeaseState::active(5));
    let (relay, _status) = Relay::standalone(&c, store.clone(), Metrics::new());
    let relay = relay.with_fence(Fence { epoch: 5, lease: rx });
    let replay = replay_of(&consumer, order);
    store.request_submit(&replay).await.unwrap();
    let trigger = Trigger::new();
    let exit = tokio::time::timeout(Duration::from_secs(60), relay.run(trigger.subscribe()))
        .await
        .expect("the term ends by itself");
    assert_eq!(exit.unwrap(), Exit::LeaseLost);
    let r = store.request_get(replay.id).await.unwrap().expect("the request");
    assert_eq!(r.status, RequestStatus::Running, "left for the next holder: {:?}", r.result);
    assert_eq!(store.parked(&consumer).await.unwrap().len(), 1, "still parked");
}

/// Review finding: the exactly-once twin of the park test above retried
/// the refused (fenced) park 8 times, then ended the term as a store
/// failure (an error on /health, a restart counted) instead of stepping
/// down as the at-least-once term does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exactly_once_term_whose_park_is_refused_steps_down() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (c, _store) = term_whose_park_is_refused(&brokers, dir.path(), true).await;
    let records = consume_to_end(&brokers, &topics(&c), Duration::from_secs(5));
    assert!(records.is_empty(), "nothing committed after the refusal: {} records", records.len());
}

/// Review finding: an exactly-once term waiting behind an open breaker
/// (the broker away, its watch never seeing it back: a 10-minute open
/// timeout) listened for shutdown only, so a lease lost meanwhile went
/// unseen until the broker returned, and then it began a transaction
/// after the takeover. It now ends at the loss, with writes going on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exactly_once_term_behind_an_open_breaker_sees_its_lease_go() {
    use outboxd::relay::breaker::BreakerState;
    use outboxd::store::lease::{Lease, LeaseCas};
    let kafka = PrivateKafka::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(&kafka.brokers, &dir.path().join("s.db"));
    exactly_once(&mut c);
    c.kafka.message_timeout_ms = 2_000;
    c.relay.breaker.failure_threshold = 1;
    c.relay.breaker.open_timeout_ms = 600_000;
    let store = open_store(&c).await;
    let lease = Lease { name: c.relay.consumer_name.clone(), holder: "a".into(), epoch: 5, counter: 0, ttl_ms: 60_000 };
    assert!(store.lease_cas(&LeaseCas { expected: None, new: lease }).await.unwrap());
    let (keeper, rx) = tokio::sync::watch::channel(LeaseState::active(5));
    let trigger = Trigger::new();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                let id = uuid::Uuid::now_v7();
                store.append(id, 0, order_events(id, 0, 1)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let (relay, mut status) = Relay::standalone(&c, store.clone(), Metrics::new());
    let relay = relay.with_fence(Fence { epoch: 5, lease: rx });
    let term = tokio::spawn(relay.run_exactly_once(trigger.subscribe()));
    tokio::time::timeout(Duration::from_secs(60), status.wait_for(|s| s.running))
        .await
        .expect("the term starts")
        .unwrap();
    kafka.stop();
    // Bounded generously: on the fatal path a commit whose outcome is
    // unknown is retried until its deadline before the abort is tried.
    let opened = tokio::time::timeout(Duration::from_secs(300), status.wait_for(|s| s.breaker == BreakerState::Open))
        .await
        .expect("the breaker opens, or the term ends, with the broker away")
        .is_ok();
    if !opened {
        // librdkafka had begun to register the transaction's partitions: the
        // abort cannot finish without the broker, and the term ends as fatal
        // (a new term then waits for the broker in its start, which watches
        // the lease: `an_exactly_once_term_that_loses_its_lease_while_starting...`).
        // In about 4 runs of 10 here; this run cannot reach the open breaker.
        let ended = term.await.unwrap();
        assert!(matches!(ended, Err(RelayError::ProducerFatal(_))), "{ended:?}");
        writer.abort();
        skipped(false, "the broker stopped while librdkafka registered the transaction's partitions: the term ended as fatal (its abort cannot finish) before its breaker opened");
        return;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!term.is_finished(), "still waiting behind the breaker");
    keeper.send(LeaseState::Standby { holder: "b".into(), epoch: 6, ttl_ms: 10_000 }).unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), term)
        .await
        .expect("the term ends at the lease's loss, the broker still away")
        .unwrap();
    assert_eq!(exit.unwrap(), Exit::LeaseLost);
    writer.abort();
    trigger.fire();
}

/// A term at epoch 5 whose store has no lease row (its fenced writes are
/// refused) over a row no build can read at position 1 (its turn parks its
/// aggregate) and 20 events of other orders ready behind it: run to its
/// end, which must be `LeaseLost` with the park refused.
async fn term_whose_park_is_refused(
    brokers: &str,
    dir: &std::path::Path,
    eos: bool,
) -> (outboxd::config::Config, outboxd::store::DynStore) {
    let mut c = test_config(brokers, &dir.join("s.db"));
    // No linger: a record handed over goes out at once (the term's final
    // purge would otherwise take it back).
    c.kafka.linger_ms = 0;
    if eos {
        exactly_once(&mut c);
    }
    let store = open_store(&c).await;
    insert_unreadable(&c.store.path, "order", uuid::Uuid::now_v7(), 1);
    for _ in 0..20 {
        let id = uuid::Uuid::now_v7();
        store.append(id, 0, order_events(id, 0, 1)).await.unwrap();
    }
    let (_lease, rx) = tokio::sync::watch::channel(LeaseState::active(5));
    let (relay, _status) = Relay::standalone(&c, store.clone(), Metrics::new());
    let relay = relay.with_fence(Fence { epoch: 5, lease: rx });
    let trigger = Trigger::new();
    let term = async {
        match eos {
            true => relay.run_exactly_once(trigger.subscribe()).await,
            false => relay.run(trigger.subscribe()).await,
        }
    };
    let exit = tokio::time::timeout(Duration::from_secs(60), term).await.expect("the term ends by itself");
    assert_eq!(exit.unwrap(), Exit::LeaseLost);
    assert!(store.parked(&c.relay.consumer_name).await.unwrap().is_empty(), "the park was refused");
    (c, store)
}
