//! CQL backend (ScyllaDB in production, Apache Cassandra in tests).
//!
//! Schema: `store/cql/schema.cql` (the same DDL `migrate` runs, with the
//! configured keyspace and replication factor).
//!
//! Files: [`connect`] (session, server detection), [`schema`] (DDL,
//! migration, prepared statements), [`schema_check`] (whether the schema is
//! in place already: then `migrate` runs no DDL), [`append`] (the conditional append and
//! its unknown-outcome resolution, behind the [`BatchExecutor`] seam), `rows`
//! (row decoding), `dlq`, `snapshot`.
//!
//! Guarantees:
//! - `append` is ONE single-partition conditional LOGGED batch (a Paxos
//!   lightweight transaction): `UPDATE event_store SET version = <new> WHERE
//!   aggregate_id = ? IF version = <expected>` (`IF version = null` for a new
//!   aggregate; `version` is a STATIC column) plus one INSERT per event. All
//!   events are written or none, and only if the aggregate is exactly at the
//!   expected version; stale and too-high versions both fail the condition.
//!   When the condition fails, the LWT answer carries the current `version`,
//!   which becomes `StoreError::Conflict { actual }` (0 when null).
//! - Unknown outcomes are resolved, never guessed: a CAS write timeout (or a
//!   client timeout / broken connection) means the batch may or may not have
//!   been applied. The append then re-proposes the *same* batch (safe: the
//!   condition lets at most one of the attempts apply, and Paxos never
//!   completes a proposal older than a later commit). If the re-proposal
//!   fails its condition, the row at `expected + 1` is read with SERIAL
//!   consistency: our `event_id` there means an earlier attempt landed
//!   (success), anything else is a `Conflict`. If the attempts run out while
//!   the outcome is still unknown, the error is `OutcomeUnknown` (never
//!   success), and the events are recorded in `append_reconciliation` in
//!   case they land later (`append`).
//! - Sequence numbers are the clustering key, gap-free because each append
//!   moves `version` from `expected` to `expected + n` and writes exactly the
//!   rows `expected + 1 ..= expected + n`.
//! - CQL has no global commit order: `read_feed` and `head_position` are
//!   `Unsupported`. The feed of this backend is Scylla CDC on `event_store`
//!   (see `relay::cdc`). On ScyllaDB `migrate` creates the table with
//!   `cdc = {'enabled': true}`; on Cassandra without it (logged at info),
//!   and [`CqlStore::cdc_enabled`] reports which.
//! - Dead letters: `dead_letter_by_event` (event_id -> id, written with
//!   `IF NOT EXISTS`) finds the existing row of an event; its `failure_count`
//!   is bumped with a compare-and-set (`IF failure_count = ?`), so concurrent
//!   failures of one event add up exactly. All DLQ writes are LWTs (never
//!   mixed with plain writes on the same cells).
//! - Snapshots: `INSERT ... IF NOT EXISTS`, else `UPDATE ... IF version < ?`,
//!   so an older snapshot never replaces a newer one.
//! - Statements are prepared once, lazily (a fresh keyspace has no tables
//!   until `migrate` ran), and every statement names the keyspace explicitly.
//! - Timestamps are CQL `timestamp` (milliseconds); envelopes already are
//!   millisecond-truncated, so they round-trip exactly.

pub mod append;
pub mod cdc_options;
pub mod connect;
mod dlq;
mod fence;
mod lease;
mod parking;
pub mod progress;
pub mod reconcile;
mod relay_tables;
mod requests;
mod retry;
mod rows;
pub mod schema;
pub mod schema_check;
pub mod security;
mod snapshot;

use async_trait::async_trait;
use chrono::Utc;
use scylla::client::session::Session;
use scylla::errors::ExecutionError;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::SerialConsistency;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::OnceCell;
use uuid::Uuid;

pub use append::{BatchExecutor, BatchValues, SessionBatches};
pub use connect::{cdc_log_exists, parse_consistency, parse_serial_consistency};
pub use rows::lwt_applied;
pub use schema::{schema_statements, SCHEMA_CQL};

use super::faults::{self, StoreFaults};
use super::{Appended, Backlog, DeadLetter, EventStore, Snapshot, StoreError, StoreProbe};
use crate::envelope::EventEnvelope;
use crate::store::feed::FeedRow;
use rows::EventRow;
use schema::Statements;

/// Scylla's CDC log table of `event_store`.
pub const CDC_LOG_TABLE: &str = "event_store_scylla_cdc_log";

/// Row of `checkpoints` that `migrate` writes once (`IF NOT EXISTS`) with the
/// time of the first migration in ms: the earliest moment the event table can
/// hold events, where a CDC reader without saved progress starts.
pub const CDC_ORIGIN_CHECKPOINT: &str = "cdc:origin";

/// Compare-and-set rounds for DLQ and snapshot updates under contention.
const MAX_CAS_ROUNDS: u32 = 16;

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn codec(e: impl std::fmt::Display) -> StoreError {
    StoreError::Codec(e.to_string())
}

/// Prepares `cql` on `session`; a failure says to run `outboxd schema`
/// (which creates `table`), since a missing table is the usual cause.
pub async fn prepare_on(session: &Session, cql: String, table: &str) -> Result<PreparedStatement, StoreError> {
    session
        .prepare(cql.as_str())
        .await
        .map_err(|e| unavailable(format!("cannot prepare `{cql}` (run `outboxd schema` to create {table}): {e}")))
}

/// Driver errors -> store errors. Every server or network failure is
/// `Unavailable` (retrying later may succeed); decode failures are `Codec`.
fn exec_err(what: &str, e: ExecutionError) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

pub struct CqlStore {
    session: Arc<Session>,
    keyspace: String,
    replication_factor: u32,
    page_size: i32,
    serial: SerialConsistency,
    scylla: bool,
    cdc: AtomicBool,
    /// `store.cql.cdc.log_ttl_seconds`: the CDC options `migrate` sets.
    log_ttl_seconds: u64,
    stmts: OnceCell<Statements>,
    /// `append_reconciliation`, opened on the first unknown-outcome append.
    reconcile: OnceCell<reconcile::ReconcileTable>,
    /// Sends the appends' conditional batches (the session, or a test's faults).
    batches: Arc<dyn BatchExecutor>,
    /// The named operations a test fails (`store::faults`; inert unless armed).
    faults: Arc<StoreFaults>,
}

impl CqlStore {
    /// One aggregate's rows after `after_sequence`, as the feed hands them out.
    pub(super) async fn raw_rows(&self, aggregate_id: Uuid, after_sequence: i64) -> Result<Vec<FeedRow>, StoreError> {
        let s = self.stmts().await?;
        let rows: Vec<EventRow> =
            self.select_rows(&s.load_after, (aggregate_id, after_sequence), "load events").await?;
        Ok(rows.into_iter().filter_map(EventRow::into_feed_row).collect())
    }

    /// The driver session (shared with the CDC reader).
    pub fn session(&self) -> Arc<Session> {
        self.session.clone()
    }

    /// The keyspace, lower-case as the server stores it.
    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// True when the server is ScyllaDB.
    pub fn is_scylla(&self) -> bool {
        self.scylla
    }

    /// True when `event_store` has a Scylla CDC log (the feed of this backend).
    pub fn cdc_enabled(&self) -> bool {
        self.cdc.load(Ordering::Relaxed)
    }

    fn t(&self, table: &str) -> String {
        format!("{}.{table}", self.keyspace)
    }
}

#[async_trait]
impl EventStore for CqlStore {
    fn backend(&self) -> &'static str {
        "cql"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        self.migrate_schema().await
    }

    async fn append(
        &self,
        aggregate_id: Uuid,
        expected_version: i64,
        events: Vec<EventEnvelope>,
    ) -> Result<Appended, StoreError> {
        self.append_events(aggregate_id, expected_version, events).await
    }

    async fn load_after(&self, aggregate_id: Uuid, after_sequence: i64) -> Result<Vec<EventEnvelope>, StoreError> {
        let s = self.stmts().await?;
        let rows: Vec<EventRow> =
            self.select_rows(&s.load_after, (aggregate_id, after_sequence), "load events").await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            if let Some(e) = r.into_envelope()? {
                out.push(e);
            }
        }
        Ok(out)
    }

    async fn read_feed(&self, _after: i64, _limit: usize) -> Result<Vec<FeedRow>, StoreError> {
        Err(StoreError::Unsupported {
            backend: "cql",
            what: "a position-ordered feed: CQL has no global commit order; the CQL feed is Scylla CDC (relay::cdc) on event_store".into(),
        })
    }

    /// No positions on CQL: only the held events of parked aggregates are
    /// countable here (the CDC lag in time comes from the CDC progress);
    /// `oldest` is the commit time of the oldest held event, as on SQLite.
    async fn backlog(&self, consumer: &str) -> Result<Backlog, StoreError> {
        let parked = self.parked_rows_held(consumer).await?;
        let held: u64 = parked.iter().map(|(p, _)| p.held_events).sum();
        let oldest = parked.iter().filter_map(|(_, t)| *t).min();
        Ok(Backlog { checkpoint: None, head: None, events: (held > 0).then_some(held as i64), oldest })
    }

    /// Unsupported rather than `Ok(0)`: zero would claim the store is empty.
    async fn head_position(&self) -> Result<i64, StoreError> {
        Err(StoreError::Unsupported {
            backend: "cql",
            what:
                "feed positions: CQL has no global commit order; the CQL feed is Scylla CDC (relay::cdc) on event_store"
                    .into(),
        })
    }

    /// No feed positions: reachable means the keyspace answers a read of the
    /// `checkpoints` table (the CDC origin row).
    async fn probe(&self) -> Result<StoreProbe, StoreError> {
        self.get_checkpoint(CDC_ORIGIN_CHECKPOINT).await?;
        Ok(StoreProbe { head: None })
    }

    /// A fenced checkpoint (kept with the consumer's lease) wins over a plain one.
    async fn get_checkpoint(&self, consumer: &str) -> Result<Option<i64>, StoreError> {
        if !consumer.starts_with("cdc:") {
            if let Some(p) = self.lease_position(consumer).await? {
                return Ok(Some(p));
            }
        }
        let s = self.stmts().await?;
        let res = self
            .session
            .execute_unpaged(&s.get_checkpoint, (consumer,))
            .await
            .map_err(|e| exec_err("read checkpoint", e))?;
        let row = res.into_rows_result().map_err(codec)?.maybe_first_row::<(Option<i64>,)>().map_err(codec)?;
        Ok(row.and_then(|r| r.0))
    }

    fn faults(&self) -> Option<Arc<StoreFaults>> {
        Some(self.faults.clone())
    }

    async fn set_checkpoint(&self, consumer: &str, position: i64) -> Result<(), StoreError> {
        self.faults.check_named(faults::CHECKPOINT)?;
        let s = self.stmts().await?;
        self.session
            .execute_unpaged(&s.set_checkpoint, (consumer, position, Utc::now()))
            .await
            .map_err(|e| exec_err("write checkpoint", e))?;
        Ok(())
    }

    async fn dlq_insert(&self, letter: DeadLetter) -> Result<(), StoreError> {
        self.insert_letter(letter).await?;
        self.faults.check_stored(faults::DLQ_INSERT_REPLY_LOST)
    }

    async fn dlq_list(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.list_letters(limit).await
    }

    async fn dlq_get(&self, ids: &[Uuid]) -> Result<Vec<DeadLetter>, StoreError> {
        self.get_letters(ids).await
    }

    async fn dlq_remove(&self, id: Uuid) -> Result<bool, StoreError> {
        self.faults.check_named(faults::DLQ_REMOVE)?;
        self.remove_letter(id).await
    }

    async fn dlq_count(&self) -> Result<u64, StoreError> {
        self.count_letters().await
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        self.store_snapshot(snapshot).await
    }

    async fn load_snapshot(&self, aggregate_id: Uuid) -> Result<Option<Snapshot>, StoreError> {
        self.read_snapshot(aggregate_id).await
    }
}
