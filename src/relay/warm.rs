//! The next term's producer, made before the term: while an instance stands
//! by for the lease, its producer connects and is watched like an active
//! one's.
//!
//! Guarantees:
//! - At-least-once: a standby that takes over publishes at once. librdkafka's
//!   first attempt at an idempotent producer id, made before any broker is
//!   up, re-arms a fixed 500 ms timer; made ahead of the term, the id is
//!   acquired before the lease comes (a takeover waits one lease TTL).
//! - Exactly-once: a transactional producer takes no producer id before
//!   `init_transactions`, the term's first step, so one made ahead fences
//!   no one while its instance stands by.
//! - /health on a standby is true about the broker: the watch
//!   ([`spawn_broker_watch`]) probes it from this producer, so a standby that
//!   could not publish if it took over says so.
//! - Nothing is published before the term: the producer gets records only
//!   from the term that owns it ([`Relay::run_warm`](super::pipeline::Relay::run_warm),
//!   `Relay::run_exactly_once_warm`, and on the Scylla CDC relay
//!   `Deliverer::with_producer`); each term has a fresh one (a term
//!   ending purges and drops its own).

use tokio::sync::mpsc;

use crate::config::KafkaConfig;
use crate::relay::broker_watch::{spawn_broker_watch, BrokerWatch};
use crate::relay::pipeline::RelayError;
use crate::relay::producer::{Completion, Delivery, KafkaProducer};
use crate::relay::status::StatusTx;
use crate::shutdown::Shutdown;

/// A connected producer, its delivery reports and its watch.
pub struct WarmProducer {
    pub(crate) producer: KafkaProducer,
    pub(crate) completions: mpsc::UnboundedReceiver<Completion>,
    pub(crate) watch: BrokerWatch,
}

impl WarmProducer {
    /// Creates the producer and starts watching the broker through it.
    pub fn start(
        kafka: &KafkaConfig,
        delivery: &Delivery,
        status: StatusTx,
        shutdown: Shutdown,
    ) -> Result<WarmProducer, RelayError> {
        let (producer, completions) = KafkaProducer::new(kafka, delivery).map_err(|e| RelayError::Config(e.message))?;
        let watch = spawn_broker_watch(producer.clone(), status, shutdown);
        Ok(WarmProducer { producer, completions, watch })
    }
}
