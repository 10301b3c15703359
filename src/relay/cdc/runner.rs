//! Runs one consumer's scylla-cdc reader over `event_store`'s CDC log:
//! start point, catch-up runs, the normal run, progress flushing, stop.
//!
//! Guarantees:
//! - Reading starts at the saved progress ([`start_point`]): never at a
//!   later `cdc:origin`, never before the TTL floor; a gap beyond the TTL is
//!   logged as possibly lost.
//! - While behind by more than the threshold, the reader runs with the
//!   catch-up settings up to `now - safety_interval` (scylla-cdc's
//!   `end_timestamp`, fixed at build time, so it cannot race the first
//!   generation), then every stream is known to be read up to there
//!   ([`LeaseCheckpointSaver::advance_all`]) and the lag is measured again.
//! - Progress is written by the saver's flusher every checkpoint interval
//!   and once more when a run ends (fenced when the saver has an epoch).
//! - Shutdown stops the reader gracefully (it finishes its window) within
//!   `stop_grace`, else abandons it; unsaved progress is re-read after a
//!   restart (duplicates, never loss). A fenced saver ends the run at once
//!   with `CdcError::Fenced` (the reader is cancelled, nothing more is saved);
//!   a reader stopped by its sink's `CdcError::Fenced` ends it the same way
//!   (the final flush may still save progress, never past an unhandled row).
//! - A reader whose oldest progress stands still for `stall_restart` while
//!   the consumer of those streams is idle (`watchdog`: never during a
//!   broker outage, when the delivery call itself waits; other stream
//!   groups' calls do not count) is stopped like at shutdown and
//!   started again from its progress, counted in `restarts`; nothing is
//!   skipped (progress never passed an unhandled row) and the re-read tail
//!   is published again (same `ce_id`).
//! - An operator's rewind ([`super::rewind`]) stops the reader the same way,
//!   then (unless fenced or shut down meanwhile) writes the rewound progress
//!   and starts the reader again from it; its outcome goes back to the
//!   request server. Not counted as a restart.

use prometheus::IntCounter;
use scylla::client::session::Session;
use scylla_cdc::consumer::ConsumerFactory;
use scylla_cdc::log_reader::CDCLogReaderBuilder;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::rewind::{self, Rewind, RewindRx};
use super::saver::{run_flusher, Flushed, LeaseCheckpointSaver};
use super::start::{
    after_run, read_plan, start_point, AfterRun, PlanInputs, ReadPlan, ReadSettings, RunEnd, StartFrom, StartInputs,
};
use super::watchdog::wait_for_stall;
use super::{CdcError, EVENT_TABLE};
use crate::shutdown::{Shutdown, Trigger};
use crate::store::cql::CDC_ORIGIN_CHECKPOINT;

/// Everything a run needs, in plain values (from `store.cql.cdc`).
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    pub keyspace: String,
    pub log_ttl: Duration,
    pub skew: Duration,
    pub safety_interval: Duration,
    pub normal: ReadSettings,
    pub catch_up: ReadSettings,
    pub catch_up_threshold: Duration,
    pub checkpoint_interval: Duration,
    pub stop_grace: Duration,
    /// No progress and no delivery for this long: restart the reader (zero: never).
    pub stall_restart: Duration,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// `cdc:origin` (time of the first `outboxd schema`, ms), if readable.
pub async fn read_origin(session: &Session, keyspace: &str) -> Option<i64> {
    let q = format!("SELECT position FROM {keyspace}.checkpoints WHERE consumer = ?");
    let res = session.query_unpaged(q, (CDC_ORIGIN_CHECKPOINT,)).await;
    match res.map_err(|e| e.to_string()).and_then(|r| r.into_rows_result().map_err(|e| e.to_string())) {
        Ok(rows) => rows.maybe_first_row::<(Option<i64>,)>().ok().flatten().and_then(|(p,)| p).filter(|p| *p > 0),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the CDC origin; a first start reads from the CDC log TTL floor");
            None
        }
    }
}

/// The start of the table's first CDC generation, read when no generation
/// was saved (with one, scylla-cdc starts no earlier than it). Unreadable:
/// warned, and the start is not raised (`start::start_point`): scylla-cdc
/// then begins at its oldest generation itself (see `start`), so nothing is
/// skipped.
async fn first_generation(session: &Session, keyspace: &str, saver: &LeaseCheckpointSaver) -> Option<i64> {
    if saver.generation_ms().is_some() {
        return None;
    }
    let read = super::generations::first(session, keyspace, super::generations::TIMESTAMPS_TABLE);
    match super::generations::within_limit(read).await {
        Ok(first) => first,
        Err(e) => {
            tracing::warn!(consumer = saver.name(), error = %e, "cannot read the first CDC generation; starting where the saved progress says (scylla-cdc begins at its oldest generation)");
            None
        }
    }
}

/// True when the reader's error `e` carries a [`CdcError`] that `is`.
fn carries(e: &anyhow::Error, is: fn(&CdcError) -> bool) -> bool {
    e.chain().any(|c| c.downcast_ref::<CdcError>().is_some_and(is))
}

/// How a reader run ended. Fenced also when the reader's own error is the
/// sink's `CdcError::Fenced` (a park or dead-letter write refused at this
/// epoch: another instance holds the lease) before the saver had a write
/// refused: a takeover, not a reader failure.
fn run_end(
    res: &anyhow::Result<()>,
    saver_fenced: bool,
    flushed: Flushed,
    restart: bool,
    shutdown: bool,
    until_ms: Option<i64>,
) -> RunEnd {
    let error_fenced = res.as_ref().err().is_some_and(|e| carries(e, |c| matches!(c, CdcError::Fenced { .. })));
    RunEnd {
        fenced: saver_fenced || matches!(flushed, Flushed::Fenced { .. }) || error_fenced,
        restart,
        shutdown,
        error: res.as_ref().err().map(|e| carries(e, |c| matches!(c, CdcError::Shutdown))),
        until_ms,
    }
}

fn ms(d: Duration) -> Duration {
    d.max(Duration::from_millis(1))
}

/// Runs the reader until shutdown (Ok), a reader failure or fencing (Err);
/// carries out the rewinds that come through `rewinds`.
pub async fn run_reader(
    session: Arc<Session>,
    settings: RunnerSettings,
    factory: Arc<dyn ConsumerFactory>,
    saver: Arc<LeaseCheckpointSaver>,
    restarts: Option<IntCounter>,
    mut rewinds: Option<RewindRx>,
    mut shutdown: Shutdown,
) -> Result<(), CdcError> {
    let origin = read_origin(&session, &settings.keyspace).await;
    let (saved_ms, floor_ms) = (saver.oldest_progress_ms(), saver.floor_ms());
    let first_generation_ms = first_generation(&session, &settings.keyspace, &saver).await;
    let start = start_point(StartInputs {
        now_ms: now_ms(),
        log_ttl: settings.log_ttl,
        skew: settings.skew,
        origin_ms: origin,
        saved_ms,
        floor_ms,
        first_generation_ms,
    });
    if start.from == StartFrom::SavedBeyondTtl {
        tracing::error!(consumer = saver.name(), saved_ms = ?start.lost_after_ms, start_ms = start.start_ms,
            "saved CDC progress is older than the CDC log TTL: changes between it and the start may have expired unpublished");
    }
    tracing::info!(consumer = saver.name(), start_ms = start.start_ms, from = ?start.from, saved_ms = ?saved_ms, floor_ms = ?floor_ms, "CDC reader starting");
    let mut position = start.start_ms;
    // The lower bound of every run: streams without progress are read from it.
    let mut lower = start.start_ms;
    loop {
        let plan = read_plan(PlanInputs {
            now_ms: now_ms(),
            position_ms: position,
            safety_interval: settings.safety_interval,
            normal: settings.normal,
            catch_up: settings.catch_up,
            threshold: settings.catch_up_threshold,
        });
        let (read, until) = match plan {
            ReadPlan::Normal(s) => (s, None),
            ReadPlan::CatchUp { settings: s, until_ms } => (s, Some(until_ms)),
        };
        tracing::info!(consumer = saver.name(), position_ms = position, catch_up_until_ms = ?until, window_ms = read.window.as_millis() as u64, sleep_ms = read.sleep.as_millis() as u64, "CDC reader run");
        let start_ms = lower.min(position).max(0) as u64;
        saver.run_starts(start_ms as i64);
        let mut builder = CDCLogReaderBuilder::new()
            .session(session.clone())
            .keyspace(&settings.keyspace)
            .table_name(EVENT_TABLE)
            .start_timestamp(Duration::from_millis(start_ms))
            .window_size(ms(read.window))
            .safety_interval(ms(settings.safety_interval))
            .sleep_interval(ms(read.sleep))
            .consumer_factory(factory.clone())
            .checkpoint_saver(saver.clone())
            .should_load_progress(true)
            .should_save_progress(true)
            // In memory only (the flusher writes): keep the lag fresh.
            .pause_between_saves(ms(settings.checkpoint_interval.min(Duration::from_secs(1))));
        if let Some(u) = until {
            builder = builder.end_timestamp(Duration::from_millis(u.max(0) as u64));
        }
        let (mut reader, mut handle) = builder.build().await.map_err(|e| {
            CdcError::Reader(format!("cannot start reading {}.{EVENT_TABLE}: {e:#}", settings.keyspace))
        })?;
        let stop_flusher = Trigger::new();
        let flusher = tokio::spawn(run_flusher(saver.clone(), settings.checkpoint_interval, stop_flusher.subscribe()));
        let mut fenced = saver.fenced_watch();
        let probe = saver.clone();
        // (the reader's result if it ended by itself, how long it stalled, a rewind)
        let (finished, stalled, rewind): (_, _, Option<Rewind>) = tokio::select! {
            r = &mut handle => (Some(r), None, None),
            _ = shutdown.recv() => (None, None, None),
            _ = fenced.wait_for(Option::is_some) => (Some(Err(anyhow::anyhow!("fenced"))), None, None),
            idle = wait_for_stall(settings.stall_restart, move || probe.stall_sample()) => (None, Some(idle), None),
            rw = rewind::next(&mut rewinds) => (None, None, Some(rw)),
        };
        let res = match finished {
            Some(r) => r,
            None => {
                reader.stop();
                match tokio::time::timeout(settings.stop_grace, &mut handle).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::warn!(consumer = saver.name(), "CDC reader did not stop within {:?}; abandoning it (the unsaved tail is read again after a restart)", settings.stop_grace);
                        Ok(())
                    }
                }
            }
        };
        drop(handle); // cancels an abandoned reader and its stream tasks
        stop_flusher.fire();
        let flushed = flusher.await.unwrap_or(Flushed::Saved(0));
        let restart = stalled.is_some() || rewind.is_some();
        let end = run_end(&res, saver.is_fenced(), flushed, restart, shutdown.is_shutdown(), until);
        match after_run(&end) {
            AfterRun::Fenced => return Err(CdcError::Fenced { consumer: saver.name().to_string() }),
            AfterRun::Stop => return Ok(()),
            AfterRun::Fail => {
                let e = res.err().map(|e| format!("{e:#}")).unwrap_or_default();
                return Err(CdcError::Reader(e));
            }
            AfterRun::Restart => {
                // The flusher saved the progress as the run ended.
                if let Err(e) = &res {
                    tracing::warn!(consumer = saver.name(), error = %format!("{e:#}"), "the stopped CDC reader ended with an error");
                }
                if let Some(rw) = rewind {
                    rw.carry_out(&saver, settings.log_ttl).await;
                    position = match saver.oldest_progress_ms() {
                        Some(oldest) => oldest,
                        // Into an earlier generation: none of its streams has
                        // progress; all are read from the rewind time (its floor).
                        None => {
                            lower = saver.floor_ms().unwrap_or(position);
                            lower
                        }
                    };
                    tracing::info!(
                        consumer = saver.name(),
                        position_ms = position,
                        "CDC reader starting again after a rewind request"
                    );
                    continue;
                }
                if let Some(c) = &restarts {
                    c.inc();
                }
                position = saver.oldest_progress_ms().unwrap_or(position);
                let idle = stalled.unwrap_or_default();
                tracing::warn!(consumer = saver.name(), idle_s = idle.as_secs(), position_ms = position,
                    "CDC reader made no progress for {idle:?} while its consumer was idle; restarting it from its progress (a reader stuck inside scylla-cdc, or a Scylla that does not answer its queries)");
            }
            AfterRun::CaughtUp(u) => {
                // Every stream was read up to `u` (scylla-cdc only ends a run
                // with an end timestamp once every reader reached it).
                saver.advance_all(u);
                if let Err(e) = saver.flush().await {
                    tracing::warn!(consumer = saver.name(), error = %e, "saving CDC progress after catch-up failed; the next flush retries");
                }
                position = u;
            }
        }
    }
}

#[cfg(test)]
#[path = "runner_tests.rs"]
mod tests;
