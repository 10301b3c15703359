//! The broker watch: mirrors the producer's broker state into the relay
//! status, and asks the cluster itself whenever no broker is known to answer.
//!
//! Guarantee: the state /health shows does not stay stale on an idle relay.
//! Deliveries and librdkafka's error callback move the state while records
//! flow; with nothing to publish there is no delivery to learn from, so while
//! the state is `Unknown` (just started) or `Unreachable` (a connection
//! failed) the watch probes the cluster (a metadata request through the
//! producer's own client): at once when the state is unknown, then every
//! [`PROBE_INTERVAL`]. A broker that answers makes it `Reachable` without a
//! single event published; one that does not keeps it `Unreachable` with the
//! probe's error. While `Reachable` nothing is probed. The watch holds a
//! clone of the producer, so it lives exactly as long as its [`BrokerWatch`]
//! handle: a term that ends by any path (an error included) drops the
//! handle, which stops the watch and lets the producer go.

use std::time::Duration;

use crate::relay::producer::{BrokerState, KafkaProducer};
use crate::relay::status::StatusTx;
use crate::shutdown::{AbortOnDrop, Shutdown};

/// Between two probes while no broker is known to answer.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How long one probe waits for a metadata answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The running watch; dropping it stops the watch.
pub(crate) type BrokerWatch = AbortOnDrop;

/// Starts the watch; it ends on shutdown, when the producer is gone, or when
/// the returned handle is dropped.
pub(crate) fn spawn_broker_watch(producer: KafkaProducer, status: StatusTx, mut shutdown: Shutdown) -> BrokerWatch {
    AbortOnDrop::spawn(async move {
        let mut b = producer.broker();
        loop {
            let state = b.borrow_and_update().clone();
            status.broker(&state);
            let probe_in = match state {
                BrokerState::Reachable { .. } => None,
                BrokerState::Unknown => Some(Duration::ZERO),
                BrokerState::Unreachable { .. } => Some(PROBE_INTERVAL),
            };
            tokio::select! {
                r = b.changed() => if r.is_err() { return },
                _ = shutdown.recv() => return,
                // The answer (or the error) arrives through the producer's
                // broker state: Reachable, or Unreachable with the probe's
                // error, after which the next probe waits an interval.
                _ = probe_after(probe_in) => { let _ = producer.probe(PROBE_TIMEOUT).await; }
            }
        }
    })
}

async fn probe_after(delay: Option<Duration>) {
    match delay {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KafkaConfig;
    use crate::relay::producer::Delivery;
    use crate::relay::status::RelayStatus;
    use crate::shutdown::Trigger;

    /// A term that returns early (an error path) drops its handle before
    /// shutdown: the watch must stop and release the producer then, not at
    /// shutdown. The producer's broker channel closes only when its last
    /// clone is gone.
    #[tokio::test]
    async fn dropping_the_handle_releases_the_producer_before_shutdown() {
        let cfg = KafkaConfig { brokers: "127.0.0.1:1".into(), ..KafkaConfig::default() };
        let (producer, _reports) = KafkaProducer::new(&cfg, &Delivery::AtLeastOnce).unwrap();
        let mut broker = producer.broker();
        let status = StatusTx::new(tokio::sync::watch::channel(RelayStatus::default()).0);
        let trigger = Trigger::new();
        let watch = spawn_broker_watch(producer, status, trigger.subscribe());
        drop(watch);
        let closed =
            tokio::time::timeout(Duration::from_secs(20), async { while broker.changed().await.is_ok() {} }).await;
        assert!(closed.is_ok(), "the producer outlived its dropped watch");
        assert!(!trigger.is_fired());
    }
}
