//! Kafka publisher: one event envelope -> one Kafka record.
//!
//! Guarantees: the producer runs with `enable.idempotence=true` and
//! `acks=all`, so a confirmed delivery is durable on the in-sync replicas and
//! librdkafka's internal retries neither duplicate nor reorder records within
//! a partition. The record key is the aggregate id; the value is the envelope
//! JSON; headers carry the CloudEvents Kafka binding attributes (`ce_*`) plus
//! sequence, correlation and causation ids. Only the relay uses this type.

use futures::future::BoxFuture;
use futures::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::time::Duration;

use crate::config::KafkaConfig;
use crate::envelope::EventEnvelope;
use crate::relay::retry::IsTransient;
use crate::relay::topics::topic_of;

/// Why a publish failed, already classified.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct PublishError {
    pub transient: bool,
    /// Short stable label for metrics (`message_size_too_large`, `timeout`, ...).
    pub kind: String,
    pub message: String,
}

impl PublishError {
    pub fn from_kafka(e: &KafkaError) -> Self {
        let kind = e.rdkafka_error_code().map(|c| format!("{c:?}")).unwrap_or_else(|| "client".into());
        PublishError { transient: e.is_transient(), kind: snake(&kind), message: e.to_string() }
    }
    pub fn permanent(kind: &str, message: impl Into<String>) -> Self {
        PublishError { transient: false, kind: kind.into(), message: message.into() }
    }
    pub fn transient(kind: &str, message: impl Into<String>) -> Self {
        PublishError { transient: true, kind: kind.into(), message: message.into() }
    }
}

impl IsTransient for PublishError {
    fn is_transient(&self) -> bool {
        self.transient
    }
}

fn snake(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A delivery report to await: `Ok((partition, offset))` once the broker confirmed.
pub type Pending = BoxFuture<'static, Result<(i32, i64), PublishError>>;

#[derive(Clone)]
pub struct KafkaPublisher {
    producer: FutureProducer,
    cfg: KafkaConfig,
}

/// The librdkafka producer settings the relay (and the bench baseline) use.
pub fn producer_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", cfg.max_in_flight_requests.to_string())
        .set("compression.type", cfg.compression.as_str())
        .set("linger.ms", cfg.linger_ms.to_string())
        .set("message.timeout.ms", cfg.message_timeout_ms.to_string())
        .set("socket.connection.setup.timeout.ms", "5000")
        .set("reconnect.backoff.max.ms", "1000")
        .set("client.id", "outboxd-relay");
    for (k, v) in &cfg.extra {
        c.set(k, v);
    }
    c
}

/// The CloudEvents + tracing headers of one envelope.
pub fn headers_for(e: &EventEnvelope, source: &str) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("ce_specversion", "1.0".to_string()),
        ("ce_id", e.event_id.to_string()),
        ("ce_type", e.event_type.clone()),
        ("ce_source", format!("{}/{}", source.trim_end_matches('/'), e.aggregate_type)),
        ("ce_time", crate::store::sqlite::ts(&e.timestamp)),
        ("ce_subject", e.aggregate_id.to_string()),
        ("ce_sequence", e.sequence.to_string()),
        ("ce_correlationid", e.correlation_id.to_string()),
        ("ce_dataschemaversion", e.schema_version.to_string()),
        ("content-type", "application/json".to_string()),
    ];
    if let Some(c) = e.causation_id {
        h.push(("ce_causationid", c.to_string()));
    }
    h
}

impl KafkaPublisher {
    pub fn new(cfg: &KafkaConfig) -> Result<Self, PublishError> {
        let producer: FutureProducer = producer_config(cfg)
            .create()
            .map_err(|e| PublishError::permanent("config", format!("cannot create Kafka producer: {e}")))?;
        Ok(KafkaPublisher { producer, cfg: cfg.clone() })
    }

    pub fn config(&self) -> &KafkaConfig {
        &self.cfg
    }

    /// Creates the topics that are missing with the configured partitions.
    pub async fn ensure_topics(&self, topics: &[String], timeout: Duration) -> Result<(), PublishError> {
        let admin: AdminClient<DefaultClientContext> = producer_config(&self.cfg)
            .create()
            .map_err(|e| PublishError::permanent("config", format!("cannot create Kafka admin client: {e}")))?;
        let new: Vec<NewTopic> = topics
            .iter()
            .map(|t| NewTopic::new(t, self.cfg.partitions, TopicReplication::Fixed(self.cfg.replication_factor)))
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(timeout)).request_timeout(Some(timeout));
        let results = tokio::time::timeout(timeout + Duration::from_secs(1), admin.create_topics(&new, &opts))
            .await
            .map_err(|_| {
                PublishError::transient(
                    "timeout",
                    format!("broker {} did not answer topic creation within {timeout:?}", self.cfg.brokers),
                )
            })?
            .map_err(|e| PublishError::from_kafka(&e))?;
        for r in results {
            match r {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, RDKafkaErrorCode::InvalidTopic)) => {
                    return Err(PublishError::permanent("invalid_topic", format!("broker refused topic name {t:?}")))
                }
                Err((t, code)) => return Err(PublishError::from_kafka(&KafkaError::AdminOp(code)).with_context(&t)),
            }
        }
        Ok(())
    }

    /// Hands one envelope to the producer; the returned future resolves when
    /// the broker confirmed (or finally refused) it.
    pub async fn send(&self, e: &EventEnvelope) -> Result<Pending, PublishError> {
        let topic = topic_of(self.cfg.per_event_type(), &self.cfg.topic_prefix, e);
        let value = serde_json::to_vec(e)
            .map_err(|err| PublishError::permanent("unserializable", format!("event cannot be serialised: {err}")))?;
        let key = e.aggregate_id.to_string();
        let mut headers = OwnedHeaders::new();
        for (k, v) in headers_for(e, &self.cfg.source) {
            headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
        }
        let ts = e.timestamp.timestamp_millis();
        loop {
            let record = FutureRecord::to(&topic).key(&key).payload(&value).headers(headers.clone()).timestamp(ts);
            match self.producer.send_result(record) {
                Ok(fut) => {
                    return Ok(async move {
                        match fut.await {
                            Ok(Ok(d)) => Ok((d.partition, d.offset)),
                            Ok(Err((err, _))) => Err(PublishError::from_kafka(&err)),
                            Err(_) => Err(PublishError::transient("canceled", "producer dropped the delivery")),
                        }
                    }
                    .boxed());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // Local queue full: wait for deliveries to drain, then retry.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((err, _)) => return Err(PublishError::from_kafka(&err)),
            }
        }
    }

    /// Asks the cluster for metadata; Ok means a broker answered.
    pub async fn probe(&self, timeout: Duration) -> Result<usize, PublishError> {
        let p = self.producer.clone();
        tokio::task::spawn_blocking(move || p.client().fetch_metadata(None, timeout).map(|m| m.brokers().len()))
            .await
            .map_err(|e| PublishError::transient("join", e.to_string()))?
            .map_err(|e| PublishError::from_kafka(&e))
    }

    /// Waits until every queued message is delivered or failed.
    pub async fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        let p = self.producer.clone();
        tokio::task::spawn_blocking(move || p.flush(timeout))
            .await
            .map_err(|e| PublishError::transient("join", e.to_string()))?
            .map_err(|e| PublishError::from_kafka(&e))
    }

    /// The idempotent producer's fatal error, if it hit one (then it must be recreated).
    pub fn fatal_error(&self) -> Option<String> {
        self.producer.client().fatal_error().map(|(c, m)| format!("{c:?}: {m}"))
    }
}

impl PublishError {
    fn with_context(mut self, topic: &str) -> Self {
        self.message = format!("topic {topic}: {}", self.message);
        self
    }
}
