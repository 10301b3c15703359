//! The stall watchdog's decision and its activity bookkeeping: stalls only
//! after the limit without movement, never while a call of the oldest
//! streams' consumers is in progress, and stream groups known or not.

use super::*;
use std::sync::{Arc, Mutex};

const LIMIT: Duration = Duration::from_secs(300);

fn s(oldest: i64, busy: usize, done: u64) -> Sample {
    Sample { oldest_ms: Some(oldest), busy, done, ..Sample::default() }
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
    let none = Sample::default();
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
fn a_finished_group_at_the_oldest_progress_while_another_waits_on_the_broker_is_no_stall() {
    // End of a catch-up run: group A (the oldest progress, frozen) finished
    // its last window; group B's delivery retries through a broker outage.
    let activity = Activity::default();
    let (a, b) = (Arc::new(Calls::default()), Arc::new(Calls::default()));
    activity.reads(&key(1), &a);
    activity.reads(&key(2), &b);
    drop(a.enter());
    let _delivering = b.enter();
    let sample = || {
        let (busy, done) = activity.sample_of([&key(1)]);
        Sample { oldest_ms: Some(100), busy, done, all: activity.sample_all() }
    };
    assert_eq!((sample().busy, sample().done, sample().all), (0, 1, (1, 1)));
    let t0 = Instant::now();
    let mut w = StallWatch::new(LIMIT, t0);
    for secs in (0..3_600).step_by(30) {
        assert_eq!(w.observe(t0 + Duration::from_secs(secs), sample()), None, "at {secs} s");
    }
    // Other groups delivering (calls finish) while the oldest group's
    // reader is stuck: a stall, however busy they are at each sample.
    let mut w = StallWatch::new(LIMIT, t0);
    let mut stalled = None;
    for secs in (0..=600).step_by(30) {
        drop(b.enter());
        stalled = stalled.or(w.observe(t0 + Duration::from_secs(secs), sample()));
    }
    assert!(stalled.is_some(), "a group stuck while the others deliver is restarted");
    // Every group finished and nothing in progress (scylla-cdc's hang at the
    // end of a catch-up run): a stall.
    drop(_delivering);
    let mut w = StallWatch::new(LIMIT, t0);
    assert_eq!(w.observe(t0, sample()), None);
    assert!(w.observe(t0 + LIMIT, sample()).is_some());
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
fn a_known_group_answers_for_its_streams_without_rows() {
    let activity = Activity::default();
    let (g1, g2) = (Arc::new(Calls::default()), Arc::new(Calls::default()));
    // Stream 1 had rows before the groups were loaded; streams 2 and 5 never.
    activity.reads(&key(1), &g1);
    activity.set_groups(7, Groups::Shared(vec![vec![key(1), key(2)], vec![key(3), key(4)], vec![key(5)]]));
    assert_eq!(activity.groups_of(), Some(7));
    activity.reads(&key(3), &g2);
    let _busy = g1.enter();
    drop(g2.enter());
    assert_eq!(activity.sample_of([&key(2)]), (1, 0), "stream 2 waits on group 1's consumer");
    assert_eq!(activity.sample_of([&key(4)]), (0, 1), "stream 4 is group 2's");
    // Group 3 never called its consumer: it waits on nothing, so other
    // groups' calls do not count for it.
    assert_eq!(activity.sample_of([&key(5)]), (0, 0));
    assert_eq!(activity.sample_of([&key(5), &key(4)]), (0, 1));
    // A stream outside the loaded groups: the cautious fallback.
    assert_eq!(activity.sample_of([&key(9)]), (1, 1));
    // A restarted reader's consumer takes the group over.
    let g3 = Arc::new(Calls::default());
    activity.reads(&key(4), &g3);
    assert_eq!(activity.sample_of([&key(3)]), (0, 1), "stream 3's own consumer still counts");
    assert_eq!(activity.sample_of([&key(4)]), (0, 0));
    // Tablets: every stream is its own group.
    activity.forget_streams();
    assert_eq!(activity.groups_of(), None);
    activity.set_groups(8, Groups::PerStream(vec![key(1), key(2)]));
    activity.reads(&key(1), &g1);
    assert_eq!(activity.sample_of([&key(1)]), (1, 0));
    assert_eq!(activity.sample_of([&key(2)]), (0, 0), "its own consumer never called");
}

#[test]
fn a_group_stuck_before_its_first_row_while_others_deliver_is_a_stall() {
    // Group 1 (streams 1, 2) hangs in its first query; group 2 delivers.
    let activity = Activity::default();
    activity.set_groups(7, Groups::Shared(vec![vec![key(1), key(2)], vec![key(3)]]));
    let g2 = Arc::new(Calls::default());
    activity.reads(&key(3), &g2);
    let t0 = Instant::now();
    let mut w = StallWatch::new(LIMIT, t0);
    let sample = || {
        let (busy, done) = activity.sample_of([&key(1), &key(2)]);
        Sample { oldest_ms: Some(100), busy, done, ..Sample::default() }
    };
    for secs in (0..300).step_by(10) {
        drop(g2.enter());
        assert_eq!(w.observe(t0 + Duration::from_secs(secs), sample()), None, "at {secs} s");
    }
    assert_eq!(w.observe(t0 + LIMIT, sample()), Some(LIMIT));
    // Without the groups the same reader is not called stalled while group 2 delivers.
    activity.forget_streams();
    activity.reads(&key(3), &g2);
    let mut w = StallWatch::new(LIMIT, t0);
    for secs in (0..=600).step_by(10) {
        drop(g2.enter());
        assert_eq!(w.observe(t0 + Duration::from_secs(secs), sample()), None, "at {secs} s");
    }
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
        Sample { oldest_ms: Some(100), busy, done, ..Sample::default() }
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

#[test]
fn every_stream_is_answered_only_for_the_generation_whose_groups_are_loaded() {
    let activity = Activity::default();
    assert_eq!(
        activity.every_stream(7, |s: &StreamKey| [1, 2, 3].iter().any(|b| *s == key(*b))),
        None,
        "groups not loaded"
    );
    activity.set_groups(7, Groups::Shared(vec![vec![key(1), key(2)], vec![key(3)]]));
    assert_eq!(
        activity.every_stream(7, |s: &StreamKey| [1, 2].iter().any(|b| *s == key(*b))),
        Some(false),
        "group 2 (stream 3) has not reported"
    );
    assert_eq!(activity.every_stream(7, |s: &StreamKey| [1, 2, 3].iter().any(|b| *s == key(*b))), Some(true));
    assert_eq!(
        activity.every_stream(8, |s: &StreamKey| [1, 2, 3].iter().any(|b| *s == key(*b))),
        None,
        "another generation"
    );
    activity.forget_streams();
    activity.set_groups(8, Groups::PerStream(vec![key(4), key(5)]));
    assert_eq!(activity.every_stream(8, |s: &StreamKey| [4].iter().any(|b| *s == key(*b))), Some(false));
    assert_eq!(activity.every_stream(8, |s: &StreamKey| [4, 5].iter().any(|b| *s == key(*b))), Some(true));
}
