//! Where a CDC reader starts and how it reads until it has caught up (pure).
//!
//! Guarantees:
//! - Saved progress wins: with saved progress the reader starts exactly
//!   there; `cdc:origin` never overrides it (scylla-cdc-rust #120: a start
//!   timestamp later than the saved progress silently skips the rows in
//!   between). The only clamp is the CDC log TTL: rows older than
//!   `now - ttl - skew` are gone on every node, so starting earlier only reads
//!   empty windows; the gap is reported as possibly lost.
//! - The start never passes the generation's floor (`floor`): scylla-cdc
//!   raises each stream group's start to the group's own saved progress, so
//!   only a group without rows (its reader started too late to save any
//!   before a crash) reads from the floor instead of skipping to the oldest
//!   row. The gap report looks at the rows only.
//! - Without saved progress the reader starts at `cdc:origin - skew` (the
//!   first `outboxd schema`, with the clock-skew allowance for the clock of
//!   whoever ran it), never before the TTL floor: events appended before the
//!   first relay start are published.
//! - A known first CDC generation raises the start to it (nothing is logged
//!   before it). Given a start before every generation, scylla-cdc 0.7's
//!   `fetch_generations_continuously` falls back to `get_latest_generation`,
//!   which despite its name takes the last row of the generation table,
//!   clustered newest first: the oldest generation (its own
//!   `test_get_generations_continuously` expects that), so an unknown first
//!   generation skips nothing either.
//! - Catch-up without the per-window sleep: scylla-cdc sleeps
//!   `sleep_interval` after every window, so a backlog of B read in windows
//!   of W costs `B / W` sleeps. When the measured lag exceeds the threshold
//!   the reader runs in catch-up mode (large window, short sleep) up to
//!   `now - safety_interval` at its start, then the lag is measured again
//!   (catch up again, or switch to the normal settings, which keep the idle
//!   cost low).
//! - After a run ([`after_run`]): a fenced saver ends the feed before
//!   anything else; a stalled run restarts from the progress unless shutdown
//!   came meanwhile; a reader error ends the feed (a shutdown error is a
//!   clean end); a finished catch-up run continues from its end time.

use std::time::Duration;

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Why the reader starts where it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The saved progress of the current generation.
    Saved,
    /// Saved progress older than the CDC log TTL: the TTL floor.
    SavedBeyondTtl,
    /// No saved progress: `cdc:origin` minus the skew allowance.
    Origin,
    /// No saved progress and no (or an older) origin: the TTL floor.
    TtlFloor,
}

/// The start timestamp scylla-cdc gets (`start_timestamp`, ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartPoint {
    pub start_ms: i64,
    pub from: StartFrom,
    /// With `SavedBeyondTtl`: the saved progress; changes between it and
    /// `start_ms` may have expired from the CDC log unpublished.
    pub lost_after_ms: Option<i64>,
}

/// Inputs of [`start_point`], all in ms since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartInputs {
    pub now_ms: i64,
    /// The CDC log TTL (`store.cql.cdc.log_ttl_seconds`).
    pub log_ttl: Duration,
    /// Clock-skew allowance between nodes and clients.
    pub skew: Duration,
    /// `cdc:origin`: time of the first `outboxd schema`.
    pub origin_ms: Option<i64>,
    /// Oldest saved progress of the current generation.
    pub saved_ms: Option<i64>,
    /// The generation's floor: where a stream without a row resumes.
    pub floor_ms: Option<i64>,
    /// The start of the table's first CDC generation, if known.
    pub first_generation_ms: Option<i64>,
}

pub fn start_point(i: StartInputs) -> StartPoint {
    let mut p = start_in_log(i);
    // Nothing is logged before the first generation.
    p.start_ms = p.start_ms.max(i.first_generation_ms.unwrap_or(i64::MIN));
    p
}

fn start_in_log(i: StartInputs) -> StartPoint {
    let floor = i.now_ms.saturating_sub(ms(i.log_ttl)).saturating_sub(ms(i.skew));
    let resume = match (i.saved_ms, i.floor_ms) {
        (Some(saved), Some(f)) => Some(saved.min(f)),
        (saved, f) => saved.or(f),
    };
    match (i.saved_ms, resume, i.origin_ms) {
        (Some(saved), _, _) if saved < floor => {
            StartPoint { start_ms: floor, from: StartFrom::SavedBeyondTtl, lost_after_ms: Some(saved) }
        }
        (_, Some(r), _) => StartPoint { start_ms: r.max(floor), from: StartFrom::Saved, lost_after_ms: None },
        (None, None, Some(origin)) if origin.saturating_sub(ms(i.skew)) > floor => {
            StartPoint { start_ms: origin.saturating_sub(ms(i.skew)), from: StartFrom::Origin, lost_after_ms: None }
        }
        _ => StartPoint { start_ms: floor, from: StartFrom::TtlFloor, lost_after_ms: None },
    }
}

/// scylla-cdc reader settings for one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadSettings {
    pub window: Duration,
    pub sleep: Duration,
}

/// How the next reader run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPlan {
    /// Read with the normal settings until stopped.
    Normal(ReadSettings),
    /// Read with the catch-up settings and stop at `until_ms` (then plan again).
    CatchUp { settings: ReadSettings, until_ms: i64 },
}

/// Inputs of [`read_plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanInputs {
    pub now_ms: i64,
    /// Where reading resumes (the start point, or the oldest progress).
    pub position_ms: i64,
    pub safety_interval: Duration,
    pub normal: ReadSettings,
    pub catch_up: ReadSettings,
    /// Catch up when `now - safety - position` exceeds this.
    pub threshold: Duration,
}

pub fn read_plan(i: PlanInputs) -> ReadPlan {
    let readable_until = i.now_ms.saturating_sub(ms(i.safety_interval));
    let behind = readable_until.saturating_sub(i.position_ms);
    // Catch-up must beat the normal settings, or it is pointless.
    let faster = i.catch_up.window > i.normal.window || i.catch_up.sleep < i.normal.sleep;
    if faster && behind > ms(i.threshold) {
        ReadPlan::CatchUp { settings: i.catch_up, until_ms: readable_until }
    } else {
        ReadPlan::Normal(i.normal)
    }
}

/// How a reader run ended, as the runner saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEnd {
    /// The saver was fenced (another instance holds the lease).
    pub fenced: bool,
    /// The runner stopped the reader to start it again (the stall
    /// watchdog, or an operator's rewind).
    pub restart: bool,
    /// The feed's shutdown was signalled.
    pub shutdown: bool,
    /// The reader's own result: `None` ok, `Some(true)` its error was the
    /// consumer's shutdown, `Some(false)` any other error.
    pub error: Option<bool>,
    /// The run's catch-up end time (ms), if it was a catch-up run.
    pub until_ms: Option<i64>,
}

/// What the runner does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRun {
    /// End the feed with `CdcError::Fenced`.
    Fenced,
    /// End the feed cleanly.
    Stop,
    /// End the feed with the reader's error.
    Fail,
    /// Start a new run from the saved progress (the watchdog's restart, or
    /// after a rewind).
    Restart,
    /// Every stream was read up to this time (ms): advance, save, plan again.
    CaughtUp(i64),
}

pub fn after_run(e: &RunEnd) -> AfterRun {
    match e {
        RunEnd { fenced: true, .. } => AfterRun::Fenced,
        RunEnd { restart: true, shutdown: true, .. } => AfterRun::Stop,
        // The stopped reader's own error is only logged: it was stuck.
        RunEnd { restart: true, .. } => AfterRun::Restart,
        RunEnd { error: Some(true), .. } => AfterRun::Stop,
        RunEnd { error: Some(false), .. } => AfterRun::Fail,
        RunEnd { until_ms: Some(u), shutdown: false, .. } => AfterRun::CaughtUp(*u),
        RunEnd { .. } => AfterRun::Stop,
    }
}

/// Load of a caught-up reader (see docs/OPERATIONS.md, "idle cost").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IdleCost {
    /// CDC log queries per second (each vnode group polls once per sleep).
    pub log_reads_per_s: f64,
    /// Generation polls per second (the generation query plus `system.peers`).
    pub generation_reads_per_s: f64,
    /// Checkpoint writes per second with this saver (batches of up to 64 rows).
    pub checkpoint_writes_per_s: f64,
    /// Checkpoint writes per second scylla-cdc's own saver did (one per stream).
    pub library_checkpoint_writes_per_s: f64,
}

impl IdleCost {
    /// `groups` vnode groups (stream readers), `streams` CDC streams, the
    /// sleep interval, the checkpoint interval and the CDC query latency.
    pub fn estimate(
        groups: u32,
        streams: u32,
        sleep: Duration,
        checkpoint_interval: Duration,
        query_latency: Duration,
    ) -> IdleCost {
        let cycle = (sleep + query_latency).as_secs_f64().max(1e-3);
        let every = checkpoint_interval.as_secs_f64().max(1e-3);
        IdleCost {
            log_reads_per_s: f64::from(groups) / cycle,
            generation_reads_per_s: 2.0 / sleep.as_secs_f64().max(1e-3),
            checkpoint_writes_per_s: f64::from(streams.div_ceil(super::saver::SAVE_BATCH_ROWS as u32)) / every,
            library_checkpoint_writes_per_s: f64::from(streams) / every,
        }
    }
}

/// Time to read a backlog of `backlog` with `settings` (reads only: every
/// window costs one sleep plus one query per vnode group, groups in parallel).
/// Delivering the events adds their broker round trips, per group in sequence.
pub fn catch_up_time(backlog: Duration, settings: ReadSettings, query_latency: Duration) -> Duration {
    let windows = backlog.as_millis().div_ceil(settings.window.as_millis().max(1)) as u32;
    (settings.sleep + query_latency) * windows
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;
    const DAY: Duration = Duration::from_secs(86_400);
    const SKEW: Duration = Duration::from_secs(60);

    fn inputs(saved: Option<i64>, origin: Option<i64>) -> StartInputs {
        StartInputs {
            now_ms: 100 * H,
            log_ttl: DAY,
            skew: SKEW,
            origin_ms: origin,
            saved_ms: saved,
            floor_ms: None,
            first_generation_ms: None,
        }
    }

    #[test]
    fn the_start_is_never_before_the_first_generation() {
        let first = |saved, origin, g| start_point(StartInputs { first_generation_ms: g, ..inputs(saved, origin) });
        // A cluster 10 h old, no origin: the TTL floor (76 h) is before its
        // first generation (90 h); scylla-cdc would begin with the newest.
        let p = first(None, None, Some(90 * H));
        assert_eq!(p, StartPoint { start_ms: 90 * H, from: StartFrom::TtlFloor, lost_after_ms: None });
        // The origin less the skew before the table's first generation.
        assert_eq!(first(None, Some(99 * H), Some(99 * H - 1_000)).start_ms, 99 * H - 1_000);
        // A generation older than the start changes nothing.
        assert_eq!(first(None, Some(99 * H), Some(50 * H)).start_ms, 99 * H - 60_000);
        assert_eq!(first(Some(98 * H), None, Some(50 * H)).start_ms, 98 * H);
        assert_eq!(first(None, None, None).start_ms, 76 * H - 60_000, "not known: unchanged");
    }

    #[test]
    fn the_start_never_passes_the_generations_floor() {
        let with_floor = |saved, floor| start_point(StartInputs { floor_ms: floor, ..inputs(saved, Some(99 * H)) });
        // The other groups' rows are at 99 h; the generation was first read
        // from 90 h: a group without rows resumes there.
        let p = with_floor(Some(99 * H), Some(90 * H));
        assert_eq!(p, StartPoint { start_ms: 90 * H, from: StartFrom::Saved, lost_after_ms: None });
        // Rows older than the floor (a floor written after them) still win.
        assert_eq!(with_floor(Some(85 * H), Some(90 * H)).start_ms, 85 * H);
        // A floor beyond the TTL: rows are fine, so nothing is reported lost.
        let p = with_floor(Some(99 * H), Some(10 * H));
        assert_eq!(p, StartPoint { start_ms: 76 * H - 60_000, from: StartFrom::Saved, lost_after_ms: None });
        // A generation row without stream rows (a crash before the first
        // flush of its streams): the floor, not the origin.
        assert_eq!(
            with_floor(None, Some(95 * H)),
            StartPoint { start_ms: 95 * H, from: StartFrom::Saved, lost_after_ms: None }
        );
        // Rows beyond the TTL: reported as before.
        assert_eq!(with_floor(Some(50 * H), Some(40 * H)).lost_after_ms, Some(50 * H));
    }

    #[test]
    fn saved_progress_is_never_overridden_by_a_later_origin() {
        // scylla-cdc-rust #120: origin (or "now") later than saved progress.
        let p = start_point(inputs(Some(99 * H), Some(99 * H + 30 * 60_000)));
        assert_eq!(p, StartPoint { start_ms: 99 * H, from: StartFrom::Saved, lost_after_ms: None });
        let p = start_point(inputs(Some(90 * H), Some(95 * H)));
        assert_eq!(p.start_ms, 90 * H);
    }

    #[test]
    fn first_start_reads_from_the_origin_minus_the_skew_allowance() {
        let p = start_point(inputs(None, Some(99 * H)));
        assert_eq!(p, StartPoint { start_ms: 99 * H - 60_000, from: StartFrom::Origin, lost_after_ms: None });
        // An origin older than the log's TTL: the rows are gone; start at the floor.
        let p = start_point(inputs(None, Some(10 * H)));
        assert_eq!(p, StartPoint { start_ms: 76 * H - 60_000, from: StartFrom::TtlFloor, lost_after_ms: None });
        let p = start_point(inputs(None, None));
        assert_eq!(p.from, StartFrom::TtlFloor);
    }

    #[test]
    fn saved_progress_beyond_the_ttl_starts_at_the_floor_and_reports_the_gap() {
        let p = start_point(inputs(Some(50 * H), Some(40 * H)));
        assert_eq!(
            p,
            StartPoint { start_ms: 76 * H - 60_000, from: StartFrom::SavedBeyondTtl, lost_after_ms: Some(50 * H) }
        );
        // Inside the floor by the skew allowance: still saved.
        let p = start_point(inputs(Some(76 * H - 30_000), None));
        assert_eq!(p.from, StartFrom::Saved);
    }

    fn plan(position_ms: i64) -> ReadPlan {
        read_plan(PlanInputs {
            now_ms: 100 * H,
            position_ms,
            safety_interval: Duration::from_secs(30),
            normal: ReadSettings { window: Duration::from_secs(30), sleep: Duration::from_secs(1) },
            catch_up: ReadSettings { window: Duration::from_secs(300), sleep: Duration::from_millis(100) },
            threshold: Duration::from_secs(120),
        })
    }

    #[test]
    fn behind_more_than_the_threshold_catches_up_to_now_minus_safety() {
        match plan(76 * H) {
            ReadPlan::CatchUp { settings, until_ms } => {
                assert_eq!(settings.window, Duration::from_secs(300));
                assert_eq!(until_ms, 100 * H - 30_000);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(plan(100 * H - 60_000), ReadPlan::Normal(_)), "caught up");
        assert!(matches!(plan(100 * H - 150_000), ReadPlan::Normal(_)), "120 s behind: threshold not exceeded");
        assert!(matches!(plan(100 * H - 151_000), ReadPlan::CatchUp { .. }));
    }

    #[test]
    fn a_catch_up_that_is_not_faster_is_never_chosen() {
        let p = read_plan(PlanInputs {
            now_ms: 100 * H,
            position_ms: 0,
            safety_interval: Duration::from_secs(30),
            normal: ReadSettings { window: Duration::from_secs(30), sleep: Duration::from_secs(1) },
            catch_up: ReadSettings { window: Duration::from_secs(30), sleep: Duration::from_secs(1) },
            threshold: Duration::from_secs(120),
        });
        assert!(matches!(p, ReadPlan::Normal(_)));
    }

    #[test]
    fn after_a_run_fencing_comes_first_and_a_stall_restarts_unless_shut_down() {
        let end = RunEnd { fenced: false, restart: false, shutdown: false, error: None, until_ms: None };
        let with = |f: fn(&mut RunEnd)| {
            let mut e = end.clone();
            f(&mut e);
            after_run(&e)
        };
        assert_eq!(after_run(&end), AfterRun::Stop, "a normal run ends only when stopped");
        assert_eq!(with(|e| e.until_ms = Some(9)), AfterRun::CaughtUp(9));
        assert_eq!(
            with(|e| {
                e.until_ms = Some(9);
                e.shutdown = true
            }),
            AfterRun::Stop,
            "no catch-up step after shutdown"
        );
        assert_eq!(with(|e| e.error = Some(false)), AfterRun::Fail);
        assert_eq!(
            with(|e| {
                e.error = Some(false);
                e.shutdown = true
            }),
            AfterRun::Fail,
            "a reader error at shutdown is still reported"
        );
        assert_eq!(with(|e| e.error = Some(true)), AfterRun::Stop, "the consumer's shutdown error is a clean end");
        // The watchdog's restart.
        assert_eq!(with(|e| e.restart = true), AfterRun::Restart);
        assert_eq!(
            with(|e| {
                e.restart = true;
                e.error = Some(false);
                e.until_ms = Some(9)
            }),
            AfterRun::Restart,
            "a stuck reader's error on stop and an unfinished catch-up do not end the feed"
        );
        assert_eq!(
            with(|e| {
                e.restart = true;
                e.shutdown = true
            }),
            AfterRun::Stop,
            "shutdown during the stop: no restart"
        );
        // Fencing wins over everything.
        for f in [
            |e: &mut RunEnd| e.restart = true,
            |e: &mut RunEnd| e.error = Some(false),
            |e: &mut RunEnd| e.until_ms = Some(9),
        ] {
            let mut e = end.clone();
            e.fenced = true;
            f(&mut e);
            assert_eq!(after_run(&e), AfterRun::Fenced, "{e:?}");
        }
    }

    /// The figures docs/OPERATIONS.md quotes.
    #[test]
    fn documented_catch_up_and_idle_figures() {
        let q = Duration::from_millis(10);
        let library =
            catch_up_time(DAY, ReadSettings { window: Duration::from_secs(30), sleep: Duration::from_secs(1) }, q);
        assert_eq!(library.as_secs(), 2_908, "24 h with 30 s windows and 1 s sleeps: 2 880 windows, ~48 min");
        let ours =
            catch_up_time(DAY, ReadSettings { window: Duration::from_secs(300), sleep: Duration::from_millis(100) }, q);
        assert_eq!(ours.as_secs(), 31, "24 h with 5 min windows and 100 ms sleeps: 288 windows, ~32 s of reading");

        // A small node: 256 vnodes, 2 shards (512 streams), 1 s sleep, 5 s checkpoints.
        let c = IdleCost::estimate(256, 512, Duration::from_secs(1), Duration::from_secs(5), q);
        assert_eq!(c.log_reads_per_s.round(), 253.0);
        assert_eq!(c.generation_reads_per_s, 2.0);
        assert_eq!(c.checkpoint_writes_per_s, 8.0 / 5.0);
        assert_eq!(c.library_checkpoint_writes_per_s, 512.0 / 5.0);
        // Raising the sleep interval to 5 s and checkpoints to 30 s.
        let c = IdleCost::estimate(256, 512, Duration::from_secs(5), Duration::from_secs(30), q);
        assert_eq!(c.log_reads_per_s.round(), 51.0);
        assert_eq!(c.checkpoint_writes_per_s, 8.0 / 30.0);
        assert_eq!(
            IdleCost::estimate(1, 65, Duration::from_secs(1), Duration::from_secs(1), q).checkpoint_writes_per_s,
            2.0
        );
    }
}
