//! The writer thread: every write of the SQLite store, group-committed.
//!
//! Guarantee: nothing is appended to a database file that was deleted or
//! replaced since the store opened it (the append fails, Unavailable).
//! Appends queued together, and those queued while the group's
//! rows are being inserted, are committed in one transaction; a
//! single-event append that fails inserted nothing, a multi-event append runs
//! inside its own savepoint so a failure part-way rolls back only its rows and
//! never its neighbours (if that savepoint cannot be closed, the whole group
//! fails and nothing is written). A version check plus `UNIQUE (aggregate_id,
//! sequence_number)` decide conflicts, so two writers (threads or processes)
//! can never both win the same version. Feed readers are woken before callers
//! get their answer. Rows arrive encoded (`Row`, built by the caller), so
//! the single writer thread spends its time on SQL only while callers
//! encode the next group in parallel. An exec job that panics fails its
//! caller (`OutcomeUnknown`), its open transaction is rolled back, and the
//! writer thread goes on.

use foldhash::{HashMap, HashMapExt};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::{codec, ts, unavailable, write_failure, write_failure_at};
use crate::envelope::EventEnvelope;
use crate::store::{Appended, StoreError};

pub(super) type ExecFn = Box<dyn FnOnce(&mut Connection) + Send>;

pub(super) struct AppendJob {
    pub(super) aggregate_id: Uuid,
    /// `aggregate_id` as its column text, rendered by the caller.
    pub(super) aggregate_key: String,
    pub(super) expected: i64,
    pub(super) events: Vec<Row>,
    pub(super) reply: oneshot::Sender<Result<Appended, StoreError>>,
}

/// One event as its columns' text, encoded by the caller off the writer thread.
pub(super) struct Row {
    event_id: String,
    aggregate_type: String,
    sequence: i64,
    event_type: String,
    schema_version: i32,
    payload: String,
    causation_id: Option<String>,
    correlation_id: String,
    timestamp: String,
    trace_parent: Option<String>,
    trace_state: Option<String>,
}

impl Row {
    pub(super) fn encode(e: &EventEnvelope) -> Result<Row, StoreError> {
        Ok(Row {
            event_id: e.event_id.to_string(),
            aggregate_type: e.aggregate_type.clone(),
            sequence: e.sequence,
            event_type: e.event_type.clone(),
            schema_version: e.schema_version,
            payload: serde_json::to_string(&e.payload).map_err(codec)?,
            causation_id: e.causation_id.map(|c| c.to_string()),
            correlation_id: e.correlation_id.to_string(),
            timestamp: ts(&e.timestamp),
            trace_parent: e.trace.as_ref().map(|t| t.traceparent.clone()),
            trace_state: e.trace.as_ref().and_then(|t| t.tracestate.clone()),
        })
    }
}

pub(super) enum Job {
    Append(AppendJob),
    Exec(ExecFn),
}

/// Versions this writer committed, to skip the version query when the caller's
/// expectation matches. Only an optimisation: the UNIQUE key still arbitrates
/// (a stale entry makes the insert collide, which re-reads the real version).
const VERSION_CACHE_MAX: usize = 200_000;

/// Longest the writer holds back an append group or an exec job for waiting lease writes.
const LEASE_YIELD_MAX: std::time::Duration = std::time::Duration::from_millis(250);

pub(super) fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    notify: watch::Sender<i64>,
    group: usize,
    lease_waiting: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    file: std::sync::Arc<super::file::DbFile>,
    faults: std::sync::Arc<crate::store::faults::StoreFaults>,
) {
    let mut pending: Option<Job> = None;
    // foldhash: the map is probed once per append on the one writer thread.
    let mut versions: HashMap<Uuid, i64> = HashMap::new();
    loop {
        let job = match pending.take() {
            Some(j) => j,
            None => match rx.blocking_recv() {
                Some(j) => j,
                None => return, // every handle dropped: finish
            },
        };
        // A lease write (renewal, fenced checkpoint) waiting for the write
        // lock goes first: SQLite's busy handler is not fair, and back-to-back
        // groups or exec jobs (read-model batches, parks, requests) would
        // starve it past its renewal deadline.
        let held = std::time::Instant::now();
        while lease_waiting.load(std::sync::atomic::Ordering::SeqCst) > 0 && held.elapsed() < LEASE_YIELD_MAX {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let first = match job {
            Job::Exec(f) => {
                // A panicking job must not take the one writer thread (and
                // every later write) with it: its caller is answered by the
                // job itself (`SqliteStore::write`), or sees its reply dropped.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut conn)));
                end_open_transaction(&conn);
                continue;
            }
            Job::Append(a) => a,
        };
        if faults.check_named(crate::store::faults::WRITER_DIES).is_err() {
            panic!("injected: the sqlite writer thread dies (fault injection)");
        }
        // A database file deleted or replaced under us still takes commits
        // in WAL mode (SQLite checks only in rollback-journal mode): they
        // would go to the old inode, reported durable. One stat per group.
        if let Err(e) = file.check() {
            let _ = first.reply.send(Err(e));
            continue;
        }
        // The group stays open while appends keep arriving: rows queued while
        // the writer inserts the previous ones join this commit instead of
        // waiting for the next (the callers answered last time are encoding
        // their next rows meanwhile). It closes when the queue is empty, full,
        // a lease write waits, or an exec job is next.
        let next = |len: usize| -> Option<AppendJob> {
            if len >= group || lease_waiting.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                return None;
            }
            match rx.try_recv() {
                Ok(Job::Append(a)) => Some(a),
                Ok(exec) => {
                    pending = Some(exec);
                    None
                }
                Err(_) => None,
            }
        };
        let (batch, results) = commit_group(&mut conn, first, next, &versions);
        if versions.len() > VERSION_CACHE_MAX {
            versions.clear();
        }
        for (job, res) in batch.iter().zip(&results) {
            match res {
                Ok(a) => versions.insert(job.aggregate_id, a.version),
                Err(_) => versions.remove(&job.aggregate_id),
            };
        }
        // Wake feed readers before answering callers, so a caller that saw its
        // append succeed also sees the notification.
        let last = results.iter().filter_map(|r| r.as_ref().ok().and_then(|a| a.last_position)).max();
        if let Some(p) = last {
            notify.send_if_modified(|cur| {
                let changed = p > *cur;
                *cur = (*cur).max(p);
                changed
            });
        }
        for (job, res) in batch.into_iter().zip(results) {
            let _ = job.reply.send(res);
        }
    }
}

/// Rolls back a transaction an exec job left open (it panicked, or returned
/// without committing a `BEGIN` of its own): the next group would otherwise
/// commit it as part of its own. A `rusqlite::Transaction` rolls back when
/// dropped, unwinding included; this catches the rest.
pub(super) fn end_open_transaction(conn: &Connection) {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
}

/// What the caller of a panicking exec job is told: the job's rows may or
/// may not be stored (one written outside a transaction, or committed
/// before the panic, stays), so it is no outage to retry blindly.
pub(super) fn exec_panicked(payload: Box<dyn std::any::Any + Send>) -> StoreError {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".into());
    StoreError::OutcomeUnknown(format!(
        "a store write panicked ({msg}); an open transaction was rolled back, anything it committed stays"
    ))
}

/// One transaction for the whole group: `first`, then every append `next`
/// hands over (it is asked with the group's size so far, after each append
/// is inserted) until it returns `None`. A single-event append that fails
/// inserted nothing; a multi-event append runs inside a savepoint so a
/// failure part-way rolls back only its own rows. Returns the group's
/// appends with their results, in order; none is visible before the commit.
fn commit_group(
    conn: &mut Connection,
    first: AppendJob,
    mut next: impl FnMut(usize) -> Option<AppendJob>,
    versions: &HashMap<Uuid, i64>,
) -> (Vec<AppendJob>, Vec<Result<Appended, StoreError>>) {
    // Sized for a full group of 64 closed-loop callers, so the writer thread
    // does not regrow it append by append.
    let mut batch = Vec::with_capacity(64);
    batch.push(first);
    let fail_all = |batch: Vec<AppendJob>, e: StoreError| {
        let results = batch.iter().map(|_| Err(e.clone())).collect();
        (batch, results)
    };
    let path = conn.path().map(str::to_owned);
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(t) => t,
        Err(e) => return fail_all(batch, begin_failure(path.as_deref(), e)),
    };
    let mut results = Vec::with_capacity(64);
    // One statement for the whole group (a cache lookup per append hashes the SQL text).
    let mut insert = match tx.prepare_cached(INSERT) {
        Ok(s) => s,
        Err(e) => return fail_all(batch, unavailable(e)),
    };
    loop {
        let job = &batch[results.len()];
        let res = if job.events.len() == 1 {
            append_rows(&tx, &mut insert, job, versions)
        } else {
            match savepoint(&tx, "SAVEPOINT outboxd_append") {
                Err(e) => Err(e),
                Ok(()) => {
                    let res = append_rows(&tx, &mut insert, job, versions);
                    let closed = match &res {
                        Ok(_) => savepoint(&tx, "RELEASE outboxd_append"),
                        Err(_) => savepoint(&tx, "ROLLBACK TO outboxd_append")
                            .and_then(|_| savepoint(&tx, "RELEASE outboxd_append")),
                    };
                    if let Err(e) = closed {
                        // The append's rows can no longer be kept or removed
                        // on their own: the whole group rolls back (the
                        // transaction is dropped uncommitted).
                        return fail_all(
                            batch,
                            unavailable(format!("cannot close an append's savepoint ({e}); nothing was written")),
                        );
                    }
                    res
                }
            }
        };
        let failed = res.is_err();
        results.push(res);
        if failed && tx.is_autocommit() {
            // SQLite rolled the whole transaction back (I/O error, disk full,
            // ...): every append of the group is lost, and running more now
            // would commit each on its own while its caller is told it
            // failed. Fail the whole group instead.
            return fail_all(
                batch,
                unavailable("the group transaction was rolled back by SQLite after an error; nothing was written"),
            );
        }
        match next(batch.len()) {
            Some(j) => batch.push(j),
            None => break,
        }
    }
    drop(insert);
    if let Err(e) = tx.commit() {
        return fail_all(batch, commit_failure(e));
    }
    (batch, results)
}

/// A write transaction that cannot begin: as [`write_failure`] (a read-only
/// file is permanent), otherwise `Unavailable`.
pub(super) fn begin_failure(path: Option<&str>, e: rusqlite::Error) -> StoreError {
    match write_failure_at(path, e) {
        StoreError::Unavailable(m) => unavailable(format!("cannot begin write transaction: {m}")),
        permanent => permanent,
    }
}

/// What a failed COMMIT tells the group's callers. Busy, locked, a
/// constraint or a full disk: SQLite rolled it back, nothing is stored
/// (Unavailable: retry). Anything else (an I/O error once the WAL frames,
/// commit frame included, were written, say) may have left the group in the
/// WAL, replayed at the next open: OutcomeUnknown, so no caller retries a
/// command blindly.
pub(super) fn commit_failure(e: rusqlite::Error) -> StoreError {
    commit_failure_of("the appends", e)
}

/// [`commit_failure`] of any write transaction: `what` names what may or
/// may not be stored (the lease connection's writes use it too).
pub(super) fn commit_failure_of(what: &str, e: rusqlite::Error) -> StoreError {
    let definite = matches!(&e, rusqlite::Error::SqliteFailure(f, _) if matches!(
        f.code,
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::ConstraintViolation | ErrorCode::DiskFull
    ));
    if definite {
        unavailable(format!("commit failed: {e}"))
    } else {
        StoreError::OutcomeUnknown(format!("commit failed; {what} may or may not be stored: {e}"))
    }
}

fn savepoint(conn: &Connection, sql: &str) -> Result<(), StoreError> {
    conn.prepare_cached(sql).and_then(|mut s| s.execute([])).map(|_| ()).map_err(unavailable)
}

fn current_version(conn: &Connection, aggregate_id: &str) -> Result<i64, StoreError> {
    conn.prepare_cached(
        "SELECT sequence_number FROM event_store WHERE aggregate_id = ?1 ORDER BY sequence_number DESC LIMIT 1",
    )
    .and_then(|mut st| st.query_row([aggregate_id], |r| r.get::<_, i64>(0)).optional())
    .map(|v| v.unwrap_or(0))
    .map_err(unavailable)
}

const INSERT: &str = "INSERT INTO event_store (event_id, aggregate_type, aggregate_id, sequence_number, event_type, event_version, payload, causation_id, correlation_id, timestamp, trace_parent, trace_state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";

fn append_rows(
    conn: &Connection,
    stmt: &mut rusqlite::CachedStatement<'_>,
    job: &AppendJob,
    versions: &HashMap<Uuid, i64>,
) -> Result<Appended, StoreError> {
    let agg = &job.aggregate_key;
    // A new aggregate, or one this writer saw at exactly the expected version,
    // needs no version query: if someone else appended meanwhile, inserting
    // `expected + 1` collides on the UNIQUE key and becomes a Conflict below.
    let known = job.expected == 0 || versions.get(&job.aggregate_id) == Some(&job.expected);
    if !known {
        let actual = current_version(conn, agg)?;
        if actual != job.expected {
            return Err(StoreError::Conflict { aggregate_id: job.aggregate_id, expected: job.expected, actual });
        }
    }
    let mut last = 0;
    for e in &job.events {
        let r = stmt.execute(params![
            e.event_id,
            e.aggregate_type,
            agg,
            e.sequence,
            e.event_type,
            e.schema_version,
            e.payload,
            e.causation_id,
            e.correlation_id,
            e.timestamp,
            e.trace_parent,
            e.trace_state,
        ]);
        match r {
            Ok(_) => last = conn.last_insert_rowid(),
            Err(rusqlite::Error::SqliteFailure(f, msg)) if f.code == ErrorCode::ConstraintViolation => {
                let m = msg.unwrap_or_default();
                if m.contains("sequence_number") {
                    let actual = current_version(conn, agg)?;
                    return Err(StoreError::Conflict {
                        aggregate_id: job.aggregate_id,
                        expected: job.expected,
                        actual,
                    });
                }
                return Err(StoreError::InvalidAppend(format!("constraint violated: {m}")));
            }
            Err(e) => return Err(write_failure(conn, e)),
        }
    }
    Ok(Appended { version: job.expected + job.events.len() as i64, last_position: Some(last) })
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
