//! The next at-least-once term's producer, made before the term: while an
//! instance stands by for the lease, its producer connects, acquires its
//! idempotent producer id and is watched like an active one's.
//!
//! Guarantees:
//! - A standby that takes over publishes at once: librdkafka's first attempt
//!   at a producer id, made as the producer is created and before any broker
//!   is up, re-arms a fixed 500 ms timer; made ahead of the term, that wait
//!   is over before the lease comes (a takeover waits one lease TTL).
//! - /health on a standby is true about the broker: the watch
//!   ([`spawn_broker_watch`]) probes it from this producer, so a standby that
//!   could not publish if it took over says so.
//! - Nothing is published before the term: the producer gets records only
//!   from the term that owns it ([`Relay::run_warm`](super::pipeline::Relay::run_warm));
//!   each term has a fresh one (a term ending purges and drops its own).

use tokio::sync::mpsc;

use crate::config::KafkaConfig;
use crate::relay::broker_watch::{spawn_broker_watch, BrokerWatch};
use crate::relay::pipeline::RelayError;
use crate::relay::producer::{Completion, Delivery, KafkaProducer};
use crate::relay::status::StatusTx;
use crate::shutdown::Shutdown;

/// A connected at-least-once producer, its delivery reports and its watch.
pub struct WarmProducer {
    pub(crate) producer: KafkaProducer,
    pub(crate) completions: mpsc::UnboundedReceiver<Completion>,
    pub(crate) watch: BrokerWatch,
}

impl WarmProducer {
    /// Creates the producer and starts watching the broker through it.
    pub fn start(kafka: &KafkaConfig, status: StatusTx, shutdown: Shutdown) -> Result<WarmProducer, RelayError> {
        let (producer, completions) =
            KafkaProducer::new(kafka, &Delivery::AtLeastOnce).map_err(|e| RelayError::Config(e.message))?;
        let watch = spawn_broker_watch(producer.clone(), status, shutdown);
        Ok(WarmProducer { producer, completions, watch })
    }
}
