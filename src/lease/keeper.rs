//! The lease keeper: a task per consumer name that runs the [`Machine`]
//! against the store and publishes this instance's role on a watch channel.
//!
//! Guarantees:
//! - `Active { epoch }` is published only after our compare-and-set was
//!   applied, and is withdrawn (`Lost`) at the renewal deadline on this
//!   instance's monotonic clock even if the store never answers (every store
//!   call is raced against that deadline), or at once when a read shows a
//!   newer epoch.
//! - On shutdown an active holder releases the lease (holder cleared, same
//!   epoch), so a standby takes over at its next read (every TTL/3)
//!   instead of after a TTL; it publishes `Lost` first, so a relay still
//!   running (a shutdown past its deadline) hands nothing new to its
//!   producer from then on (what it handed over before may still be retried
//!   while it drains: the unconfirmed window). A crash leaves about one TTL
//!   without a leader (at most TTL + TTL/3: a standby reads every TTL/3).
//! - A write that failed or did not answer and is read back as written is
//!   adopted (`Machine::unanswered`): no TTL spent standing by on our own row.
//! - Never blocks the append path (the stores keep lease writes off it).

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

use super::machine::{Machine, Step, Timing, View};
use super::pause::PauseHook;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::lease::{Lease, LeaseCas, LeaseStore};

/// This instance's role for one consumer name.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LeaseState {
    /// Not read yet.
    Unknown,
    /// Another instance holds it (holder may be empty: released, about to be taken).
    Standby { holder: String, epoch: i64, ttl_ms: i64 },
    /// We hold it, until `until` on this instance's monotonic clock unless
    /// the keeper renews it (`None`: no deadline, a state driven by a test).
    Active {
        epoch: i64,
        #[serde(skip)]
        until: Option<Instant>,
    },
    /// We held it and lost it (taken over, or not renewed in time).
    Lost { epoch: i64 },
}

/// Equal roles: the deadline of an `Active` is not part of the role (a
/// renewal moves it without waking anyone).
impl PartialEq for LeaseState {
    fn eq(&self, other: &Self) -> bool {
        use LeaseState::*;
        match (self, other) {
            (Unknown, Unknown) => true,
            (Standby { holder: h, epoch: e, ttl_ms: t }, Standby { holder, epoch, ttl_ms }) => {
                (h, e, t) == (holder, epoch, ttl_ms)
            }
            (Active { epoch: e, .. }, Active { epoch, .. }) | (Lost { epoch: e }, Lost { epoch }) => e == epoch,
            _ => false,
        }
    }
}

impl Eq for LeaseState {}

impl LeaseState {
    /// Active at `epoch` with no deadline (a state driven by a test or a
    /// caller that checks the lease itself).
    pub fn active(epoch: i64) -> LeaseState {
        LeaseState::Active { epoch, until: None }
    }

    /// The epoch held now: `Active` and its deadline still ahead on this
    /// instance's clock. Checked by everything that acts as the leader, so
    /// a process frozen past its deadline (a VM pause, a stopped process)
    /// acts on nothing when it wakes, even before its keeper has run and
    /// published the loss.
    pub fn active_epoch(&self) -> Option<i64> {
        match self {
            LeaseState::Active { epoch, until } if until.is_none_or(|u| Instant::now() < u) => Some(*epoch),
            _ => None,
        }
    }
}

/// A running keeper: its state channel, and a way to release on shutdown.
#[derive(Clone)]
pub struct LeaseHandle {
    pub name: String,
    pub instance: String,
    state: watch::Receiver<LeaseState>,
}

impl LeaseHandle {
    pub fn state(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }

    pub fn current(&self) -> LeaseState {
        self.state.borrow().clone()
    }

    /// A handle following `state` with no keeper (tests drive the state).
    #[cfg(test)]
    pub(crate) fn following(state: watch::Receiver<LeaseState>) -> LeaseHandle {
        LeaseHandle { name: "test".into(), instance: "me".into(), state }
    }
}

/// Starts keeping lease `name` for instance `me`. The keeper stops (and releases
/// the lease if it holds it) when `shutdown` fires.
pub fn spawn(
    store: Arc<dyn LeaseStore>,
    name: &str,
    me: &str,
    ttl: Duration,
    metrics: Metrics,
    pause: PauseHook,
    shutdown: Shutdown,
) -> LeaseHandle {
    let (tx, rx) = watch::channel(LeaseState::Unknown);
    let machine = Machine::new(name, me, Timing::from_ttl(ttl));
    let keeper = Keeper { store, machine, tx, metrics, pause, floor_read: false };
    tokio::spawn(keeper.run(shutdown));
    LeaseHandle { name: name.to_string(), instance: me.to_string(), state: rx }
}

struct Keeper {
    store: Arc<dyn LeaseStore>,
    machine: Machine,
    tx: watch::Sender<LeaseState>,
    metrics: Metrics,
    /// The store's epoch floor was read (once, the first time no row was seen).
    floor_read: bool,
    /// Test hook: frozen together with the relay (a zombie leader).
    pause: PauseHook,
}

impl Keeper {
    fn publish(&self, now: Instant) {
        let state = match (&self.machine.view, self.machine.is_active(now)) {
            (_, Some(epoch)) => LeaseState::Active { epoch, until: self.machine.held_until() },
            (View::Active { epoch, .. }, None) => LeaseState::Lost { epoch: *epoch },
            (View::Standby { row, .. }, None) => {
                LeaseState::Standby { holder: row.holder.clone(), epoch: row.epoch, ttl_ms: row.ttl_ms }
            }
            (View::Unknown, None) => match &*self.tx.borrow() {
                LeaseState::Active { epoch, .. } | LeaseState::Lost { epoch } => LeaseState::Lost { epoch: *epoch },
                _ => LeaseState::Unknown,
            },
        };
        let name = self.machine.name.as_str();
        self.metrics.relay_leader.with_label_values(&[name]).set(i64::from(state.active_epoch().is_some()));
        if let LeaseState::Active { epoch, .. } | LeaseState::Standby { epoch, .. } = &state {
            self.metrics.relay_lease_epoch.with_label_values(&[name]).set(*epoch);
        }
        self.tx.send_if_modified(|s| {
            if *s == state {
                // A renewal: the new deadline, visible to every reader
                // without waking them.
                *s = state;
                return false;
            }
            match &state {
                LeaseState::Active { epoch, .. } => {
                    tracing::info!(lease = %name, epoch, "this instance holds the lease (active)")
                }
                LeaseState::Standby { holder, epoch, .. } => {
                    tracing::info!(lease = %name, %holder, epoch, "another instance holds the lease (standby)")
                }
                LeaseState::Lost { epoch } => {
                    tracing::warn!(lease = %name, epoch, "lease lost: stop acting as the leader")
                }
                LeaseState::Unknown => {}
            }
            *s = state;
            true
        });
    }

    /// The instant at which an active holder must stop if no renewal succeeds.
    /// The renewal deadline while it is still ahead. Once it has passed the
    /// loss is published and store calls get the plain `renew_every` bound:
    /// a deadline in the past must never turn the loop into a busy spin.
    fn deadline(&self) -> Option<Instant> {
        match self.machine.view {
            View::Active { renewed, .. } => {
                Some(renewed + self.machine.timing.renew_deadline).filter(|d| *d > Instant::now())
            }
            _ => None,
        }
    }

    /// Runs `f` unless the renewal deadline passes first (then publishes the
    /// loss); a deadline already past is published before `f` starts (woken
    /// at the deadline, a cycle's store calls, bounded by `renew_every` alone
    /// then, could hold the stale Active past the TTL a standby waits).
    async fn bounded<T>(&self, f: impl std::future::Future<Output = T>) -> Option<T> {
        self.publish(Instant::now());
        let limit = self.machine.timing.renew_every.max(Duration::from_millis(50));
        let deadline = self.deadline().map(|d| d.min(Instant::now() + limit)).unwrap_or(Instant::now() + limit);
        tokio::select! {
            v = f => Some(v),
            _ = tokio::time::sleep_until(deadline.into()) => {
                self.publish(Instant::now());
                None
            }
        }
    }

    /// A read of `what`, bounded by the renewal deadline; `None` (logged)
    /// when the store failed or did not answer.
    async fn answered<T>(
        &self,
        name: &str,
        what: &str,
        read: impl std::future::Future<Output = Result<T, crate::store::StoreError>>,
    ) -> Option<T> {
        match self.bounded(read).await {
            Some(Ok(v)) => Some(v),
            Some(Err(e)) => {
                tracing::warn!(lease = %name, error = %e, "cannot read {what}; retrying");
                None
            }
            None => {
                tracing::warn!(lease = %name, "{what} did not answer before the renewal deadline");
                None
            }
        }
    }

    /// One read of the lease and the write the machine decides on it, if
    /// any; false when the store failed or did not answer (retried sooner).
    async fn cycle(&mut self, name: &str) -> bool {
        let was_standby_epoch = match &self.machine.view {
            View::Standby { row, .. } => Some(row.epoch),
            _ => None,
        };
        let Some(row) = self.answered(name, "the lease", self.store.lease_get(name)).await else { return false };
        if row.is_none() && self.machine.knows_no_epoch() && !self.floor_read {
            let what = "the lease's epoch floor";
            let Some(floor) = self.answered(name, what, self.store.lease_epoch_floor(name)).await else { return false };
            if floor > 0 {
                tracing::warn!(lease = %name, floor, "no lease row, but terms up to epoch {floor} fenced this consumer's tables: creating it above that after one TTL");
            }
            self.machine.epoch_floor(floor);
            self.floor_read = true;
        }
        let Step::Write(mut cas) = self.machine.decide(row.as_ref(), Instant::now()) else { return true };
        let previous = row.as_ref().map(|r| r.holder.clone()).unwrap_or_default();
        let sent = Instant::now();
        cas.new.holder = self.machine.me.clone();
        match self.bounded(self.store.lease_cas(&cas)).await {
            Some(Ok(true)) => {
                if was_standby_epoch.is_some() && cas.expected.is_some() {
                    self.metrics.relay_lease_takeovers.with_label_values(&[name]).inc();
                    // A holder that stopped cleanly cleared its name: a
                    // handover, not a failure. A lapsed holder is the
                    // failure an operator must hear about.
                    if previous.is_empty() {
                        tracing::info!(lease = %name, epoch = cas.new.epoch, "took the lease over (its holder released it)");
                    } else {
                        tracing::warn!(lease = %name, epoch = cas.new.epoch, %previous, "took the lease over: its holder stopped renewing it");
                    }
                }
                self.machine.applied(&cas, sent);
                true
            }
            Some(Ok(false)) => {
                self.machine.rejected(Instant::now());
                true
            }
            Some(Err(e)) => {
                tracing::warn!(lease = %name, error = %e, "lease write failed; retrying");
                self.machine.unanswered(cas, sent);
                false
            }
            None => {
                tracing::warn!(lease = %name, "lease write did not answer before the renewal deadline");
                self.machine.unanswered(cas, sent);
                false
            }
        }
    }

    async fn run(mut self, mut shutdown: Shutdown) {
        let name = self.machine.name.clone();
        loop {
            if shutdown.is_shutdown() {
                break;
            }
            self.pause.hold().await;
            let answered = self.cycle(&name).await;
            self.publish(Instant::now());
            // Sleep until the next renewal/read (sooner after a failure), but
            // wake at the deadline to publish a loss.
            let pause = if answered { self.machine.pause() } else { self.machine.retry_pause() };
            let wake = self.deadline().map(|d| d.min(Instant::now() + pause)).unwrap_or(Instant::now() + pause);
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = shutdown.recv() => break,
            }
        }
        self.release().await;
    }

    /// Gives the lease up (holder cleared, same epoch and counter + 1) so a standby need not wait a TTL.
    async fn release(&mut self) {
        let View::Active { epoch, counter, .. } = self.machine.view else {
            // Not holding it, as far as we know: a takeover or creation sent
            // without an answer may have landed all the same (our row, in
            // no one's hands once we stop): given back if read back as ours.
            if let Some(sent) = self.machine.last_unanswered().cloned() {
                self.release_refused(Self::release_of(&sent.new)).await;
            }
            return;
        };
        // Past its renewal deadline (renewals failing) it is still given
        // back: the release is a compare-and-set on our (epoch, counter), so
        // it lands only if no one took the lease over meanwhile.
        // Whatever still watches the lease (a relay that outlived a shutdown
        // past its deadline) stops before a standby can take it over.
        self.tx.send_replace(LeaseState::Lost { epoch });
        let name = self.machine.name.clone();
        let cas = Self::release_of(&Lease {
            name: name.clone(),
            holder: self.machine.me.clone(),
            epoch,
            counter,
            ttl_ms: self.machine.timing.ttl.as_millis() as i64,
        });
        match tokio::time::timeout(Duration::from_secs(2), self.store.lease_cas(&cas)).await {
            Ok(Ok(true)) => tracing::info!(lease = %name, epoch, "lease released"),
            Ok(Ok(false)) => self.release_refused(cas).await,
            Ok(Err(e)) => {
                tracing::warn!(lease = %name, error = %e, "cannot release the lease; a standby takes over after the TTL")
            }
            Err(_) => tracing::warn!(lease = %name, "lease release timed out; a standby takes over after the TTL"),
        }
        self.machine.view = View::Unknown;
        self.metrics.relay_leader.with_label_values(&[&name]).set(0);
        let _ = self.tx.send(LeaseState::Lost { epoch });
    }

    /// The release of `held`: holder cleared, same epoch, counter + 1.
    fn release_of(held: &Lease) -> LeaseCas {
        LeaseCas {
            expected: Some((held.epoch, held.counter)),
            new: Lease { holder: String::new(), counter: held.counter + 1, ..held.clone() },
        }
    }

    /// A refused release: a renewal that applied with its reply lost left
    /// our counter behind the row. Re-read it once (bounded) and release
    /// what is still ours at this epoch; say so when it is not ours.
    async fn release_refused(&self, mut cas: LeaseCas) {
        let name = cas.new.name.clone();
        let epoch = cas.new.epoch;
        // Both steps within what is left of the daemon's 3 s for the keepers.
        let row = tokio::time::timeout(Duration::from_millis(400), self.store.lease_get(&name)).await;
        let Ok(Ok(Some(row))) = row else {
            tracing::warn!(lease = %name, "lease release refused and the lease cannot be re-read; a standby takes over after the TTL");
            return;
        };
        if row.holder != self.machine.me || row.epoch != epoch {
            tracing::info!(lease = %name, holder = %row.holder, epoch = row.epoch, "lease not released: it is no longer ours");
            return;
        }
        cas.expected = Some((epoch, row.counter));
        cas.new.counter = row.counter + 1;
        match tokio::time::timeout(Duration::from_millis(400), self.store.lease_cas(&cas)).await {
            Ok(Ok(true)) => tracing::info!(lease = %name, epoch, "lease released (after re-reading its counter)"),
            _ => tracing::warn!(lease = %name, "cannot release the lease; a standby takes over after the TTL"),
        }
    }
}
