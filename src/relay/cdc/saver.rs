//! The relay's own scylla-cdc checkpoint saver: CDC progress in the consumer's
//! lease partition (`relay_leases`), never moving backwards, fenced by the
//! lease epoch. Replaces scylla-cdc's `TableBackedCheckpointSaver`.
//!
//! Guarantees:
//! - Never saves a time older than the one loaded (or last saved) for a
//!   stream ([`ProgressState`]), except on an operator's rewind
//!   ([`LeaseCheckpointSaver::rewind`], `cdc::rewind`; into an earlier
//!   generation it also moves the generation back and deletes the later
//!   one's rows): the lower bound scylla-cdc saves for every
//!   stream right after a start is dropped, so a crash at any moment resumes
//!   from the last real progress.
//! - Never creates a table (`outboxd schema` does): the relay needs no CREATE
//!   permission. A missing table is a clear error naming `outboxd schema`.
//! - Fenced: with `epoch: Some(e)` every write is one conditional
//!   single-partition batch `... IF epoch = e` on the lease partition's static
//!   column, so a former holder whose lease was taken over can never move the
//!   progress (its write is refused, the saver turns fenced and every later
//!   save fails). With `epoch: None` writes are unconditional.
//! - Batched: `save_checkpoint` only records the value in memory; [`flush`]
//!   (run every `checkpoint_interval` by [`run_flusher`], and once more when a
//!   reader ends) writes the streams that moved, at most [`SAVE_BATCH_ROWS`]
//!   rows per batch, one batch at a time (every stream's first row before
//!   any progress: [`ProgressState::dirty`]). One conditional batch per chunk
//!   instead of one LWT per stream: all progress rows live in one partition,
//!   so a batch costs one Paxos round for up to 64 streams, and LWTs on one
//!   partition must not run concurrently anyway (they would contend).
//! - Rows carry a TTL (derived from the CDC log TTL, `cdc_ttl`), so rows of
//!   finished generations disappear; live rows are rewritten while they move.
//! - A new generation is recorded only after the batches the finished one
//!   left were handled (`saver_generation.rs`: scylla-cdc's adapter and the
//!   generation start, with the stream groups for the stall watchdog).
//!
//! [`flush`]: LeaseCheckpointSaver::flush

use scylla::client::session::Session;
use scylla::response::query_result::QueryResult;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, CqlValue, Row};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;

use super::leftover::GenerationEnd;
use super::progress::{ProgressState, StreamKey};
use super::watchdog::{Activity, Sample};
use crate::shutdown::Shutdown;
use crate::store::cql::prepare_on;
use crate::store::cql::progress::read_legacy_progress;
pub use crate::store::cql::progress::{read_progress, LEASE_TABLE};
use crate::store::StoreError;

/// Most progress rows written by one batch (keeps a batch ~4 KB, under
/// Cassandra's 5 KB warning and far under Scylla's limits).
pub const SAVE_BATCH_ROWS: usize = 64;

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

/// What a flush did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// This many stream rows were written (0: nothing had moved).
    Saved(usize),
    /// The lease partition's epoch is not ours: another instance holds the
    /// lease. Nothing was written; the saver is fenced for good.
    Fenced { current_epoch: Option<i64> },
}

struct Statements {
    save: PreparedStatement,
    save_generation: PreparedStatement,
    erase: PreparedStatement,
}

/// scylla-cdc progress of one consumer (`name`), kept in its lease partition.
pub struct LeaseCheckpointSaver {
    session: Arc<Session>,
    /// The keyspace of the store (and of its CDC log).
    keyspace: String,
    table: String,
    name: String,
    epoch: Option<i64>,
    row_ttl_secs: i32,
    stmts: Statements,
    state: Mutex<ProgressState>,
    /// One flush at a time: two interleaved flushes could write an older
    /// value after a newer one.
    flushing: tokio::sync::Mutex<()>,
    fenced: watch::Sender<Option<Option<i64>>>,
    /// The consumers' calls by stream (`watchdog`: a stalled stream group
    /// or a busy consumer).
    activity: Activity,
    /// The reader run (counted by `run_starts`) and what handles the
    /// batches a finished generation left (`leftover`).
    run: AtomicU64,
    generation_end: Mutex<Option<Weak<dyn GenerationEnd>>>,
    /// When the stream groups were last read (`saver_generation`): a failed
    /// read is tried again, at most once a minute.
    groups_read_at: Mutex<Option<std::time::Instant>>,
}

/// `[applied]` and `epoch` of a conditional write's answer.
fn lwt_epoch(res: QueryResult) -> Result<(bool, Option<i64>), StoreError> {
    let codec = |e: &dyn std::fmt::Display| StoreError::Codec(format!("conditional progress write: {e}"));
    let rows = res.into_rows_result().map_err(|e| codec(&e))?;
    let applied_at =
        rows.column_specs().get_by_name("[applied]").map(|(i, _)| i).ok_or_else(|| codec(&"no [applied] column"))?;
    let epoch_at = rows.column_specs().get_by_name("epoch").map(|(i, _)| i);
    let first =
        rows.rows::<Row>().map_err(|e| codec(&e))?.next().ok_or_else(|| codec(&"no row"))?.map_err(|e| codec(&e))?;
    let applied = matches!(first.columns.get(applied_at), Some(Some(CqlValue::Boolean(true))));
    let epoch = match epoch_at.and_then(|i| first.columns.get(i).cloned().flatten()) {
        Some(CqlValue::BigInt(e)) => Some(e),
        _ => None,
    };
    Ok((applied, epoch))
}

impl LeaseCheckpointSaver {
    /// Prepares the statements and loads `name`'s progress. Creates nothing.
    /// When the partition holds no progress yet and `legacy_table` (the
    /// table scylla-cdc's own saver used before) exists, its progress is the
    /// starting point, so an upgrade does not replay the whole CDC log.
    pub async fn open(
        session: Arc<Session>,
        keyspace: &str,
        name: &str,
        epoch: Option<i64>,
        row_ttl: Duration,
        legacy_table: Option<&str>,
    ) -> Result<Arc<Self>, StoreError> {
        let table = format!("{keyspace}.{LEASE_TABLE}");
        let fence = if epoch.is_some() { " IF epoch = ?" } else { "" };
        let prepare = |cql: String| prepare_on(&session, cql, &table);
        let stmts = Statements {
            save: prepare(format!(
                "UPDATE {table} USING TTL ? SET generation = ?, time = ? WHERE name = ? AND stream_id = ?{fence}"
            ))
            .await?,
            save_generation: prepare(format!(
                "UPDATE {table} USING TTL ? SET generation = ?, time = ? WHERE name = ? AND stream_id = ?{fence}"
            ))
            .await?,
            erase: prepare(format!("DELETE FROM {table} WHERE name = ? AND stream_id = ?{fence}")).await?,
        };
        let rows = read_progress(&session, keyspace, name).await?;
        let state = match legacy_table {
            Some(legacy) if rows.is_empty() => {
                ProgressState::from_rows(read_legacy_progress(&session, keyspace, legacy).await).unsaved()
            }
            _ => ProgressState::from_rows(rows),
        };
        let (fenced, _) = watch::channel(None);
        Ok(Arc::new(LeaseCheckpointSaver {
            session,
            keyspace: keyspace.to_string(),
            table,
            name: name.to_string(),
            epoch,
            row_ttl_secs: row_ttl.as_secs().clamp(1, i32::MAX as u64) as i32,
            stmts,
            state: Mutex::new(state),
            flushing: tokio::sync::Mutex::new(()),
            fenced,
            activity: Activity::default(),
            run: AtomicU64::new(0),
            generation_end: Mutex::new(None),
            groups_read_at: Mutex::new(None),
        }))
    }

    /// The consumer name (the lease partition).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The session and the keyspace of the store (and of its CDC log).
    pub fn cql(&self) -> (&Session, &str) {
        (&self.session, &self.keyspace)
    }

    /// A copy of the in-memory progress.
    pub fn progress(&self) -> ProgressState {
        self.state.lock().unwrap().clone()
    }

    /// The oldest progress of the current generation's streams known here
    /// (ms): every change of those streams before it has been published; a
    /// stream group that has not reported yet is not counted
    /// ([`LeaseCheckpointSaver::read_through_ms`] bounds it). Drives the
    /// reader's start point and the position of its runs.
    pub fn oldest_progress_ms(&self) -> Option<i64> {
        self.state.lock().unwrap().oldest()
    }

    /// Every CDC row stamped before this (ms) has been published (the
    /// reconciler's bound): the oldest progress once every stream of the
    /// generation has reported, the generation's floor before
    /// ([`ProgressState::read_through`]).
    pub fn read_through_ms(&self) -> Option<i64> {
        let state = self.state.lock().unwrap();
        let all_known =
            state.generation().and_then(|g| self.activity.every_stream(g, |s| state.knows(s))).unwrap_or(false);
        state.read_through(all_known)
    }

    /// The consumers' calls by stream, for the stall watchdog.
    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    /// What the stall watchdog samples: the oldest progress and the
    /// activity of the consumers of the streams at it (other stream groups'
    /// calls do not hide a stuck one). A batch of those streams held for a
    /// row its window did not bring (the reader read past it,
    /// [`ProgressState::held_past`]) counts as a call in progress: a
    /// restart would only buffer it again. One held while its window is
    /// still being read does not: its reader may be stuck on the next page.
    pub fn stall_sample(&self) -> Sample {
        let state = self.state.lock().unwrap();
        let (oldest_ms, streams) = state.oldest_streams();
        let held = streams.iter().filter(|s| state.held_past(s)).count();
        let (busy, done) = self.activity.sample_of(streams);
        Sample { oldest_ms, busy: busy + held, done, all: self.activity.sample_all() }
    }

    /// True once a write was refused because another instance holds the lease.
    pub fn is_fenced(&self) -> bool {
        self.fenced.borrow().is_some()
    }

    /// Changes to `Some(current_epoch)` when the saver is fenced.
    pub fn fenced_watch(&self) -> watch::Receiver<Option<Option<i64>>> {
        self.fenced.subscribe()
    }

    fn fence(&self, current_epoch: Option<i64>) -> Flushed {
        tracing::warn!(consumer = %self.name, ours = ?self.epoch, current = ?current_epoch, "CDC progress write refused: the lease epoch moved on (another instance took over); not saving progress any more");
        self.fenced.send_replace(Some(current_epoch));
        Flushed::Fenced { current_epoch }
    }

    fn fenced_outcome(&self) -> Option<Flushed> {
        (*self.fenced.borrow()).map(|current_epoch| Flushed::Fenced { current_epoch })
    }

    /// The outcome of one write: `Some(Fenced)` when its condition was refused.
    async fn write(
        &self,
        res: Result<QueryResult, scylla::errors::ExecutionError>,
    ) -> Result<Option<Flushed>, StoreError> {
        let res = res.map_err(|e| unavailable(&format!("save CDC progress of {} in {}", self.name, self.table), e))?;
        if self.epoch.is_none() {
            return Ok(None);
        }
        match lwt_epoch(res)? {
            (true, _) => Ok(None),
            (false, current) => Ok(Some(self.fence(current))),
        }
    }

    /// `n` copies of `stmt` as one batch, logged when fenced (a conditional
    /// batch on the lease partition).
    fn batch_of(&self, stmt: &PreparedStatement, n: usize) -> Batch {
        let mut batch = Batch::new(if self.epoch.is_some() { BatchType::Logged } else { BatchType::Unlogged });
        for _ in 0..n {
            batch.append_statement(stmt.clone());
        }
        batch
    }

    /// Writes every stream whose progress moved since the last flush. Rows
    /// of a failed flush stay pending; the next flush writes their newest value.
    pub async fn flush(&self) -> Result<Flushed, StoreError> {
        let _one = self.flushing.lock().await;
        if let Some(f) = self.fenced_outcome() {
            return Ok(f);
        }
        // The floor first: no stream row may carry progress past it before
        // the table holds it.
        if let f @ Flushed::Fenced { .. } = self.write_generation().await? {
            return Ok(f);
        }
        let (generation, dirty) = {
            let s = self.state.lock().unwrap();
            (s.generation().map(CqlTimestamp), s.dirty())
        };
        let mut written = 0;
        for chunk in dirty.chunks(SAVE_BATCH_ROWS) {
            let batch = self.batch_of(&self.stmts.save, chunk.len());
            let rows = chunk.iter().map(|(stream, time)| {
                (self.row_ttl_secs, generation, CqlTimestamp(*time), self.name.as_str(), stream.0.as_slice())
            });
            let res = match self.epoch {
                Some(e) => {
                    self.session.batch(&batch, rows.map(|r| (r.0, r.1, r.2, r.3, r.4, e)).collect::<Vec<_>>()).await
                }
                None => self.session.batch(&batch, rows.collect::<Vec<_>>()).await,
            };
            if let Some(f) = self.write(res).await? {
                return Ok(f);
            }
            self.state.lock().unwrap().mark_saved(chunk);
            written += chunk.len();
        }
        Ok(Flushed::Saved(written))
    }

    /// Writes the current generation's row if the table does not hold it yet.
    async fn save_generation(&self) -> Result<Flushed, StoreError> {
        let _one = self.flushing.lock().await;
        if let Some(f) = self.fenced_outcome() {
            return Ok(f);
        }
        self.write_generation().await
    }

    /// The generation row (generation and floor) when it is dirty; the
    /// caller holds `flushing`.
    async fn write_generation(&self) -> Result<Flushed, StoreError> {
        let Some((g, floor)) = self.state.lock().unwrap().generation_dirty() else { return Ok(Flushed::Saved(0)) };
        let empty: &[u8] = &[];
        let (ttl, gen, time, name) = (self.row_ttl_secs, CqlTimestamp(g), floor.map(CqlTimestamp), self.name.as_str());
        let res = match self.epoch {
            Some(e) => {
                self.session.execute_unpaged(&self.stmts.save_generation, (ttl, gen, time, name, empty, e)).await
            }
            None => self.session.execute_unpaged(&self.stmts.save_generation, (ttl, gen, time, name, empty)).await,
        };
        if let Some(f) = self.write(res).await? {
            return Ok(f);
        }
        self.state.lock().unwrap().mark_generation_saved(g, floor);
        Ok(Flushed::Saved(1))
    }
}

fn fenced_error(name: &str, current: Option<i64>) -> anyhow::Error {
    anyhow::anyhow!(
        "CDC progress of {name} is fenced: the lease epoch is now {current:?} (another instance holds the lease)"
    )
}

impl LeaseCheckpointSaver {
    /// Records that `stream` is published up to `ms` (kept only if it is
    /// progress; [`LeaseCheckpointSaver::flush`] writes it). Fails once fenced.
    pub fn record(&self, stream: &StreamKey, ms: i64) -> anyhow::Result<bool> {
        if let Some(Flushed::Fenced { current_epoch }) = self.fenced_outcome() {
            return Err(fenced_error(&self.name, current_epoch));
        }
        Ok(self.state.lock().unwrap().admit(stream, ms))
    }

    /// Every tracked stream is published up to `ms` (a run with an end
    /// timestamp completed); holds still apply.
    pub fn advance_all(&self, ms: i64) -> usize {
        self.state.lock().unwrap().admit_all(ms)
    }

    /// Progress of `stream` must not pass `ms` until [`Self::release`]: its
    /// consumer holds rows from there on (a CDC batch not complete yet).
    pub fn hold(&self, stream: &StreamKey, ms: i64) {
        self.state.lock().unwrap().hold(stream, ms);
    }

    pub fn release(&self, stream: &StreamKey) {
        self.state.lock().unwrap().release(stream);
    }

    /// A reader run starts from `lower` (ms): the floor of a generation
    /// that has none yet (written with the generation row, before any
    /// progress).
    pub fn run_starts(&self, lower: i64) {
        self.state.lock().unwrap().run_starts(lower);
        self.run.fetch_add(1, Ordering::SeqCst);
    }

    /// The current reader run (see `leftover`).
    pub fn run_id(&self) -> u64 {
        self.run.load(Ordering::SeqCst)
    }

    /// `hook` handles what a finished generation's consumers left, before
    /// the next generation is recorded.
    pub fn on_generation_end(&self, hook: Weak<dyn GenerationEnd>) {
        *self.generation_end.lock().unwrap() = Some(hook);
    }

    /// The current generation's floor (ms): a restart's lower bound never
    /// passes it.
    pub fn floor_ms(&self) -> Option<i64> {
        self.state.lock().unwrap().floor()
    }

    /// The current generation (ms), once scylla-cdc started one.
    pub fn generation_ms(&self) -> Option<i64> {
        self.state.lock().unwrap().generation()
    }
}

/// Flushes `saver` every `every` until `stop`, then once more. Returns when
/// stopped or fenced; a failed flush is logged and retried at the next tick.
pub async fn run_flusher(saver: Arc<LeaseCheckpointSaver>, every: Duration, mut stop: Shutdown) -> Flushed {
    let mut last = Flushed::Saved(0);
    loop {
        let more = stop.sleep(every).await;
        match saver.flush().await {
            Ok(f @ Flushed::Fenced { .. }) => return f,
            Ok(f) => last = f,
            Err(e) => {
                tracing::warn!(consumer = %saver.name(), error = %e, "saving CDC progress failed; retrying at the next checkpoint interval")
            }
        }
        if !more {
            return last;
        }
        saver.read_groups_again().await;
    }
}

#[path = "saver_generation.rs"]
mod generation;
#[path = "saver_rewind.rs"]
mod rewind;
pub use generation::{generation_at, generation_ms};

#[cfg(test)]
#[path = "saver_tests.rs"]
mod tests;
