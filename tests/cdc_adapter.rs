//! End to end: CqlStore on ScyllaDB -> CDC log -> relay::cdc -> Deliverer -> Kafka.
//!
//! Needs `SCYLLA_URI` (a ScyllaDB node; Apache Cassandra has no Scylla CDC)
//! and `KAFKA_BROKERS`, so every case is `#[ignore]`d with that reason:
//! `make test` reports them as skipped, `make integration-test` runs them
//! (`-- --ignored`) against docker-compose's ScyllaDB, or reports them as
//! skipped with the reason when there is none. Run explicitly without the
//! servers, a case fails naming what is missing. Each case uses its own
//! keyspace and topic prefix.

mod common;
use common::order_events;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message};
use tokio::sync::watch;
use uuid::Uuid;

use outboxd::config::{CdcConfig, Config, CqlConfig, KafkaConfig};

use outboxd::envelope::EventEnvelope;
use outboxd::metrics::Metrics;
use outboxd::relay::cdc::{start_cdc_reader, CdcReaderHandle};
use outboxd::relay::deliver::{DeadLetterSink, Deliverer, RelayStatus};
use outboxd::relay::publisher::KafkaPublisher;
use outboxd::relay::topics::topic_names;
use outboxd::shutdown::Trigger;
use outboxd::store::cql::CqlStore;
use outboxd::store::{DynStore, EventStore};
use scylla_cdc::log_reader::CDCLogReader;

struct Env {
    scylla: String,
    brokers: String,
}

/// The servers these cases need; panics naming what is missing (the cases
/// are `#[ignore]`d, so this only runs when asked for explicitly).
fn env() -> Env {
    let get = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
    match (get("SCYLLA_URI"), get("KAFKA_BROKERS")) {
        (Some(scylla), Some(brokers)) => Env { scylla, brokers },
        (s, k) => {
            let mut missing = Vec::new();
            if s.is_none() {
                missing.push("SCYLLA_URI (a ScyllaDB node; Cassandra has no Scylla CDC)");
            }
            if k.is_none() {
                missing.push("KAFKA_BROKERS");
            }
            panic!("CDC end-to-end case needs {} (make integration-test sets them)", missing.join(" and "));
        }
    }
}

/// Fast CDC settings for tests (the defaults favour load over latency).
fn cdc_cfg() -> CdcConfig {
    CdcConfig { window_size_ms: 2_000, safety_interval_ms: 1_000, sleep_interval_ms: 200, checkpoint_interval_ms: 300 }
}

struct Rig {
    store: Arc<CqlStore>,
    config: Config,
    topic: String,
}

async fn rig(env: &Env) -> Rig {
    let keyspace = format!("cdc_{}", Uuid::now_v7().simple());
    let cql = CqlConfig { uri: env.scylla.clone(), keyspace, cdc: cdc_cfg(), ..CqlConfig::default() };
    let store = CqlStore::connect(&cql).await.expect("connect to ScyllaDB");
    store.migrate().await.expect("create keyspace and tables");
    assert!(store.cdc_enabled(), "ScyllaDB must create event_store with CDC");
    let kafka = KafkaConfig {
        brokers: env.brokers.clone(),
        topic_prefix: format!("t{}.", Uuid::now_v7().simple()),
        partitions: 3,
        ..KafkaConfig::default()
    };
    let mut config = Config { kafka, ..Config::default() };
    config.store.cql = cql;
    config.relay.retry.initial_backoff_ms = 50;
    config.relay.retry.max_backoff_ms = 200;
    let topics: Vec<String> = topic_names(config.kafka.per_event_type(), &config.kafka.topic_prefix);
    KafkaPublisher::new(&config.kafka)
        .unwrap()
        .ensure_topics(&topics, Duration::from_secs(15))
        .await
        .expect("create topics");
    let topic = topics.into_iter().find(|t| t.ends_with("order-events")).unwrap();
    Rig { store, config, topic }
}

struct Running {
    reader: CDCLogReader,
    handle: CdcReaderHandle,
    trigger: Trigger,
}

async fn start(rig: &Rig) -> Running {
    let sink: Arc<dyn DeadLetterSink> = Arc::new(rig.store.clone() as DynStore);
    let (status, _) = watch::channel(RelayStatus::default());
    let deliverer = Arc::new(Deliverer::new(&rig.config, sink, Metrics::new(), status).expect("deliverer"));
    let trigger = Trigger::new();
    let (reader, handle) = start_cdc_reader(
        rig.store.session(),
        rig.store.keyspace(),
        &rig.config.store.cql.cdc,
        deliverer,
        trigger.subscribe(),
    )
    .await
    .expect("start the CDC reader");
    Running { reader, handle, trigger }
}

impl Running {
    /// Graceful: the reader finishes its window and saves progress.
    async fn stop(mut self) {
        self.reader.stop();
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("reader stops")
            .unwrap()
            .expect("reader ended cleanly");
        drop(self.trigger);
    }
}

fn consumer(rig: &Rig) -> StreamConsumer {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &rig.config.kafka.brokers)
        .set("group.id", format!("cdc-test-{}", Uuid::now_v7()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("kafka consumer");
    c.subscribe(&[&rig.topic]).expect("subscribe");
    c
}

/// Reads the topic until every id in `want` arrived (or fails after `timeout`).
/// Returns the distinct events in arrival order (duplicates of at-least-once dropped).
async fn receive(c: &StreamConsumer, want: &HashSet<Uuid>, seen: &mut Vec<EventEnvelope>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut ids: HashSet<Uuid> = seen.iter().map(|e| e.event_id).collect();
    while !want.is_subset(&ids) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out: {} of {} events arrived", want.intersection(&ids).count(), want.len());
        let Ok(msg) = tokio::time::timeout(left, c.recv()).await else { continue };
        let msg = msg.expect("kafka receive");
        let env: EventEnvelope = serde_json::from_slice(msg.payload().expect("payload")).expect("envelope JSON");
        assert_eq!(msg.key(), Some(env.aggregate_id.to_string().as_bytes()), "key = aggregate id");
        if ids.insert(env.event_id) {
            seen.push(env);
        }
    }
}

/// Every aggregate's events arrived in sequence order, none missing.
fn assert_in_order(seen: &[EventEnvelope], appended: &[EventEnvelope]) {
    let mut per_agg: HashMap<Uuid, Vec<i64>> = HashMap::new();
    for e in seen {
        per_agg.entry(e.aggregate_id).or_default().push(e.sequence);
    }
    let mut want: HashMap<Uuid, Vec<i64>> = HashMap::new();
    for e in appended {
        want.entry(e.aggregate_id).or_default().push(e.sequence);
    }
    for (agg, seqs) in want {
        assert_eq!(per_agg.get(&agg), Some(&seqs), "aggregate {agg}: events in order, none missing");
    }
    let by_id: HashMap<Uuid, &EventEnvelope> = appended.iter().map(|e| (e.event_id, e)).collect();
    for e in seen {
        assert_eq!(Some(&e), by_id.get(&e.event_id), "published envelope equals the appended one");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs ScyllaDB: make integration-test (SCYLLA_URI)"]
async fn every_event_arrives_in_order_per_aggregate() {
    let env = env();
    let rig = rig(&env).await;
    let running = start(&rig).await;
    let c = consumer(&rig);
    let mut appended = Vec::new();
    for _ in 0..6 {
        let id = Uuid::now_v7();
        let first = order_events(id, 0, 2);
        rig.store.append(id, 0, first.clone()).await.unwrap();
        let more = order_events(id, 2, 3);
        for (i, e) in more.iter().enumerate() {
            rig.store.append(id, 2 + i as i64, vec![e.clone()]).await.unwrap();
        }
        appended.extend(first);
        appended.extend(more);
    }
    let want: HashSet<Uuid> = appended.iter().map(|e| e.event_id).collect();
    let mut seen = Vec::new();
    receive(&c, &want, &mut seen, Duration::from_secs(90)).await;
    assert_in_order(&seen, &appended);
    running.trigger.fire();
    tokio::time::timeout(Duration::from_secs(30), running.handle)
        .await
        .expect("reader stops on shutdown")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs ScyllaDB: make integration-test (SCYLLA_URI)"]
async fn restart_resumes_without_losing_events() {
    let env = env();
    let rig = rig(&env).await;
    let c = consumer(&rig);
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let mut appended = Vec::new();

    let running = start(&rig).await;
    for id in &ids {
        let ev = order_events(*id, 0, 2);
        rig.store.append(*id, 0, ev.clone()).await.unwrap();
        appended.extend(ev);
    }
    let mut seen = Vec::new();
    let want: HashSet<Uuid> = appended.iter().map(|e| e.event_id).collect();
    receive(&c, &want, &mut seen, Duration::from_secs(90)).await;
    // Let a checkpoint save happen, then stop.
    tokio::time::sleep(Duration::from_millis(3 * rig.config.store.cql.cdc.checkpoint_interval_ms)).await;
    running.stop().await;

    // Written while no reader runs.
    for id in &ids {
        let ev = order_events(*id, 2, 2);
        rig.store.append(*id, 2, ev.clone()).await.unwrap();
        appended.extend(ev);
    }
    let fresh = Uuid::now_v7();
    let ev = order_events(fresh, 0, 3);
    rig.store.append(fresh, 0, ev.clone()).await.unwrap();
    appended.extend(ev);

    let running = start(&rig).await;
    let want: HashSet<Uuid> = appended.iter().map(|e| e.event_id).collect();
    receive(&c, &want, &mut seen, Duration::from_secs(90)).await;
    assert_in_order(&seen, &appended);
    running.trigger.fire();
    tokio::time::timeout(Duration::from_secs(30), running.handle)
        .await
        .expect("reader stops on shutdown")
        .unwrap()
        .unwrap();
}
