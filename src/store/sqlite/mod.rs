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
//!   blocks on SQLite. Appends queued together, or while the group is being
//!   inserted, are group-committed in one transaction; a multi-event append
//!   gets its own savepoint, so a conflict in one append doesn't affect its
//!   neighbours. Reads run on
//!   `spawn_blocking` with a small pool of WAL reader connections; a read
//!   fails (`Unavailable`) once the database file at `path` is gone or was
//!   replaced, instead of serving a file nobody writes to any more. So does
//!   every write: in WAL mode SQLite still commits to the old inode, reported
//!   durable, so the writer thread and the lease connection check the file
//!   first ([`file::DbFile::check`]).
//! - A file this process may not write (SQLite would open it read-only,
//!   and every write would fail as if the store were down), a directory
//!   that cannot be created and a path SQLite cannot open are refused at
//!   open as `Unsupported` (a configuration problem, exit 2), never as
//!   `Unavailable`. A `write` closure that panics fails only its caller.
//! - Schema version 2 adds the read-model tables maintained by
//!   `crate::projection` (a v1 file is upgraded in place on open); they are
//!   written through the same writer thread, batch and checkpoint in one
//!   transaction.
//!
//! - Schema version 3 adds the relay's coordination tables: leases, parked
//!   aggregates, discards, operator requests, and the trace context of each
//!   event. Lease operations use their own connection with a short busy
//!   timeout, never the writer queue.
//! - Schema version 4 adds triggers that refuse an `event_store.aggregate_id`
//!   not in the form every lookup uses (a lower-case hyphenated UUID).
//! - Schema version 5 adds `customer_order_counts`, kept by triggers on
//!   `orders_by_customer` (a customer's order count without counting rows).
//! - `subscribe` wakes on this process's commits at once and on other
//!   processes' commits within `CHANGE_POLL` (`PRAGMA data_version`).
//! - Dropping the store ends its writer thread in the background (its
//!   connection's close, SQLite's final checkpoint, included);
//!   `SqliteStore::close` waits for that end instead.
//!
//! Files: [`schema`] (DDL, upgrade), `writer` (the writer thread, group
//! commit), `event_store` (the trait), `feed` (row-by-row decoding), `dlq`
//! (dead letters), `lease`, `parking`, `requests`, `relay_tables` (their
//! trait impls), [`file`] (the probe's stat-only identity check). Tuning:
//! `config::SqliteOptions`.

mod dlq;
mod event_store;
mod feed;
pub mod file;
mod lease;
pub(crate) mod parking;
mod relay_tables;
mod requests;
pub mod schema;
mod watch_changes;
mod writer;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

pub use crate::config::{SqliteOptions, Synchronous};
pub use schema::{MIGRATIONS, SCHEMA_V1, SCHEMA_VERSION};

use crate::store::StoreError;
use file::DbFile;
use schema::migrate_conn;
use writer::{writer_loop, Job};

pub struct SqliteStore {
    path: PathBuf,
    /// The options every connection is opened with (a reader the pool
    /// opens later too: `busy_timeout_ms`).
    opts: SqliteOptions,
    readers: Arc<Mutex<Vec<Connection>>>,
    notify: watch::Sender<i64>,
    /// The database file as opened (its identity, for the health probe).
    file: Arc<DbFile>,
    /// Leases and fenced checkpoints: their own connection, short busy timeout.
    lease_conn: Arc<Mutex<Connection>>,
    /// Lease writes waiting for SQLite's write lock: the writer thread lets
    /// them go first (they have deadlines; appends do not).
    lease_waiting: Arc<std::sync::atomic::AtomicUsize>,
    /// Test seam: injected read failures (admin `/debug/store`, fault injection only).
    faults: Arc<crate::store::StoreFaults>,
    /// Watches other processes' commits once someone subscribed.
    watcher: std::sync::OnceLock<watch_changes::Watcher>,
    /// The writer thread, joined only by [`SqliteStore::close`] (a store
    /// dropped instead leaves it to end on its own).
    writer: Option<std::thread::JoinHandle<()>>,
    /// The writer's queue, declared (so dropped) last: the readers' and the
    /// lease connections are closed before the writer thread sees its queue
    /// end and closes its own, alone. Two connections closing at once can
    /// each find the other still there and both skip SQLite's final
    /// checkpoint, leaving the WAL behind (`close` then returned with it:
    /// 1 run in 40 of its test under load).
    jobs: mpsc::Sender<Job>,
}

/// Busy timeout of the lease connection: under the shortest renew interval
/// (`relay.lease_ttl_ms` >= 3000, renewed every TTL/3 >= 1000 ms), so a busy
/// file fails one attempt, which the keeper retries sooner, instead of
/// holding the renewal past its turn.
const LEASE_BUSY_TIMEOUT: Duration = Duration::from_millis(250);
/// Read connections kept in the pool: at least the command API's usual
/// concurrency, so concurrent loads do not open (and close) connections.
const READERS_KEPT: usize = 32;

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

/// The permanent error for a database file (or its directory) this process
/// may not write: a configuration problem, not an outage.
fn not_writable(path: &Path) -> StoreError {
    StoreError::Unsupported {
        backend: "sqlite",
        what: format!("{} is not writable by this process (store.path)", path.display()),
    }
}

/// A failed open: SQLite's CANTOPEN (the file or its directory cannot be
/// created or opened at all: a missing or unwritable directory, a path under
/// `/proc`) is permanent, anything else (busy, out of memory) may pass.
fn cannot_open(path: &Path, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::CannotOpen) => StoreError::Unsupported {
            backend: "sqlite",
            what: format!("cannot open {} (store.path): {e}", path.display()),
        },
        _ => unavailable(format!("cannot open {}: {e}", path.display())),
    }
}

/// A failed write: SQLite refusing to write a read-only database (or one in
/// a read-only directory) is permanent, as [`not_writable`] at open;
/// anything else is `Unavailable`. A moved file (`SQLITE_READONLY_DBMOVED`)
/// stays `Unavailable`, as every deleted or replaced file does
/// ([`file::DbFile::check`]).
pub(crate) fn write_failure(c: &Connection, e: rusqlite::Error) -> StoreError {
    write_failure_at(c.path(), e)
}

/// [`write_failure`] of a connection at `path` (`Connection::path`).
pub(crate) fn write_failure_at(path: Option<&str>, e: rusqlite::Error) -> StoreError {
    const READONLY_DIRECTORY: i32 = rusqlite::ffi::SQLITE_READONLY | (6 << 8);
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_READONLY || f.extended_code == READONLY_DIRECTORY =>
        {
            not_writable(Path::new(path.unwrap_or("the database file")))
        }
        _ => unavailable(e),
    }
}

/// A failed read: a column holding a value of the wrong type (a foreign
/// writer's, or a hand edit's) is a stored row that cannot be decoded
/// (`Codec`, permanent: retrying reads the same row); anything else is
/// `Unavailable`.
pub(crate) fn read_failure(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => codec(e),
        e => unavailable(e),
    }
}

/// A directory of `store.path` that cannot be created: permanent when the
/// path itself is wrong (no permission, a read-only file system, a file in
/// the way, a path under `/proc`); anything else (a full disk, an I/O
/// error) may pass.
fn cannot_create_dir(dir: &Path, e: std::io::Error) -> StoreError {
    use std::io::ErrorKind::*;
    let what = format!("cannot create {}: {e}", dir.display());
    match e.kind() {
        PermissionDenied | NotFound | ReadOnlyFilesystem | NotADirectory | AlreadyExists | InvalidFilename => {
            StoreError::Unsupported { backend: "sqlite", what: format!("{what} (store.path)") }
        }
        _ => unavailable(what),
    }
}

fn open_conn(path: &Path, opts: &SqliteOptions, read_only: bool) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    if path.is_dir() {
        // Not retryable either: the path names a directory.
        return Err(StoreError::Unsupported {
            backend: "sqlite",
            what: format!("{} is a directory, not a SQLite database file (store.path)", path.display()),
        });
    }
    let conn = Connection::open_with_flags(path, flags).map_err(|e| cannot_open(path, e))?;
    // SQLite opens a file this process may not write (a restored backup
    // owned by another user, mode 0444) read-only without a word: every
    // write would then fail, looking like an outage, for the process's life.
    if !read_only && conn.is_readonly("main").map_err(unavailable)? {
        return Err(not_writable(path));
    }
    conn.busy_timeout(Duration::from_millis(opts.busy_timeout_ms)).map_err(unavailable)?;
    if !read_only {
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(|e| {
            match e.sqlite_error_code() {
                // Not retryable: the path names some other file.
                Some(rusqlite::ErrorCode::NotADatabase) => StoreError::Unsupported {
                    backend: "sqlite",
                    what: format!("{} is not a SQLite database (store.path)", path.display()),
                },
                _ => unavailable(e),
            }
        })?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(unavailable(format!("{} does not support WAL (journal_mode={mode})", path.display())));
        }
        let sync = opts.synchronous.pragma();
        conn.execute_batch(&format!("PRAGMA synchronous={sync}; PRAGMA foreign_keys=ON;")).map_err(unavailable)?;
    }
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` and migrates its schema.
    pub async fn open(path: impl AsRef<Path>, opts: SqliteOptions) -> Result<Arc<Self>, StoreError> {
        let path = path.as_ref().to_path_buf();
        // Every file and SQL step of opening runs off the async runtime.
        let (p, o) = (path.clone(), opts.clone());
        let (conn, head, lease_conn, reader, file) = tokio::task::spawn_blocking(move || {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| cannot_create_dir(dir, e))?;
            }
            let mut conn = open_conn(&p, &o, false)?;
            migrate_conn(&mut conn)?;
            let head: i64 = conn
                .query_row("SELECT COALESCE(MAX(position), 0) FROM event_store", [], |r| r.get(0))
                .map_err(unavailable)?;
            let lease_opts = SqliteOptions { busy_timeout_ms: LEASE_BUSY_TIMEOUT.as_millis() as u64, ..o.clone() };
            let lease_conn = open_conn(&p, &lease_opts, false)?;
            // The first reader now, so a bad path fails at startup.
            let reader = open_conn(&p, &o, true)?;
            Ok::<_, StoreError>((conn, head, lease_conn, reader, DbFile::new(&p)))
        })
        .await
        .map_err(unavailable)??;
        let (notify, _) = watch::channel(head);
        let (jobs, rx) = mpsc::channel(opts.queue_capacity.max(1));
        let n = notify.clone();
        let group = opts.group_commit_max.max(1);
        let lease_waiting = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let yield_to = lease_waiting.clone();
        let file = Arc::new(file);
        let checked = file.clone();
        let faults: Arc<crate::store::faults::StoreFaults> = Arc::default();
        let injected = faults.clone();
        let writer = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, n, group, yield_to, checked, injected))
            .map_err(|e| unavailable(format!("cannot start writer thread: {e}")))?;
        let store = SqliteStore {
            path,
            opts,
            jobs,
            readers: Arc::new(Mutex::new(vec![reader])),
            notify,
            file,
            lease_conn: Arc::new(Mutex::new(lease_conn)),
            lease_waiting,
            faults,
            watcher: std::sync::OnceLock::new(),
            writer: Some(writer),
        };
        Ok(Arc::new(store))
    }

    /// Closes the store's connections (the readers' and the lease one here,
    /// the writer's on its thread) and returns once its writer thread has
    /// ended: SQLite's final WAL checkpoint (and its fsyncs), run by whichever
    /// writable connection closes last, is done by then. Dropping the store
    /// may leave that to the writer thread in the background; this is for
    /// callers that must not overlap it with what they do next (the
    /// benchmarks, between timed passes). Every other handle of the store
    /// must be gone (`Arc::into_inner`). Runs off the async runtime. Not
    /// joined: the change watcher of a store that was `subscribe`d (its
    /// read-only connection ends at its next poll, so the final checkpoint
    /// may then be left to the next open; the benchmarks do not subscribe).
    pub async fn close(mut self) -> Result<(), StoreError> {
        let writer = self.writer.take();
        tokio::task::spawn_blocking(move || {
            // The queue's sender goes with the store: the writer thread
            // finishes its queue, closes its connection and ends.
            drop(self);
            writer.map_or(Ok(()), |w| w.join()).map_err(|_| unavailable("the sqlite writer thread panicked"))
        })
        .await
        .map_err(unavailable)?
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
        let (path, opts) = (self.path.clone(), self.opts.clone());
        self.faults.check_read()?;
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            // A pooled connection keeps reading a deleted or replaced file as
            // if nothing happened; refuse instead (one stat, never an open).
            file.check()?;
            let conn = pool.lock().map_err(unavailable)?.pop();
            let conn = match conn {
                Some(c) => c,
                // The file opened at startup and is still the same one
                // (checked above): failing to open another reader now is the
                // process's resources (descriptors), not the path.
                None => open_conn(&path, &opts, true).map_err(|e| match e {
                    StoreError::Unsupported { what, .. } => unavailable(what),
                    e => e,
                })?,
            };
            let out = f(&conn);
            if let Ok(mut p) = pool.lock() {
                if p.len() < READERS_KEPT {
                    p.push(conn);
                }
            }
            out
        })
        .await
        .map_err(unavailable)?
    }

    /// Runs `f` on the lease connection (off the async runtime, not through
    /// the writer queue); never on a database file deleted or replaced
    /// under the store (a renewal there would hold a lease no one sees).
    /// An `f` that panics is answered `OutcomeUnknown` (it may have
    /// committed first) after the transaction it left open is rolled back,
    /// and does not disable the connection (a poisoned lock refused every
    /// lease write for the process's life, the relay and projector
    /// standing by for good).
    pub(crate) async fn lease_op<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (conn, waiting, file) = (self.lease_conn.clone(), self.lease_waiting.clone(), self.file.clone());
        tokio::task::spawn_blocking(move || {
            file.check()?;
            let _waiting = LeaseWaiting::enter(waiting);
            let mut c = conn.lock().unwrap_or_else(|poisoned| {
                let c = poisoned.into_inner();
                writer::end_open_transaction(&c);
                conn.clear_poison();
                c
            });
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut c))).unwrap_or_else(|payload| {
                writer::end_open_transaction(&c);
                Err(writer::exec_panicked(payload))
            })
        })
        .await
        .map_err(unavailable)?
    }

    /// Runs `f` on the writer thread's connection, between append groups
    /// (not on a file deleted or replaced under the store).
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let file = self.file.clone();
        // As appends: never to a file deleted or replaced under the store.
        // A panic in `f` is this caller's error; the writer thread goes on
        // (and rolls back a transaction `f` left open).
        let job = Job::Exec(Box::new(move |c| {
            let run = std::panic::AssertUnwindSafe(|| file.check().and_then(|()| f(c)));
            let _ = tx.send(std::panic::catch_unwind(run).unwrap_or_else(|p| Err(writer::exec_panicked(p))));
        }));
        self.jobs.send(job).await.map_err(|_| unavailable("sqlite writer thread has stopped"))?;
        rx.await.map_err(|_| unavailable("sqlite writer thread has stopped"))?
    }
}

/// A lease write waiting for, or holding, the write lock (the append
/// writer yields to it); counted out however the write ends.
struct LeaseWaiting(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl LeaseWaiting {
    fn enter(n: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> LeaseWaiting {
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        LeaseWaiting(n)
    }
}

impl Drop for LeaseWaiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review finding: a reader the pool opened beyond the first got
    /// `SqliteOptions::default()` (a 5 s busy timeout), not the configured
    /// options.
    #[tokio::test]
    async fn readers_opened_later_take_the_configured_busy_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SqliteOptions { busy_timeout_ms: 0, ..SqliteOptions::default() };
        let store = SqliteStore::open(dir.path().join("r.db"), opts).await.unwrap();
        let timeout =
            |c: &Connection| c.query_row("PRAGMA busy_timeout", [], |r| r.get::<_, i64>(0)).map_err(unavailable);
        // The first read holds the pooled reader while the second runs: the second opens its own.
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let s = store.clone();
        let first = tokio::spawn(async move {
            s.read(move |c| {
                held_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                timeout(c)
            })
            .await
        });
        tokio::task::spawn_blocking(move || held_rx.recv().unwrap()).await.unwrap();
        let second = store.read(timeout).await;
        go_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 0, "the reader opened with the store");
        assert_eq!(second.unwrap(), 0, "a reader the pool opened later");
        assert_eq!(store.readers.lock().unwrap().len(), 2);
    }

    /// `close` returns once the last connection is closed: SQLite's final
    /// checkpoint has run and removed the WAL file (a dropped store leaves
    /// that to its writer thread, in the background).
    #[tokio::test]
    async fn close_returns_after_the_final_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let store = SqliteStore::open(&path, SqliteOptions::default()).await.unwrap();
        let rows = "CREATE TABLE closing (x); INSERT INTO closing VALUES (1), (2);";
        store.write(move |c| c.execute_batch(rows).map_err(unavailable)).await.unwrap();
        let wal = dir.path().join("c.db-wal");
        assert!(wal.exists(), "the rows went to the WAL");
        let Ok(store) = Arc::try_unwrap(store) else { panic!("one handle") };
        store.close().await.unwrap();
        assert!(!wal.exists(), "the WAL was checkpointed and removed before close returned");
    }
}
