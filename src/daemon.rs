//! `outboxd run`: wires the store, the relay and the servers, and turns
//! SIGINT/SIGTERM into one shutdown signal.
//!
//! Guarantee: on a signal the relay stops reading, waits for in-flight
//! deliveries, persists its checkpoint, and the process exits 0.

use crate::config::Config;
use crate::metrics::Metrics;
use crate::relay::Relay;
use crate::shutdown::Trigger;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Relay(#[from] crate::relay::pipeline::RelayError),
    #[error("{0}")]
    Other(String),
}

/// SIGINT/SIGTERM, registered as soon as it is created (before any slow
/// startup work), so an early signal is never lost.
pub struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    pub fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals { term: signal(SignalKind::terminate()).ok() }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Waits for SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            let term = async {
                match self.term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs until a signal; returns the process exit code.
pub async fn run(cfg: Config) -> Result<u8, DaemonError> {
    let mut signals = Signals::install();
    let store = crate::store::open(&cfg).await?;
    store.migrate().await?;
    let metrics = Metrics::new();
    let mut trigger = Trigger::new();
    let relay = Relay::new(&cfg, store.clone(), metrics.clone())?;
    let sd = trigger.subscribe();
    let task = tokio::spawn(relay.run(sd));
    signals.recv().await;
    tracing::info!("shutdown signal received");
    trigger.fire();
    let _ = task.await;
    trigger.wait_drained().await;
    Ok(0)
}
