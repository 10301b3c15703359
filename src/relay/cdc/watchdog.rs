//! The CDC reader's stall watchdog: tells a reader that stopped making
//! progress from one that waits on its consumer, so the runner can restart
//! the first and leave the second alone.
//!
//! A healthy scylla-cdc reader moves every stream's progress after every
//! window, rows or not (each stream group's reader hands the window's end to
//! the checkpoint saver about every second). So the oldest per-stream
//! progress stands still only while the group that reads those streams waits
//! on its consumer (a broker outage: the delivery call retries until the
//! broker takes the event), or while that group's reader is stuck (a hang
//! inside scylla-cdc, queries to a Scylla that no longer answers).
//! scylla-cdc gives each stream group its own consumer; [`Activity`] counts
//! each consumer's calls in progress and finished ([`Calls`]) and maps every
//! stream to the consumer that read rows of it. [`StallWatch`] calls the
//! reader stalled once, for `limit`, the oldest progress has not moved and
//! the consumers of the streams at that progress finished no call and have
//! none in progress (the saver counts a batch of those streams held for the
//! rest of its rows as one in progress: a restart would only buffer it
//! again). Calls of other stream groups do not count: one group stuck while
//! the others deliver is a stall. A stream is known to its consumer only once
//! it had rows; while none of the oldest streams is, every consumer's calls
//! count (as if the reader were one group), so a group stuck before reading
//! any row is noticed only when no group delivers.
//!
//! Guarantees: never stalled while a consumer call of the oldest streams is
//! in progress (however long the broker is out); any progress or finished
//! call of those streams starts the count again; the decision is pure
//! (`observe`) and [`wait_for_stall`] only samples it every `tick`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use super::progress::StreamKey;

/// One consumer's calls (one stream group): in progress and finished.
#[derive(Debug, Default)]
pub struct Calls {
    busy: AtomicUsize,
    done: AtomicU64,
}

/// One consumer call in progress; counted finished when dropped (returned,
/// failed or cancelled).
pub struct Busy<'a>(&'a Calls);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
        self.0.done.fetch_add(1, Ordering::SeqCst);
    }
}

impl Calls {
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

/// The calls of every consumer of one reader, by the streams they read.
#[derive(Debug, Default)]
pub struct Activity {
    by_stream: Mutex<HashMap<StreamKey, Arc<Calls>>>,
}

impl Activity {
    /// `calls` (one consumer's) read rows of `stream`. A later consumer of
    /// the same stream (a restarted reader) replaces the earlier one.
    pub fn reads(&self, stream: &StreamKey, calls: &Arc<Calls>) {
        self.by_stream.lock().unwrap().insert(stream.clone(), calls.clone());
    }

    /// A new generation: its streams are new, the old ones are finished.
    pub fn forget_streams(&self) {
        self.by_stream.lock().unwrap().clear();
    }

    /// (calls in progress, calls finished) of the consumers that read
    /// `streams`, each consumer counted once. When no consumer read any of
    /// them yet, every consumer's calls: a stream is known to its group's
    /// consumer only once it had rows, and a group whose streams had none
    /// must not be called stalled while it waits on its consumer.
    pub fn sample_of<'a>(&self, streams: impl IntoIterator<Item = &'a StreamKey>) -> (usize, u64) {
        let map = self.by_stream.lock().unwrap();
        let mut consumers: Vec<&Arc<Calls>> = streams.into_iter().filter_map(|s| map.get(s)).collect();
        if consumers.is_empty() {
            consumers = map.values().collect();
        }
        consumers.sort_by_key(|c| Arc::as_ptr(c));
        consumers.dedup_by(|a, b| Arc::ptr_eq(a, b));
        consumers.iter().map(|c| c.sample()).fold((0, 0), |(b, d), (cb, cd)| (b + cb, d + cd))
    }
}

/// What the watchdog samples: the oldest progress (ms) and the activity of
/// the consumers of the streams at that progress.
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
    fn calls_count_in_progress_and_finished() {
        let a = Calls::default();
        assert_eq!(a.sample(), (0, 0));
        let one = a.enter();
        let two = a.enter();
        assert_eq!(a.sample(), (2, 0));
        drop(one);
        assert_eq!(a.sample(), (1, 1));
        drop(two);
        assert_eq!(a.sample(), (0, 2));
    }

    fn key(b: u8) -> StreamKey {
        StreamKey(vec![b; 16])
    }

    #[test]
    fn activity_is_sampled_by_the_consumers_of_the_given_streams() {
        let activity = Activity::default();
        let (g1, g2) = (Arc::new(Calls::default()), Arc::new(Calls::default()));
        // Group 1 read streams 1 and 2, group 2 stream 3; stream 4 had no rows.
        activity.reads(&key(1), &g1);
        activity.reads(&key(2), &g1);
        activity.reads(&key(3), &g2);
        drop((g1.enter(), g1.enter(), g2.enter()));
        let _in_progress = g2.enter();
        assert_eq!(activity.sample_of([&key(1), &key(2)]), (0, 2), "group 1 counted once");
        assert_eq!(activity.sample_of([&key(3)]), (1, 1));
        assert_eq!(activity.sample_of([&key(4), &key(3)]), (1, 1), "only the consumers known to read them");
        assert_eq!(activity.sample_of([&key(1), &key(3), &key(4)]), (1, 3));
        // Stream 4's group is not known (it had no rows): every consumer
        // counts, so a group waiting on its consumer is never a stall.
        assert_eq!(activity.sample_of([&key(4)]), (1, 3));
        assert_eq!(activity.sample_of([] as [&StreamKey; 0]), (1, 3));
        // A restarted reader's consumer takes the stream over.
        let g3 = Arc::new(Calls::default());
        activity.reads(&key(3), &g3);
        assert_eq!(activity.sample_of([&key(3)]), (0, 0));
        activity.forget_streams();
        assert_eq!(activity.sample_of([&key(1), &key(2)]), (0, 0), "a new generation: none known");
    }

    #[test]
    fn one_group_stuck_while_another_delivers_is_a_stall() {
        // Stream 1 (group 1) stands at 100 ms: its reader hangs. Group 2
        // delivers all along, its stream moving ahead.
        let activity = Activity::default();
        let (g1, g2) = (Arc::new(Calls::default()), Arc::new(Calls::default()));
        activity.reads(&key(1), &g1);
        activity.reads(&key(2), &g2);
        drop(g1.enter());
        let t0 = Instant::now();
        let mut w = StallWatch::new(LIMIT, t0);
        let sample = || {
            let (busy, done) = activity.sample_of([&key(1)]);
            Sample { oldest_ms: Some(100), busy, done }
        };
        for secs in (0..300).step_by(10) {
            drop(g2.enter());
            assert_eq!(w.observe(t0 + Duration::from_secs(secs), sample()), None, "at {secs} s");
        }
        drop(g2.enter());
        assert_eq!(w.observe(t0 + LIMIT, sample()), Some(LIMIT), "group 2's calls do not hide it");
        // Group 1 finishes a call (a long catch-up window): movement.
        drop(g1.enter());
        assert_eq!(w.observe(t0 + LIMIT + Duration::from_secs(1), sample()), None);
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
