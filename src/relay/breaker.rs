//! Circuit breaker guarding the producer, as seed 000 describes it.
//!
//! Closed --(failure_threshold consecutive failures)--> Open
//! Open --(open_timeout elapsed)--> HalfOpen
//! HalfOpen --(success_threshold successes, or one with nothing else to send)--> Closed
//! HalfOpen --(a probe fails: a send made since it went half-open)--> Open
//! Open --(the broker seen unreachable, then reachable again)--> HalfOpen
//! Open --(after such an early probe failed: the broker reachable, 2 s
//!       since, doubling with each early probe that fails)--> HalfOpen
//!
//! The last edges: an outage is seen end to end by the broker watch (its
//! metadata probes), so the relay probes as soon as the broker answers
//! again instead of waiting out `open_timeout_ms` (30 s by default). The
//! first transaction after an outage can fail on the producer's own state
//! (an exactly-once producer's "skipped sequence numbers", its queued
//! records timed out), so a failed early probe is tried again after a
//! backoff (2 s, 4 s, 8 s ...; the open timeout ends the wait whichever
//! comes first), not only at the open timeout: a broker whose state flaps
//! (one of several down) is probed less and less often, not every few
//! seconds for the whole outage. A
//! breaker given the producer's broker state ([`CircuitBreaker::watching`])
//! reads it itself whenever its state is asked while open, so every relay
//! gets the edge from the same place; callers wait [`CircuitBreaker::open_wait`].
//!
//! Guarantee: the state machine is deterministic given the instants passed
//! in, so it is unit-tested without sleeping; every transition is counted in
//! `circuit_breaker_transitions_total` and mirrored in `circuit_breaker_state`.

use std::time::{Duration, Instant};
use tokio::sync::watch;

use crate::config::BreakerConfig;
use crate::metrics::Metrics;
use crate::relay::producer::BrokerState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
    /// Gauge value: 0 closed, 1 open, 2 half-open.
    pub fn gauge(&self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

pub struct CircuitBreaker {
    cfg: BreakerConfig,
    state: BreakerState,
    failures: u32,
    successes: u32,
    opened_at: Option<Instant>,
    /// While open: the broker was seen unreachable.
    seen_down: bool,
    /// When it last went half-open: sends made before are not probes.
    half_open_at: Option<Instant>,
    /// This half-open came from the broker watch, not the open timeout.
    early: bool,
    /// Half-opens from the broker watch that failed since it last closed:
    /// the next waits [`EARLY_RETRY`] doubled once fewer than this.
    early_failures: u32,
    /// The producer's broker state (the broker watch), when given.
    broker: Option<watch::Receiver<BrokerState>>,
    metrics: Option<Metrics>,
}

/// How often an open breaker watching the broker is asked again.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// The wait, while open, after the first early probe that failed before
/// the next (the broker reachable); doubled after each further one.
const EARLY_RETRY: Duration = Duration::from_secs(2);

impl CircuitBreaker {
    pub fn new(cfg: BreakerConfig, metrics: Option<Metrics>) -> Self {
        let b = CircuitBreaker {
            cfg,
            state: BreakerState::Closed,
            failures: 0,
            successes: 0,
            opened_at: None,
            seen_down: false,
            half_open_at: None,
            early: false,
            early_failures: 0,
            broker: None,
            metrics,
        };
        if let Some(m) = &b.metrics {
            m.circuit_breaker_state.set(0);
        }
        b
    }

    /// This breaker reads the producer's broker state while open (the
    /// broker seen down, then answering again: half-open at once).
    pub fn watching(mut self, broker: watch::Receiver<BrokerState>) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Current state, moving Open -> HalfOpen when the timeout has passed,
    /// or when the broker watched was seen down and answers again.
    pub fn state(&mut self, now: Instant) -> BreakerState {
        if self.state == BreakerState::Open {
            if let Some(reachable) = self.broker.as_ref().map(|b| b.borrow().is_reachable()) {
                self.broker_seen(now, reachable);
            }
        }
        if self.state == BreakerState::Open
            && self.opened_at.is_some_and(|t| now.duration_since(t) >= self.open_timeout())
        {
            self.transition(BreakerState::HalfOpen, now);
        }
        self.state
    }

    /// How long a caller waits before asking an open breaker again: until
    /// its open timeout ends, at most [`WATCH_EVERY`] while it watches the
    /// broker (at least 10 ms).
    pub fn open_wait(&self, now: Instant) -> Duration {
        let most = if self.broker.is_some() { WATCH_EVERY } else { Duration::MAX };
        self.remaining_open(now).clamp(Duration::from_millis(10), most)
    }

    /// Whether a call may go through now.
    pub fn allows(&mut self, now: Instant) -> bool {
        self.state(now) != BreakerState::Open
    }

    /// Time left until an open circuit lets a probe through.
    pub fn remaining_open(&self, now: Instant) -> Duration {
        match (self.state, self.opened_at) {
            (BreakerState::Open, Some(t)) => self.open_timeout().saturating_sub(now.duration_since(t)),
            _ => Duration::ZERO,
        }
    }

    pub fn record_success(&mut self, now: Instant) {
        match self.state(now) {
            BreakerState::Closed => self.failures = 0,
            BreakerState::HalfOpen => {
                self.successes += 1;
                if self.successes >= self.cfg.success_threshold {
                    self.transition(BreakerState::Closed, now);
                }
            }
            BreakerState::Open => {}
        }
    }

    /// A success; `idle`: nothing else waits to be sent. A half-open
    /// breaker then closes at once: with no traffic left to probe with it
    /// would stay half-open (and /health would say "probing") until more
    /// events came, hours on a quiet system.
    pub fn record_success_idle(&mut self, now: Instant, idle: bool) {
        self.record_success(now);
        if idle && self.state == BreakerState::HalfOpen {
            self.transition(BreakerState::Closed, now);
        }
    }

    /// What the broker watch says of the broker now, while open. One that
    /// saw it unreachable and now sees it reachable goes half-open at once:
    /// the outage is over as far as anyone can tell, and one probe says
    /// whether it is. Only that change counts, so a broker that answers
    /// metadata but refuses records (the breaker opened while it was
    /// reachable) still waits out the open timeout. After an early probe
    /// failed, the broker reachable is probed again once the backoff since
    /// it reopened has passed ([`CircuitBreaker::early_backoff`]).
    fn broker_seen(&mut self, now: Instant, reachable: bool) {
        if !reachable {
            self.seen_down = true;
            return;
        }
        let due = match self.early_failures {
            0 => self.seen_down,
            _ => self.opened_at.is_some_and(|t| now.duration_since(t) >= self.early_backoff()),
        };
        if due {
            tracing::info!(
                failed_early_probes = self.early_failures,
                "the broker answers again: probing it before the breaker's open timeout"
            );
            self.transition(BreakerState::HalfOpen, now);
            self.early = true;
        }
    }

    /// The wait after the last of `early_failures` failed early probes:
    /// 2 s, 4 s, 8 s ..., never past the open timeout.
    fn early_backoff(&self) -> Duration {
        let doublings = self.early_failures.saturating_sub(1).min(16);
        EARLY_RETRY.saturating_mul(1 << doublings).min(self.open_timeout())
    }

    /// The failure of a send made at `sent` (None: not known). Half-open,
    /// a send made before it went half-open is no probe: its failure (a
    /// record that timed out in the producer's queue during the outage,
    /// reported after the broker came back) says nothing of the broker now,
    /// and reopening on it would wait out another open timeout.
    pub fn record_failure_of(&mut self, now: Instant, sent: Option<Instant>) {
        let stale = sent.zip(self.half_open_at).is_some_and(|(s, h)| s < h);
        if stale && self.state == BreakerState::HalfOpen {
            return;
        }
        self.record_failure(now);
    }

    /// A failure reported now. It does not move an open breaker on first
    /// (its timeout or backoff ending now): nothing is sent while open, so
    /// the failure is of an earlier send, no probe, and must not reopen it
    /// as a failed one (resetting its wait, doubling its backoff).
    pub fn record_failure(&mut self, now: Instant) {
        match self.state {
            BreakerState::Closed => {
                self.failures += 1;
                if self.failures >= self.cfg.failure_threshold {
                    self.transition(BreakerState::Open, now);
                }
            }
            BreakerState::HalfOpen => self.transition(BreakerState::Open, now),
            BreakerState::Open => {}
        }
    }

    fn open_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.open_timeout_ms)
    }

    fn transition(&mut self, to: BreakerState, now: Instant) {
        let from = self.state;
        if from == to {
            return;
        }
        self.state = to;
        // Early probes that failed, until closed: each doubles the next wait.
        self.early_failures = match to {
            BreakerState::Closed => 0,
            BreakerState::Open if from == BreakerState::HalfOpen && self.early => self.early_failures + 1,
            _ => self.early_failures,
        };
        self.early = false;
        self.failures = 0;
        self.successes = 0;
        self.seen_down = false;
        self.opened_at = (to == BreakerState::Open).then_some(now);
        self.half_open_at = (to == BreakerState::HalfOpen).then_some(now);
        match to {
            BreakerState::Open => tracing::warn!(from = from.as_str(), "circuit breaker opened: pausing the relay"),
            BreakerState::HalfOpen => tracing::info!("circuit breaker half-open: probing the broker"),
            BreakerState::Closed => tracing::info!("circuit breaker closed: broker healthy again"),
        }
        if let Some(m) = &self.metrics {
            m.circuit_breaker_state.set(to.gauge());
            m.circuit_breaker_transitions.with_label_values(&[from.as_str(), to.as_str()]).inc();
        }
    }
}

/// A breaker lives for one relay term: when the term ends (lease lost,
/// shutdown, restart) the gauge reads closed again, so an instance that no
/// longer publishes does not keep exporting its last term's open breaker.
impl Drop for CircuitBreaker {
    fn drop(&mut self) {
        if let Some(m) = &self.metrics {
            m.circuit_breaker_state.set(BreakerState::Closed.gauge());
        }
    }
}

#[cfg(test)]
#[path = "breaker_tests.rs"]
mod tests;
