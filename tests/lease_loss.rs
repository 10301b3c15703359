//! A relay term that loses its lease while its start retries (the store
//! cannot be read) ends there, against a real broker: an exactly-once term
//! must not go on to `init_transactions`, which would fence the instance
//! that holds the lease now and abort its open transaction.

mod harness;

use harness::*;
use std::time::Duration;

use outboxd::lease::keeper::LeaseState;
use outboxd::metrics::Metrics;
use outboxd::relay::exactly_once::transactional_id;
use outboxd::relay::pipeline::{Exit, Fence};
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
    let (lease, rx) = tokio::sync::watch::channel(LeaseState::Active { epoch: 5 });
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
    let records = consume_all(&brokers, &[topic], 1, Duration::from_secs(10));
    assert_eq!(records.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), vec!["k"], "B's record is committed");
}
