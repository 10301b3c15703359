//! Shared helpers for integration tests: real brokers, stores, consumers.
//!
//! Brokers are real Apache Kafka started by `scripts/kafka-local.sh`:
//! `make test` starts a shared one and exports `KAFKA_BROKERS`; tests that
//! stop and start a broker start their own private instance.
#![allow(dead_code)]

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::TopicPartitionList;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use uuid::Uuid;

use outboxd::config::Config;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shared broker of `make test`, or a clear skip.
pub fn shared_brokers() -> Option<String> {
    match std::env::var("KAFKA_BROKERS") {
        Ok(b) if !b.is_empty() => Some(b),
        _ => {
            eprintln!("SKIPPED: needs a real Kafka broker; run `make test` or set KAFKA_BROKERS (scripts/kafka-local.sh start)");
            None
        }
    }
}

/// A private Kafka broker in its own directory, stopped on drop.
pub struct PrivateKafka {
    pub dir: tempfile::TempDir,
    pub brokers: String,
}

impl PrivateKafka {
    pub fn start() -> PrivateKafka {
        let dir = tempfile::Builder::new().prefix("outboxd-kafka-").tempdir().unwrap();
        let brokers = kafka_script(dir.path(), "start").expect("private Kafka starts");
        PrivateKafka { dir, brokers }
    }
    pub fn stop(&self) {
        kafka_script(self.dir.path(), "stop").expect("Kafka stops");
    }
    pub fn restart(&self) {
        let b = kafka_script(self.dir.path(), "start").expect("Kafka restarts");
        assert_eq!(b, self.brokers, "restart keeps the address");
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        let _ = kafka_script(self.dir.path(), "stop");
    }
}

fn kafka_script(dir: &Path, action: &str) -> Result<String, String> {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/kafka-local.sh"))
        .arg(action)
        .env("KAFKA_LOCAL_DIR", dir)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "kafka-local.sh {action}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(stdout.lines().rev().find_map(|l| l.strip_prefix("KAFKA_BROKERS=")).unwrap_or_default().to_string())
}

/// A config for one test: its own topics (prefix), fast polling.
pub fn test_config(brokers: &str, db: &Path) -> Config {
    let mut c = Config::default();
    c.store.path = db.to_path_buf();
    c.kafka.brokers = brokers.to_string();
    c.kafka.topic_prefix = format!("t{}.", Uuid::now_v7().simple());
    c.kafka.partitions = 3;
    c.relay.poll_interval_ms = 50;
    c
}

/// The config as OUTBOX_* variables for a child `outboxd` process.
pub fn config_env(c: &Config) -> Vec<(String, String)> {
    vec![
        ("OUTBOX_STORE__PATH".into(), c.store.path.display().to_string()),
        ("OUTBOX_KAFKA__BROKERS".into(), c.kafka.brokers.clone()),
        ("OUTBOX_KAFKA__TOPIC_PREFIX".into(), c.kafka.topic_prefix.clone()),
        ("OUTBOX_KAFKA__PARTITIONS".into(), c.kafka.partitions.to_string()),
        ("OUTBOX_KAFKA__COMPRESSION".into(), c.kafka.compression.as_str().to_string()),
        ("OUTBOX_KAFKA__MESSAGE_TIMEOUT_MS".into(), c.kafka.message_timeout_ms.to_string()),
        ("OUTBOX_RELAY__POLL_INTERVAL_MS".into(), c.relay.poll_interval_ms.to_string()),
        ("OUTBOX_HTTP__LISTEN".into(), c.http.listen.clone()),
        ("OUTBOX_HTTP__ADMIN_LISTEN".into(), c.http.admin_listen.clone()),
    ]
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One record as the tests see it.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub headers: HashMap<String, String>,
    pub value: serde_json::Value,
    /// The record value as the broker returned it, byte for byte.
    pub raw: Vec<u8>,
}

impl Record {
    pub fn event_id(&self) -> String {
        self.headers.get("ce_id").cloned().unwrap_or_default()
    }
    pub fn sequence(&self) -> i64 {
        self.headers.get("ce_sequence").and_then(|s| s.parse().ok()).unwrap_or(-1)
    }
}

/// Reads every partition of `topics` from the beginning until `want` records
/// arrived or `timeout` passed.
pub fn consume_all(brokers: &str, topics: &[String], want: usize, timeout: Duration) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-{}", Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        // Wait for the topic to exist to learn its partitions.
        loop {
            let md = consumer.fetch_metadata(Some(t), Duration::from_secs(5)).unwrap();
            let parts = md.topics().first().map(|m| m.partitions().len()).unwrap_or(0);
            if parts > 0 {
                for p in 0..parts as i32 {
                    tpl.add_partition_offset(t, p, rdkafka::Offset::Beginning).unwrap();
                }
                break;
            }
            assert!(Instant::now() < deadline, "topic {t} never appeared");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let mut headers = HashMap::new();
                if let Some(h) = m.headers() {
                    for hd in h.iter() {
                        headers.insert(
                            hd.key.to_string(),
                            String::from_utf8_lossy(hd.value.unwrap_or_default()).to_string(),
                        );
                    }
                }
                out.push(Record {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).to_string(),
                    headers,
                    value: serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or(serde_json::Value::Null),
                    raw: m.payload().unwrap_or_default().to_vec(),
                });
            }
            Some(Err(e)) => eprintln!("consumer error: {e}"),
            None => {}
        }
    }
    out
}

/// Checks per-aggregate order on the first copy of every event id; returns
/// the number of duplicate copies.
pub fn check_order_and_count_dups(records: &[Record]) -> usize {
    let mut seen = std::collections::HashSet::new();
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut dups = 0;
    // Kafka orders within a partition; one aggregate lives in one partition.
    let mut by_part: Vec<&Record> = records.iter().collect();
    by_part.sort_by_key(|r| (r.topic.clone(), r.partition, r.offset));
    for r in by_part {
        if !seen.insert(r.event_id()) {
            dups += 1;
            continue;
        }
        let prev = last.insert(r.key.clone(), r.sequence()).unwrap_or(0);
        assert_eq!(r.sequence(), prev + 1, "aggregate {} jumped from sequence {prev} to {} ", r.key, r.sequence());
    }
    dups
}

use outboxd::app::CommandService;
use outboxd::domain::{Currency, Customer, CustomerCommand, Email, Money, Order, OrderCommand, OrderItem, Sku};
use outboxd::envelope::Metadata;

fn items(i: usize, n: usize) -> Vec<OrderItem> {
    let eur = Currency::new("EUR").unwrap();
    (0..n)
        .map(|k| {
            OrderItem::new(
                Sku::new(format!("SKU-{i}-{k}")).unwrap(),
                1 + k as i64,
                Money::new(999 + k as i64, eur).unwrap(),
            )
            .unwrap()
        })
        .collect()
}

/// Runs one order through its whole lifecycle (5 events) or a cancel (3 events).
pub async fn order_lifecycle(svc: &CommandService, i: usize) -> Uuid {
    let id = Uuid::now_v7();
    let meta = Metadata::default();
    let customer = Uuid::from_u128(i as u128 % 17);
    svc.execute::<Order>(id, &OrderCommand::Create { customer_id: customer, items: items(i, 2) }, meta.clone(), None)
        .await
        .unwrap();
    svc.execute::<Order>(id, &OrderCommand::UpdateItems { items: items(i, 3) }, meta.clone(), None).await.unwrap();
    if i % 4 == 3 {
        svc.execute::<Order>(id, &OrderCommand::Cancel { reason: "customer asked".into() }, meta.clone(), None)
            .await
            .unwrap();
        return id;
    }
    svc.execute::<Order>(id, &OrderCommand::Confirm, meta.clone(), None).await.unwrap();
    svc.execute::<Order>(
        id,
        &OrderCommand::Ship { tracking_number: format!("TRK{i}"), carrier: "DHL".into() },
        meta.clone(),
        None,
    )
    .await
    .unwrap();
    svc.execute::<Order>(id, &OrderCommand::Deliver { signature: "J. Doe".into() }, meta.clone(), None).await.unwrap();
    id
}

pub async fn register_customer(svc: &CommandService, i: usize) -> Uuid {
    let id = Uuid::now_v7();
    let cmd = CustomerCommand::Register {
        name: format!("Customer {i}"),
        email: Email::new(&format!("c{i}@example.com")).unwrap(),
        phone: None,
    };
    svc.execute::<Customer>(id, &cmd, Metadata::default(), None).await.unwrap();
    id
}

/// `n` order events for aggregate `id` with sequences `from_version + 1 ..`
/// (an OrderCreated first, then OrderItemsUpdated).
pub fn order_events(id: Uuid, from_version: i64, n: usize) -> Vec<outboxd::envelope::EventEnvelope> {
    use outboxd::domain::Aggregate;
    let eur = Currency::new("EUR").unwrap();
    let meta = Metadata { correlation_id: Uuid::now_v7(), causation_id: Some(Uuid::now_v7()), trace: None };
    let at = outboxd::envelope::now_millis();
    (0..n)
        .map(|i| {
            let seq = from_version + 1 + i as i64;
            let items =
                vec![OrderItem::new(Sku::new(format!("S{seq}")).unwrap(), seq, Money::new(100, eur).unwrap()).unwrap()];
            let cmd = if seq == 1 {
                OrderCommand::Create { customer_id: Uuid::from_u128(1), items }
            } else {
                OrderCommand::UpdateItems { items }
            };
            let mut o = Order::default();
            if seq > 1 {
                // Any created order accepts UpdateItems.
                let create = OrderCommand::Create {
                    customer_id: Uuid::from_u128(1),
                    items: vec![OrderItem::new(Sku::new("X").unwrap(), 1, Money::new(1, eur).unwrap()).unwrap()],
                };
                o.apply(&o.handle(&create).unwrap()[0]);
            }
            let e = o.handle(&cmd).unwrap().remove(0);
            outboxd::envelope::EventEnvelope::new::<Order>(id, seq, &e, &meta, at).unwrap()
        })
        .collect()
}

/// The GRANT statements of docs/OPERATIONS.md ("Grants of the relay role",
/// the block after `<!-- relay-grants -->`) for `keyspace` and `role`.
pub fn relay_grants(keyspace: &str, role: &str) -> Vec<String> {
    let ops = std::fs::read_to_string(repo_root().join("docs/OPERATIONS.md")).unwrap();
    let block = ops.split("<!-- relay-grants -->").nth(1).expect("docs/OPERATIONS.md has the relay-grants block");
    let block = block.split("```").nth(1).expect("a fenced block follows the marker");
    block
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("GRANT "))
        .map(|l| l.trim_end_matches(';').replace(" outbox.", &format!(" {keyspace}.")).replace("outboxd_relay", role))
        .collect()
}

/// The resource a GRANT statement names (`ks.table`, or `KEYSPACE`).
pub fn grant_resource(grant: &str) -> String {
    grant.split(" ON ").nth(1).and_then(|r| r.split(' ').next()).unwrap_or_default().to_string()
}

/// A CQL session logged in as `user`.
pub async fn cql_login(uri: &str, user: &str, password: &str) -> std::sync::Arc<scylla::client::session::Session> {
    let session =
        scylla::client::session_builder::SessionBuilder::new().known_node(uri).user(user, password).build().await;
    std::sync::Arc::new(session.unwrap_or_else(|e| panic!("connect to {uri} as {user}: {e}")))
}
