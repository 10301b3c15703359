//! Real Kafka for tests: the shared broker of `make test`, private brokers a
//! test may stop and start, and a read_committed consumer of whole topics (up
//! to a count, a condition, or the end each partition had when asked).
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

use super::evidence::KeptOnFailure;
use super::repo_root;

/// The shared broker of `make test`, or a clear skip.
pub fn shared_brokers() -> Option<String> {
    match std::env::var("KAFKA_BROKERS") {
        Ok(b) if !b.is_empty() => Some(b),
        _ => {
            super::skipped(
                true,
                "needs a real Kafka broker; run `make test` or set KAFKA_BROKERS (scripts/kafka-local.sh start)",
            );
            None
        }
    }
}

/// One private broker at a time in a test binary (tests/health.rs has two
/// tests that stop and restart their own broker): fewer JVMs competing for
/// the 2 cores, and the script only serialises starts of the same directory.
static ONE_PRIVATE_BROKER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The private-broker slot, for a test that runs the script itself.
pub fn private_broker_slot() -> std::sync::MutexGuard<'static, ()> {
    ONE_PRIVATE_BROKER.lock().unwrap_or_else(|e| e.into_inner())
}

/// The TLS listeners of a broker started with `KAFKA_TLS=1`.
#[derive(Debug, Clone)]
pub struct TlsListeners {
    /// The SSL listener's address.
    pub brokers: String,
    /// The CA file that signed the broker's certificate.
    pub ca: std::path::PathBuf,
    /// The SASL_SSL listener's address (SCRAM-SHA-512), its user and password.
    pub sasl_brokers: String,
    pub sasl_user: String,
    pub sasl_password: String,
    /// A JWT the broker accepts on the SASL_SSL listener (OAUTHBEARER),
    /// signed by the key of its JWKS; the CA directory also holds the
    /// broker's certificate and key for an HTTPS token endpoint.
    pub oauth_token: std::path::PathBuf,
}

/// A private Kafka broker in its own directory, stopped on drop.
pub struct PrivateKafka {
    /// Kept when the test fails: the broker's data and log explain what it saw.
    pub dir: KeptOnFailure,
    pub brokers: String,
    /// With `start_tls`: the TLS and SASL_SSL listeners.
    pub tls: Option<TlsListeners>,
    /// Released after `Drop` stopped the broker (fields drop after it).
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

impl PrivateKafka {
    pub fn start() -> PrivateKafka {
        PrivateKafka::start_in(tempfile::Builder::new().prefix("outboxd-kafka-").tempdir().unwrap())
    }

    /// Starts a broker in `dir` (which may hold files the script reads, e.g. `cluster-id`).
    pub fn start_in(dir: tempfile::TempDir) -> PrivateKafka {
        PrivateKafka::start_with(dir, false)
    }

    /// A private broker that also has a TLS listener (`KAFKA_TLS=1`).
    pub fn start_tls() -> PrivateKafka {
        PrivateKafka::start_with(tempfile::Builder::new().prefix("outboxd-kafka-tls-").tempdir().unwrap(), true)
    }

    fn start_with(dir: tempfile::TempDir, tls: bool) -> PrivateKafka {
        // A test that panicked while holding it only poisons the lock.
        let guard = private_broker_slot();
        let out = kafka_script_out(dir.path(), "start", tls).unwrap_or_else(|e| panic!("private Kafka starts: {e}"));
        let tls = out.get("KAFKA_TLS_BROKERS").map(|b| TlsListeners {
            brokers: b.clone(),
            ca: out["KAFKA_TLS_CA"].clone().into(),
            sasl_brokers: out["KAFKA_SASL_BROKERS"].clone(),
            sasl_user: out["KAFKA_SASL_USER"].clone(),
            sasl_password: out["KAFKA_SASL_PASSWORD"].clone(),
            oauth_token: out["KAFKA_OAUTH_TOKEN"].clone().into(),
        });
        let dir = KeptOnFailure::new(dir, "the private broker's data and log");
        PrivateKafka { dir, brokers: out["KAFKA_BROKERS"].clone(), tls, _one_at_a_time: guard }
    }
    pub fn stop(&self) {
        kafka_script(self.dir.path(), "stop").expect("Kafka stops");
    }
    pub fn restart(&self) {
        let b = kafka_script(self.dir.path(), "start").expect("Kafka restarts");
        assert_eq!(b, self.brokers, "restart keeps the address");
    }

    /// Hangs the broker (SIGSTOP: connections open, requests unanswered)
    /// until the returned guard is dropped (SIGCONT), panicking or not.
    pub fn hang(&self) -> Hung {
        // scripts/kafka-local.sh records the broker JVM's pid in its directory.
        let pid = std::fs::read_to_string(self.dir.path().join("kafka.pid")).expect("the broker's pid file");
        let pid = pid.trim().to_string();
        assert!(pid.parse::<u32>().is_ok(), "a pid: {pid:?}");
        signal(&pid, "STOP");
        Hung(pid)
    }
}

/// A hung private broker ([`PrivateKafka::hang`]), resumed on drop.
pub struct Hung(String);

impl Drop for Hung {
    fn drop(&mut self) {
        signal(&self.0, "CONT");
    }
}

fn signal(pid: &str, sig: &str) {
    let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid).status().is_ok_and(|s| s.success());
    assert!(ok || std::thread::panicking(), "kill -{sig} {pid}");
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        let _ = kafka_script(self.dir.path(), "stop");
    }
}

fn kafka_script(dir: &Path, action: &str) -> Result<String, String> {
    Ok(kafka_script_out(dir, action, false)?.remove("KAFKA_BROKERS").unwrap_or_default())
}

/// Runs the script; its `NAME=value` stdout lines.
fn kafka_script_out(dir: &Path, action: &str, tls: bool) -> Result<HashMap<String, String>, String> {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("scripts/kafka-local.sh")).arg(action).env("KAFKA_LOCAL_DIR", dir);
    // A test binary killed before its drops ran (Ctrl-C, a timeout) leaves
    // no broker behind: the script stops it once this process is gone.
    cmd.env("KAFKA_OWNER_PID", std::process::id().to_string());
    if tls {
        cmd.env("KAFKA_TLS", "1");
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "kafka-local.sh {action}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(stdout.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect())
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
/// arrived or `timeout` passed. It stops at `want`: to assert a count or
/// "exactly once", read with [`consume_to_end`] (or ask for more than the
/// expected count and let the timeout end the read).
pub fn consume_all(brokers: &str, topics: &[String], want: usize, timeout: Duration) -> Vec<Record> {
    let deadline = Instant::now() + timeout;
    consume(brokers, topics, deadline, 1, |out, _| out.len() >= want || Instant::now() >= deadline)
}

/// Reads the topics from the beginning until `done(records)` holds (and at
/// least `at_least` arrived) or no record arrived for `timeout`. One consumer
/// keeps reading: copies re-sent under at-least-once make any fixed count
/// arrive early, so the stop condition is `done`, checked whenever the
/// consumer is idle and every few thousand records.
pub fn consume_until(
    brokers: &str,
    topics: &[String],
    at_least: usize,
    timeout: Duration,
    done: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    consume(brokers, topics, Instant::now() + timeout, 5000, |out, last| {
        last.elapsed() >= timeout || (out.len() >= at_least && done(out))
    })
}

/// Reads every partition of `topics` from the beginning up to the end each
/// had when called (read_committed: its last stable offset), whatever
/// arrives first: call it once the relay has caught up, and a copy re-sent
/// after the originals is read too (a count or "exactly once" checked on
/// [`consume_all`] stops at the expected count and never sees it). Panics
/// naming the partitions short of their end when `timeout` passes first.
pub fn consume_to_end(brokers: &str, topics: &[String], timeout: Duration) -> Vec<Record> {
    let deadline = Instant::now() + timeout;
    let consumer = read_committed_consumer(brokers);
    let tpl = from_the_beginning(&consumer, topics, deadline);
    // The ends, taken before reading: what was there when the test asked.
    let ends: Vec<(String, i32, i64)> = tpl
        .elements()
        .iter()
        .filter_map(|e| {
            let (low, high) = consumer
                .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10))
                .unwrap_or_else(|err| panic!("watermarks of {}[{}]: {err}", e.topic(), e.partition()));
            (high > low).then(|| (e.topic().to_string(), e.partition(), high))
        })
        .collect();
    consumer.assign(&tpl).unwrap();
    // Partitions whose position is short of its end (the position passes
    // transaction markers too, which are never returned as records).
    let short = || -> Vec<String> {
        let positions = consumer.position().unwrap();
        ends.iter()
            .filter_map(|(t, p, end)| {
                let at = match positions.find_partition(t, *p).map(|e| e.offset()) {
                    Some(rdkafka::Offset::Offset(o)) => o,
                    _ => 0,
                };
                (at < *end).then(|| format!("{t}[{p}] at {at} of {end}"))
            })
            .collect()
    };
    let mut out = Vec::new();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(record_of(&m)),
            Some(Err(e)) => eprintln!("consumer error: {e}"),
            None => {}
        }
        let left = short();
        if left.is_empty() {
            return out;
        }
        assert!(Instant::now() < deadline, "not read to the end after {timeout:?}: {}", left.join(", "));
    }
}

/// The consumer loop: `stop(records, last_arrival)` is asked when a poll
/// comes back empty and after every `every` records.
fn consume(
    brokers: &str,
    topics: &[String],
    deadline: Instant,
    every: usize,
    stop: impl Fn(&[Record], Instant) -> bool,
) -> Vec<Record> {
    let consumer = read_committed_consumer(brokers);
    consumer.assign(&from_the_beginning(&consumer, topics, deadline)).unwrap();
    let mut out = Vec::new();
    let mut last = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                out.push(record_of(&m));
                last = Instant::now();
                if out.len() % every == 0 && stop(&out, last) {
                    return out;
                }
            }
            Some(Err(e)) => eprintln!("consumer error: {e}"),
            None => {
                if stop(&out, last) {
                    return out;
                }
            }
        }
    }
}

/// A consumer of its own group that commits nothing and reads committed records only.
fn read_committed_consumer(brokers: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-{}", Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap()
}

/// Every partition of `topics` from its beginning; waits for each topic to
/// exist (to learn its partitions) until `deadline`.
fn from_the_beginning(consumer: &BaseConsumer, topics: &[String], deadline: Instant) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for t in topics {
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
    tpl
}

fn record_of(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    let mut headers = HashMap::new();
    if let Some(h) = m.headers() {
        for hd in h.iter() {
            headers.insert(hd.key.to_string(), String::from_utf8_lossy(hd.value.unwrap_or_default()).to_string());
        }
    }
    Record {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: String::from_utf8_lossy(m.key().unwrap_or_default()).to_string(),
        headers,
        value: serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or(serde_json::Value::Null),
        raw: m.payload().unwrap_or_default().to_vec(),
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

/// Sets one topic-level config (e.g. raises `max.message.bytes`), and
/// returns once the broker reports it in effect: the change is applied
/// asynchronously, and a record sent right after the call was still judged
/// by the old value (a flake: an oversized event accepted).
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
    let until = Instant::now() + Duration::from_secs(30);
    while rt.block_on(topic_config(brokers, topic)).1.get(key).map(String::as_str) != Some(value) {
        assert!(Instant::now() < until, "topic {topic}: {key} = {value} not in effect after 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The metadata the broker describes from, then its log's copy of it.
    std::thread::sleep(Duration::from_millis(500));
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

/// A topic's partition count and its configuration as the broker reports it.
pub async fn topic_config(brokers: &str, topic: &str) -> (usize, HashMap<String, String>) {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let md = admin.inner().fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let partitions = md.topics().first().map(|t| t.partitions().len()).unwrap_or(0);
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let res = admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &opts).await.unwrap();
    let resource = res.into_iter().next().unwrap().unwrap();
    let entries = resource.entries.into_iter().filter_map(|e| e.value.map(|v| (e.name, v))).collect();
    (partitions, entries)
}

/// The names of every topic the cluster lists now.
pub fn topic_list(brokers: &str) -> std::collections::HashSet<String> {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let md = c.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    md.topics().iter().map(|t| t.name().to_string()).collect()
}
