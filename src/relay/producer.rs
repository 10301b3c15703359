//! The relay's Kafka producer: one librdkafka producer whose delivery
//! reports arrive on a channel (no future per message) and whose connection
//! errors drive the broker state that /health and the breaker read.
//!
//! Guarantees:
//! - At-least-once mode: `enable.idempotence=true`, `acks=all`, at most 5
//!   requests in flight per connection, so librdkafka's own retries neither
//!   duplicate nor reorder within a partition. Transactional mode (exactly-once)
//!   adds `transactional.id`; its blocking calls run off the async runtime.
//! - Every message handed over with `send` gets exactly one [`Completion`]
//!   with the caller's token (delivered, failed, or purged).
//! - Delivered means the broker gave the record an offset ([`confirmed`]): a
//!   report librdkafka marks delivered without one is a transient failure,
//!   so the record is sent again (at worst a duplicate, never a loss).
//! - The broker is `Reachable` only after a broker answered (a delivery or a
//!   metadata request), `Unreachable` after librdkafka reports connection
//!   failures (its error callback) or a failed probe, `Unknown` before.
//! - Memory is bounded: librdkafka's queue is capped by
//!   `queue.buffering.max.messages` / `.kbytes` (defaults below, `kafka.extra` may override).

use chrono::{DateTime, Utc};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer};
use rdkafka::Message;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

use crate::config::KafkaConfig;
use crate::relay::error::PublishError;
use crate::relay::off_runtime::DropOffRuntime;

pub use crate::config::{QUEUE_MAX_KBYTES, QUEUE_MAX_MESSAGES};

/// `retry.backoff.ms` of the transactional producer (see `producer_config`).
pub const TXN_RETRY_BACKOFF_MS: u64 = 5;

/// The broker as this producer last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BrokerState {
    /// No broker has answered yet, and no failure was reported yet.
    Unknown,
    Reachable {
        since: DateTime<Utc>,
    },
    Unreachable {
        since: DateTime<Utc>,
        error: String,
    },
}

impl BrokerState {
    pub fn is_reachable(&self) -> bool {
        matches!(self, BrokerState::Reachable { .. })
    }
}

/// One delivery report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub token: usize,
    /// `(partition, offset)` once the broker confirmed.
    pub result: Result<(i32, i64), PublishError>,
}

/// How the producer delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    AtLeastOnce,
    /// Transactions under this `transactional.id`.
    Transactional {
        id: String,
        timeout_ms: u64,
    },
}

/// Routes librdkafka's callbacks to the relay.
pub struct RelayContext {
    done: mpsc::UnboundedSender<Completion>,
    broker: watch::Sender<BrokerState>,
}

impl RelayContext {
    fn reachable(&self) {
        self.broker.send_if_modified(|b| {
            if b.is_reachable() {
                return false;
            }
            *b = BrokerState::Reachable { since: Utc::now() };
            true
        });
    }

    /// Records the broker as unreachable with `error`. A `summary` (librdkafka's
    /// "all brokers are down", which follows each broker's own failure) does
    /// not replace the cause already recorded, e.g. a failed TLS handshake.
    fn unreachable(&self, error: String, summary: bool) {
        self.broker.send_if_modified(|b| {
            if let BrokerState::Unreachable { error: e, .. } = b {
                if *e == error || summary {
                    return false;
                }
                *e = error;
                return true;
            }
            *b = BrokerState::Unreachable { since: Utc::now(), error };
            true
        });
    }
}

/// librdkafka errors that mean "cannot talk to the cluster".
fn is_connectivity(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        AllBrokersDown
            | BrokerTransportFailure
            | Resolve
            | Authentication
            | SaslAuthenticationFailed
            | SSL
            | NetworkException
    )
}

impl ClientContext for RelayContext {
    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(code) if is_connectivity(code) => {
                tracing::debug!(error = %error, reason, "Kafka connection error");
                self.unreachable(format!("{error}: {reason}"), code == RDKafkaErrorCode::AllBrokersDown);
            }
            _ => tracing::warn!(error = %error, reason, "librdkafka error"),
        }
    }
}

/// The `kind` of a delivery reported without an offset.
pub const UNVERIFIED: &str = "unverified_delivery";

/// What a successful delivery report confirms: `(partition, offset)`, or,
/// without an offset, a transient failure. librdkafka reports a batch
/// delivered without an offset when the broker answers
/// DUPLICATE_SEQUENCE_NUMBER ("previous send succeeded but was not
/// acknowledged"), without checking that the batch was ever sent before (its
/// own FIXME, rdkafka_request.c). On a Kafka 4.1 topic created a moment
/// earlier, a chaos run caught such a batch of three events that the broker
/// never wrote: the partition's next batch got offset 0, and the three were
/// lost to the topic. So such a report confirms nothing, and the record is
/// sent again.
pub fn confirmed(partition: i32, offset: i64) -> Result<(i32, i64), PublishError> {
    if offset >= 0 {
        return Ok((partition, offset));
    }
    Err(PublishError::transient(
        UNVERIFIED,
        format!(
            "librdkafka reported the record delivered to partition {partition} without an offset (the broker answered a duplicate sequence number for a batch it may never have written): sending it again"
        ),
    ))
}

impl ProducerContext for RelayContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, r: &DeliveryResult<'_>, token: usize) {
        let result = match r {
            Ok(m) => {
                self.reachable();
                confirmed(m.partition(), m.offset())
            }
            Err((e, _)) => Err(PublishError::from_kafka(e)),
        };
        // The receiver is gone only when the relay stopped; nothing to report then.
        let _ = self.done.send(Completion { token, result });
    }
}

/// The librdkafka settings of the relay's producer (the bench baseline uses the same).
pub fn producer_config(cfg: &KafkaConfig, delivery: &Delivery) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers).set("client.id", "outboxd-relay");
    // The same settings `outboxd config` checks the extras against.
    for (k, v) in cfg.producer_settings() {
        c.set(k, v);
    }
    if let Delivery::Transactional { id, timeout_ms } = delivery {
        c.set("transactional.id", id).set("transaction.timeout.ms", timeout_ms.to_string());
        // A transaction begun right after a commit meets CONCURRENT_TRANSACTIONS
        // from the coordinator until the markers of the previous one are
        // written; librdkafka retries its AddPartitionsToTxn after
        // `retry.backoff.ms` (default 100), which would make every
        // back-to-back transaction last >= 100 ms (the Java client uses 20 ms
        // for the same retry, KAFKA-5477). Other retries back off
        // exponentially up to `retry.backoff.max.ms` as before.
        c.set("retry.backoff.ms", TXN_RETRY_BACKOFF_MS.to_string());
    }
    for (k, v) in &cfg.extra {
        c.set(k, v);
    }
    c
}

/// Why `send` did not take a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// librdkafka's local queue is full: wait for completions, then send again.
    QueueFull,
    Failed(PublishError),
}

/// Runs `send` until librdkafka's queue takes the record (a full queue:
/// waits `pause`, then tries again); a send that failed is its error.
pub async fn when_room<T>(pause: Duration, mut send: impl FnMut() -> Result<T, SendError>) -> Result<T, PublishError> {
    loop {
        match send() {
            Ok(t) => return Ok(t),
            Err(SendError::QueueFull) => tokio::time::sleep(pause).await,
            Err(SendError::Failed(e)) => return Err(e),
        }
    }
}

/// The producer, shareable (`Arc`) between the relay loop and blocking calls.
#[derive(Clone)]
pub struct KafkaProducer {
    /// Its drop purges, flushes and joins a thread: off the runtime.
    inner: Arc<DropOffRuntime<ThreadedProducer<RelayContext>>>,
    cfg: KafkaConfig,
    broker: watch::Receiver<BrokerState>,
}

impl KafkaProducer {
    /// Creates the producer; its delivery reports arrive on the returned receiver.
    pub fn new(
        cfg: &KafkaConfig,
        delivery: &Delivery,
    ) -> Result<(KafkaProducer, mpsc::UnboundedReceiver<Completion>), PublishError> {
        let (done, rx) = mpsc::unbounded_channel();
        let (broker, broker_rx) = watch::channel(BrokerState::Unknown);
        let ctx = RelayContext { done, broker };
        let inner: ThreadedProducer<RelayContext> = producer_config(cfg, delivery)
            .create_with_context(ctx)
            .map_err(|e| PublishError::permanent("config", format!("cannot create Kafka producer: {e}")))?;
        Ok((KafkaProducer { inner: Arc::new(DropOffRuntime::new(inner)), cfg: cfg.clone(), broker: broker_rx }, rx))
    }

    pub fn config(&self) -> &KafkaConfig {
        &self.cfg
    }

    /// The broker state as this producer sees it (changes are signalled).
    pub fn broker(&self) -> watch::Receiver<BrokerState> {
        self.broker.clone()
    }

    /// Hands one record to librdkafka; its fate arrives as a [`Completion`] with `token`.
    pub fn send(
        &self,
        topic: &str,
        key: &str,
        value: &[u8],
        headers: OwnedHeaders,
        timestamp_ms: i64,
        token: usize,
    ) -> Result<(), SendError> {
        let record =
            BaseRecord::with_opaque_to(topic, token).key(key).payload(value).headers(headers).timestamp(timestamp_ms);
        match self.inner.send(record) {
            Ok(()) => Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Err(SendError::QueueFull),
            Err((e, _)) => Err(SendError::Failed(PublishError::from_kafka(&e))),
        }
    }

    /// Asks the cluster for metadata; Ok (and Reachable) means a broker answered.
    pub async fn probe(&self, timeout: Duration) -> Result<usize, PublishError> {
        let p = self.inner.clone();
        let res =
            tokio::task::spawn_blocking(move || p.client().fetch_metadata(None, timeout).map(|m| m.brokers().len()))
                .await
                .map_err(|e| PublishError::transient("join", e.to_string()))?
                .map_err(|e| PublishError::from_kafka(&e));
        let ctx = self.inner.context();
        // A failed probe says less than the error callback's cause, so it only
        // records one when none is.
        match &res {
            Ok(_) => ctx.reachable(),
            Err(e) => ctx.unreachable(e.message.clone(), true),
        }
        res
    }

    /// Drops everything queued or in flight (their completions report a purge):
    /// a former leader stops sending at once.
    pub fn purge(&self) {
        self.inner.purge(PurgeConfig::default().queue().inflight());
    }

    /// Waits until every queued message is delivered or failed.
    pub async fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        self.blocking(move |p| p.flush(timeout)).await
    }

    /// Waits, without blocking, until no message is queued or in flight (each
    /// is delivered or failed within `message.timeout.ms`), or `timeout` passed.
    pub async fn wait_idle(&self, timeout: Duration) {
        let idle = async {
            while self.inner.in_flight_count() > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let _ = tokio::time::timeout(timeout, idle).await;
    }

    /// The fatal error of an idempotent/transactional producer, if it hit one
    /// (the producer must then be replaced).
    pub fn fatal_error(&self) -> Option<String> {
        self.inner.client().fatal_error().map(|(c, m)| format!("{c:?}: {m}"))
    }

    async fn blocking(
        &self,
        f: impl FnOnce(&ThreadedProducer<RelayContext>) -> Result<(), KafkaError> + Send + 'static,
    ) -> Result<(), PublishError> {
        let p = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&p))
            .await
            .map_err(|e| PublishError::transient("join", e.to_string()))?
            .map_err(|e| PublishError::from_kafka(&e))
    }
}

#[path = "producer_txn.rs"]
mod txn;
pub use txn::{TxnError, TxnErrorKind};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_without_an_offset_confirms_nothing() {
        assert_eq!(confirmed(2, 0), Ok((2, 0)));
        assert_eq!(confirmed(1, 41), Ok((1, 41)));
        let e = confirmed(1, -1001).unwrap_err(); // RD_KAFKA_OFFSET_INVALID
        assert!(e.transient && e.kind == UNVERIFIED, "{e:?}");
        assert!(e.message.contains("partition 1 without an offset"), "{}", e.message);
    }

    /// A TLS handshake that fails is followed by librdkafka's "all brokers
    /// are down": /health must keep the cause, not the summary.
    #[test]
    fn a_summary_error_keeps_the_cause_already_recorded() {
        let (done, _rx) = mpsc::unbounded_channel();
        let (broker, rx) = watch::channel(BrokerState::Unknown);
        let ctx = RelayContext { done, broker };
        let error = |rx: &watch::Receiver<BrokerState>| match &*rx.borrow() {
            BrokerState::Unreachable { error, .. } => error.clone(),
            other => panic!("{other:?}"),
        };
        ctx.unreachable("1/1 brokers are down".into(), true);
        assert_eq!(error(&rx), "1/1 brokers are down", "a summary is recorded when nothing is");
        ctx.unreachable("SSL handshake failed: certificate verify failed".into(), false);
        ctx.unreachable("1/1 brokers are down".into(), true);
        assert_eq!(error(&rx), "SSL handshake failed: certificate verify failed");
        ctx.reachable();
        ctx.unreachable("1/1 brokers are down".into(), true);
        assert_eq!(error(&rx), "1/1 brokers are down", "a new outage starts with what is known");
    }

    #[test]
    fn transactional_config_and_bounded_queue() {
        let k = KafkaConfig::default();
        let c = producer_config(&k, &Delivery::Transactional { id: "outboxd-kafka-relay".into(), timeout_ms: 60_000 });
        assert_eq!(c.get("transactional.id"), Some("outboxd-kafka-relay"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("queue.buffering.max.kbytes"), Some("65536"));
        // Back-to-back transactions retry CONCURRENT_TRANSACTIONS after this, not 100 ms.
        assert_eq!(c.get("retry.backoff.ms"), Some("5"));
        let c = producer_config(&k, &Delivery::AtLeastOnce);
        assert_eq!(c.get("transactional.id"), None);
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("retry.backoff.ms"), None, "librdkafka's default outside transactions");
        // kafka.extra still overrides.
        let k = KafkaConfig { extra: [("retry.backoff.ms".to_string(), "50".to_string())].into(), ..k };
        let c = producer_config(&k, &Delivery::Transactional { id: "x".into(), timeout_ms: 60_000 });
        assert_eq!(c.get("retry.backoff.ms"), Some("50"));
    }

    #[test]
    fn connectivity_codes() {
        assert!(is_connectivity(RDKafkaErrorCode::AllBrokersDown));
        assert!(is_connectivity(RDKafkaErrorCode::BrokerTransportFailure));
        assert!(!is_connectivity(RDKafkaErrorCode::MessageSizeTooLarge));
    }

    /// Against an address where nothing listens, librdkafka's error callback
    /// turns the state Unreachable without any message being sent.
    #[tokio::test]
    async fn unreachable_broker_is_reported_by_the_error_callback() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let k = KafkaConfig { brokers: format!("127.0.0.1:{port}"), ..KafkaConfig::default() };
        let (p, _rx) = KafkaProducer::new(&k, &Delivery::AtLeastOnce).unwrap();
        let mut b = p.broker();
        // Refused at once on a closed port: the callback may already have run.
        assert!(matches!(*b.borrow(), BrokerState::Unknown | BrokerState::Unreachable { .. }), "{:?}", *b.borrow());
        let _ = p.probe(Duration::from_millis(500)).await;
        tokio::time::timeout(Duration::from_secs(10), b.wait_for(|s| matches!(s, BrokerState::Unreachable { .. })))
            .await
            .unwrap()
            .unwrap();
    }
}
