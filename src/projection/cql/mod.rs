//! `ReadModelStore` for the CQL backend, and the CDC-fed projection that
//! keeps it (ScyllaDB only).
//!
//! The feed: CQL has no global commit order, so the read models are fed by
//! a second scylla-cdc reader on `event_store`'s CDC log
//! ([`cdc::run_cdc_projection`]), with its own progress (consumer
//! [`PROJECTION_CONSUMER`] in `relay_leases`), independent of the relay. Each event
//! goes through [`apply::apply_envelopes`] (the same function tests call), which
//! uses the pure `model::apply_event`.
//!
//! Files: this one (statements, shared helpers), [`apply`] (events -> rows),
//! `read_models` (the `ReadModelStore` queries), [`cdc`] (the CDC-fed
//! projection).
//!
//! Guarantees (and how they differ from SQLite):
//! - No multi-table transactions. Every row write carries
//!   `USING TIMESTAMP <version>` (the aggregate's sequence number), so the
//!   server's last-write-wins keeps the row of the highest version: a replay,
//!   a late duplicate or a second projector can never move a row backwards,
//!   and no Paxos round is needed. Equal versions carry equal rows (the row
//!   is a function of events 1..=version). `order_read_model` and its
//!   `orders_by_customer` row are written in one LOGGED batch (both land
//!   eventually, or neither).
//! - Gaps are filled from the event store: an event whose sequence is above
//!   `version + 1` first applies the missing events (`load_after`), so CDC
//!   rows arriving out of order per aggregate still give the right state;
//!   the late ones are then duplicates.
//! - `last_position` on CQL is the event's timestamp in ms (there is no
//!   global feed position); rows are still a function of the events alone,
//!   so a replay gives identical rows (compare with [`ReadModelStore::dump`]).
//! - Progress is per CDC stream, saved every `checkpoint_interval_ms`, only
//!   past rows whose write returned Ok and never backwards (the relay's CDC
//!   saver): after a crash the tail is applied again as duplicates.
//! - `commit_batch` (used by the SQLite-shaped projector, not by the CDC
//!   path) checks the `checkpoints` row before writing (SERIAL read), writes
//!   the rows, then moves the checkpoint with an LWT (`IF position = from`,
//!   `IF NOT EXISTS` from 0). A crash or a lost race after the rows leaves
//!   rows ahead of the checkpoint, which the version timestamps make harmless.
//! - `freshness`: no global head on CQL. `checkpoint` is the projection's
//!   watermark in ms since the epoch (every CDC stream is projected up to
//!   that time; the oldest progress of `projections` in `relay_leases`), `head` and
//!   `lag_events` are 0 (unknown). The time lag is in `ProjectionStatus.lag_ms`
//!   while the CDC projection runs (`lag`, in events, stays 0).
//! - `reset` truncates the three tables and deletes the checkpoint rows
//!   (`checkpoints`, the projection's CDC progress rows in `relay_leases`
//!   and its former scylla-cdc table), so the CDC projection starts over.
//! - `orders_by_customer` pages by the `after` cursor on the clustering key;
//!   `offset` is emulated by skipping rows, up to [`MAX_OFFSET`].

pub mod apply;
pub mod cdc;
mod read_models;

use chrono::{DateTime, Utc};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;
use uuid::Uuid;

use super::StoredRow;
use crate::store::cql::CqlStore;
use crate::store::StoreError;

pub use apply::{apply_envelopes, CqlApplyOutcome};
pub use cdc::{run_cdc_projection, CqlProjectionSink, LEGACY_PROJECTION_CHECKPOINT_TABLE, PROJECTION_CONSUMER};

/// Largest `offset` (without cursor) `orders_by_customer` emulates (the
/// limit of every backend, see [`super::MAX_OFFSET`]).
pub use super::MAX_OFFSET;

pub(super) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub(super) fn codec(e: impl std::fmt::Display) -> StoreError {
    StoreError::Codec(e.to_string())
}

pub(super) const ORDER_COLS: &str = "customer_id, status, total_minor, currency, item_count, items, tracking_number, carrier, cancel_reason, created_at, updated_at, version, last_position, state_schema, state";
pub(super) const CUSTOMER_COLS: &str =
    "name, email, phone, created_at, updated_at, version, last_position, state_schema, state";
pub(super) const PAGE_COLS: &str = "order_id, status, total_minor, currency, created_at, updated_at";

pub(super) struct Stmts {
    pub(super) load_order: PreparedStatement,
    pub(super) load_customer: PreparedStatement,
    pub(super) write_order: PreparedStatement,
    pub(super) write_by_customer: PreparedStatement,
    pub(super) write_customer: PreparedStatement,
    pub(super) get_order: PreparedStatement,
    pub(super) get_customer: PreparedStatement,
    pub(super) stream_version: PreparedStatement,
    pub(super) count_by_customer: PreparedStatement,
    pub(super) page_after: PreparedStatement,
    pub(super) page_first: PreparedStatement,
    pub(super) get_checkpoint: PreparedStatement,
    pub(super) cp_insert: PreparedStatement,
    pub(super) cp_update: PreparedStatement,
}

/// Prepared statements per keyspace (prepared once per process; the driver
/// re-prepares transparently on a node that does not know one).
fn registry() -> &'static Mutex<HashMap<String, Arc<Stmts>>> {
    static R: OnceLock<Mutex<HashMap<String, Arc<Stmts>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// Watermark cache per keyspace (freshness is read on every query).
pub(super) fn watermark_cache() -> &'static Mutex<HashMap<String, (Instant, i64)>> {
    static R: OnceLock<Mutex<HashMap<String, (Instant, i64)>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

async fn prepare(session: &Session, cql: String) -> Result<PreparedStatement, StoreError> {
    session
        .prepare(cql.clone())
        .await
        .map_err(|e| unavailable(format!("cannot prepare {cql:?} (did `outboxd schema` run?): {e}")))
}

pub(super) async fn stmts(store: &CqlStore) -> Result<Arc<Stmts>, StoreError> {
    let ks = store.keyspace().to_string();
    if let Some(s) = registry().lock().unwrap().get(&ks) {
        return Ok(s.clone());
    }
    let s = store.session();
    let s = s.as_ref();
    let stmts = Arc::new(Stmts {
        load_order: prepare(s, format!("SELECT version, last_position, state_schema, state, created_at, updated_at FROM {ks}.order_read_model WHERE order_id = ?")).await?,
        load_customer: prepare(s, format!("SELECT version, last_position, state_schema, state, created_at, updated_at FROM {ks}.customer_read_model WHERE customer_id = ?")).await?,
        write_order: prepare(s, format!("INSERT INTO {ks}.order_read_model (order_id, {ORDER_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?")).await?,
        write_by_customer: prepare(s, format!("INSERT INTO {ks}.orders_by_customer (customer_id, {PAGE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?")).await?,
        write_customer: prepare(s, format!("INSERT INTO {ks}.customer_read_model (customer_id, {CUSTOMER_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?")).await?,
        get_order: prepare(s, format!("SELECT {ORDER_COLS} FROM {ks}.order_read_model WHERE order_id = ?")).await?,
        get_customer: prepare(s, format!("SELECT {CUSTOMER_COLS} FROM {ks}.customer_read_model WHERE customer_id = ?")).await?,
        stream_version: prepare(s, format!("SELECT version FROM {ks}.event_store WHERE aggregate_id = ? LIMIT 1")).await?,
        count_by_customer: prepare(s, format!("SELECT COUNT(*) FROM {ks}.orders_by_customer WHERE customer_id = ?")).await?,
        page_after: prepare(s, format!("SELECT {PAGE_COLS} FROM {ks}.orders_by_customer WHERE customer_id = ? AND order_id > ? ORDER BY order_id ASC LIMIT ?")).await?,
        page_first: prepare(s, format!("SELECT {PAGE_COLS} FROM {ks}.orders_by_customer WHERE customer_id = ? ORDER BY order_id ASC LIMIT ?")).await?,
        get_checkpoint: {
            let mut p = prepare(s, format!("SELECT position FROM {ks}.checkpoints WHERE consumer = ?")).await?;
            p.set_consistency(Consistency::Serial);
            p
        },
        cp_insert: prepare(s, format!("INSERT INTO {ks}.checkpoints (consumer, position, updated_at) VALUES (?, ?, ?) IF NOT EXISTS")).await?,
        cp_update: prepare(s, format!("UPDATE {ks}.checkpoints SET position = ?, updated_at = ? WHERE consumer = ? IF position = ?")).await?,
    });
    registry().lock().unwrap().insert(ks, stmts.clone());
    Ok(stmts)
}

pub(super) type StoredTuple =
    (Option<i64>, Option<i64>, Option<i32>, Option<String>, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

pub(super) async fn load_stored(
    store: &CqlStore,
    stmt: &PreparedStatement,
    id: Uuid,
) -> Result<Option<StoredRow>, StoreError> {
    let res = store
        .session()
        .execute_unpaged(stmt, (id,))
        .await
        .map_err(|e| unavailable(format!("read-model row {id}: {e}")))?;
    let row = res.into_rows_result().map_err(codec)?.maybe_first_row::<StoredTuple>().map_err(codec)?;
    let Some((Some(version), last_position, state_schema, Some(state), Some(created_at), Some(updated_at))) = row
    else {
        return Ok(None);
    };
    Ok(Some(StoredRow {
        version,
        last_position: last_position.unwrap_or(0),
        state_schema: state_schema.unwrap_or(0),
        state,
        created_at,
        updated_at,
    }))
}
