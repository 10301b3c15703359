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
//! none in progress (the saver counts a batch of those streams held for a
//! row its window did not bring, the reader having read past it, as one in
//! progress: a restart would only buffer it again; a batch whose window is
//! still being read does not count, its reader may be stuck on the next
//! page). Calls of other stream groups do not count: one group stuck while
//! the others deliver is a stall. A stream is known to its consumer once it
//! had rows, or through its group (`groups`: the generation's stream groups,
//! loaded when it starts), so a group stuck before its first row is a stall
//! as well. Only while the groups are not known and none of the oldest
//! streams had rows do every consumer's calls count (as if the reader were
//! one group): then such a group is noticed only when no group delivers.
//!
//! Guarantees: never stalled while a consumer call of the oldest streams is
//! in progress (however long the broker is out), nor while a call of any
//! group is in progress and no consumer finished one since the last sample
//! (the oldest streams' group done with its last window while another's
//! delivery waits on the broker); any progress or finished
//! call of those streams starts the count again; the decision is pure
//! (`observe`) and [`wait_for_stall`] only samples it every `tick`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use super::generations::Groups;
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

/// The calls of every consumer of one reader, by the streams they read and
/// by the stream groups (`groups`) those streams belong to.
#[derive(Debug, Default)]
pub struct Activity {
    known: Mutex<Known>,
}

#[derive(Debug, Default)]
struct Known {
    by_stream: HashMap<StreamKey, Arc<Calls>>,
    /// The current generation's groups (its start, ms), once loaded.
    groups: Option<(i64, GroupIndex)>,
    /// Every stream of those groups.
    all: Vec<StreamKey>,
    by_group: HashMap<usize, Arc<Calls>>,
}

#[derive(Debug)]
enum GroupIndex {
    PerStream,
    Shared(HashMap<StreamKey, usize>),
}

/// Whose calls count for one stream.
enum Owner<'a> {
    Consumer(&'a Arc<Calls>),
    /// Its group's consumer made no call yet: nothing it waits on.
    Idle,
    /// Its group is not known.
    Unknown,
}

impl Known {
    fn group_of(&self, stream: &StreamKey) -> Option<Option<usize>> {
        match &self.groups {
            Some((_, GroupIndex::PerStream)) => Some(None),
            Some((_, GroupIndex::Shared(index))) => index.get(stream).map(|g| Some(*g)),
            None => None,
        }
    }

    fn owner(&self, stream: &StreamKey) -> Owner<'_> {
        if let Some(calls) = self.by_stream.get(stream) {
            return Owner::Consumer(calls);
        }
        match self.group_of(stream) {
            Some(Some(g)) => self.by_group.get(&g).map_or(Owner::Idle, Owner::Consumer),
            Some(None) => Owner::Idle,
            None => Owner::Unknown,
        }
    }
}

impl Activity {
    /// `calls` (one consumer's) read rows of `stream`. A later consumer of
    /// the same stream (a restarted reader) replaces the earlier one, also
    /// for the stream's group.
    pub fn reads(&self, stream: &StreamKey, calls: &Arc<Calls>) {
        let mut known = self.known.lock().unwrap();
        if let Some(Some(g)) = known.group_of(stream) {
            known.by_group.insert(g, calls.clone());
        }
        known.by_stream.insert(stream.clone(), calls.clone());
    }

    /// A new generation: its streams and groups are new, the old ones are
    /// finished.
    pub fn forget_streams(&self) {
        *self.known.lock().unwrap() = Known::default();
    }

    /// The groups of the generation started at `generation_ms` (`generations::load`).
    pub fn set_groups(&self, generation_ms: i64, groups: Groups) {
        let all: Vec<StreamKey> = groups.streams().cloned().collect();
        let index = match groups {
            Groups::PerStream(_) => GroupIndex::PerStream,
            Groups::Shared(groups) => GroupIndex::Shared(
                groups
                    .into_iter()
                    .enumerate()
                    .flat_map(|(g, streams)| streams.into_iter().map(move |s| (s, g)))
                    .collect(),
            ),
        };
        let mut known = self.known.lock().unwrap();
        let Known { by_stream, by_group, .. } = &mut *known;
        if let GroupIndex::Shared(index) = &index {
            for (stream, calls) in by_stream.iter() {
                if let Some(g) = index.get(stream) {
                    by_group.insert(*g, calls.clone());
                }
            }
        }
        known.groups = Some((generation_ms, index));
        known.all = all;
    }

    /// Whether `reported` holds for every stream of the generation started
    /// at `generation_ms`; `None` while its groups are not loaded.
    pub fn every_stream(&self, generation_ms: i64, reported: impl Fn(&StreamKey) -> bool) -> Option<bool> {
        let known = self.known.lock().unwrap();
        match &known.groups {
            Some((g, _)) if *g == generation_ms => Some(known.all.iter().all(reported)),
            _ => None,
        }
    }

    /// The generation whose groups are known, if any.
    pub fn groups_of(&self) -> Option<i64> {
        self.known.lock().unwrap().groups.as_ref().map(|(ms, _)| *ms)
    }

    /// (calls in progress, calls finished) of every consumer known.
    pub fn sample_all(&self) -> (usize, u64) {
        let known = self.known.lock().unwrap();
        total(known.by_stream.values().chain(known.by_group.values()).collect())
    }

    /// (calls in progress, calls finished) of the consumers that read
    /// `streams`, each consumer counted once: a stream's own consumer once it
    /// had rows, else its group's. A stream whose group's consumer made no
    /// call yet adds nothing (it waits on no consumer). When a stream's group
    /// is not known (not loaded) and none of `streams` has a known consumer,
    /// every consumer's calls (also for no streams at all: no progress saved
    /// yet): a group whose streams had no rows must not be called stalled
    /// while it might wait on its consumer.
    pub fn sample_of<'a>(&self, streams: impl IntoIterator<Item = &'a StreamKey>) -> (usize, u64) {
        let known = self.known.lock().unwrap();
        let (mut consumers, mut unknown, mut any) = (Vec::new(), false, false);
        for stream in streams {
            any = true;
            match known.owner(stream) {
                Owner::Consumer(calls) => consumers.push(calls),
                Owner::Idle => {}
                Owner::Unknown => unknown = true,
            }
        }
        if consumers.is_empty() && (unknown || !any) {
            consumers = known.by_stream.values().collect();
        }
        total(consumers)
    }
}

/// (calls in progress, calls finished) of `consumers`, each counted once.
fn total(mut consumers: Vec<&Arc<Calls>>) -> (usize, u64) {
    consumers.sort_by_key(|c| Arc::as_ptr(c));
    consumers.dedup_by(|a, b| Arc::ptr_eq(a, b));
    consumers.iter().map(|c| c.sample()).fold((0, 0), |(b, d), (cb, cd)| (b + cb, d + cd))
}

/// What the watchdog samples: the oldest progress (ms), the activity of
/// the consumers of the streams at that progress, and that of every
/// consumer of the run (`all`: calls in progress, calls finished).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    pub oldest_ms: Option<i64>,
    pub busy: usize,
    pub done: u64,
    pub all: (usize, u64),
}

/// The stall decision over successive samples.
#[derive(Debug)]
pub struct StallWatch {
    limit: Duration,
    last: Option<(Option<i64>, u64)>,
    /// Calls finished by every consumer at the last sample.
    all_done: Option<u64>,
    since: Instant,
}

impl StallWatch {
    pub fn new(limit: Duration, now: Instant) -> StallWatch {
        StallWatch { limit, last: None, all_done: None, since: now }
    }

    /// How long nothing has moved, once that is at least `limit`. A call in
    /// progress anywhere while no consumer finished one since the last
    /// sample is the reader waiting on its consumer (a broker outage: the
    /// delivery call retries), even when the oldest streams' own consumer is
    /// done (a group that finished its last window of a catch-up run or of
    /// a generation, its progress frozen, while another group's delivery
    /// waits for the broker): a restart would only abandon that delivery.
    pub fn observe(&mut self, now: Instant, s: Sample) -> Option<Duration> {
        let seen = (s.oldest_ms, s.done);
        let waiting = s.all.0 > 0 && self.all_done == Some(s.all.1);
        self.all_done = Some(s.all.1);
        if s.busy > 0 || waiting || self.last != Some(seen) {
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
#[path = "watchdog_tests.rs"]
mod tests;
