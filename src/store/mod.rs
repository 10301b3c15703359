//! The `EventStore` seam: atomic append, load, the ordered feed, checkpoints,
//! the dead-letter queue and snapshots, behind one async trait.
//!
//! Guarantees every backend gives (the store test suite checks each one):
//! - `append` is an atomic compare-and-set: it writes all events or none, and
//!   only if the aggregate is exactly at `expected_version`; otherwise it
//!   returns `StoreError::Conflict` naming expected and actual version.
//! - Sequence numbers per aggregate are 1-based and gap-free.
//! - `read_feed` returns rows in global commit order (where the backend has
//!   one; CQL's feed is Scylla CDC, see `relay::cdc`), decoded row by row:
//!   an unreadable row is reported as such, it never fails its page.
//! - Leases ([`lease`]), parked aggregates ([`parking`]) and operator
//!   requests ([`requests`]) complete the [`Store`] every backend implements.
//!
//! Backends: [`sqlite`] (embedded, default) and [`cql`] (ScyllaDB/Cassandra).

pub mod cql;
pub mod faults;
pub mod feed;
pub mod lease;
pub mod parking;
pub mod requests;
pub mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::watch;
use uuid::Uuid;

use crate::envelope::EventEnvelope;
pub use faults::StoreFaults;
use feed::FeedRow;

/// Infrastructure errors of the store layer.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum StoreError {
    /// Another writer appended first (or the caller's version is stale / too high).
    #[error("version conflict on aggregate {aggregate_id}: expected version {expected}, actual version {actual}")]
    Conflict { aggregate_id: Uuid, expected: i64, actual: i64 },
    /// The backend can't be reached or failed; retrying later may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A conditional append whose outcome could not be resolved (CQL: the
    /// compare-and-set timed out and every re-proposal and SERIAL read
    /// failed): its events may or may not be stored. A blind retry may write
    /// the command twice; reload the aggregate first.
    #[error("append outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// A stored row could not be encoded or decoded.
    #[error("store codec error: {0}")]
    Codec(String),
    /// The caller passed events that can't be appended as given.
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    /// The backend does not offer this operation.
    #[error("not supported by the {backend} store: {what}")]
    Unsupported { backend: &'static str, what: String },
    #[error("not found: {0}")]
    NotFound(String),
    /// A fenced write was refused: the lease `name` is no longer at `epoch`.
    #[error("fenced: the lease {name} moved on from epoch {epoch} (now {current:?}); another instance took over")]
    Fenced { name: String, epoch: i64, current: Option<i64> },
}

impl StoreError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

/// What a health probe of the store found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreProbe {
    /// The head feed position, where the backend has one (None on CQL).
    pub head: Option<i64>,
}

/// Result of a successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The aggregate's version after the append.
    pub version: i64,
    /// Feed position of the last appended event, where the backend has one.
    pub last_position: Option<i64>,
}

/// One event that could never be published as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: Uuid,
    /// Feed position of the event (None for CDC-fed backends).
    pub position: Option<i64>,
    pub event_id: Uuid,
    pub aggregate_id: Uuid,
    pub event_type: String,
    /// The full envelope as JSON, so replay republishes exactly this event.
    pub payload: String,
    pub error_message: String,
    pub failure_count: i32,
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// A saved aggregate state at `version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub aggregate_id: Uuid,
    pub aggregate_type: String,
    pub version: i64,
    /// `Aggregate::STATE_SCHEMA` at the time it was written.
    pub state_schema: i32,
    pub state: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// `sqlite` or `cql`.
    fn backend(&self) -> &'static str;

    /// Creates or upgrades the backend's tables. Idempotent.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Atomically appends `events` if `aggregate_id` is at `expected_version`.
    /// Events must carry sequences `expected_version + 1 ..` in order.
    async fn append(
        &self,
        aggregate_id: Uuid,
        expected_version: i64,
        events: Vec<EventEnvelope>,
    ) -> Result<Appended, StoreError>;

    /// All events of one aggregate in sequence order (empty if unknown).
    async fn load(&self, aggregate_id: Uuid) -> Result<Vec<EventEnvelope>, StoreError> {
        self.load_after(aggregate_id, 0).await
    }

    /// Events of one aggregate with `sequence > after_sequence`, in order.
    async fn load_after(&self, aggregate_id: Uuid, after_sequence: i64) -> Result<Vec<EventEnvelope>, StoreError>;

    /// Up to `limit` rows with `position > after`, in global commit order.
    async fn read_feed(&self, after: i64, limit: usize) -> Result<Vec<FeedRow>, StoreError>;

    /// How far `consumer` is behind: its persisted checkpoint, the head, the
    /// unpublished events (those after the checkpoint plus the held events of
    /// its parked aggregates) and the commit time of the oldest of them.
    async fn backlog(&self, consumer: &str) -> Result<Backlog, StoreError>;

    /// Highest committed feed position (0 when empty).
    async fn head_position(&self) -> Result<i64, StoreError>;

    /// Checks that the store answers (the health check; no business data is
    /// read or written). The default reads the head position; a backend
    /// adds what else "reachable" means for it.
    async fn probe(&self) -> Result<StoreProbe, StoreError> {
        Ok(StoreProbe { head: Some(self.head_position().await?) })
    }

    /// Wakes whenever an append is committed (this process at once; SQLite:
    /// other processes within a few milliseconds). `None` when the backend
    /// has no such notification.
    fn subscribe(&self) -> Option<watch::Receiver<i64>> {
        None
    }

    /// The fault-injection seam of this backend, if it has one (tests only).
    fn faults(&self) -> Option<Arc<StoreFaults>> {
        None
    }

    async fn get_checkpoint(&self, consumer: &str) -> Result<Option<i64>, StoreError>;
    async fn set_checkpoint(&self, consumer: &str, position: i64) -> Result<(), StoreError>;

    /// Records a dead letter; a second failure of the same event bumps
    /// `failure_count` and `last_failed_at` instead of adding a row. The
    /// same letter (`letter.id`) written again, a retry after an error that
    /// left the outcome unknown, counts once: the row remembers the first
    /// letter (its id) and the last one added to it.
    async fn dlq_insert(&self, letter: DeadLetter) -> Result<(), StoreError>;
    async fn dlq_list(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError>;
    /// The dead letters with these ids (one read each, whatever the queue's
    /// size); ids that name none are left out.
    async fn dlq_get(&self, ids: &[Uuid]) -> Result<Vec<DeadLetter>, StoreError>;
    async fn dlq_remove(&self, id: Uuid) -> Result<bool, StoreError>;
    async fn dlq_count(&self) -> Result<u64, StoreError>;

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), StoreError>;
    async fn load_snapshot(&self, aggregate_id: Uuid) -> Result<Option<Snapshot>, StoreError>;

    /// The latest snapshot and the events after it (every event without
    /// one): what loading an aggregate reads. Backends may do it in one read.
    async fn load_from_snapshot(
        &self,
        aggregate_id: Uuid,
    ) -> Result<(Option<Snapshot>, Vec<EventEnvelope>), StoreError> {
        let snapshot = self.load_snapshot(aggregate_id).await?;
        let after = snapshot.as_ref().map(|s| s.version).unwrap_or(0);
        Ok((snapshot, self.load_after(aggregate_id, after).await?))
    }
}

/// Everything a backend provides: events, leases, parking, requests.
pub trait Store: EventStore + lease::LeaseStore + parking::ParkingStore + requests::RequestStore {}

impl<T: EventStore + lease::LeaseStore + parking::ParkingStore + requests::RequestStore> Store for T {}

pub type DynStore = Arc<dyn Store>;

/// Just the events (what the application service needs): any `DynStore`
/// coerces to it.
pub type DynEvents = Arc<dyn EventStore>;

/// How far one consumer is behind the store (see [`EventStore::backlog`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Backlog {
    /// Persisted checkpoint (SQLite: 0 for a consumer that never wrote one,
    /// where it starts; None: the backend has no positions).
    pub checkpoint: Option<i64>,
    /// Head feed position (None: the backend has no positions).
    pub head: Option<i64>,
    /// Events not yet published (None: not countable on this backend).
    pub events: Option<i64>,
    /// Commit time of the oldest of them (None: nothing unpublished, or not known).
    pub oldest: Option<DateTime<Utc>>,
}

/// Checks that `events` carry `expected + 1 ..` for `aggregate_id`.
pub(crate) fn check_batch(
    aggregate_id: Uuid,
    expected_version: i64,
    events: &[EventEnvelope],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Err(StoreError::InvalidAppend("no events to append".into()));
    }
    if expected_version < 0 {
        return Err(StoreError::InvalidAppend(format!("expected version {expected_version} is negative")));
    }
    for (i, e) in events.iter().enumerate() {
        if e.aggregate_id != aggregate_id {
            return Err(StoreError::InvalidAppend(format!(
                "event {} belongs to aggregate {}, not {aggregate_id}",
                e.event_id, e.aggregate_id
            )));
        }
        let want = expected_version + 1 + i as i64;
        if e.sequence != want {
            return Err(StoreError::InvalidAppend(format!(
                "event {} has sequence {}, expected {want}",
                e.event_id, e.sequence
            )));
        }
    }
    Ok(())
}

/// Opens the configured backend.
/// The DDL `outboxd schema` would run for the configured backend, without
/// connecting (`outboxd schema --dry-run`): every SQLite migration step
/// (each applied once, tracked by `PRAGMA user_version`), or the CQL
/// statements for the configured keyspace and replication factor as
/// ScyllaDB gets them (on Apache Cassandra the `cdc`/`tablets` options are
/// left out).
pub fn schema_ddl(cfg: &crate::config::Config) -> String {
    let mut out = String::new();
    match cfg.store.backend {
        crate::config::Backend::Sqlite => {
            out.push_str(&format!(
                "-- SQLite store {} (PRAGMA user_version: the steps below the file's version are skipped)\n",
                cfg.store.path.display()
            ));
            for (version, ddl) in sqlite::schema::MIGRATIONS {
                out.push_str(&format!("\n-- step to schema version {version}\n{}\n", ddl.trim()));
                out.push_str(&format!("PRAGMA user_version = {version};\n"));
            }
        }
        crate::config::Backend::Cql => {
            let keyspace = cfg.store.cql.keyspace.to_ascii_lowercase();
            out.push_str(&format!(
                "-- CQL store: keyspace {keyspace} at {} (ScyllaDB; on Apache Cassandra without the cdc/tablets options)\n",
                cfg.store.cql.uri
            ));
            for stmt in cql::schema_statements(
                &keyspace,
                cfg.store.cql.replication_factor.max(1),
                true,
                cfg.store.cql.cdc.log_ttl_seconds,
            ) {
                out.push_str(&format!("\n{stmt};\n"));
            }
        }
    }
    out
}

pub async fn open(cfg: &crate::config::Config) -> Result<DynStore, StoreError> {
    match cfg.store.backend {
        crate::config::Backend::Sqlite => {
            Ok(sqlite::SqliteStore::open(&cfg.store.path, cfg.store.sqlite.clone()).await?)
        }
        crate::config::Backend::Cql => Ok(cql::CqlStore::connect(&cfg.store.cql).await?),
    }
}
