//! The delivery call's handling of a CDC row that cannot be decoded, against
//! a real CQL store (Cassandra stands in): parked or dead-lettered under the
//! policy, never a stop of the reader (no broker is contacted: nothing of
//! these rows, nor of a parked aggregate, reaches a send); a discard marker
//! never given up on transient failures; a record refused with its batch
//! re-sent alone (real Kafka).

use super::*;
use crate::config::Config;
use crate::relay::cdc::testkit::{events, live_store, timeuuid_at};
use crate::relay::cdc::{CdcError, EnvelopeSink, RowPosition, UndecodableRow};
use crate::shutdown::Trigger;
use uuid::Uuid;

async fn deliverer(what: &str, policy: PermanentFailurePolicy) -> Option<(Deliverer, DynStore, Config)> {
    let store = live_store(what).await? as DynStore;
    let mut config = Config::default();
    config.relay.on_permanent_failure = policy;
    let status = StatusTx::new(tokio::sync::watch::channel(crate::relay::RelayStatus::default()).0);
    let d = Deliverer::new(&config, store.clone(), Arc::new(store.clone()), Metrics::new(), status).await.unwrap();
    Some((d, store, config))
}

fn bad_row(aggregate: Uuid, sequence: i64) -> UndecodableRow {
    UndecodableRow {
        aggregate_id: Some(aggregate),
        sequence: Some(sequence),
        event_id: Some(Uuid::now_v7()),
        position: Some(RowPosition {
            stream: crate::relay::cdc::progress::StreamKey(vec![1; 16]),
            generation: Some(1),
            time: timeuuid_at(1_000, 0),
            batch_seq_no: 0,
        }),
        error: CdcError::Payload { row: format!("{aggregate}#{sequence}"), error: "payload is not JSON".into() },
    }
}

/// Review finding: the `Deliverer` had no `undecodable`, so the default
/// stopped the whole CDC relay on one bad row, on every restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_row_parks_its_aggregate_and_holds_its_later_events() {
    let Some((d, store, config)) = deliverer("deliver: undecodable parks", PermanentFailurePolicy::ParkAggregate).await
    else {
        return;
    };
    let trigger = Trigger::new();
    let mut shutdown = trigger.subscribe();
    let bad = Uuid::now_v7();
    d.undecodable(bad_row(bad, 2), &mut shutdown).await.expect("parked, not a stop");
    let parked = store.parked(&config.relay.consumer_name).await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    let p = &parked[0].parked;
    assert_eq!((p.aggregate_id.as_str(), p.sequence), (bad.to_string().as_str(), Some(2)));
    assert!(p.error.contains("payload is not JSON") && p.error.contains("unreadable"), "{}", p.error);
    assert!(d.is_parked(&bad.to_string()));
    // Its next event is held by the park record: no send (no broker here).
    let next = events(bad, 2, 1).remove(0);
    d.handle(next, &mut shutdown).await.expect("held");
    assert_eq!(store.dlq_count().await.unwrap(), 0);
}

/// Review finding: the park set held every event of a parked aggregate,
/// so after a rewind its events from before the park point (published
/// before it) were held, not published again, and the progress passed
/// them. Only the events from the park point on are held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_aggregates_events_before_its_park_point_are_published_again() {
    let Some((d, _store, _config)) =
        deliverer("deliver: before the park point", PermanentFailurePolicy::ParkAggregate).await
    else {
        return;
    };
    let trigger = Trigger::new();
    let mut shutdown = trigger.subscribe();
    let a = Uuid::now_v7();
    d.undecodable(bad_row(a, 5), &mut shutdown).await.expect("parked at 5");
    let raw = |e: &crate::envelope::EventEnvelope| RawEvent::from_envelope(e, 0).unwrap();
    let after = events(a, 5, 1).remove(0);
    assert_eq!(d.deliver(&raw(&after), &mut shutdown).await, Delivered::Held, "after the park point: held");
    let before = events(a, 2, 1).remove(0);
    // No broker here: a delivery retries until shutdown, which is what
    // shows it was attempted (a held event returns at once).
    let fire = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        trigger.fire();
    });
    assert_eq!(d.deliver(&raw(&before), &mut shutdown).await, Delivered::Shutdown, "before it: published");
    fire.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_skip_an_undecodable_row_is_dead_lettered() {
    let Some((d, store, config)) = deliverer("deliver: undecodable skips", PermanentFailurePolicy::Skip).await else {
        return;
    };
    let trigger = Trigger::new();
    let mut shutdown = trigger.subscribe();
    let bad = Uuid::now_v7();
    let row = bad_row(bad, 1);
    let event_id = row.event_id.unwrap();
    d.undecodable(row, &mut shutdown).await.expect("dead-lettered, not a stop");
    let letters = store.dlq_list(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!((letters[0].event_id, letters[0].aggregate_id), (event_id, bad));
    assert!(letters[0].error_message.contains("payload is not JSON"), "{}", letters[0].error_message);
    assert!(store.parked(&config.relay.consumer_name).await.unwrap().is_empty());
    assert!(!d.is_parked(&bad.to_string()));
}

/// A row without an aggregate id cannot be parked: the reader stops on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_without_an_aggregate_id_stops_the_reader() {
    let Some((d, store, config)) = deliverer("deliver: no aggregate", PermanentFailurePolicy::ParkAggregate).await
    else {
        return;
    };
    let trigger = Trigger::new();
    let mut shutdown = trigger.subscribe();
    let row = UndecodableRow { aggregate_id: None, ..bad_row(Uuid::now_v7(), 1) };
    let err = d.undecodable(row, &mut shutdown).await.unwrap_err();
    assert!(err.to_string().contains("payload is not JSON"), "{err}");
    assert!(store.parked(&config.relay.consumer_name).await.unwrap().is_empty());
}

/// Review finding: the CDC path's park records were written without the
/// lease epoch. A zombie's park is now refused and stops its reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_park_at_a_stale_epoch_is_refused_and_stops_the_reader() {
    let Some((d, store, config)) = deliverer("deliver: fenced park", PermanentFailurePolicy::ParkAggregate).await
    else {
        return;
    };
    let d = d.with_epoch(Some(7)); // no lease row at epoch 7: another instance (or none) holds it
    let trigger = Trigger::new();
    let mut shutdown = trigger.subscribe();
    let bad = Uuid::now_v7();
    let err = d.undecodable(bad_row(bad, 1), &mut shutdown).await.unwrap_err();
    assert!(matches!(err, CdcError::Fenced { ref consumer } if consumer == "kafka-relay"), "{err:?}");
    assert!(store.parked(&config.relay.consumer_name).await.unwrap().is_empty(), "no park record from a zombie");
    assert!(!d.is_parked(&bad.to_string()));
}

/// Review finding: a CDC term that lost its lease kept publishing what its
/// reader still handed over (its window, up to the reader's stop grace)
/// after a standby took over. Nothing is sent once the lease is not held at
/// the deliverer's epoch; no broker is needed to see it (a send would wait
/// for one that does not answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_sent_once_the_lease_is_not_held_at_its_epoch() {
    use crate::lease::keeper::LeaseState;
    let Some((d, _store, _config)) = deliverer("deliver: lease gone", PermanentFailurePolicy::ParkAggregate).await
    else {
        return;
    };
    let (tx, rx) = tokio::sync::watch::channel(LeaseState::active(4));
    let d = d.with_epoch(Some(4)).with_lease(Some(rx));
    let env = crate::envelope::EventEnvelope {
        event_id: Uuid::now_v7(),
        aggregate_type: "order".into(),
        aggregate_id: Uuid::now_v7(),
        sequence: 1,
        event_type: "OrderCreated".into(),
        schema_version: 2,
        payload: serde_json::json!({}),
        causation_id: None,
        correlation_id: Uuid::now_v7(),
        timestamp: chrono::Utc::now(),
        trace: None,
    };
    let raw = RawEvent::from_envelope(&env, 0).unwrap();
    let trigger = Trigger::new();
    let mut shutdown = trigger.subscribe();
    for gone in [LeaseState::Lost { epoch: 4 }, LeaseState::active(5)] {
        tx.send(gone.clone()).unwrap();
        let d = tokio::time::timeout(std::time::Duration::from_secs(10), d.deliver(&raw, &mut shutdown))
            .await
            .unwrap_or_else(|_| panic!("{gone:?}: the deliverer tried to send"));
        assert!(matches!(d, Delivered::Shutdown), "{gone:?}: {d:?}");
    }
}

/// The marker of a discarded event 2 of a new order.
fn marker() -> Discarded {
    Discarded {
        event_id: Uuid::now_v7(),
        aggregate_type: "order".into(),
        aggregate_key: Uuid::now_v7().to_string().into(),
        sequence: 2,
        event_type: "ItemsAdded".into(),
        reason: "test".into(),
        discarded_at: chrono::Utc::now(),
    }
}

/// Review finding: under `relay.dlq_on_transient_exhaustion` a discard
/// marker whose sends kept failing transiently was given up like an event,
/// but a marker has no dead letter to become: it vanished (a sequence gap
/// on the topic) while `dlq_messages_total` counted one. It retries behind
/// the breaker now, until the broker is back or shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_is_never_given_up_on_transient_exhaustion() {
    let Some(store) = live_store("a discard marker under dlq_on_transient_exhaustion").await else { return };
    let store = store as DynStore;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut config = Config::default();
    config.kafka.brokers = format!("127.0.0.1:{port}"); // nothing listens: every send times out
    config.kafka.message_timeout_ms = 200;
    config.relay.dlq_on_transient_exhaustion = true;
    config.relay.retry.max_attempts = 2;
    config.relay.retry.initial_backoff_ms = 10;
    config.relay.retry.max_backoff_ms = 20;
    config.relay.breaker.failure_threshold = 1_000;
    let metrics = Metrics::new();
    let status = StatusTx::new(tokio::sync::watch::channel(crate::relay::RelayStatus::default()).0);
    let d = Deliverer::new(&config, store.clone(), Arc::new(store.clone()), metrics.clone(), status).await.unwrap();
    let marker = marker();
    let stop = Trigger::new();
    let mut shutdown = stop.subscribe();
    let sending = tokio::spawn(async move { d.deliver_marker(&marker, &mut shutdown).await });
    // Ten times the two attempts' timeouts and backoffs: given up by now if it ever would be.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(!sending.is_finished(), "the marker is still being retried");
    stop.fire();
    assert_eq!(sending.await.unwrap(), Delivered::Shutdown);
    assert_eq!(metrics.dlq_messages.get(), 0, "nothing was dead-lettered");
}

/// Review finding: under policy `skip`, a marker refused for good was
/// counted as dead-lettered (`dlq_messages_total`, `dlq_depth`, the status)
/// although no dead letter was written (a marker has none to become).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_given_up_under_skip_is_not_counted_as_a_dead_letter() {
    let Some((d, store, _)) = deliverer("deliver: a marker under skip", PermanentFailurePolicy::Skip).await else {
        return;
    };
    let marker = marker();
    let trigger = Trigger::new();
    let mut shutdown = trigger.subscribe();
    let err = PublishError::permanent("MessageSizeTooLarge", "refused");
    let out = d
        .give_up(&Item::Marker { position: 0, discarded: marker }, err, PermanentFailurePolicy::Skip, 2, &mut shutdown)
        .await;
    assert_eq!(out, Delivered::DeadLettered);
    assert_eq!((d.metrics.dlq_messages.get(), d.metrics.dlq_depth.get()), (0, 0), "nothing was dead-lettered");
    assert_eq!(store.dlq_count().await.unwrap(), 0);
}

/// A dead-letter write stored but answered with an error (its outcome
/// unknown) is retried with the same letter, which the CQL store counts
/// once: the row says one failure, not three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_retried_after_lost_replies_counts_once() {
    let Some((d, store, _)) = deliverer("deliver: a dead letter retried", PermanentFailurePolicy::Skip).await else {
        return;
    };
    let faults = store.faults().expect("the CQL store has a fault seam");
    faults.fail_next(crate::store::faults::DLQ_INSERT_REPLY_LOST, 2);
    let trigger = Trigger::new();
    let mut shutdown = trigger.subscribe();
    let bad = Uuid::now_v7();
    d.undecodable(bad_row(bad, 1), &mut shutdown).await.expect("dead-lettered, not a stop");
    assert_eq!(faults.armed(crate::store::faults::DLQ_INSERT_REPLY_LOST), 0, "both replies were lost");
    let letters = store.dlq_list(10).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!((letters[0].aggregate_id, letters[0].failure_count), (bad, 1), "{letters:?}");
}

/// One event of aggregate `agg` (sequence 1) whose payload is `pad` bytes of
/// incompressible text.
fn event_of(agg: Uuid, pad: usize) -> RawEvent {
    let mut text = String::new();
    while text.len() < pad {
        text.push_str(&Uuid::new_v4().simple().to_string());
    }
    RawEvent {
        position: 0,
        event_id: Uuid::now_v7(),
        aggregate_type: "order".into(),
        aggregate_id: agg,
        aggregate_key: agg.to_string().into(),
        sequence: 1,
        event_type: "OrderPlaced".into(),
        schema_version: 1,
        payload: serde_json::value::RawValue::from_string(serde_json::json!({ "pad": text }).to_string()).unwrap(),
        causation_id: None,
        correlation_id: Uuid::now_v7(),
        timestamp: chrono::Utc::now(),
        trace: None,
    }
}

/// Review finding: two CDC streams' records for one partition share a
/// record batch; the broker refuses the batch as a whole for the one that is
/// too large, and the shared deliverer gave both up after their attempts:
/// an innocent aggregate parked (or, under `skip`, dead-lettered and later
/// replayed after its successors). A refused record is re-sent alone now,
/// and only one refused alone is given up. Real Kafka (a topic whose
/// `max.message.bytes` the large record exceeds) and a real CQL store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_refused_with_its_batch_is_resent_alone_and_only_the_bad_one_is_parked() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let Some(brokers) = std::env::var("KAFKA_BROKERS").ok().filter(|b| !b.is_empty()) else {
        crate::store::cql::connect::test_skipped(
            "a batch refused as a whole: set KAFKA_BROKERS (make test starts Kafka)",
        );
        return;
    };
    let Some(store) = live_store("a batch refused as a whole").await else { return };
    let store = store as DynStore;
    let mut config = Config::default();
    config.kafka.brokers = brokers.clone();
    config.kafka.topic_prefix = format!("solo{}.", Uuid::now_v7().simple());
    config.kafka.linger_ms = 200; // both records in one batch
    config.relay.on_permanent_failure = PermanentFailurePolicy::ParkAggregate;
    config.relay.retry.initial_backoff_ms = 10;
    config.relay.retry.max_backoff_ms = 50;
    let topic = crate::relay::topics::topic_for(false, &config.kafka.topic_prefix, "order", "OrderPlaced");
    let admin: AdminClient<_> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("admin client");
    let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "4096");
    let made = admin.create_topics([&new], &AdminOptions::new()).await.expect("create topic");
    assert!(made.iter().all(Result::is_ok), "{made:?}");

    let status = StatusTx::new(tokio::sync::watch::channel(crate::relay::RelayStatus::default()).0);
    let d = Arc::new(
        Deliverer::new(&config, store.clone(), Arc::new(store.clone()), Metrics::new(), status).await.unwrap(),
    );
    let (bad, good) = (event_of(Uuid::now_v7(), 12_000), event_of(Uuid::now_v7(), 10));
    let stop = Trigger::new();
    let send = |e: RawEvent| {
        let (d, mut shutdown) = (d.clone(), stop.subscribe());
        tokio::spawn(async move { d.deliver(&e, &mut shutdown).await })
    };
    let (b, g) = (send(bad.clone()), send(good.clone()));
    let deadline = std::time::Duration::from_secs(60);
    let g = tokio::time::timeout(deadline, g).await.expect("the good one ends").unwrap();
    let b = tokio::time::timeout(deadline, b).await.expect("the bad one ends").unwrap();
    assert_eq!((g, b), (Delivered::Delivered, Delivered::Parked), "only the record refused alone is given up");
    let parked: Vec<String> =
        store.parked(&config.relay.consumer_name).await.unwrap().into_iter().map(|p| p.parked.aggregate_id).collect();
    assert_eq!(parked, vec![bad.aggregate_id.to_string()]);

    // On the topic: the good event, not the bad one.
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("solo-{}", Uuid::now_v7()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let until = std::time::Instant::now() + deadline;
    let mut keys = Vec::new();
    while keys.is_empty() && std::time::Instant::now() < until {
        if let Some(Ok(m)) = consumer.poll(std::time::Duration::from_millis(500)) {
            keys.push(String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned());
        }
    }
    assert_eq!(keys, vec![good.aggregate_id.to_string()]);
}

/// Review finding: a delivery call dropped before its record was handed
/// over (its term ended while it waited its turn behind a record sent
/// alone) left its waiter entry behind for good; the entry goes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dropped_before_its_record_was_handed_over_leaves_no_waiter() {
    let Some((d, _store, _config)) = deliverer("deliver: dropped call", PermanentFailurePolicy::ParkAggregate).await
    else {
        return;
    };
    let ev = RawEvent::from_envelope(&events(Uuid::now_v7(), 0, 1).remove(0), 1).unwrap();
    let turn = d.solo.write().await; // another record is being delivered alone
    let call = d.send_and_wait(Out::Event(&ev), false);
    assert!(tokio::time::timeout(std::time::Duration::from_millis(200), call).await.is_err(), "it waits its turn");
    drop(turn);
    assert!(d.waiters.lock().unwrap().is_empty(), "the dropped call's waiter is gone");
}

/// Review finding: the deliverer checked the lease once per attempt, before
/// the breaker's wait; a lease lost during that wait (or the solo lock, or a
/// full queue) still handed the record to the producer. It is checked again
/// at the hand-over: nothing reaches the producer once the lease is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_lost_while_the_breaker_is_open_hands_nothing_over() {
    use crate::lease::keeper::LeaseState;
    let Some(store) = live_store("deliver: lease lost behind the breaker").await else { return };
    let store = store as DynStore;
    let mut config = Config::default();
    config.relay.breaker.open_timeout_ms = 400;
    let status = StatusTx::new(tokio::sync::watch::channel(crate::relay::RelayStatus::default()).0);
    let metrics = Metrics::new();
    let d = Deliverer::new(&config, store.clone(), Arc::new(store.clone()), metrics.clone(), status).await.unwrap();
    let (tx, rx) = tokio::sync::watch::channel(LeaseState::active(4));
    let d = d.with_epoch(Some(4)).with_lease(Some(rx));
    let now = std::time::Instant::now();
    for _ in 0..config.relay.breaker.failure_threshold {
        d.breaker(|b| b.record_failure(now));
    }
    assert_eq!(d.breaker_state(), BreakerState::Open);
    let e = RawEvent::from_envelope(&events(Uuid::now_v7(), 0, 1).remove(0), 0).unwrap();
    let trigger = Trigger::new();
    let mut shutdown = trigger.subscribe();
    let lose = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        tx.send(LeaseState::Lost { epoch: 4 }).unwrap();
    };
    let (delivered, ()) =
        tokio::join!(tokio::time::timeout(std::time::Duration::from_secs(20), d.deliver(&e, &mut shutdown)), lose);
    assert!(matches!(delivered, Ok(Delivered::Shutdown)), "{delivered:?}");
    use prometheus::core::Collector;
    let sent: u64 =
        metrics.messages_sent.collect()[0].get_metric().iter().map(|m| m.get_counter().get_value() as u64).sum();
    assert_eq!(sent, 0, "a record was handed to the producer after the lease was lost");
}
