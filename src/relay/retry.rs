//! Retry policy (exponential backoff) and the transient/permanent split.
//!
//! Guarantee: `IsTransient` is the single place that decides whether a
//! failure may heal by waiting (broker down, timeouts, leader moves) or can
//! never succeed for this event as it is (too large, invalid record). Only
//! the latter may send an event to the DLQ.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use std::time::Duration;

use crate::config::RetryConfig;

/// Classifies an error as transient (retry / pause) or permanent (DLQ).
pub trait IsTransient {
    fn is_transient(&self) -> bool;
}

/// Broker or client error codes that no retry can fix for this message:
/// too large, malformed, or a timestamp outside the topic's
/// `message.timestamp.before/after.max.ms` (the event's own time, which a
/// retry does not change).
pub fn is_permanent_code(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        MessageSizeTooLarge
            | InvalidMessageSize
            | InvalidMessage
            | InvalidRecord
            | BadMessage
            | InvalidTimestamp
            | MessageBatchTooLarge
    )
}

impl IsTransient for KafkaError {
    fn is_transient(&self) -> bool {
        match self.rdkafka_error_code() {
            Some(code) => !is_permanent_code(code),
            // Canceled, client creation, etc.: not about this event.
            None => true,
        }
    }
}

/// Exponential backoff: `initial * multiplier^n`, capped at `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub max_attempts: u32,
    initial: Duration,
    max: Duration,
    multiplier: f64,
}

impl Backoff {
    pub fn new(cfg: &RetryConfig) -> Self {
        Backoff {
            max_attempts: cfg.max_attempts,
            initial: Duration::from_millis(cfg.initial_backoff_ms),
            max: Duration::from_millis(cfg.max_backoff_ms),
            multiplier: cfg.multiplier,
        }
    }

    /// Delay before retry number `retry` (1-based).
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = self.multiplier.powi(retry.saturating_sub(1).min(64) as i32);
        let d = self.initial.as_secs_f64() * factor;
        Duration::from_secs_f64(d.min(self.max.as_secs_f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_defaults_double_and_cap() {
        let b = Backoff::new(&RetryConfig::default());
        let ms: Vec<u128> = (1..=5).map(|i| b.delay(i).as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 400, 500, 500]);
        assert_eq!(b.max_attempts, 5);
    }

    #[test]
    fn classification() {
        assert!(!KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge).is_transient());
        assert!(!KafkaError::MessageProduction(RDKafkaErrorCode::InvalidRecord).is_transient());
        assert!(!KafkaError::MessageProduction(RDKafkaErrorCode::InvalidTimestamp).is_transient());
        assert!(!KafkaError::MessageProduction(RDKafkaErrorCode::MessageBatchTooLarge).is_transient());
        assert!(KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut).is_transient());
        assert!(KafkaError::MessageProduction(RDKafkaErrorCode::BrokerTransportFailure).is_transient());
        assert!(KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition).is_transient());
        assert!(KafkaError::Canceled.is_transient());
    }
}
