//! `[relay]`: the feed -> Kafka relay, its retry policy and circuit breaker.
//!
//! Guarantee: plain option types with their defaults (the seeds' values for
//! retry and breaker) and the checks of their own keys.

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per event before the breaker / DLQ decides (seed: 5).
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Growth of the backoff per retry: a finite number >= 1.
    pub multiplier: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig { max_attempts: 5, initial_backoff_ms: 100, max_backoff_ms: 500, multiplier: 2.0 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit (seed: 5).
    pub failure_threshold: u32,
    /// Time the circuit stays open before a half-open probe (seed: 30 s).
    pub open_timeout_ms: u64,
    /// Successes in half-open that close it (seed: 3).
    pub success_threshold: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig { failure_threshold: 5, open_timeout_ms: 30_000, success_threshold: 3 }
    }
}

/// How the relay delivers (`relay.delivery`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryMode {
    /// Idempotent producer; a crash re-sends the unconfirmed window (same `ce_id`).
    AtLeastOnce,
    /// Kafka transactions with the progress on a compacted topic: read_committed
    /// consumers see every event exactly once.
    ExactlyOnce,
}

impl DeliveryMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            DeliveryMode::AtLeastOnce => "at-least-once",
            DeliveryMode::ExactlyOnce => "exactly-once",
        }
    }
}

/// What happens to an event that can never be published as it is (`relay.on_permanent_failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PermanentFailurePolicy {
    /// Hold the aggregate from that event on (durably); everything else flows.
    ParkAggregate,
    /// Dead-letter the event and move on (its aggregate's consumers see a gap).
    Skip,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Checkpoint name of this relay in the `checkpoints` table.
    pub consumer_name: String,
    /// Events read from the feed per query.
    pub batch_size: usize,
    /// Most events published but not yet confirmed.
    pub max_in_flight: usize,
    /// Fallback poll when no in-process wake-up arrives (other writers).
    pub poll_interval_ms: u64,
    /// Seed behaviour: dead-letter even transient failures after the retries.
    /// Off by default: an outage must pause the relay, not empty it into the DLQ.
    pub dlq_on_transient_exhaustion: bool,
    /// `at-least-once` (default) or `exactly-once`.
    pub delivery: DeliveryMode,
    /// `park-aggregate` (default) or `skip`.
    pub on_permanent_failure: PermanentFailurePolicy,
    /// This instance's id in the lease table (default: host, pid and start time).
    pub instance_id: Option<String>,
    /// Lease time-to-live; the holder renews every third of it. At least
    /// 3000 ms: a renewal that waits out SQLite's lease busy timeout
    /// (250 ms) and is retried a quarter of the interval later must still
    /// land well before the renewal deadline (2/3 TTL).
    pub lease_ttl_ms: u64,
    /// Exactly-once: most events per transaction.
    pub transaction_max_events: usize,
    /// Exactly-once: longest a transaction collects events before it commits.
    pub transaction_max_ms: u64,
    /// Exactly-once: librdkafka `transaction.timeout.ms` (within the broker's `transaction.max.timeout.ms`).
    pub transaction_timeout_ms: u64,
    /// Exactly-once: the compacted topic holding each consumer's committed position.
    pub progress_topic: String,
    pub retry: RetryConfig,
    pub breaker: BreakerConfig,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            consumer_name: "kafka-relay".into(),
            batch_size: 1000,
            max_in_flight: 10_000,
            poll_interval_ms: 500,
            dlq_on_transient_exhaustion: false,
            delivery: DeliveryMode::AtLeastOnce,
            on_permanent_failure: PermanentFailurePolicy::ParkAggregate,
            instance_id: None,
            lease_ttl_ms: 10_000,
            transaction_max_events: 2_000,
            transaction_max_ms: 50,
            transaction_timeout_ms: 60_000,
            progress_topic: "outboxd.progress".into(),
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
        }
    }
}

/// Largest `relay.batch_size`: the most events one feed read returns
/// (the SQLite store's `read_feed` reads at most 100 000 per query).
const MAX_BATCH_SIZE: usize = 100_000;

/// The read models' consumer name (`projection::CONSUMER`): a relay under
/// it would share their checkpoint, lease and park records.
pub const PROJECTION_CONSUMER: &str = "projections";

impl RelayConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: &str| Err(ConfigError(m.into()));
        if self.batch_size == 0 || self.max_in_flight == 0 || self.poll_interval_ms == 0 {
            return err("relay.batch_size, relay.max_in_flight and relay.poll_interval_ms must be > 0");
        }
        if self.batch_size > MAX_BATCH_SIZE {
            return Err(ConfigError(format!(
                "relay.batch_size = {}: must be 1..={MAX_BATCH_SIZE} (the most events the store reads at once)",
                self.batch_size
            )));
        }
        if self.consumer_name.trim().is_empty() {
            return err("relay.consumer_name must not be empty");
        }
        if self.consumer_name == PROJECTION_CONSUMER {
            return err("relay.consumer_name = \"projections\": the read-model projection's name (its checkpoint, lease and parks); choose another");
        }
        let r = &self.retry;
        if r.max_attempts == 0 || r.initial_backoff_ms == 0 || r.max_backoff_ms < r.initial_backoff_ms {
            return err(
                "relay.retry: max_attempts >= 1, initial_backoff_ms >= 1, max_backoff_ms >= initial_backoff_ms",
            );
        }
        // Not `multiplier < 1.0` alone: NaN compares false with everything.
        if !r.multiplier.is_finite() || r.multiplier < 1.0 {
            return Err(ConfigError(format!(
                "relay.retry.multiplier = {}: must be a finite number >= 1",
                r.multiplier
            )));
        }
        if !(3_000..=600_000).contains(&self.lease_ttl_ms) {
            return err("relay.lease_ttl_ms must be between 3000 and 600000");
        }
        if let Some(id) = &self.instance_id {
            if id.trim().is_empty() || id.len() > 200 {
                return err("relay.instance_id must be 1-200 characters");
            }
        }
        if self.delivery == DeliveryMode::ExactlyOnce {
            // Exactly-once parks the aggregate of an event it cannot publish
            // (publish.rs, `park`): a setting it would ignore is refused.
            if self.on_permanent_failure == PermanentFailurePolicy::Skip {
                return err("relay.on_permanent_failure = \"skip\" needs relay.delivery = \"at-least-once\": exactly-once parks the aggregate of an event it cannot publish");
            }
            if self.dlq_on_transient_exhaustion {
                return err("relay.dlq_on_transient_exhaustion = true needs relay.delivery = \"at-least-once\": exactly-once retries a transient failure behind the breaker");
            }
        }
        if self.transaction_max_events == 0 || self.transaction_max_ms == 0 {
            return err("relay.transaction_max_events and relay.transaction_max_ms must be > 0");
        }
        if !(1_000..=900_000).contains(&self.transaction_timeout_ms) {
            return err("relay.transaction_timeout_ms must be between 1000 and 900000 (and within the broker's transaction.max.timeout.ms)");
        }
        super::validate_topic(&self.progress_topic)
            .map_err(|e| ConfigError(format!("relay.progress_topic: {}", e.0)))?;
        let b = &self.breaker;
        if b.failure_threshold == 0 || b.success_threshold == 0 || b.open_timeout_ms == 0 {
            return err("relay.breaker: failure_threshold, success_threshold and open_timeout_ms must be > 0");
        }
        Ok(())
    }
}
