//! The CDC reader's stall watchdog: tells a reader that stopped making
//! progress from one that waits on its consumer, so the runner can restart
//! the first and leave the second alone.
//!
//! A healthy scylla-cdc reader moves every stream's progress after every
//! window, rows or not (its stream readers hand the window's end to the
//! checkpoint saver about every second). So the oldest per-stream progress
//! stands still only while the reader waits on its consumer (a broker
//! outage: the delivery call retries until the broker takes the event), or
//! while the reader itself is stuck (a hang inside scylla-cdc, queries to a
//! Scylla that no longer answers). [`Activity`] counts the consumer's calls
//! in progress and finished; [`StallWatch`] calls the reader stalled once,
//! for `limit`, the oldest progress has not moved, no consumer call has
//! finished and none is in progress (the saver counts a batch held for the
//! rest of its rows as one in progress: a restart would only buffer it
//! again).
//!
//! Guarantees: never stalled while a consumer call is in progress (however
//! long the broker is out); any progress or finished call starts the count
//! again; the decision is pure (`observe`) and [`wait_for_stall`] only
//! samples it every `tick`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// The consumer's calls: in progress and finished.
#[derive(Debug, Default)]
pub struct Activity {
    busy: AtomicUsize,
    done: AtomicU64,
}

/// One consumer call in progress; counted finished when dropped (returned,
/// failed or cancelled).
pub struct Busy<'a>(&'a Activity);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
        self.0.done.fetch_add(1, Ordering::SeqCst);
    }
}

impl Activity {
    /// A consumer call begins.
    pub fn enter(&self) -> Busy<'_> {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self)
    }

    /// (calls in progress, calls finished so far).
    pub fn sample(&self) -> (usize, u64) {
        (self.busy.load(Ordering::SeqCst), self.done.load(Ordering::SeqCst))
    }
}

/// What the watchdog samples: the oldest progress (ms) and the activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub oldest_ms: Option<i64>,
    pub busy: usize,
    pub done: u64,
}

/// The stall decision over successive samples.
#[derive(Debug)]
pub struct StallWatch {
    limit: Duration,
    last: Option<(Option<i64>, u64)>,
    since: Instant,
}

impl StallWatch {
    pub fn new(limit: Duration, now: Instant) -> StallWatch {
        StallWatch { limit, last: None, since: now }
    }

    /// How long nothing has moved, once that is at least `limit`.
    pub fn observe(&mut self, now: Instant, s: Sample) -> Option<Duration> {
        let seen = (s.oldest_ms, s.done);
        if s.busy > 0 || self.last != Some(seen) {
            self.last = Some(seen);
            self.since = now;
            return None;
        }
        let idle = now.saturating_duration_since(self.since);
        (idle >= self.limit).then_some(idle)
    }
}

/// How often [`wait_for_stall`] samples: a tenth of the limit, 1-30 s.
pub fn tick_of(limit: Duration) -> Duration {
    (limit / 10).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// Returns (how long nothing moved) once the reader is stalled; never
/// returns when `limit` is zero (the watchdog is off).
pub async fn wait_for_stall(limit: Duration, probe: impl Fn() -> Sample) -> Duration {
    if limit.is_zero() {
        return std::future::pending().await;
    }
    let tick = tick_of(limit);
    let mut watch = StallWatch::new(limit, Instant::now());
    loop {
        if let Some(idle) = watch.observe(Instant::now(), probe()) {
            return idle;
        }
        tokio::time::sleep(tick).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const LIMIT: Duration = Duration::from_secs(300);

    fn s(oldest: i64, busy: usize, done: u64) -> Sample {
        Sample { oldest_ms: Some(oldest), busy, done }
    }

    #[test]
    fn stalled_only_after_the_limit_without_progress_or_calls() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(LIMIT, t0);
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        assert_eq!(w.observe(at(0), s(100, 0, 5)), None);
        assert_eq!(w.observe(at(299), s(100, 0, 5)), None);
        assert_eq!(w.observe(at(300), s(100, 0, 5)), Some(LIMIT));
        // Progress moves: counted again from there.
        assert_eq!(w.observe(at(301), s(101, 0, 5)), None);
        assert_eq!(w.observe(at(600), s(101, 0, 5)), None);
        assert_eq!(w.observe(at(601), s(101, 0, 5)), Some(LIMIT));
        // A finished consumer call counts as movement too.
        assert_eq!(w.observe(at(602), s(101, 0, 6)), None);
        assert_eq!(w.observe(at(901), s(101, 0, 6)), None);
        // No progress ever reported is a stall as well.
        let mut w = StallWatch::new(LIMIT, t0);
        let none = Sample { oldest_ms: None, busy: 0, done: 0 };
        assert_eq!(w.observe(at(0), none), None);
        assert_eq!(w.observe(at(400), none), Some(Duration::from_secs(400)));
    }

    #[test]
    fn a_consumer_call_in_progress_is_never_a_stall() {
        // A broker outage: the delivery call retries for an hour while the
        // progress stands still.
        let t0 = Instant::now();
        let mut w = StallWatch::new(LIMIT, t0);
        for secs in (0..3_600).step_by(10) {
            assert_eq!(w.observe(t0 + Duration::from_secs(secs), s(100, 1, 5)), None, "at {secs} s");
        }
        // The call ends (the broker is back) and then nothing moves: a stall
        // one limit later, not at once.
        let back = t0 + Duration::from_secs(3_600);
        assert_eq!(w.observe(back, s(100, 0, 6)), None);
        assert_eq!(w.observe(back + Duration::from_secs(299), s(100, 0, 6)), None);
        assert!(w.observe(back + LIMIT, s(100, 0, 6)).is_some());
    }

    #[test]
    fn activity_counts_calls_in_progress_and_finished() {
        let a = Activity::default();
        assert_eq!(a.sample(), (0, 0));
        let one = a.enter();
        let two = a.enter();
        assert_eq!(a.sample(), (2, 0));
        drop(one);
        assert_eq!(a.sample(), (1, 1));
        drop(two);
        assert_eq!(a.sample(), (0, 2));
    }

    #[test]
    fn ticks_are_a_tenth_of_the_limit_within_bounds() {
        assert_eq!(tick_of(LIMIT), Duration::from_secs(30));
        assert_eq!(tick_of(Duration::from_secs(60)), Duration::from_secs(6));
        assert_eq!(tick_of(Duration::from_secs(5)), Duration::from_secs(1));
        assert_eq!(tick_of(Duration::from_secs(3_600)), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_ends_one_limit_after_the_last_movement() {
        let progress = Arc::new(Mutex::new(s(100, 0, 0)));
        let p = progress.clone();
        let started = Instant::now();
        let waiter = tokio::spawn(wait_for_stall(LIMIT, move || *p.lock().unwrap()));
        // Progress moves for 10 minutes, then stops.
        for i in 1..=20 {
            tokio::time::sleep(Duration::from_secs(30)).await;
            *progress.lock().unwrap() = s(100 + i, 0, 0);
        }
        let idle = waiter.await.unwrap();
        let ended = Instant::now() - started;
        assert!(idle >= LIMIT, "{idle:?}");
        // Stopped at 600 s, noticed within a limit plus two ticks.
        assert!(ended >= Duration::from_secs(900) && ended <= Duration::from_secs(960), "{ended:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_limit_never_fires() {
        let r = tokio::time::timeout(Duration::from_secs(86_400), wait_for_stall(Duration::ZERO, || s(1, 0, 0))).await;
        assert!(r.is_err(), "the watchdog is off");
    }
}
