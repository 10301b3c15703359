//! `[kafka]`: the broker, topic naming and producer settings.
//!
//! Guarantee: plain option types with their defaults and the checks of their
//! own keys, including Kafka's topic-name rule for `topic_prefix`; which
//! topic an event goes to is decided by `config::topics`.

use serde::{Deserialize, Serialize};

use super::{validate_hosts, ConfigError};

/// Longest `kafka.topic_prefix`. Every topic name is the prefix plus one of
/// the routing's fixed suffixes (at most 49 characters, checked by the tests
/// of `config::topics`), so a valid prefix always gives valid topic names.
pub const MAX_TOPIC_PREFIX_LEN: usize = 200;

/// Kafka's longest topic name.
pub const MAX_TOPIC_LEN: usize = 249;

/// Longest `kafka.linger_ms`: librdkafka refuses a `linger.ms`
/// (`queue.buffering.max.ms`) above 900 000.
const MAX_LINGER_MS: u32 = 900_000;

/// Longest `kafka.message_timeout_ms`: librdkafka's `message.timeout.ms` is a C int.
const MAX_MESSAGE_TIMEOUT_MS: u64 = i32::MAX as u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TopicRouting {
    /// `order-events`, `customer-events` (default; keeps one aggregate's events in one topic).
    PerAggregate,
    /// The seeds' `OrderCreated`, `OrderUpdated`, `OrderCancelled`, ... topics.
    PerEventType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn as_str(&self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated `host:port`.
    pub brokers: String,
    pub topic_routing: TopicRouting,
    /// Prepended to every topic name (e.g. `prod.`).
    pub topic_prefix: String,
    /// Partitions for topics the relay creates.
    pub partitions: i32,
    pub replication_factor: i32,
    pub compression: Compression,
    /// librdkafka `max.in.flight.requests.per.connection` (<= 5 with idempotence).
    pub max_in_flight_requests: u32,
    /// librdkafka `linger.ms` (0..=900 000, below `message_timeout_ms`).
    pub linger_ms: u32,
    /// How long one delivery may take before it counts as failed (librdkafka
    /// `message.timeout.ms`; with exactly-once at most `relay.transaction_timeout_ms`).
    pub message_timeout_ms: u64,
    /// `ce_source` header value.
    pub source: String,
    /// Extra librdkafka properties (e.g. security settings).
    pub extra: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic_routing: TopicRouting::PerAggregate,
            topic_prefix: String::new(),
            partitions: 6,
            replication_factor: 1,
            compression: Compression::Lz4,
            max_in_flight_requests: 5,
            linger_ms: 5,
            message_timeout_ms: 10_000,
            source: "/outboxd".into(),
            extra: Default::default(),
        }
    }
}

impl KafkaConfig {
    /// True for the seeds' per-event-type topics (`config::topics` takes this flag).
    pub fn per_event_type(&self) -> bool {
        self.topic_routing == TopicRouting::PerEventType
    }

    /// The `kafka.extra` settings that apply to a client reading what the
    /// relay wrote (TLS, SASL, timeouts): all but the producer's own.
    pub fn client_extra(&self) -> impl Iterator<Item = (&str, &str)> {
        const PRODUCER_ONLY: &[&str] = &["transaction", "queue.buffering", "linger", "acks", "enable.idempotence"];
        self.extra
            .iter()
            .filter(|(k, _)| !PRODUCER_ONLY.iter().any(|p| k.starts_with(p)))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        validate_hosts("kafka.brokers", &self.brokers)?;
        validate_topic_prefix(&self.topic_prefix)?;
        if !(1..=10_000).contains(&self.partitions) {
            return err(format!("kafka.partitions = {}: must be 1..=10000", self.partitions));
        }
        // librdkafka refuses a topic creation with more than 10 000 replicas.
        if !(1..=10_000).contains(&self.replication_factor) {
            return err(format!("kafka.replication_factor = {}: must be 1..=10000", self.replication_factor));
        }
        if !(1..=5).contains(&self.max_in_flight_requests) {
            return err(format!(
                "kafka.max_in_flight_requests = {}: must be 1..=5 (idempotent producer)",
                self.max_in_flight_requests
            ));
        }
        if self.linger_ms > MAX_LINGER_MS {
            return err(format!(
                "kafka.linger_ms = {}: must be 0..={MAX_LINGER_MS} (librdkafka's limit of linger.ms, 15 minutes)",
                self.linger_ms
            ));
        }
        if !(1_000..=MAX_MESSAGE_TIMEOUT_MS).contains(&self.message_timeout_ms) {
            return err(format!(
                "kafka.message_timeout_ms = {}: must be 1000..={MAX_MESSAGE_TIMEOUT_MS} (librdkafka's limit of message.timeout.ms)",
                self.message_timeout_ms
            ));
        }
        if self.message_timeout_ms <= u64::from(self.linger_ms) {
            return err(format!(
                "kafka.message_timeout_ms ({}) must be greater than kafka.linger_ms ({}): librdkafka refuses a producer whose messages could time out while they linger",
                self.message_timeout_ms, self.linger_ms
            ));
        }
        self.validate_extra()
    }

    /// `relay.delivery = "exactly-once"`: what librdkafka requires of a
    /// transactional producer with `transaction.timeout.ms` =
    /// `transaction_timeout_ms` (`relay.transaction_timeout_ms`), checked at
    /// load instead of at every producer creation.
    pub(super) fn validate_transactional(&self, transaction_timeout_ms: u64) -> Result<(), ConfigError> {
        if self.message_timeout_ms > transaction_timeout_ms {
            return Err(ConfigError(format!(
                "kafka.message_timeout_ms ({}) must be <= relay.transaction_timeout_ms ({transaction_timeout_ms}) with relay.delivery = \"exactly-once\": librdkafka refuses a transactional producer whose messages outlive the transaction",
                self.message_timeout_ms
            )));
        }
        // librdkafka: `socket.timeout.ms` must be set <= `transaction.timeout.ms` + 100.
        let socket = self.extra.get("socket.timeout.ms").and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(s) = socket.filter(|s| *s > transaction_timeout_ms.saturating_add(100)) {
            return Err(ConfigError(format!(
                "kafka.extra.\"socket.timeout.ms\" ({s}) must be <= relay.transaction_timeout_ms + 100 ({}) with relay.delivery = \"exactly-once\" (librdkafka's rule for a transactional producer)",
                transaction_timeout_ms.saturating_add(100)
            )));
        }
        Ok(())
    }

    /// `kafka.extra`: librdkafka must know every key and accept its value
    /// (checked by librdkafka itself, without connecting), and no key may
    /// undo a setting the delivery guarantee rests on or one with its own
    /// `kafka.*` key.
    fn validate_extra(&self) -> Result<(), ConfigError> {
        for (key, value) in &self.extra {
            if let Some(why) = reserved(key) {
                return Err(ConfigError(format!("kafka.extra.{key:?}: not settable here: {why}")));
            }
            let mut c = rdkafka::ClientConfig::new();
            c.set(key, value);
            if let Err(e) = c.create_native_config() {
                // librdkafka's own text, without the value (`e` quotes it: it may be a secret).
                let (why, unknown) = match &e {
                    rdkafka::error::KafkaError::ClientConfig(res, desc, _, _) => {
                        (desc.clone(), *res == rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN)
                    }
                    other => (format!("{:?}", other.rdkafka_error_code()), true),
                };
                // A key librdkafka does not know may be a misspelt secret
                // (`sasl.pasword`): its value is never shown either.
                let shown = if unknown || super::secrets::is_secret_key(key) {
                    "(not shown: a secret, or a key librdkafka does not know)".into()
                } else {
                    format!("{value:?}")
                };
                return Err(ConfigError(format!("kafka.extra.{key:?} = {shown}: refused by librdkafka: {why}")));
            }
        }
        self.validate_producer()
    }

    /// The producer the relay builds (`relay::producer::producer_config`:
    /// [`KafkaConfig::producer_settings`], then every `kafka.extra` setting)
    /// is started here, with no broker to connect to, so that librdkafka
    /// checks the settings together as it will at `outboxd run`: an extra
    /// that contradicts the idempotent producer (`retries = "0"`), or a
    /// missing CA file or a key its password does not open (loaded as the
    /// client starts), is refused at load, not at the first publish.
    fn validate_producer(&self) -> Result<(), ConfigError> {
        let security = |k: &str| k.starts_with("ssl.") || k.starts_with("sasl.") || k == "security.protocol";
        if self.extra.keys().any(|k| security(k)) {
            // A file librdkafka would load, named plainly when it is not there.
            for (k, v) in self.extra.iter().filter(|(k, v)| k.ends_with(".location") && v.as_str() != "probe") {
                if let Err(e) = std::fs::metadata(v) {
                    return Err(ConfigError(format!("kafka.extra.{k:?} = {v:?}: cannot read it: {e}")));
                }
            }
        }
        // librdkafka refuses (QUEUE_FULL) a record larger than the local
        // queue even when the queue is empty: the relay would retry it first
        // for ever, every event behind it held. The queue must hold one
        // record of the largest size the producer sends.
        let number = |k: &str| self.extra.get(k).and_then(|v| v.trim().parse::<u64>().ok());
        let max_message = number("message.max.bytes").unwrap_or(1_000_000);
        if let Some(kbytes) = number("queue.buffering.max.kbytes").filter(|kb| kb.saturating_mul(1024) < max_message) {
            return Err(ConfigError(format!(
                "kafka.extra.\"queue.buffering.max.kbytes\" = {kbytes}: must hold one record of message.max.bytes ({max_message} bytes): at least {} (a larger record is never queued, and every event behind it waits)",
                max_message.div_ceil(1024)
            )));
        }
        let mut c = rdkafka::ClientConfig::new();
        for (k, v) in self.producer_settings() {
            c.set(k, v);
        }
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        match c.create::<rdkafka::producer::BaseProducer>() {
            Ok(_) => Ok(()),
            Err(e) => {
                // librdkafka's text names the settings (and files), not their
                // values; a secret is scrubbed all the same.
                let secrets: Vec<String> =
                    self.extra.iter().filter(|(k, _)| super::is_secret_key(k)).map(|(_, v)| v.clone()).collect();
                let why = super::scrub(&e.to_string(), &secrets).replace(['\n', '\r'], " ");
                Err(ConfigError(format!(
                    "kafka.extra: refused by librdkafka with the relay's producer settings (idempotent, acks=all, the kafka.* keys): {why}"
                )))
            }
        }
    }

    /// The librdkafka settings the relay's producer always has
    /// (`relay::producer::producer_config` sets them, then `kafka.extra`,
    /// which may not set any of the reserved ones), without
    /// `bootstrap.servers` and `client.id`: one list, so what `outboxd
    /// config` checks is what `outboxd run` starts.
    pub fn producer_settings(&self) -> [(&'static str, String); 10] {
        [
            ("enable.idempotence", "true".into()),
            ("acks", "all".into()),
            ("max.in.flight.requests.per.connection", self.max_in_flight_requests.to_string()),
            ("compression.type", self.compression.as_str().into()),
            ("linger.ms", self.linger_ms.to_string()),
            ("message.timeout.ms", self.message_timeout_ms.to_string()),
            ("queue.buffering.max.messages", QUEUE_MAX_MESSAGES.to_string()),
            ("queue.buffering.max.kbytes", QUEUE_MAX_KBYTES.to_string()),
            ("socket.connection.setup.timeout.ms", "5000".into()),
            ("reconnect.backoff.max.ms", "1000".into()),
        ]
    }
}

/// Default cap of librdkafka's local queue (messages); the relay's window is smaller.
pub const QUEUE_MAX_MESSAGES: usize = 100_000;
/// Default cap of librdkafka's local queue (KiB): 64 MiB.
pub const QUEUE_MAX_KBYTES: usize = 65_536;

/// Why `kafka.extra` may not set `key`, if it is reserved. librdkafka takes
/// an unknown global property named `topic.<p>` as the topic property `<p>`
/// (`topic.partitioner`, `topic.acks`, `topic.message.timeout.ms`): the key
/// is looked up as written and without that prefix, or it would set a
/// reserved setting past this check (and `topic.acks` against `acks` in
/// whatever order the producer applied them).
fn reserved(key: &str) -> Option<&'static str> {
    let lookup = |name: &str| RESERVED_LIBRDKAFKA_KEYS.iter().find(|(k, _)| *k == name).map(|(_, why)| *why);
    lookup(key).or_else(|| key.strip_prefix("topic.").and_then(lookup))
}

/// librdkafka keys `kafka.extra` may not set (with or without the `topic.`
/// prefix), and why: each setting and every alias librdkafka has for it.
const RESERVED_LIBRDKAFKA_KEYS: &[(&str, &str)] = &[
    ("enable.idempotence", "the relay's producer is always idempotent (per-aggregate order, no duplicates on retry)"),
    ("acks", "the relay always waits for acks=all (an event is confirmed only once replicated)"),
    ("request.required.acks", "the relay always waits for acks=all (an event is confirmed only once replicated)"),
    ("transactional.id", "set by the relay for relay.delivery = \"exactly-once\""),
    (
        "transaction.timeout.ms",
        "use relay.transaction_timeout_ms (checked against kafka.message_timeout_ms with relay.delivery = \"exactly-once\")",
    ),
    ("bootstrap.servers", "use kafka.brokers"),
    ("metadata.broker.list", "use kafka.brokers"),
    ("max.in.flight.requests.per.connection", "use kafka.max_in_flight_requests"),
    ("max.in.flight", "use kafka.max_in_flight_requests"),
    ("message.timeout.ms", "use kafka.message_timeout_ms"),
    ("delivery.timeout.ms", "use kafka.message_timeout_ms"),
    ("compression.type", "use kafka.compression"),
    ("compression.codec", "use kafka.compression"),
    ("linger.ms", "use kafka.linger_ms"),
    ("queue.buffering.max.ms", "use kafka.linger_ms"),
    (
        "partitioner",
        "the relay keeps librdkafka's default (consistent_random: a key always maps to the same partition); another partitioner scatters an aggregate's events (random) or moves its key to another partition (murmur2, fnv1a, ...), breaking per-aggregate order",
    ),
];

#[cfg(test)]
#[path = "kafka_tests.rs"]
mod tests;

fn legal_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Kafka's legal topic names: 1-249 of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn validate_topic(t: &str) -> Result<(), ConfigError> {
    let ok = !t.is_empty() && t.len() <= MAX_TOPIC_LEN && t != "." && t != ".." && t.chars().all(legal_topic_char);
    if ok {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "topic name {t:?} is not valid for Kafka: use 1-249 of letters, digits, '.', '_' or '-' (check kafka.topic_prefix)"
        )))
    }
}

/// `kafka.topic_prefix`: Kafka's topic characters, at most [`MAX_TOPIC_PREFIX_LEN`].
pub fn validate_topic_prefix(prefix: &str) -> Result<(), ConfigError> {
    if prefix.len() <= MAX_TOPIC_PREFIX_LEN && prefix.chars().all(legal_topic_char) {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "kafka.topic_prefix {prefix:?} would make topic names Kafka refuses: use at most {MAX_TOPIC_PREFIX_LEN} of letters, digits, '.', '_' or '-'"
        )))
    }
}
