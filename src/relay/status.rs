//! What the relay publishes about itself: role, progress, broker, breaker,
//! feed and parking state. Read by /health (through the health actor) and
//! the supervising actor; written only by the relay.
//!
//! Guarantees:
//! - Nothing is optimistic: a state that is not known yet is `unknown`
//!   (`BrokerState::Unknown`, `FeedState::Unknown`, `checkpoint: None`),
//!   never reported as fine.
//! - Every state change (broker lost, breaker opened, feed failing, an
//!   aggregate parked, leadership) is published at once (`watch` channel);
//!   only the delivered counter is folded in at most every 50 ms under load.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

use crate::lease::keeper::LeaseState;
use crate::relay::breaker::BreakerState;
use crate::relay::producer::BrokerState;

/// This instance's part in the relay (several instances may share a store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Role {
    /// Not started, or the lease has not been read yet.
    Unknown,
    /// Holds the lease: this instance publishes.
    Active { epoch: i64 },
    /// Another instance holds the lease.
    Standby { holder: String, epoch: i64 },
    /// Runs without a lease (single-instance library use and tests).
    Unfenced,
}

impl Role {
    /// The role a state of the relay lease means.
    pub fn of(lease: &LeaseState) -> Role {
        match lease {
            LeaseState::Active { epoch, .. } => Role::Active { epoch: *epoch },
            LeaseState::Standby { holder, epoch, .. } => Role::Standby { holder: holder.clone(), epoch: *epoch },
            LeaseState::Unknown | LeaseState::Lost { .. } => Role::Unknown,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Role::Unknown => "unknown",
            Role::Active { .. } | Role::Unfenced => "active",
            Role::Standby { .. } => "standby",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum FeedState {
    Unknown,
    Ok,
    /// Reads fail since `since` (`errors` consecutive failures).
    Failing {
        since: DateTime<Utc>,
        errors: u64,
        error: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct RelayStatus {
    #[serde(flatten)]
    pub role: Role,
    /// The relay task runs (as leader or unfenced).
    pub running: bool,
    /// `at-least-once` or `exactly-once`.
    pub delivery: &'static str,
    /// Persisted checkpoint (None until the relay has read it).
    pub checkpoint: Option<i64>,
    pub broker: BrokerState,
    pub breaker: BreakerState,
    pub feed: FeedState,
    /// Aggregates held behind an event that can never be published.
    pub parked_aggregates: u64,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub last_error: Option<String>,
    /// CQL backend: the CDC feed's unknown-outcome appends (absent elsewhere).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconciliation: Option<Reconciliation>,
    pub updated_at: DateTime<Utc>,
}

/// The CDC feed's recorded unknown-outcome appends not yet confirmed
/// published: the input of the reconciliation verdict
/// (`relay::cdc::health::reconcile_health`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reconciliation {
    pub pending: usize,
    /// Age of the oldest pending append when last looked at.
    pub oldest_pending_ms: Option<u64>,
    /// Age from which a pending append is overdue.
    pub bound_ms: u64,
}

impl Default for RelayStatus {
    fn default() -> Self {
        RelayStatus {
            role: Role::Unknown,
            running: false,
            delivery: "at-least-once",
            checkpoint: None,
            broker: BrokerState::Unknown,
            breaker: BreakerState::Closed,
            feed: FeedState::Unknown,
            parked_aggregates: 0,
            delivered: 0,
            dead_lettered: 0,
            last_error: None,
            reconciliation: None,
            updated_at: Utc::now(),
        }
    }
}

/// How often the delivered counter is folded into the published status under load.
const FOLD_EVERY: Duration = Duration::from_millis(50);

/// The writer side of the status channel (cheap to clone).
#[derive(Clone)]
pub struct StatusTx {
    tx: watch::Sender<RelayStatus>,
    pending: Arc<Mutex<(u64, Instant)>>,
}

impl StatusTx {
    pub fn new(tx: watch::Sender<RelayStatus>) -> StatusTx {
        StatusTx { tx, pending: Arc::new(Mutex::new((0, Instant::now()))) }
    }

    pub fn sender(&self) -> &watch::Sender<RelayStatus> {
        &self.tx
    }

    pub fn subscribe(&self) -> watch::Receiver<RelayStatus> {
        self.tx.subscribe()
    }

    pub fn get(&self) -> RelayStatus {
        self.tx.borrow().clone()
    }

    /// Applies `f`; readers are woken only if something changed.
    pub fn update(&self, f: impl FnOnce(&mut RelayStatus) -> bool) {
        self.tx.send_if_modified(|s| {
            let changed = f(s);
            if changed {
                s.updated_at = Utc::now();
            }
            changed
        });
    }

    /// Publishes the role a state of the relay lease means, as the relay
    /// waits for the lease: an instance without it runs no term.
    pub fn lease_role(&self, lease: &LeaseState) {
        let role = Role::of(lease);
        self.update(|s| {
            if s.role == role {
                return false;
            }
            if !matches!(role, Role::Active { .. }) {
                s.running = false;
            }
            // What the feed did belongs to the former role's term: a new
            // term has not read it yet (an old failure would report a term
            // held up elsewhere, e.g. creating topics, as a store outage).
            s.feed = FeedState::Unknown;
            s.role = role;
            true
        });
    }

    /// A CDC term's feed runs (`true`) or ended. The CDC reader has no
    /// read-by-read state: running, its feed reads (its progress is
    /// watched by the CDC age rules); its errors end the term.
    pub fn cdc_feed_running(&self, running: bool, error: Option<String>) {
        self.update(|s| {
            s.running = running;
            s.feed = if running { FeedState::Ok } else { FeedState::Unknown };
            if let Some(e) = error {
                s.last_error = Some(e);
            }
            true
        });
    }

    pub fn feed_ok(&self) {
        self.update(|s| {
            if s.feed == FeedState::Ok {
                return false;
            }
            s.feed = FeedState::Ok;
            true
        });
    }

    pub fn feed_failed(&self, error: String) {
        self.update(|s| {
            s.feed = match &s.feed {
                FeedState::Failing { since, errors, .. } => {
                    FeedState::Failing { since: *since, errors: errors + 1, error: error.clone() }
                }
                _ => FeedState::Failing { since: Utc::now(), errors: 1, error: error.clone() },
            };
            s.last_error = Some(error);
            true
        });
    }

    pub fn broker(&self, b: &BrokerState) {
        self.update(|s| {
            if s.broker == *b {
                return false;
            }
            if let BrokerState::Unreachable { error, .. } = b {
                s.last_error = Some(error.clone());
            }
            s.broker = b.clone();
            true
        });
    }

    pub fn breaker(&self, b: BreakerState) {
        self.update(|s| {
            if s.breaker == b {
                return false;
            }
            s.breaker = b;
            true
        });
    }

    pub fn checkpoint(&self, position: i64) {
        self.update(|s| {
            if s.checkpoint == Some(position) {
                return false;
            }
            s.checkpoint = Some(position);
            true
        });
    }

    pub fn error(&self, error: String) {
        self.update(|s| {
            s.last_error = Some(error);
            true
        });
    }

    /// Counts `n` confirmed deliveries; published at most every 50 ms (or on `flush`).
    pub fn delivered(&self, n: u64) {
        let due = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.0 += n;
            if p.1.elapsed() >= FOLD_EVERY {
                let v = p.0;
                *p = (0, Instant::now());
                Some(v)
            } else {
                None
            }
        };
        if let Some(v) = due {
            self.update(|s| {
                s.delivered += v;
                true
            });
        }
    }

    /// Publishes counted deliveries now (when idle).
    pub fn flush(&self) {
        let v = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let v = p.0;
            *p = (0, Instant::now());
            v
        };
        if v > 0 {
            self.update(|s| {
                s.delivered += v;
                true
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each lease state publishes its role; losing or never holding the
    /// lease marks the relay not running, and an unchanged role wakes no one.
    #[test]
    fn the_lease_state_sets_the_role_and_a_standby_runs_nothing() {
        let (tx, mut rx) = watch::channel(RelayStatus::default());
        let status = StatusTx::new(tx);
        status.lease_role(&LeaseState::active(3));
        assert_eq!(rx.borrow_and_update().role, Role::Active { epoch: 3 });
        status.update(|s| {
            s.running = true;
            true
        });
        rx.borrow_and_update();
        status.lease_role(&LeaseState::active(3));
        assert!(!rx.has_changed().unwrap(), "the same role again is no change");
        status.lease_role(&LeaseState::Lost { epoch: 3 });
        let s = rx.borrow_and_update().clone();
        assert_eq!((s.role, s.running), (Role::Unknown, false));
        status.lease_role(&LeaseState::Standby { holder: "b".into(), epoch: 4, ttl_ms: 3000 });
        assert_eq!(rx.borrow_and_update().role, Role::Standby { holder: "b".into(), epoch: 4 });
    }

    /// Review finding: a feed failure of a former term stayed in the
    /// status, so the next term reported the store unreadable (Unhealthy)
    /// until its first read, however long its start took.
    #[test]
    fn a_new_role_forgets_the_former_terms_feed_failure() {
        let (tx, rx) = watch::channel(RelayStatus::default());
        let status = StatusTx::new(tx);
        status.lease_role(&LeaseState::active(3));
        status.feed_failed("disk I/O error".into());
        status.lease_role(&LeaseState::active(3));
        assert!(matches!(rx.borrow().feed, FeedState::Failing { .. }), "the same term still fails");
        status.lease_role(&LeaseState::Lost { epoch: 3 });
        assert_eq!(rx.borrow().feed, FeedState::Unknown);
        status.feed_failed("disk I/O error".into());
        status.lease_role(&LeaseState::active(5));
        assert_eq!(rx.borrow().feed, FeedState::Unknown, "the new term has not read yet");
    }

    /// Review finding: a CDC term never reported its feed (only the
    /// position feed did), so an active CDC relay read "relay starting"
    /// (Unknown) on /health for as long as it ran.
    #[test]
    fn a_running_cdc_term_reports_its_feed() {
        let (tx, rx) = watch::channel(RelayStatus::default());
        let status = StatusTx::new(tx);
        status.lease_role(&LeaseState::active(2));
        status.cdc_feed_running(true, None);
        assert_eq!((rx.borrow().running, rx.borrow().feed.clone()), (true, FeedState::Ok));
        status.cdc_feed_running(false, Some("cdc reader failed".into()));
        let s = rx.borrow().clone();
        assert_eq!(
            (s.running, s.feed, s.last_error.as_deref()),
            (false, FeedState::Unknown, Some("cdc reader failed"))
        );
    }
}
