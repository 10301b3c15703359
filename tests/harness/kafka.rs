//! Real Kafka for tests: the shared broker of `make test`, private brokers a
//! test may stop and start, and a read_committed consumer of whole topics.
//!
//! Brokers are real Apache Kafka started by `scripts/kafka-local.sh`:
//! `make test` starts a shared one and exports `KAFKA_BROKERS`; tests that
//! stop and start a broker start their own private instance.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::TopicPartitionList;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use uuid::Uuid;

use outboxd::config::Config;

use super::repo_root;

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

/// Reads the topics from the beginning until `done(records)` holds or no
/// more records arrive within `timeout` (copies re-sent under at-least-once
/// may fill any fixed count, so the count grows until `done`).
pub fn consume_until(
    brokers: &str,
    topics: &[String],
    at_least: usize,
    timeout: Duration,
    done: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    let mut want = at_least.max(1);
    loop {
        let records = consume_all(brokers, topics, want, timeout);
        if done(&records) || records.len() < want {
            return records;
        }
        want = records.len() + 1;
    }
}

pub fn topics(c: &Config) -> Vec<String> {
    outboxd::relay::topics::topic_names(c.kafka.per_event_type(), &c.kafka.topic_prefix)
}

/// Creates `topic` with `partitions` and topic-level `configs` (e.g. a small
/// `max.message.bytes` for a poison test) before the relay would create it.
pub fn create_topic(brokers: &str, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let mut t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let res = rt.block_on(admin.create_topics(&[t], &opts)).unwrap();
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

/// Sets one topic-level config (e.g. raises `max.message.bytes`).
pub fn alter_topic(brokers: &str, topic: &str, key: &str, value: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let alter = AlterConfig::new(ResourceSpecifier::Topic(topic)).set(key, value);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for r in rt.block_on(admin.alter_configs(&[alter], &opts)).unwrap() {
        r.unwrap_or_else(|(t, e)| panic!("alter topic {t:?}: {e}"));
    }
}

/// Copies of each key's records in first-arrival order: key -> [(ce_sequence, ce_type)].
pub fn by_key(records: &[Record]) -> HashMap<String, Vec<(i64, String)>> {
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by(|a, b| (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset)));
    let mut seen = std::collections::HashSet::new();
    let mut out: HashMap<String, Vec<(i64, String)>> = HashMap::new();
    for r in sorted {
        if seen.insert(r.event_id()) {
            let t = r.headers.get("ce_type").cloned().unwrap_or_default();
            out.entry(r.key.clone()).or_default().push((r.sequence(), t));
        }
    }
    out
}
