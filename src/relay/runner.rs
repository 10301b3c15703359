//! The relay of one instance among several: wait for the consumer's lease,
//! run relay terms while holding it, stand by otherwise.
//!
//! Guarantees:
//! - Only the lease holder publishes: a term starts only with `Active {
//!   epoch }` and ends (producer purged, nothing more written) as soon as the
//!   keeper withdraws it; every checkpoint write of the term is fenced by
//!   `epoch` in the store; in exactly-once mode the broker fences too
//!   (`init_transactions` of the new holder).
//! - A term that ends because of a rewind, a lost lease or a producer that
//!   must be recreated is followed by a new term (after re-checking the
//!   lease); only shutdown or a configuration error ends the runner.
//! - Each term's producer is made before the lease is waited for
//!   ([`WarmProducer`]): a standby is connected when it takes over, and its
//!   /health says whether it could publish (exactly-once: no producer id is
//!   taken, so no one is fenced, before the term's `init_transactions`).
//! - The role is published in the relay status at once (`standby`,
//!   `active`, with the holder and epoch), so /health and the metrics are
//!   true on every instance.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, DeliveryMode};
use crate::lease::gate::wait_held;
use crate::lease::keeper::{LeaseHandle, LeaseState};
use crate::metrics::Metrics;
use crate::relay::exactly_once::transactional;
use crate::relay::operator::Unsaved;
use crate::relay::pipeline::{Exit, Fence, Relay, RelayError};
use crate::relay::producer::Delivery;
use crate::relay::sink::DeadLetterSink;
use crate::relay::status::{Role, StatusTx};
use crate::relay::warm::WarmProducer;
use crate::shutdown::Shutdown;
use crate::store::DynStore;

/// Everything a relay term needs, kept across terms.
pub struct RelayRunner {
    pub config: Arc<Config>,
    pub store: DynStore,
    pub metrics: Metrics,
    pub status: StatusTx,
    pub sink: Arc<dyn DeadLetterSink>,
    /// None: run unfenced (one instance only: library use and benchmarks).
    pub lease: Option<LeaseHandle>,
    pub pause: crate::lease::pause::PauseHook,
    /// Request outcomes a term could not record, for a later term at the
    /// same epoch: kept by the caller across runners (the actor's restarts).
    pub unsaved: Unsaved,
}

impl RelayRunner {
    /// Runs until shutdown; Err only for a configuration the relay cannot run with.
    pub async fn run(self, mut shutdown: Shutdown) -> Result<(), RelayError> {
        let mut fatal_restarts: u32 = 0;
        loop {
            // The term's producer is made before the lease is (see `warm`):
            // connected (at-least-once: holding its producer id) when the
            // term starts, and /health on a standby reads its broker state.
            let delivery = match self.config.relay.delivery {
                DeliveryMode::AtLeastOnce => Delivery::AtLeastOnce,
                DeliveryMode::ExactlyOnce => transactional(&self.config.relay),
            };
            let warm = WarmProducer::start(&self.config.kafka, &delivery, self.status.clone(), shutdown.clone())?;
            let fence = match &self.lease {
                None => {
                    self.status.update(|s| {
                        s.role = Role::Unfenced;
                        true
                    });
                    None
                }
                Some(l) => match self.wait_active(l, &mut shutdown).await {
                    Some(f) => Some(f),
                    None if shutdown.is_shutdown() => return Ok(()),
                    // Not a term without a keeper: the supervisor restarts
                    // (and, past its budget, stops the daemon).
                    None => return Err(RelayError::LeaseKeeperGone),
                },
            };
            let relay = Relay::new(self.config.clone(), self.store.clone(), self.metrics.clone(), self.status.clone())
                .with_sink(self.sink.clone())
                .with_pause(self.pause.clone())
                .with_unsaved(self.unsaved.clone());
            let term_epoch = fence.as_ref().map(|f| f.epoch);
            // The keeper's state as the term starts (seen): a change during
            // the term tells a withdrawn lease from a fence elsewhere.
            let mut term_lease = self.lease.as_ref().map(LeaseHandle::state);
            if let Some(rx) = term_lease.as_mut() {
                rx.borrow_and_update();
            }
            let relay = match fence {
                Some(f) => relay.with_fence(f),
                None => relay,
            };
            let term_started = std::time::Instant::now();
            let exit = match self.config.relay.delivery {
                DeliveryMode::AtLeastOnce => relay.run_warm(warm, shutdown.clone()).await,
                DeliveryMode::ExactlyOnce => relay.run_exactly_once_warm(warm, shutdown.clone()).await,
            };
            // The term's breaker is gone with it (its gauge reads closed again).
            self.status.breaker(crate::relay::breaker::BreakerState::Closed);
            match exit {
                Ok(Exit::Shutdown) => return Ok(()),
                Ok(Exit::LeaseLost) => {
                    let Some(lease) = &self.lease else { return Ok(()) };
                    let state = lease.state().borrow().clone();
                    let changed = term_lease.as_ref().is_none_or(|rx| rx.has_changed().unwrap_or(true));
                    if fenced_while_held(&state, term_epoch, changed) {
                        // The store or the broker fenced the term while our
                        // keeper still holds that epoch: the next term would
                        // start at once under it, and be fenced again (two
                        // instances sharing a consumer name on different
                        // stores fence each other's transactional producer
                        // for ever). Backed off as a failed term; the keeper
                        // learns of a takeover meanwhile.
                        let e = format!("relay term fenced (by the store or the broker) while this instance's lease is still at epoch {}: another instance publishes as consumer {} (relay.consumer_name must be distinct per store), or, with exactly-once, the broker aborted a transaction that outlived relay.transaction_timeout_ms (a slow broker)", term_epoch.unwrap_or_default(), self.config.relay.consumer_name);
                        if !self.after_failed_term(&mut fatal_restarts, term_started, e, &mut shutdown).await {
                            return Ok(());
                        }
                    } else {
                        tracing::warn!("relay term ended: the lease is gone; standing by");
                    }
                }
                Ok(Exit::Rewound(to)) => {
                    tracing::info!(to, "relay rewound; starting a new term from the rewound checkpoint")
                }
                Err(e @ (RelayError::ProducerFatal(_) | RelayError::Store(_))) => {
                    if !self.after_failed_term(&mut fatal_restarts, term_started, e.to_string(), &mut shutdown).await {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
            if shutdown.is_shutdown() {
                return Ok(());
            }
        }
    }

    /// After a failed term: says why (log, /health) and backs off before
    /// the next (false on shutdown). Failures in a row back off longer; a
    /// term that ran a while first starts the count again (it never went down).
    async fn after_failed_term(
        &self,
        restarts: &mut u32,
        term_started: std::time::Instant,
        error: String,
        shutdown: &mut Shutdown,
    ) -> bool {
        *restarts = next_restarts(*restarts, term_started.elapsed());
        tracing::error!(error = %error, restarts = *restarts, "relay term failed; re-checking the lease and starting a new term");
        self.status.error(error);
        let lease = self.lease.as_ref().map(LeaseHandle::state);
        pause_between_terms(term_backoff(*restarts), lease, &self.status, shutdown).await
    }

    /// Waits until this instance holds the lease; publishes the role meanwhile.
    async fn wait_active(&self, lease: &LeaseHandle, shutdown: &mut Shutdown) -> Option<Fence> {
        let mut rx = lease.state();
        let epoch = wait_held(&mut rx, shutdown, |s| self.status.lease_role(s)).await?;
        Some(Fence { epoch, lease: rx })
    }
}

/// The wait after `failures` failed terms (or term starts) in a row: 200 ms
/// doubling, 12.8 s at most.
pub fn term_backoff(failures: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << failures.min(6)))
}

/// Runs `op` until it succeeds, fails for good (`permanent`), or `term`
/// ends (None). A step of a term's start that fails for a moment (the
/// store or the broker unavailable) is retried in the term, with
/// [`term_backoff`], each failure said on /health (`cannot <what>`): handed
/// to a supervisor it would use up the restart budget in seconds (fast
/// failures, exit 70); read as an answer it would start the term wrong.
pub async fn retry_in_term<T, E, F, Fut>(
    mut op: F,
    permanent: impl Fn(&E) -> bool,
    what: &str,
    term: &mut Shutdown,
    status: &StatusTx,
) -> Option<Result<T, E>>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut failures: u32 = 0;
    loop {
        match op().await {
            Err(e) if !permanent(&e) => {
                failures += 1;
                tracing::warn!(error = %e, failures, "cannot {what} yet; retrying");
                status.error(format!("cannot {what}: {e}"));
                if !term.sleep(term_backoff(failures)).await {
                    return None;
                }
            }
            done => return Some(done),
        }
    }
}

/// Waits `wait` between a failed term and the next (false on shutdown),
/// publishing the role as the lease changes meanwhile: a lease lost or
/// taken over during the wait (up to 12.8 s) no longer leaves /health
/// saying "active" beside the new holder. A keeper gone meanwhile leaves
/// the plain wait (the next `wait_active` reports it).
async fn pause_between_terms(
    wait: Duration,
    lease: Option<tokio::sync::watch::Receiver<crate::lease::keeper::LeaseState>>,
    status: &StatusTx,
    shutdown: &mut Shutdown,
) -> bool {
    let Some(mut rx) = lease else { return shutdown.sleep(wait).await };
    status.lease_role(&rx.borrow_and_update());
    let sleep = shutdown.sleep(wait);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            alive = &mut sleep => return alive,
            changed = rx.changed() => match changed {
                Ok(()) => status.lease_role(&rx.borrow_and_update()),
                Err(_) => return (&mut sleep).await,
            },
        }
    }
}

/// Whether a term that ended with its lease lost ended while the keeper
/// held the term's epoch all along (`changed`: whether the keeper's state
/// changed during the term): fenced by the store or the broker, not by the
/// keeper, so the next term would start at once under the same epoch. A
/// keeper that withdrew the lease and got it back (a renewal that missed
/// its deadline, then landed) changed its state: not fenced.
fn fenced_while_held(state: &LeaseState, term_epoch: Option<i64>, changed: bool) -> bool {
    !changed && term_epoch.is_some() && state.active_epoch() == term_epoch
}

/// Consecutive term failures: `previous + 1`, or 1 when the failed term ran
/// at least a minute (failures days apart are not a crash loop).
fn next_restarts(previous: u32, term_ran: Duration) -> u32 {
    if term_ran >= Duration::from_secs(60) {
        1
    } else {
        previous.saturating_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::relay::status::RelayStatus;
    use crate::store::StoreError;

    /// Review finding: a term fenced by the store or the broker while the
    /// keeper still held its epoch was followed by the next term at once,
    /// under the same epoch, fenced again: a loop without backoff.
    #[test]
    fn a_term_fenced_while_its_epoch_is_held_is_told_from_a_lost_lease() {
        let active = LeaseState::active;
        assert!(fenced_while_held(&active(5), Some(5), false), "the keeper held it all along: fenced elsewhere");
        // Last-read finding: a keeper that withdrew the lease (a late
        // renewal) and got it back at the same epoch is no fence elsewhere.
        assert!(!fenced_while_held(&active(5), Some(5), true), "withdrawn and regained meanwhile");
        assert!(!fenced_while_held(&active(6), Some(5), false), "a new epoch: a new term");
        let standby = LeaseState::Standby { holder: "b".into(), epoch: 6, ttl_ms: 3_000 };
        assert!(!fenced_while_held(&standby, Some(5), false), "the keeper lost it: stand by");
        assert!(!fenced_while_held(&LeaseState::Lost { epoch: 5 }, Some(5), false));
        assert!(!fenced_while_held(&active(5), None, false), "unfenced relay");
    }

    /// Review finding: a store error at a CDC term's start went to the
    /// supervisor, whose budget it used up in seconds (exit 70) while the
    /// lease was still held. It is retried within the term, until it
    /// succeeds, is refused for good (fenced), or the term ends.
    #[tokio::test(start_paused = true)]
    async fn a_store_error_at_term_start_is_retried_within_the_term() {
        let (tx, rx) = tokio::sync::watch::channel(RelayStatus::default());
        let status = StatusTx::new(tx);
        let trigger = crate::shutdown::Trigger::new();
        let calls = std::sync::atomic::AtomicU32::new(0);
        let fenced = |e: &StoreError| matches!(e, StoreError::Fenced { .. });
        let op = || async {
            match calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0..8 => Err(StoreError::Unavailable("no quorum".into())),
                _ => Ok(7),
            }
        };
        let r = retry_in_term(op, fenced, "fence", &mut trigger.subscribe(), &status).await;
        assert!(matches!(r, Some(Ok(7))), "{r:?}");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 9, "eight failures retried");
        assert!(rx.borrow().last_error.as_deref().unwrap_or_default().contains("no quorum"));

        // Fenced: no retry.
        let r = retry_in_term(
            || async { Err::<(), _>(StoreError::Fenced { name: "kafka-relay".into(), epoch: 2, current: Some(3) }) },
            fenced,
            "fence",
            &mut trigger.subscribe(),
            &status,
        )
        .await;
        assert!(matches!(r, Some(Err(StoreError::Fenced { .. }))), "{r:?}");

        // The term ends while it retries: None.
        let mut term = trigger.subscribe();
        let retrying = tokio::spawn(async move {
            let status = status;
            retry_in_term(
                || async { Err::<(), _>(StoreError::Unavailable("down".into())) },
                fenced,
                "fence",
                &mut term,
                &status,
            )
            .await
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!retrying.is_finished());
        trigger.fire();
        assert!(retrying.await.unwrap().is_none());
    }

    /// Review finding: the wait after a failed term did not watch the
    /// lease, so an instance whose lease was taken over meanwhile still
    /// said "active, epoch N" beside the new holder for up to 12.8 s.
    #[tokio::test(start_paused = true)]
    async fn the_wait_after_a_failed_term_publishes_the_role() {
        let (status_tx, status_rx) = tokio::sync::watch::channel(RelayStatus::default());
        let status = StatusTx::new(status_tx);
        let (lease_tx, lease_rx) = tokio::sync::watch::channel(LeaseState::active(3));
        let trigger = crate::shutdown::Trigger::new();
        let mut shutdown = trigger.subscribe();
        let waiting = tokio::spawn({
            let status = status.clone();
            async move { pause_between_terms(Duration::from_secs(10), Some(lease_rx), &status, &mut shutdown).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(status_rx.borrow().role, Role::Active { epoch: 3 });
        lease_tx.send(LeaseState::Standby { holder: "b".into(), epoch: 4, ttl_ms: 3000 }).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(status_rx.borrow().role, Role::Standby { holder: "b".into(), epoch: 4 }, "during the wait");
        // The keeper gone: the wait still ends when it is due.
        drop(lease_tx);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished(), "not before its 10 s");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(waiting.await.unwrap(), "the wait ended, not a shutdown");

        // Shutdown during the wait ends it at once.
        let (_lease_tx, lease_rx) = tokio::sync::watch::channel(LeaseState::active(5));
        let mut shutdown = trigger.subscribe();
        let waiting = tokio::spawn({
            let status = status.clone();
            async move { pause_between_terms(Duration::from_secs(10), Some(lease_rx), &status, &mut shutdown).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        trigger.fire();
        assert!(!waiting.await.unwrap(), "shutdown");
    }

    /// Review finding: the count never went down, so after six failures
    /// spread over days every failure stopped publishing for 12.8 s.
    #[test]
    fn a_term_that_ran_a_while_starts_the_failure_count_again() {
        assert_eq!(next_restarts(0, Duration::from_millis(50)), 1);
        assert_eq!(next_restarts(6, Duration::from_millis(50)), 7);
        assert_eq!(next_restarts(6, Duration::from_secs(3600)), 1);
        assert_eq!(next_restarts(u32::MAX, Duration::ZERO), u32::MAX);
    }
}
