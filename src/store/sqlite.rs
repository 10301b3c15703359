//! Embedded SQLite backend (the default store; no server needed).
//!
//! Guarantees:
//! - Append is one transaction per command: a version check plus the inserts,
//!   under SQLite's write lock, with `UNIQUE (aggregate_id, sequence_number)`
//!   as the final arbiter, so two writers (threads or processes) can never both
//!   win the same version. A failed append leaves no rows.
//! - The feed position is the `INTEGER PRIMARY KEY AUTOINCREMENT` key. SQLite
//!   serialises writers, so positions increase in commit order and a reader
//!   never sees position N+1 before N.
//! - All writes run on one dedicated writer thread fed by a bounded queue
//!   (back-pressure instead of unbounded memory); the async runtime never
//!   blocks on SQLite. Appends queued together are group-committed: one
//!   transaction, one savepoint per append, so a conflict in one append
//!   doesn't affect its neighbours. Reads run on `spawn_blocking` with a
//!   small pool of WAL reader connections.
//! - Schema version 2 adds the read-model tables maintained by
//!   `crate::projection` (a v1 file is upgraded in place on open); they are
//!   written through the same writer thread, batch and checkpoint in one
//!   transaction.

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::{check_batch, Appended, DeadLetter, EventStore, Snapshot, StoreError};
use crate::envelope::{EventEnvelope, StoredEvent};

/// Tuning of the SQLite backend.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteOptions {
    /// `full` (fsync every commit; default, nothing acknowledged is lost on
    /// power failure) or `normal` (WAL default; survives process crashes).
    pub synchronous: Synchronous,
    /// How long a write waits for another process holding the lock.
    pub busy_timeout_ms: u64,
    /// Most appends group-committed in one transaction.
    pub group_commit_max: usize,
    /// Bound of the writer queue.
    pub queue_capacity: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Full,
    Normal,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: Synchronous::Full,
            busy_timeout_ms: 5_000,
            group_commit_max: 256,
            queue_capacity: 4_096,
        }
    }
}

/// Current schema version (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 2;

/// DDL of schema version 1; also shipped for `sqlite3` users in docs.
pub const SCHEMA_V1: &str = r#"
CREATE TABLE IF NOT EXISTS event_store (
    position        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT    NOT NULL UNIQUE,
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    sequence_number INTEGER NOT NULL CHECK (sequence_number > 0),
    event_type      TEXT    NOT NULL,
    event_version   INTEGER NOT NULL,
    payload         TEXT    NOT NULL,
    causation_id    TEXT,
    correlation_id  TEXT    NOT NULL,
    timestamp       TEXT    NOT NULL,
    UNIQUE (aggregate_id, sequence_number)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    consumer   TEXT PRIMARY KEY,
    position   INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letter_queue (
    id              TEXT PRIMARY KEY,
    position        INTEGER,
    event_id        TEXT NOT NULL UNIQUE,
    aggregate_id    TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    error_message   TEXT NOT NULL,
    failure_count   INTEGER NOT NULL,
    first_failed_at TEXT NOT NULL,
    last_failed_at  TEXT NOT NULL,
    created_at      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    aggregate_id   TEXT PRIMARY KEY,
    aggregate_type TEXT NOT NULL,
    version        INTEGER NOT NULL,
    state_schema   INTEGER NOT NULL,
    state          TEXT NOT NULL,
    created_at     TEXT NOT NULL
);
"#;

/// DDL of schema version 2: the read models maintained by `projection`
/// (applied on top of version 1; an existing v1 file is upgraded in place).
///
/// Every row is derived from events and can be rebuilt
/// (`outboxd projections rebuild`); `version` is the last applied sequence of
/// the aggregate (the idempotency key), `last_position` its feed position,
/// `state` the serialised aggregate (`state_schema` = `Aggregate::STATE_SCHEMA`).
pub const SCHEMA_V2: &str = r#"
CREATE TABLE IF NOT EXISTS order_read_model (
    order_id        TEXT    PRIMARY KEY,
    customer_id     TEXT,
    status          TEXT    NOT NULL,
    total_minor     INTEGER,
    currency        TEXT,
    item_count      INTEGER NOT NULL,
    items           TEXT    NOT NULL,
    tracking_number TEXT,
    carrier         TEXT,
    cancel_reason   TEXT,
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    last_position   INTEGER NOT NULL,
    state_schema    INTEGER NOT NULL,
    state           TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS orders_by_customer (
    customer_id TEXT    NOT NULL,
    order_id    TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    total_minor INTEGER,
    currency    TEXT,
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL,
    PRIMARY KEY (customer_id, order_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS customer_read_model (
    customer_id   TEXT    PRIMARY KEY,
    name          TEXT,
    email         TEXT,
    phone         TEXT,
    created_at    TEXT    NOT NULL,
    updated_at    TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    last_position INTEGER NOT NULL,
    state_schema  INTEGER NOT NULL,
    state         TEXT    NOT NULL
);
"#;

type ExecFn = Box<dyn FnOnce(&mut Connection) + Send>;

struct AppendJob {
    aggregate_id: Uuid,
    expected: i64,
    events: Vec<EventEnvelope>,
    reply: oneshot::Sender<Result<Appended, StoreError>>,
}

enum Job {
    Append(AppendJob),
    Exec(ExecFn),
}

pub struct SqliteStore {
    path: PathBuf,
    jobs: mpsc::Sender<Job>,
    readers: Arc<Mutex<Vec<Connection>>>,
    notify: watch::Sender<i64>,
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub(crate) fn codec(e: impl std::fmt::Display) -> StoreError {
    StoreError::Codec(e.to_string())
}

pub(crate) fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub(crate) fn parse_ts(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| codec(format!("bad timestamp {s:?}: {e}")))
}

pub(crate) fn parse_uuid(s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|e| codec(format!("bad uuid {s:?}: {e}")))
}

fn open_conn(path: &Path, opts: &SqliteOptions, read_only: bool) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| unavailable(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(Duration::from_millis(opts.busy_timeout_ms)).map_err(unavailable)?;
    if !read_only {
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(unavailable)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(unavailable(format!("{} does not support WAL (journal_mode={mode})", path.display())));
        }
        let sync = match opts.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        conn.execute_batch(&format!("PRAGMA synchronous={sync}; PRAGMA foreign_keys=ON;")).map_err(unavailable)?;
    }
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` and migrates its schema.
    pub async fn open(path: impl AsRef<Path>, opts: SqliteOptions) -> Result<Arc<Self>, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        let (p, o) = (path.clone(), opts.clone());
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection, StoreError> {
            let mut conn = open_conn(&p, &o, false)?;
            migrate_conn(&mut conn)?;
            Ok(conn)
        })
        .await
        .map_err(unavailable)??;
        let head: i64 = conn
            .query_row("SELECT COALESCE(MAX(position), 0) FROM event_store", [], |r| r.get(0))
            .map_err(unavailable)?;
        let (notify, _) = watch::channel(head);
        let (jobs, rx) = mpsc::channel(opts.queue_capacity.max(1));
        let n = notify.clone();
        let group = opts.group_commit_max.max(1);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, n, group))
            .map_err(|e| unavailable(format!("cannot start writer thread: {e}")))?;
        let store = SqliteStore { path, jobs, readers: Arc::new(Mutex::new(Vec::new())), notify };
        // Open the first reader now so a bad path fails at startup.
        let r = open_conn(&store.path, &opts, true)?;
        store.readers.lock().map_err(unavailable)?.push(r);
        Ok(Arc::new(store))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a pooled read-only connection (off the async runtime).
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let pool = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.lock().map_err(unavailable)?.pop();
            let conn = match conn {
                Some(c) => c,
                None => open_conn(&path, &SqliteOptions::default(), true)?,
            };
            let out = f(&conn);
            if let Ok(mut p) = pool.lock() {
                if p.len() < 8 {
                    p.push(conn);
                }
            }
            out
        })
        .await
        .map_err(unavailable)?
    }

    /// Runs `f` on the writer thread's connection, between append groups.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job = Job::Exec(Box::new(move |c| {
            let _ = tx.send(f(c));
        }));
        self.jobs.send(job).await.map_err(|_| unavailable("sqlite writer thread has stopped"))?;
        rx.await.map_err(|_| unavailable("sqlite writer thread has stopped"))?
    }
}

fn migrate_conn(conn: &mut Connection) -> Result<(), StoreError> {
    let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(unavailable)?;
    if v > SCHEMA_VERSION {
        return Err(unavailable(format!(
            "store schema version {v} is newer than this build ({SCHEMA_VERSION}); upgrade outboxd"
        )));
    }
    // One step per version, each in its own IMMEDIATE transaction that
    // re-reads the version under the write lock, so two processes opening
    // the same file at once both end at the current version.
    for (target, ddl) in [(1, SCHEMA_V1), (2, SCHEMA_V2)] {
        if v >= target {
            continue;
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(unavailable)?;
        let now: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(unavailable)?;
        if now < target {
            tx.execute_batch(ddl).map_err(unavailable)?;
            tx.execute_batch(&format!("PRAGMA user_version = {target}")).map_err(unavailable)?;
        }
        tx.commit().map_err(unavailable)?;
    }
    Ok(())
}

/// Versions this writer committed, to skip the version query when the caller's
/// expectation matches. Only an optimisation: the UNIQUE key still arbitrates
/// (a stale entry makes the insert collide, which re-reads the real version).
const VERSION_CACHE_MAX: usize = 200_000;

fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Job>, notify: watch::Sender<i64>, group: usize) {
    let mut pending: Option<Job> = None;
    let mut versions: HashMap<Uuid, i64> = HashMap::new();
    loop {
        let job = match pending.take() {
            Some(j) => j,
            None => match rx.blocking_recv() {
                Some(j) => j,
                None => return, // every handle dropped: finish
            },
        };
        let first = match job {
            Job::Exec(f) => {
                f(&mut conn);
                continue;
            }
            Job::Append(a) => a,
        };
        let mut batch = vec![first];
        while batch.len() < group {
            match rx.try_recv() {
                Ok(Job::Append(a)) => batch.push(a),
                Ok(exec) => {
                    pending = Some(exec);
                    break;
                }
                Err(_) => break,
            }
        }
        let results = commit_group(&mut conn, &batch, &versions);
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

/// One transaction for the whole group. A single-event append that fails
/// inserted nothing; a multi-event append runs inside a savepoint so a
/// failure part-way rolls back only its own rows.
fn commit_group(
    conn: &mut Connection,
    batch: &[AppendJob],
    versions: &HashMap<Uuid, i64>,
) -> Vec<Result<Appended, StoreError>> {
    let fail_all = |e: StoreError| batch.iter().map(|_| Err(e.clone())).collect();
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(t) => t,
        Err(e) => return fail_all(unavailable(format!("cannot begin write transaction: {e}"))),
    };
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let res = if job.events.len() == 1 {
            append_rows(&tx, job, versions)
        } else {
            savepoint(&tx, "SAVEPOINT outboxd_append").and_then(|_| match append_rows(&tx, job, versions) {
                Ok(a) => savepoint(&tx, "RELEASE outboxd_append").map(|_| a),
                Err(e) => {
                    let _ = savepoint(&tx, "ROLLBACK TO outboxd_append");
                    let _ = savepoint(&tx, "RELEASE outboxd_append");
                    Err(e)
                }
            })
        };
        results.push(res);
    }
    if let Err(e) = tx.commit() {
        return fail_all(unavailable(format!("commit failed: {e}")));
    }
    results
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

fn append_rows(conn: &Connection, job: &AppendJob, versions: &HashMap<Uuid, i64>) -> Result<Appended, StoreError> {
    let agg = job.aggregate_id.to_string();
    // A new aggregate, or one this writer saw at exactly the expected version,
    // needs no version query: if someone else appended meanwhile, inserting
    // `expected + 1` collides on the UNIQUE key and becomes a Conflict below.
    let known = job.expected == 0 || versions.get(&job.aggregate_id) == Some(&job.expected);
    if !known {
        let actual = current_version(conn, &agg)?;
        if actual != job.expected {
            return Err(StoreError::Conflict { aggregate_id: job.aggregate_id, expected: job.expected, actual });
        }
    }
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO event_store (event_id, aggregate_type, aggregate_id, sequence_number, event_type, event_version, payload, causation_id, correlation_id, timestamp)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .map_err(unavailable)?;
    let mut last = 0;
    for e in &job.events {
        let payload = serde_json::to_string(&e.payload).map_err(codec)?;
        let r = stmt.execute(params![
            e.event_id.to_string(),
            e.aggregate_type,
            agg,
            e.sequence,
            e.event_type,
            e.schema_version,
            payload,
            e.causation_id.map(|c| c.to_string()),
            e.correlation_id.to_string(),
            ts(&e.timestamp),
        ]);
        match r {
            Ok(_) => last = conn.last_insert_rowid(),
            Err(rusqlite::Error::SqliteFailure(f, msg)) if f.code == ErrorCode::ConstraintViolation => {
                let m = msg.unwrap_or_default();
                if m.contains("sequence_number") {
                    let actual = current_version(conn, &agg)?;
                    return Err(StoreError::Conflict {
                        aggregate_id: job.aggregate_id,
                        expected: job.expected,
                        actual,
                    });
                }
                return Err(StoreError::InvalidAppend(format!("constraint violated: {m}")));
            }
            Err(e) => return Err(unavailable(e)),
        }
    }
    Ok(Appended { version: job.expected + job.events.len() as i64, last_position: Some(last) })
}

const EVENT_COLS: &str = "position, event_id, aggregate_type, aggregate_id, sequence_number, event_type, event_version, payload, causation_id, correlation_id, timestamp";

fn row_to_event(r: &rusqlite::Row<'_>) -> Result<StoredEvent, StoreError> {
    let g = |i: usize| -> Result<String, StoreError> { r.get::<_, String>(i).map_err(codec) };
    let payload: String = g(7)?;
    let causation: Option<String> = r.get(8).map_err(codec)?;
    Ok(StoredEvent {
        position: r.get(0).map_err(codec)?,
        envelope: EventEnvelope {
            event_id: parse_uuid(&g(1)?)?,
            aggregate_type: g(2)?,
            aggregate_id: parse_uuid(&g(3)?)?,
            sequence: r.get(4).map_err(codec)?,
            event_type: g(5)?,
            schema_version: r.get(6).map_err(codec)?,
            payload: serde_json::from_str(&payload).map_err(|e| codec(format!("payload is not JSON: {e}")))?,
            causation_id: causation.as_deref().map(parse_uuid).transpose()?,
            correlation_id: parse_uuid(&g(9)?)?,
            timestamp: parse_ts(&g(10)?)?,
        },
    })
}

fn query_events(conn: &Connection, sql: &str, p: impl rusqlite::Params) -> Result<Vec<StoredEvent>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(unavailable)?;
    let mut rows = stmt.query(p).map_err(unavailable)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(unavailable)? {
        out.push(row_to_event(r)?);
    }
    Ok(out)
}

fn row_to_letter(r: &rusqlite::Row<'_>) -> Result<DeadLetter, StoreError> {
    let g = |i: usize| -> Result<String, StoreError> { r.get::<_, String>(i).map_err(codec) };
    Ok(DeadLetter {
        id: parse_uuid(&g(0)?)?,
        position: r.get(1).map_err(codec)?,
        event_id: parse_uuid(&g(2)?)?,
        aggregate_id: parse_uuid(&g(3)?)?,
        event_type: g(4)?,
        payload: g(5)?,
        error_message: g(6)?,
        failure_count: r.get(7).map_err(codec)?,
        first_failed_at: parse_ts(&g(8)?)?,
        last_failed_at: parse_ts(&g(9)?)?,
        created_at: parse_ts(&g(10)?)?,
    })
}

#[async_trait]
impl EventStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        self.write(migrate_conn).await
    }

    async fn append(
        &self,
        aggregate_id: Uuid,
        expected_version: i64,
        events: Vec<EventEnvelope>,
    ) -> Result<Appended, StoreError> {
        check_batch(aggregate_id, expected_version, &events)?;
        let (reply, rx) = oneshot::channel();
        let job = Job::Append(AppendJob { aggregate_id, expected: expected_version, events, reply });
        self.jobs.send(job).await.map_err(|_| unavailable("sqlite writer thread has stopped"))?;
        rx.await.map_err(|_| unavailable("sqlite writer thread has stopped"))?
    }

    async fn load_after(&self, aggregate_id: Uuid, after_sequence: i64) -> Result<Vec<EventEnvelope>, StoreError> {
        self.read(move |c| {
            let sql = format!("SELECT {EVENT_COLS} FROM event_store WHERE aggregate_id = ?1 AND sequence_number > ?2 ORDER BY sequence_number");
            Ok(query_events(c, &sql, params![aggregate_id.to_string(), after_sequence])?.into_iter().map(|s| s.envelope).collect())
        })
        .await
    }

    async fn read_feed(&self, after: i64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let limit = limit.clamp(1, 100_000) as i64;
        self.read(move |c| {
            let sql = format!("SELECT {EVENT_COLS} FROM event_store WHERE position > ?1 ORDER BY position LIMIT ?2");
            query_events(c, &sql, params![after, limit])
        })
        .await
    }

    async fn head_position(&self) -> Result<i64, StoreError> {
        self.read(|c| {
            c.query_row("SELECT COALESCE(MAX(position), 0) FROM event_store", [], |r| r.get(0)).map_err(unavailable)
        })
        .await
    }

    fn subscribe(&self) -> Option<watch::Receiver<i64>> {
        Some(self.notify.subscribe())
    }

    async fn get_checkpoint(&self, consumer: &str) -> Result<Option<i64>, StoreError> {
        let consumer = consumer.to_string();
        self.read(move |c| {
            c.query_row("SELECT position FROM checkpoints WHERE consumer = ?1", [consumer], |r| r.get(0))
                .optional()
                .map_err(unavailable)
        })
        .await
    }

    async fn set_checkpoint(&self, consumer: &str, position: i64) -> Result<(), StoreError> {
        let consumer = consumer.to_string();
        self.write(move |c| {
            c.execute(
                "INSERT INTO checkpoints (consumer, position, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (consumer) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
                params![consumer, position, ts(&Utc::now())],
            )
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }

    async fn dlq_insert(&self, l: DeadLetter) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO dead_letter_queue (id, position, event_id, aggregate_id, event_type, payload, error_message, failure_count, first_failed_at, last_failed_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (event_id) DO UPDATE SET
                    failure_count = dead_letter_queue.failure_count + excluded.failure_count,
                    error_message = excluded.error_message,
                    last_failed_at = excluded.last_failed_at",
                params![
                    l.id.to_string(),
                    l.position,
                    l.event_id.to_string(),
                    l.aggregate_id.to_string(),
                    l.event_type,
                    l.payload,
                    l.error_message,
                    l.failure_count,
                    ts(&l.first_failed_at),
                    ts(&l.last_failed_at),
                    ts(&l.created_at)
                ],
            )
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }

    async fn dlq_list(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let limit = limit.clamp(1, 100_000) as i64;
        self.read(move |c| {
            let mut stmt = c
                .prepare(
                    "SELECT id, position, event_id, aggregate_id, event_type, payload, error_message, failure_count, first_failed_at, last_failed_at, created_at
                     FROM dead_letter_queue ORDER BY created_at, position LIMIT ?1",
                )
                .map_err(unavailable)?;
            let mut rows = stmt.query([limit]).map_err(unavailable)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(unavailable)? {
                out.push(row_to_letter(r)?);
            }
            Ok(out)
        })
        .await
    }

    async fn dlq_remove(&self, id: Uuid) -> Result<bool, StoreError> {
        self.write(move |c| {
            c.execute("DELETE FROM dead_letter_queue WHERE id = ?1", [id.to_string()])
                .map(|n| n > 0)
                .map_err(unavailable)
        })
        .await
    }

    async fn dlq_count(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            c.query_row("SELECT COUNT(*) FROM dead_letter_queue", [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(unavailable)
        })
        .await
    }

    async fn save_snapshot(&self, s: Snapshot) -> Result<(), StoreError> {
        let state = serde_json::to_string(&s.state).map_err(codec)?;
        self.write(move |c| {
            c.execute(
                "INSERT INTO snapshots (aggregate_id, aggregate_type, version, state_schema, state, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (aggregate_id) DO UPDATE SET version = excluded.version, state_schema = excluded.state_schema,
                    state = excluded.state, created_at = excluded.created_at WHERE excluded.version > snapshots.version",
                params![s.aggregate_id.to_string(), s.aggregate_type, s.version, s.state_schema, state, ts(&s.created_at)],
            )
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }

    async fn load_snapshot(&self, aggregate_id: Uuid) -> Result<Option<Snapshot>, StoreError> {
        self.read(move |c| {
            let row = c
                .query_row(
                    "SELECT aggregate_type, version, state_schema, state, created_at FROM snapshots WHERE aggregate_id = ?1",
                    [aggregate_id.to_string()],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i32>(2)?, r.get::<_, String>(3)?, r.get::<_, String>(4)?)),
                )
                .optional()
                .map_err(unavailable)?;
            let Some((aggregate_type, version, state_schema, state, created_at)) = row else { return Ok(None) };
            Ok(Some(Snapshot {
                aggregate_id,
                aggregate_type,
                version,
                state_schema,
                state: serde_json::from_str(&state).map_err(codec)?,
                created_at: parse_ts(&created_at)?,
            }))
        })
        .await
    }
}
