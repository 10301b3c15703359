//! The relay library run in the test process (no daemon): a store opened on
//! a test config, one relay term on a task, exactly-once settings under a
//! consumer and progress topic of their own.

use std::time::Duration;

use outboxd::config::Config;
use outboxd::metrics::Metrics;
use outboxd::relay::pipeline::{Exit, RelayError};
use outboxd::relay::Relay;
use outboxd::shutdown::Trigger;
use outboxd::store::sqlite::SqliteStore;
use outboxd::store::DynStore;

use super::{create_topic, test_config};

/// Exactly-once delivery under a consumer and progress topic of its own.
pub fn exactly_once(c: &mut Config) {
    c.relay.delivery = outboxd::config::DeliveryMode::ExactlyOnce;
    c.relay.consumer_name = format!("eos-{}", uuid::Uuid::now_v7().simple());
    c.relay.progress_topic = format!("{}progress", c.kafka.topic_prefix);
}

/// Exactly-once with quick retries (10-50 ms) on a store in `dir`: (config, the store).
pub async fn exactly_once_quick(brokers: &str, dir: &std::path::Path) -> (Config, DynStore) {
    let mut c = test_config(brokers, &dir.join("s.db"));
    exactly_once(&mut c);
    c.relay.retry.initial_backoff_ms = 10;
    c.relay.retry.max_backoff_ms = 50;
    let store = open_store(&c).await;
    (c, store)
}

/// The `ce_sequence` headers of `agg`'s records, in topic order.
pub fn sequences_of(records: &[super::Record], agg: uuid::Uuid) -> Vec<String> {
    records.iter().filter(|r| r.key == agg.to_string()).map(|r| r.headers["ce_sequence"].clone()).collect()
}

/// A request to replay parked aggregate `agg` for `consumer`.
pub fn replay_of(consumer: &str, agg: uuid::Uuid) -> outboxd::store::requests::RelayRequest {
    use outboxd::store::requests::{RelayRequest, RequestKind};
    RelayRequest::new(consumer, RequestKind::ReplayAggregate { aggregate_id: agg.to_string() }, "test")
}

/// Exactly-once with quick retries, no compression, and an order topic that
/// refuses records over 6000 bytes: (config, that topic, the store).
pub async fn exactly_once_small_topic(brokers: &str, dir: &std::path::Path) -> (Config, String, DynStore) {
    small_topic(brokers, dir, true).await
}

/// [`exactly_once_small_topic`], or the same at least once (`eos` false).
pub async fn small_topic(brokers: &str, dir: &std::path::Path, eos: bool) -> (Config, String, DynStore) {
    small_topic_with(brokers, dir, eos, 3).await
}

/// [`small_topic`] whose order topic has `partitions`.
pub async fn small_topic_with(
    brokers: &str,
    dir: &std::path::Path,
    eos: bool,
    partitions: i32,
) -> (Config, String, DynStore) {
    let mut c = test_config(brokers, &dir.join("s.db"));
    if eos {
        exactly_once(&mut c);
    }
    c.relay.retry.initial_backoff_ms = 10;
    c.relay.retry.max_backoff_ms = 50;
    c.kafka.compression = outboxd::config::Compression::None;
    let topic = format!("{}order-events", c.kafka.topic_prefix);
    let (b, t) = (brokers.to_string(), topic.clone());
    tokio::task::spawn_blocking(move || create_topic(&b, &t, partitions, &[("max.message.bytes", "6000")]))
        .await
        .unwrap();
    let store = open_store(&c).await;
    (c, topic, store)
}

/// The SQLite store of `c`.
pub async fn open_store(c: &Config) -> DynStore {
    SqliteStore::open(&c.store.path, c.store.sqlite.clone()).await.unwrap()
}

/// One relay term running on a task.
pub struct RunningRelay {
    pub trigger: Trigger,
    pub task: tokio::task::JoinHandle<Result<Exit, RelayError>>,
    pub metrics: Metrics,
    pub status: tokio::sync::watch::Receiver<outboxd::relay::RelayStatus>,
}

/// Starts one term of `c`'s delivery mode (no runner: a term that ends is
/// not followed by another).
pub fn start_relay(c: &Config, store: DynStore) -> RunningRelay {
    let metrics = Metrics::new();
    let (relay, status) = Relay::standalone(c, store, metrics.clone());
    let trigger = Trigger::new();
    let sd = trigger.subscribe();
    let exactly_once = c.relay.delivery == outboxd::config::DeliveryMode::ExactlyOnce;
    let task = tokio::spawn(async move {
        if exactly_once {
            relay.run_exactly_once(sd).await
        } else {
            relay.run(sd).await
        }
    });
    RunningRelay { trigger, task, metrics, status }
}

impl RunningRelay {
    /// Stops the term, which must end cleanly.
    pub async fn stop(mut self) {
        self.trigger.fire();
        self.task.await.unwrap().unwrap();
        self.trigger.wait_drained().await;
    }

    /// The end of a term that stops by itself (within `timeout`).
    pub async fn ended(self, timeout: Duration) -> Result<Exit, RelayError> {
        tokio::time::timeout(timeout, self.task).await.expect("the term ended").unwrap()
    }

    pub async fn wait_checkpoint(&mut self, position: i64, timeout: Duration) {
        let ok = tokio::time::timeout(timeout, self.status.wait_for(|s| s.checkpoint.unwrap_or(0) >= position))
            .await
            .is_ok();
        assert!(ok, "relay did not reach position {position} in {timeout:?}: {:?}", *self.status.borrow());
    }
}
