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
mod tests {
    use super::*;

    fn cb() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig::default(), Some(Metrics::new()))
    }

    /// A breaker opened at `t` by five failures.
    fn opened(t: Instant) -> CircuitBreaker {
        let mut b = cb();
        for _ in 0..5 {
            b.record_failure(t);
        }
        b
    }

    #[test]
    fn opens_after_five_consecutive_failures() {
        let mut b = cb();
        let t = Instant::now();
        for _ in 0..4 {
            b.record_failure(t);
        }
        b.record_success(t); // resets the count
        for _ in 0..4 {
            b.record_failure(t);
        }
        assert_eq!(b.state(t), BreakerState::Closed);
        b.record_failure(t);
        assert_eq!(b.state(t), BreakerState::Open);
        assert!(!b.allows(t + Duration::from_secs(29)));
        assert_eq!(b.remaining_open(t + Duration::from_secs(10)), Duration::from_secs(20));
    }

    #[test]
    fn half_open_after_timeout_closes_after_three_successes() {
        let t = Instant::now();
        let mut b = opened(t);
        let later = t + Duration::from_secs(30);
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        b.record_success(later);
        b.record_success(later);
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        b.record_success(later);
        assert_eq!(b.state(later), BreakerState::Closed);
        let m = b.metrics.as_ref().unwrap();
        assert_eq!(m.circuit_breaker_state.get(), 0);
        assert_eq!(m.circuit_breaker_transitions.with_label_values(&["closed", "open"]).get(), 1);
        assert_eq!(m.circuit_breaker_transitions.with_label_values(&["half_open", "closed"]).get(), 1);
    }

    /// Review finding: a standby kept exporting its last term's open breaker.
    #[test]
    fn the_gauge_reads_closed_once_the_terms_breaker_is_gone() {
        let mut b = cb();
        let m = b.metrics.clone().unwrap();
        for _ in 0..5 {
            b.record_failure(Instant::now());
        }
        assert_eq!(m.circuit_breaker_state.get(), BreakerState::Open.gauge());
        drop(b);
        assert_eq!(m.circuit_breaker_state.get(), BreakerState::Closed.gauge());
    }

    #[test]
    fn any_half_open_failure_reopens() {
        let t = Instant::now();
        let mut b = opened(t);
        let later = t + Duration::from_secs(31);
        b.record_success(later);
        b.record_failure(later);
        assert_eq!(b.state(later), BreakerState::Open);
        assert_eq!(b.state(later + Duration::from_secs(29)), BreakerState::Open);
        assert_eq!(b.state(later + Duration::from_secs(30)), BreakerState::HalfOpen);
    }

    /// Review finding: a half-open breaker whose probe was the last event to
    /// send stayed half-open (/health: "probing the broker") until two more
    /// events came. A success with nothing else to send closes it; with
    /// more to send the threshold still counts.
    #[test]
    fn a_half_open_probe_with_nothing_else_to_send_closes_it() {
        let t = Instant::now();
        let mut b = opened(t);
        let later = t + Duration::from_secs(30);
        b.record_success_idle(later, false);
        assert_eq!(b.state(later), BreakerState::HalfOpen, "more to send: one success is not enough");
        b.record_success_idle(later, true);
        assert_eq!(b.state(later), BreakerState::Closed);
        // Closed, an idle success changes nothing.
        b.record_success_idle(later, true);
        assert_eq!(b.state(later), BreakerState::Closed);
        assert_eq!(
            b.metrics.as_ref().unwrap().circuit_breaker_transitions.with_label_values(&["half_open", "closed"]).get(),
            1
        );
    }

    /// Known gap closed: after an outage the relay waited out the whole
    /// open timeout (30 s) even when the broker had answered for a while.
    /// Watching the broker: seen down, then up, while open: half-open at
    /// once. Up all along (it refuses records while reachable): the timeout
    /// stands. An early probe that failed is tried again after 2 s, 4 s,
    /// 8 s ... while the broker answers (found by tests/broker_return.rs:
    /// an exactly-once relay's first transaction after the outage failed on
    /// "skipped sequence numbers", and it then waited out a 10-minute open
    /// timeout with the broker back).
    #[test]
    fn an_open_breaker_probes_once_the_broker_it_saw_down_answers_again() {
        let (tx, rx) = watch::channel(BrokerState::Unknown);
        let up = || BrokerState::Reachable { since: chrono::Utc::now() };
        let down = || BrokerState::Unreachable { since: chrono::Utc::now(), error: "refused".into() };
        let t = Instant::now();
        let s = |n: u64| t + Duration::from_secs(n);
        let mut b = opened(t).watching(rx.clone());
        assert_eq!(b.open_wait(t), Duration::from_millis(500), "watching: asked again every 500 ms");
        assert_eq!(opened(t).open_wait(t), Duration::from_secs(30), "not watching: the open timeout");
        tx.send_replace(up());
        assert_eq!(b.state(t), BreakerState::Open, "never seen down: the timeout stands");
        tx.send_replace(down());
        assert_eq!(b.state(t), BreakerState::Open);
        tx.send_replace(up());
        assert_eq!(b.state(s(1)), BreakerState::HalfOpen);
        // A failed early probe opens it again; the broker answering, the
        // next comes 2 s later, then 4 s, then 8 s after each failure.
        b.record_failure(s(2));
        assert_eq!(b.state(s(3)), BreakerState::Open, "backing off");
        assert_eq!(b.open_wait(s(3)), Duration::from_millis(500), "asked again every 500 ms");
        assert_eq!(b.state(s(4)), BreakerState::HalfOpen, "2 s after the first failed early probe");
        b.record_failure(s(4));
        assert_eq!(b.state(s(7)), BreakerState::Open, "4 s after the second");
        assert_eq!(b.state(s(8)), BreakerState::HalfOpen);
        b.record_failure(s(8));
        // Unreachable when its backoff ends: it waits for the broker.
        tx.send_replace(down());
        assert_eq!(b.state(s(20)), BreakerState::Open, "the broker away");
        tx.send_replace(up());
        assert_eq!(b.state(s(20)), BreakerState::HalfOpen, "back, and 8 s have passed");
        b.record_failure(s(20));
        assert_eq!(b.state(s(35)), BreakerState::Open, "16 s after the fourth");
        assert_eq!(b.state(s(36)), BreakerState::HalfOpen);
        b.record_failure(s(36));
        assert_eq!(b.early_failures, 5);
        // The sixth would wait 32 s: the 30 s open timeout ends it first.
        assert_eq!(b.state(s(65)), BreakerState::Open);
        assert_eq!(b.state(s(66)), BreakerState::HalfOpen, "the open timeout bounds the backoff");
        b.record_failure(s(66));
        assert_eq!(b.early_failures, 6);
        // A half-open from the open timeout (the broker away as it ends)
        // that fails is no early probe: the count, and the backoff, stay.
        tx.send_replace(down());
        assert_eq!(b.state(s(96)), BreakerState::HalfOpen, "the open timeout, the broker away");
        b.record_failure(s(96));
        assert_eq!(b.early_failures, 6, "a failed probe after the open timeout is no early one");
        tx.send_replace(up());
        assert_eq!(b.state(s(125)), BreakerState::Open);
        assert_eq!(b.state(s(126)), BreakerState::HalfOpen);
        b.record_success_idle(s(126), true);
        assert_eq!(b.state(s(126)), BreakerState::Closed);
        assert_eq!(b.early_failures, 0);
        // Closed again, the count starts over: the next outage's early
        // probe comes as soon as the broker answers, its retry 2 s later.
        let s = |n: u64| t + Duration::from_secs(200 + n);
        for _ in 0..5 {
            b.record_failure(s(0));
        }
        tx.send_replace(down());
        assert_eq!(b.state(s(0)), BreakerState::Open);
        tx.send_replace(up());
        assert_eq!(b.state(s(0)), BreakerState::HalfOpen);
        b.record_failure(s(0));
        assert_eq!(b.state(s(1)), BreakerState::Open);
        // Review finding: a failure reported just as the backoff ends (a
        // record sent before the probe, its report late) moved the breaker
        // to half-open and reopened it at once as a failed early probe.
        // Nothing is sent while open: it is no probe, and changes nothing.
        let ms = |n: u64| s(2) + Duration::from_millis(n);
        b.record_failure_of(ms(100), Some(s(0)));
        b.record_failure(ms(100));
        assert_eq!(b.early_failures, 1, "no failed probe counted");
        assert_eq!(b.state(ms(100)), BreakerState::HalfOpen, "its retry 2 s after the failed early probe");
        // Closed, nothing it sees changes it.
        let mut c = cb().watching(rx);
        tx.send_replace(down());
        assert_eq!(c.state(t), BreakerState::Closed);
        tx.send_replace(up());
        assert_eq!(c.state(t), BreakerState::Closed);
    }

    /// Found by tests/broker_return.rs: the broker back, the breaker went
    /// half-open, and a record queued during the outage timed out a moment
    /// later: that failure reopened it, for another whole open timeout.
    /// Only a send made since it went half-open is a probe.
    #[test]
    fn a_failure_of_a_send_older_than_half_open_does_not_reopen_it() {
        let t = Instant::now();
        let mut b = opened(t);
        let half = t + Duration::from_secs(30);
        assert_eq!(b.state(half), BreakerState::HalfOpen);
        b.record_failure_of(half + Duration::from_millis(400), Some(t + Duration::from_secs(1)));
        assert_eq!(b.state(half + Duration::from_millis(400)), BreakerState::HalfOpen, "a stale failure");
        b.record_failure_of(half + Duration::from_millis(500), Some(half + Duration::from_millis(100)));
        assert_eq!(b.state(half + Duration::from_millis(500)), BreakerState::Open, "a probe's failure");
        // Closed, an old send's failure counts as any other.
        let mut c = cb();
        for _ in 0..5 {
            c.record_failure_of(t, Some(t - Duration::from_secs(1)));
        }
        assert_eq!(c.state(t), BreakerState::Open);
    }
}
