//! Helpers of the ScyllaDB end-to-end cases (this suite only, so not in the
//! shared harness): a keyspace per case (with tablets when `SCYLLA_TABLETS=1`), the relay's
//! CDC feed in process, the raw CDC log, the saved progress (watched for
//! going backwards), and a topic reader that counts duplicates.
//!
//! Servers: `SCYLLA_URI` (ScyllaDB; Apache Cassandra has no Scylla CDC) and
//! `KAFKA_BROKERS`; `make integration-test` sets both. Missing ones make a
//! case fail naming them (the cases are `#[ignore]`d for `make test`).
#![allow(dead_code)]

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message};
use scylla::value::CqlTimeuuid;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use outboxd::config::{CdcConfig, Config, CqlConfig, KafkaConfig};
use outboxd::envelope::EventEnvelope;
use outboxd::metrics::Metrics;
use outboxd::relay::cdc::{run_relay_feed, CdcError};
use outboxd::relay::deliver::Deliverer;
use outboxd::relay::sink::DeadLetterSink;
use outboxd::relay::topics::topic_names;
use outboxd::relay::{RelayStatus, StatusTx};
use outboxd::shutdown::Trigger;
use outboxd::store::cql::progress::read_progress;
use outboxd::store::cql::CqlStore;
use outboxd::store::{DynStore, EventStore};

pub const RELAY: &str = "kafka-relay";

fn var(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|s| !s.is_empty())
}

/// `SCYLLA_URI` and `KAFKA_BROKERS`, or a panic naming what is missing.
pub fn env() -> (String, String) {
    match (var("SCYLLA_URI"), var("KAFKA_BROKERS")) {
        (Some(s), Some(k)) => (s, k),
        (s, k) => {
            let missing: Vec<&str> = [(s.is_none(), "SCYLLA_URI (a ScyllaDB node)"), (k.is_none(), "KAFKA_BROKERS")]
                .into_iter()
                .filter(|(m, _)| *m)
                .map(|(_, n)| n)
                .collect();
            panic!("CDC end-to-end case needs {} (make integration-test sets them)", missing.join(" and "))
        }
    }
}

/// Settings of these cases: the defaults (30 s safety interval included),
/// progress written every second so the cases can watch it.
pub fn cdc_cfg() -> CdcConfig {
    CdcConfig { checkpoint_interval_ms: 1_000, reconcile_refresh_ms: 1_000, ..CdcConfig::default() }
}

pub struct Rig {
    pub store: Arc<CqlStore>,
    pub config: Config,
    pub topic: String,
}

/// A fresh keyspace (tablets when `SCYLLA_TABLETS=1`: ScyllaDB 2025.4+),
/// migrated, and the case's own topics.
pub async fn rig(scylla: &str, brokers: &str) -> Rig {
    let keyspace = format!("cdc_{}", Uuid::now_v7().simple());
    let cql = CqlConfig { uri: scylla.to_string(), keyspace: keyspace.clone(), cdc: cdc_cfg(), ..CqlConfig::default() };
    let store = CqlStore::connect(&cql).await.expect("connect to ScyllaDB");
    if var("SCYLLA_TABLETS").as_deref() == Some("1") {
        // `outboxd schema`'s CREATE KEYSPACE IF NOT EXISTS then keeps this one.
        let ddl = format!("CREATE KEYSPACE {keyspace} WITH replication = {{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}} AND tablets = {{'enabled': true}}");
        store.session().query_unpaged(ddl, ()).await.expect("a keyspace with tablets (ScyllaDB 2025.4+)");
    }
    store.migrate().await.expect("outboxd schema");
    assert!(store.cdc_enabled(), "ScyllaDB must create event_store with CDC");
    let kafka = KafkaConfig {
        brokers: brokers.to_string(),
        topic_prefix: format!("t{}.", Uuid::now_v7().simple()),
        partitions: 3,
        ..KafkaConfig::default()
    };
    let mut config = Config { kafka, ..Config::default() };
    config.store.cql = cql;
    config.relay.retry.initial_backoff_ms = 50;
    config.relay.retry.max_backoff_ms = 500;
    config.relay.breaker.open_timeout_ms = 1_000;
    let topics = topic_names(false, &config.kafka.topic_prefix);
    outboxd::relay::admin::ensure_topics(&config.kafka, &topics, Duration::from_secs(30)).await.expect("create topics");
    let topic = topics.into_iter().find(|t| t.ends_with("order-events")).unwrap();
    Rig { store, config, topic }
}

/// The relay's CDC feed, running in this process.
pub struct Running {
    pub handle: JoinHandle<Result<(), CdcError>>,
    pub trigger: Trigger,
    pub status: watch::Receiver<RelayStatus>,
}

pub async fn start(rig: &Rig) -> Running {
    let store = rig.store.clone() as DynStore;
    let sink: Arc<dyn DeadLetterSink> = Arc::new(store.clone());
    let (status_tx, status) = watch::channel(RelayStatus::default());
    let metrics = Metrics::new();
    let deliverer = Arc::new(
        Deliverer::new(&rig.config, store, sink, metrics.clone(), StatusTx::new(status_tx)).await.expect("deliverer"),
    );
    let trigger = Trigger::new();
    let (store, cfg, shutdown) = (rig.store.clone(), rig.config.clone(), trigger.subscribe());
    let handle = tokio::spawn(async move {
        run_relay_feed(store, &cfg, deliverer, &metrics, None, Default::default(), shutdown).await
    });
    Running { handle, trigger, status }
}

impl Running {
    /// Graceful: the reader finishes its window and saves progress.
    pub async fn stop(self) {
        self.trigger.fire();
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("feed stops")
            .unwrap()
            .expect("feed ended cleanly");
    }
}

/// One row of the CDC log of `event_store`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRow {
    pub stream: Vec<u8>,
    pub time: Uuid,
    pub batch_seq_no: i32,
    pub end_of_batch: Option<bool>,
    pub operation: i8,
    pub sequence: Option<i64>,
    pub version: Option<i64>,
}

/// The log rows of `aggregate`, in log order.
pub async fn log_rows(store: &CqlStore, aggregate: Uuid) -> Vec<LogRow> {
    let q = format!(
        "SELECT \"cdc$stream_id\", \"cdc$time\", \"cdc$batch_seq_no\", \"cdc$end_of_batch\", \"cdc$operation\", sequence_number, version \
         FROM {}.event_store_scylla_cdc_log WHERE aggregate_id = ? ALLOW FILTERING",
        store.keyspace()
    );
    let res = store.session().query_unpaged(q, (aggregate,)).await.expect("read the CDC log");
    type R = (Vec<u8>, CqlTimeuuid, i32, Option<bool>, i8, Option<i64>, Option<i64>);
    let mut rows: Vec<LogRow> = res
        .into_rows_result()
        .unwrap()
        .rows::<R>()
        .unwrap()
        .map(|r| r.unwrap())
        .map(|(stream, time, batch_seq_no, end_of_batch, operation, sequence, version)| LogRow {
            stream,
            time: Uuid::from(time),
            batch_seq_no,
            end_of_batch,
            operation,
            sequence,
            version,
        })
        .collect();
    rows.sort_by_key(|r| (outboxd::relay::cdc::watermark::log_order(&r.time, r.batch_seq_no), r.stream.clone()));
    rows
}

/// The relay's saved progress: stream -> time (ms).
pub async fn progress(store: &CqlStore) -> HashMap<Vec<u8>, i64> {
    let rows = read_progress(&store.session(), store.keyspace(), RELAY).await.expect("read progress");
    rows.into_iter().filter(|r| !r.stream.is_empty()).filter_map(|r| r.time.map(|t| (r.stream, t))).collect()
}

/// Samples the saved progress every 200 ms and records every stream whose
/// time went backwards.
pub struct ProgressWatch {
    task: JoinHandle<()>,
    backwards: Arc<Mutex<Vec<String>>>,
    samples: Arc<Mutex<usize>>,
}

impl ProgressWatch {
    pub fn start(store: Arc<CqlStore>) -> ProgressWatch {
        let backwards = Arc::new(Mutex::new(Vec::new()));
        let samples = Arc::new(Mutex::new(0));
        let (b, n) = (backwards.clone(), samples.clone());
        let task = tokio::spawn(async move {
            let mut last: HashMap<Vec<u8>, i64> = HashMap::new();
            loop {
                if let Ok(rows) = read_progress(&store.session(), store.keyspace(), RELAY).await {
                    for r in rows.into_iter().filter(|r| !r.stream.is_empty()) {
                        let Some(t) = r.time else { continue };
                        if let Some(prev) = last.insert(r.stream.clone(), t) {
                            if t < prev {
                                b.lock().unwrap().push(format!("stream {:02x?}: {prev} -> {t}", &r.stream[..4]));
                            }
                        }
                    }
                    *n.lock().unwrap() += 1;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        ProgressWatch { task, backwards, samples }
    }

    pub fn assert_never_backwards(&self) {
        assert!(*self.samples.lock().unwrap() > 0, "progress was never read");
        let b = self.backwards.lock().unwrap();
        assert!(b.is_empty(), "saved CDC progress moved backwards: {b:?}");
    }
}

impl Drop for ProgressWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every copy of every record read from the case's topic.
pub struct Topic {
    consumer: StreamConsumer,
    /// First arrivals, in arrival order.
    pub first: Vec<EventEnvelope>,
    /// Copies per event id.
    pub copies: HashMap<Uuid, usize>,
}

impl Topic {
    pub fn open(rig: &Rig) -> Topic {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &rig.config.kafka.brokers)
            .set("group.id", format!("cdc-test-{}", Uuid::now_v7()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("kafka consumer");
        consumer.subscribe(&[&rig.topic]).expect("subscribe");
        Topic { consumer, first: Vec::new(), copies: HashMap::new() }
    }

    /// Reads until every id of `want` arrived (fails after `timeout`).
    pub async fn until(&mut self, want: &[EventEnvelope], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !want.iter().all(|e| self.copies.contains_key(&e.event_id)) {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = want.iter().filter(|e| self.copies.contains_key(&e.event_id)).count();
            assert!(!left.is_zero(), "timed out: {got} of {} events arrived", want.len());
            self.read_for(left.min(Duration::from_millis(500))).await;
        }
    }

    /// Reads whatever arrives within `d`.
    pub async fn read_for(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(msg) = tokio::time::timeout_at(deadline, self.consumer.recv()).await {
            let msg = msg.expect("kafka receive");
            let env: EventEnvelope = serde_json::from_slice(msg.payload().expect("payload")).expect("envelope JSON");
            assert_eq!(msg.key(), Some(env.aggregate_id.to_string().as_bytes()), "key = aggregate id");
            let n = self.copies.entry(env.event_id).or_insert(0);
            *n += 1;
            if *n == 1 {
                self.first.push(env);
            }
        }
    }

    /// Copies beyond the first, of any event.
    pub fn duplicates(&self) -> usize {
        self.copies.values().map(|n| n - 1).sum()
    }

    /// Per aggregate, first arrivals are exactly the appended events, in
    /// sequence order, equal to what was appended.
    pub fn assert_in_order(&self, appended: &[EventEnvelope]) {
        let mut got: HashMap<Uuid, Vec<i64>> = HashMap::new();
        for e in &self.first {
            got.entry(e.aggregate_id).or_default().push(e.sequence);
        }
        let mut want: HashMap<Uuid, Vec<i64>> = HashMap::new();
        for e in appended {
            want.entry(e.aggregate_id).or_default().push(e.sequence);
        }
        for (agg, seqs) in want {
            assert_eq!(got.get(&agg), Some(&seqs), "aggregate {agg}: first arrivals in order, none missing");
        }
        let by_id: HashMap<Uuid, &EventEnvelope> = appended.iter().map(|e| (e.event_id, e)).collect();
        for e in &self.first {
            if let Some(a) = by_id.get(&e.event_id) {
                assert_eq!(e, *a, "published envelope equals the appended one");
            }
        }
    }
}

/// Appends `n` order events to a fresh aggregate (or after `from`).
pub async fn append(store: &CqlStore, id: Uuid, from: i64, n: usize) -> Vec<EventEnvelope> {
    let ev = crate::harness::order_events(id, from, n);
    store.append(id, from, ev.clone()).await.unwrap();
    ev
}

/// A store on `SCYLLA_URI` in a fresh keyspace, for a delivery call whose
/// parking state must be readable (the least-privilege case's relay logs in
/// to another node as a restricted role).
pub async fn rig_store_for_parking() -> DynStore {
    let (scylla, _) = env();
    let cql = CqlConfig { uri: scylla, keyspace: format!("p_{}", Uuid::now_v7().simple()), ..CqlConfig::default() };
    let store = CqlStore::connect(&cql).await.expect("connect to ScyllaDB");
    store.migrate().await.expect("outboxd schema");
    store as DynStore
}
