//! `ReadModelStore` for the CQL backend, and the CDC-fed projection that
//! keeps it (ScyllaDB only).
//!
//! The feed: CQL has no global commit order, so the read models are fed by
//! a second scylla-cdc reader on `event_store`'s CDC log
//! ([`run_cdc_projection`]), with its own progress table
//! ([`PROJECTION_CHECKPOINT_TABLE`]), independent of the relay. Each event
//! goes through [`apply_envelopes`] (the same function tests call), which
//! uses the pure `model::apply_event`.
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
//! - Progress is scylla-cdc's (per CDC stream, saved every
//!   `checkpoint_interval_ms` and only past rows whose write returned Ok):
//!   after a crash the tail is applied again as duplicates.
//! - `commit_batch` (used by the SQLite-shaped projector, not by the CDC
//!   path) checks the `checkpoints` row before writing (SERIAL read), writes
//!   the rows, then moves the checkpoint with an LWT (`IF position = from`,
//!   `IF NOT EXISTS` from 0). A crash or a lost race after the rows leaves
//!   rows ahead of the checkpoint, which the version timestamps make harmless.
//! - `freshness`: no global head on CQL. `checkpoint` is the projection's
//!   watermark in ms since the epoch (every CDC stream is projected up to
//!   that time; the minimum of `cdc_projection_checkpoints`), `head` and
//!   `lag_events` are 0 (unknown). The time lag is in `ProjectionStatus.lag`
//!   (ms) while the CDC projection runs.
//! - `reset` truncates the three tables and deletes the checkpoint rows
//!   (`checkpoints` and the projection's CDC progress).
//! - `orders_by_customer` pages by the `after` cursor on the clustering key;
//!   `offset` is emulated by skipping rows, up to [`MAX_OFFSET`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, Statement};
use scylla::value::{CqlValue, Row as CqlRow};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use uuid::Uuid;

use super::model::{apply_event, Applied, OrderColumns, Row};
use super::{
    CommitBatch, CustomerOrder, CustomerOrdersPage, CustomerView, Freshness, OrderView, PageRequest, ProjectionStatus,
    ReadModelStore, StoredRow, StoredRows,
};
use crate::domain::{Aggregate, Customer, Order};
use crate::envelope::{EventEnvelope, StoredEvent};
use crate::relay::cdc::{start_cdc_sink_reader, CdcError, EnvelopeSink};
use crate::shutdown::{Shutdown, Trigger};
use crate::store::cql::CqlStore;
use crate::store::{EventStore, StoreError};

/// scylla-cdc progress table of the read-model projection.
pub const PROJECTION_CHECKPOINT_TABLE: &str = "cdc_projection_checkpoints";
/// Largest `offset` (without cursor) `orders_by_customer` emulates.
pub const MAX_OFFSET: u64 = 10_000;

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn codec(e: impl std::fmt::Display) -> StoreError {
    StoreError::Codec(e.to_string())
}

const ORDER_COLS: &str = "customer_id, status, total_minor, currency, item_count, items, tracking_number, carrier, cancel_reason, created_at, updated_at, version, last_position, state_schema, state";
const CUSTOMER_COLS: &str = "name, email, phone, created_at, updated_at, version, last_position, state_schema, state";
const PAGE_COLS: &str = "order_id, status, total_minor, currency, created_at, updated_at";

struct Stmts {
    load_order: PreparedStatement,
    load_customer: PreparedStatement,
    write_order: PreparedStatement,
    write_by_customer: PreparedStatement,
    write_customer: PreparedStatement,
    get_order: PreparedStatement,
    get_customer: PreparedStatement,
    stream_version: PreparedStatement,
    count_by_customer: PreparedStatement,
    page_after: PreparedStatement,
    page_first: PreparedStatement,
    get_checkpoint: PreparedStatement,
    cp_insert: PreparedStatement,
    cp_update: PreparedStatement,
}

/// Prepared statements per keyspace (prepared once per process; the driver
/// re-prepares transparently on a node that does not know one).
fn registry() -> &'static Mutex<HashMap<String, Arc<Stmts>>> {
    static R: OnceLock<Mutex<HashMap<String, Arc<Stmts>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// Watermark cache per keyspace (freshness is read on every query).
fn watermark_cache() -> &'static Mutex<HashMap<String, (Instant, i64)>> {
    static R: OnceLock<Mutex<HashMap<String, (Instant, i64)>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

async fn prepare(session: &Session, cql: String) -> Result<PreparedStatement, StoreError> {
    session
        .prepare(cql.clone())
        .await
        .map_err(|e| unavailable(format!("cannot prepare {cql:?} (did `outboxd schema` run?): {e}")))
}

async fn stmts(store: &CqlStore) -> Result<Arc<Stmts>, StoreError> {
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

type StoredTuple =
    (Option<i64>, Option<i64>, Option<i32>, Option<String>, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

async fn load_stored(store: &CqlStore, stmt: &PreparedStatement, id: Uuid) -> Result<Option<StoredRow>, StoreError> {
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

/// What [`apply_envelopes`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CqlApplyOutcome {
    pub applied: u64,
    pub duplicates: u64,
    pub skipped: u64,
    /// Events of this aggregate loaded from the event store to fill a gap.
    pub gap_filled: u64,
    /// Rows written.
    pub rows_written: u64,
}

fn stored_event(env: EventEnvelope) -> StoredEvent {
    StoredEvent { position: env.timestamp.timestamp_millis(), envelope: env }
}

/// Decodes a stored row; an older or unreadable state shape is re-derived
/// from the aggregate's events up to the row's version.
async fn decode_row<A: Aggregate>(
    store: &CqlStore,
    id: Uuid,
    stored: StoredRow,
    currency: &str,
) -> Result<Row<A>, StoreError> {
    if stored.state_schema == A::STATE_SCHEMA {
        if let Ok(state) = serde_json::from_str::<A>(&stored.state) {
            return Ok(Row {
                id,
                state,
                version: stored.version,
                last_position: stored.last_position,
                created_at: stored.created_at,
                updated_at: stored.updated_at,
            });
        }
    }
    tracing::warn!(%id, state_schema = stored.state_schema, "read-model row has an older or unreadable state; re-deriving it from its events");
    let mut row: Option<Row<A>> = None;
    for env in store.load(id).await? {
        if env.sequence > stored.version {
            break;
        }
        apply_event(&mut row, stored_event(env), currency);
    }
    let mut r = row.unwrap_or_else(|| Row {
        id,
        state: A::default(),
        version: 0,
        last_position: 0,
        created_at: stored.created_at,
        updated_at: stored.updated_at,
    });
    r.version = stored.version;
    r.last_position = stored.last_position;
    r.created_at = stored.created_at;
    r.updated_at = stored.updated_at;
    Ok(r)
}

/// Applies the events of one aggregate to its row (filling gaps from the
/// event store); returns the row when it changed.
async fn project<A: Aggregate>(
    store: &CqlStore,
    id: Uuid,
    stored: Option<StoredRow>,
    events: Vec<EventEnvelope>,
    currency: &str,
    out: &mut CqlApplyOutcome,
) -> Result<Option<Row<A>>, StoreError> {
    let mut row: Option<Row<A>> = match stored {
        Some(s) => Some(decode_row::<A>(store, id, s, currency).await?),
        None => None,
    };
    let mut dirty = false;
    for env in events {
        let version = row.as_ref().map(|r| r.version).unwrap_or(0);
        if env.sequence > version + 1 {
            // Earlier events of this aggregate were not seen (yet): take them
            // from the event store, so the state never skips an event.
            for missing in store.load_after(id, version).await? {
                if missing.sequence >= env.sequence {
                    break;
                }
                if apply_event(&mut row, stored_event(missing), currency) != Applied::Duplicate {
                    out.gap_filled += 1;
                    dirty = true;
                }
            }
        }
        match apply_event(&mut row, stored_event(env), currency) {
            Applied::Applied => {
                out.applied += 1;
                dirty = true;
            }
            Applied::Duplicate => out.duplicates += 1,
            Applied::Skipped(_) => {
                out.skipped += 1;
                dirty = true;
            }
        }
    }
    Ok(if dirty { row } else { None })
}

/// Applies events (any order, any aggregates) to the CQL read models: the
/// code path of the CDC projection, callable directly. Idempotent: events at
/// or below a row's version change nothing.
pub async fn apply_envelopes(
    store: &CqlStore,
    events: Vec<EventEnvelope>,
    currency: &str,
) -> Result<CqlApplyOutcome, StoreError> {
    let mut groups: Vec<(Uuid, String, Vec<EventEnvelope>)> = Vec::new();
    let mut index: HashMap<Uuid, usize> = HashMap::new();
    for e in events {
        match index.get(&e.aggregate_id) {
            Some(&i) => groups[i].2.push(e),
            None => {
                index.insert(e.aggregate_id, groups.len());
                groups.push((e.aggregate_id, e.aggregate_type.clone(), vec![e]));
            }
        }
    }
    let st = stmts(store).await?;
    let mut out = CqlApplyOutcome::default();
    for (id, ty, mut evs) in groups {
        evs.sort_by_key(|e| e.sequence);
        match ty.as_str() {
            Order::TYPE => {
                let stored = load_stored(store, &st.load_order, id).await?;
                if let Some(row) = project::<Order>(store, id, stored, evs, currency, &mut out).await? {
                    write_order(store, &st, &row).await?;
                    out.rows_written += 1;
                }
            }
            Customer::TYPE => {
                let stored = load_stored(store, &st.load_customer, id).await?;
                if let Some(row) = project::<Customer>(store, id, stored, evs, currency, &mut out).await? {
                    write_customer(store, &st, &row).await?;
                    out.rows_written += 1;
                }
            }
            // An aggregate type without a read model.
            _ => out.duplicates += evs.len() as u64,
        }
    }
    Ok(out)
}

async fn write_order(store: &CqlStore, st: &Stmts, r: &Row<Order>) -> Result<(), StoreError> {
    let c = OrderColumns::of(&r.state);
    let items = serde_json::to_string(&r.state.items).map_err(codec)?;
    let state = serde_json::to_string(&r.state).map_err(codec)?;
    let ts = r.version;
    let txt = |v: Option<String>| v.map(CqlValue::Text);
    let values: Vec<Option<CqlValue>> = vec![
        Some(CqlValue::Uuid(r.id)),
        c.customer_id.map(CqlValue::Uuid),
        Some(CqlValue::Text(c.status.to_string())),
        c.total_minor.map(CqlValue::BigInt),
        txt(c.currency.clone()),
        Some(CqlValue::Int(c.item_count as i32)),
        Some(CqlValue::Text(items)),
        txt(c.tracking_number.clone()),
        txt(c.carrier.clone()),
        txt(c.cancel_reason.clone()),
        Some(ts_value(r.created_at)),
        Some(ts_value(r.updated_at)),
        Some(CqlValue::BigInt(r.version)),
        Some(CqlValue::BigInt(r.last_position)),
        Some(CqlValue::Int(Order::STATE_SCHEMA)),
        Some(CqlValue::Text(state)),
        Some(CqlValue::BigInt(ts)),
    ];
    let session = store.session();
    match c.customer_id {
        Some(cust) => {
            let mut batch = Batch::new(BatchType::Logged);
            batch.append_statement(st.write_order.clone());
            batch.append_statement(st.write_by_customer.clone());
            let by_customer = (cust, r.id, c.status, c.total_minor, c.currency, r.created_at, r.updated_at, ts);
            session
                .batch(&batch, (values, by_customer))
                .await
                .map_err(|e| unavailable(format!("write order_read_model {}: {e}", r.id)))?;
        }
        None => {
            session
                .execute_unpaged(&st.write_order, values)
                .await
                .map_err(|e| unavailable(format!("write order_read_model {}: {e}", r.id)))?;
        }
    }
    Ok(())
}

fn ts_value(t: DateTime<Utc>) -> CqlValue {
    CqlValue::Timestamp(scylla::value::CqlTimestamp(t.timestamp_millis()))
}

async fn write_customer(store: &CqlStore, st: &Stmts, r: &Row<Customer>) -> Result<(), StoreError> {
    let state = serde_json::to_string(&r.state).map_err(codec)?;
    let values = (
        r.id,
        r.state.name.clone(),
        r.state.email.as_ref().map(|e| e.as_str().to_string()),
        r.state.phone.as_ref().map(|p| p.as_str().to_string()),
        r.created_at,
        r.updated_at,
        r.version,
        r.last_position,
        Customer::STATE_SCHEMA,
        state,
        r.version,
    );
    store
        .session()
        .execute_unpaged(&st.write_customer, values)
        .await
        .map_err(|e| unavailable(format!("write customer_read_model {}: {e}", r.id)))?;
    Ok(())
}

/// Min saved `time` over the projection's CDC streams (ms), 0 when none.
async fn watermark(store: &CqlStore) -> i64 {
    let ks = store.keyspace().to_string();
    if let Some((at, w)) = watermark_cache().lock().unwrap().get(&ks) {
        if at.elapsed() < Duration::from_secs(1) {
            return *w;
        }
    }
    let q = format!("SELECT time FROM {ks}.{PROJECTION_CHECKPOINT_TABLE}");
    let w = match store.session().query_unpaged(q, ()).await {
        Ok(res) => match res.into_rows_result() {
            Ok(rows) => rows
                .rows::<(Option<DateTime<Utc>>,)>()
                .map(|it| it.filter_map(|r| r.ok().and_then(|(t,)| t)).map(|t| t.timestamp_millis()).min().unwrap_or(0))
                .unwrap_or(0),
            Err(_) => 0,
        },
        Err(_) => 0,
    };
    watermark_cache().lock().unwrap().insert(ks, (Instant::now(), w));
    w
}

async fn freshness_of(store: &CqlStore) -> Freshness {
    Freshness { checkpoint: watermark(store).await, head: 0, lag_events: 0 }
}

fn lwt_applied(res: scylla::response::query_result::QueryResult) -> Result<bool, StoreError> {
    let rows = res.into_rows_result().map_err(|e| codec(format!("conditional write returned no rows: {e}")))?;
    let idx =
        rows.column_specs().get_by_name("[applied]").map(|(i, _)| i).ok_or_else(|| codec("no [applied] column"))?;
    let first =
        rows.maybe_first_row::<CqlRow>().map_err(codec)?.ok_or_else(|| codec("conditional write answer has no row"))?;
    match first.columns.get(idx).cloned().flatten() {
        Some(CqlValue::Boolean(b)) => Ok(b),
        other => Err(codec(format!("[applied] is not a boolean: {other:?}"))),
    }
}

fn json_of(v: Option<CqlValue>) -> serde_json::Value {
    match v {
        None | Some(CqlValue::Empty) => serde_json::Value::Null,
        Some(CqlValue::Uuid(u)) => u.to_string().into(),
        Some(CqlValue::Text(s)) | Some(CqlValue::Ascii(s)) => s.into(),
        Some(CqlValue::BigInt(n)) => n.into(),
        Some(CqlValue::Int(n)) => n.into(),
        Some(CqlValue::Timestamp(t)) => DateTime::from_timestamp_millis(t.0)
            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default()
            .into(),
        Some(other) => format!("{other:?}").into(),
    }
}

async fn dump_table(
    store: &CqlStore,
    table: &str,
    keys: &[&str],
    out: &mut Vec<serde_json::Value>,
) -> Result<(), StoreError> {
    let mut q = Statement::new(format!("SELECT * FROM {}.{table}", store.keyspace()));
    q.set_page_size(1000);
    let pager = store.session().query_iter(q, ()).await.map_err(|e| unavailable(format!("dump {table}: {e}")))?;
    let names: Vec<String> = pager.column_specs().iter().map(|c| c.name().to_string()).collect();
    let mut rows = pager.rows_stream::<CqlRow>().map_err(codec)?;
    use futures::StreamExt;
    while let Some(r) = rows.next().await {
        let r = r.map_err(|e| unavailable(format!("dump {table}: {e}")))?;
        let mut obj = serde_json::Map::new();
        obj.insert("table".into(), table.into());
        let mut key = Vec::new();
        for (n, v) in names.iter().zip(r.columns) {
            let v = json_of(v);
            if keys.contains(&n.as_str()) {
                key.push(v.as_str().unwrap_or_default().to_string());
            }
            obj.insert(n.clone(), v);
        }
        obj.insert("key".into(), key.join("/").into());
        out.push(serde_json::Value::Object(obj));
    }
    Ok(())
}

type OrderTuple = (
    Option<Uuid>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<i32>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<i64>,
    Option<i64>,
    Option<i32>,
    Option<String>,
);

#[async_trait]
impl ReadModelStore for CqlStore {
    async fn projection_checkpoint(&self, consumer: &str) -> Result<i64, StoreError> {
        let st = stmts(self).await?;
        let res = self
            .session()
            .execute_unpaged(&st.get_checkpoint, (consumer,))
            .await
            .map_err(|e| unavailable(format!("checkpoint {consumer}: {e}")))?;
        let row = res.into_rows_result().map_err(codec)?.maybe_first_row::<(Option<i64>,)>().map_err(codec)?;
        Ok(row.and_then(|(p,)| p).unwrap_or(0))
    }

    async fn load_rows(&self, orders: Vec<Uuid>, customers: Vec<Uuid>) -> Result<StoredRows, StoreError> {
        let st = stmts(self).await?;
        let mut out = StoredRows::default();
        for id in orders {
            if let Some(r) = load_stored(self, &st.load_order, id).await? {
                out.orders.insert(id, r);
            }
        }
        for id in customers {
            if let Some(r) = load_stored(self, &st.load_customer, id).await? {
                out.customers.insert(id, r);
            }
        }
        Ok(out)
    }

    async fn commit_batch(&self, batch: CommitBatch) -> Result<bool, StoreError> {
        let st = stmts(self).await?;
        if self.projection_checkpoint(&batch.consumer).await? != batch.from {
            return Ok(false);
        }
        for o in &batch.orders {
            write_order(self, &st, o).await?;
        }
        for c in &batch.customers {
            write_customer(self, &st, c).await?;
        }
        let now = Utc::now();
        let session = self.session();
        let mut applied = false;
        if batch.from == 0 {
            let res = session
                .execute_unpaged(&st.cp_insert, (&batch.consumer, batch.to, now))
                .await
                .map_err(|e| unavailable(format!("checkpoint {}: {e}", batch.consumer)))?;
            applied = lwt_applied(res)?;
        }
        if !applied {
            let res = session
                .execute_unpaged(&st.cp_update, (batch.to, now, &batch.consumer, batch.from))
                .await
                .map_err(|e| unavailable(format!("checkpoint {}: {e}", batch.consumer)))?;
            applied = lwt_applied(res)?;
        }
        Ok(applied)
    }

    async fn reset(&self, consumer: &str) -> Result<(), StoreError> {
        let ks = self.keyspace().to_string();
        let session = self.session();
        for t in ["order_read_model", "orders_by_customer", "customer_read_model", PROJECTION_CHECKPOINT_TABLE] {
            session
                .query_unpaged(format!("TRUNCATE {ks}.{t}"), ())
                .await
                .map_err(|e| unavailable(format!("truncate {ks}.{t}: {e}")))?;
        }
        // An LWT delete: the checkpoint row is only ever written with LWTs.
        session
            .query_unpaged(format!("DELETE FROM {ks}.checkpoints WHERE consumer = ? IF EXISTS"), (consumer,))
            .await
            .map_err(|e| unavailable(format!("delete checkpoint {consumer}: {e}")))?;
        watermark_cache().lock().unwrap().remove(&ks);
        Ok(())
    }

    async fn freshness(&self) -> Result<Freshness, StoreError> {
        Ok(freshness_of(self).await)
    }

    async fn get_order(&self, order_id: Uuid) -> Result<Option<OrderView>, StoreError> {
        let st = stmts(self).await?;
        let session = self.session();
        let res = session
            .execute_unpaged(&st.get_order, (order_id,))
            .await
            .map_err(|e| unavailable(format!("order_read_model {order_id}: {e}")))?;
        let Some(r) = res.into_rows_result().map_err(codec)?.maybe_first_row::<OrderTuple>().map_err(codec)? else {
            return Ok(None);
        };
        let (
            customer_id,
            status,
            total_minor,
            currency,
            item_count,
            _items,
            tracking_number,
            carrier,
            cancel_reason,
            created,
            updated,
            version,
            last_position,
            _schema,
            state,
        ) = r;
        let missing = |c: &str| codec(format!("order_read_model {order_id} has null {c} (rebuild the read models)"));
        let state: Order = serde_json::from_str(&state.ok_or_else(|| missing("state"))?)
            .map_err(|e| codec(format!("order_read_model state of {order_id} (rebuild the read models): {e}")))?;
        let res = session
            .execute_unpaged(&st.stream_version, (order_id,))
            .await
            .map_err(|e| unavailable(format!("event_store {order_id}: {e}")))?;
        let stream_version = res
            .into_rows_result()
            .map_err(codec)?
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(codec)?
            .and_then(|(v,)| v)
            .unwrap_or(0);
        Ok(Some(OrderView {
            order_id,
            customer_id,
            status: status.ok_or_else(|| missing("status"))?,
            total_minor,
            currency,
            item_count: item_count.unwrap_or(0) as i64,
            items: state.items.clone(),
            tracking_number,
            carrier,
            cancel_reason,
            created_at: created.ok_or_else(|| missing("created_at"))?,
            updated_at: updated.ok_or_else(|| missing("updated_at"))?,
            version: version.ok_or_else(|| missing("version"))?,
            last_position: last_position.unwrap_or(0),
            stream_version,
            state,
            projection: freshness_of(self).await,
        }))
    }

    async fn get_customer(&self, customer_id: Uuid) -> Result<Option<CustomerView>, StoreError> {
        let st = stmts(self).await?;
        let res = self
            .session()
            .execute_unpaged(&st.get_customer, (customer_id,))
            .await
            .map_err(|e| unavailable(format!("customer_read_model {customer_id}: {e}")))?;
        type T = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
            Option<i64>,
            Option<i64>,
            Option<i32>,
            Option<String>,
        );
        let Some((name, email, phone, created, updated, version, last_position, _schema, state)) =
            res.into_rows_result().map_err(codec)?.maybe_first_row::<T>().map_err(codec)?
        else {
            return Ok(None);
        };
        let missing =
            |c: &str| codec(format!("customer_read_model {customer_id} has null {c} (rebuild the read models)"));
        Ok(Some(CustomerView {
            customer_id,
            name,
            email,
            phone,
            created_at: created.ok_or_else(|| missing("created_at"))?,
            updated_at: updated.ok_or_else(|| missing("updated_at"))?,
            version: version.ok_or_else(|| missing("version"))?,
            last_position: last_position.unwrap_or(0),
            state: serde_json::from_str(&state.ok_or_else(|| missing("state"))?).map_err(|e| {
                codec(format!("customer_read_model state of {customer_id} (rebuild the read models): {e}"))
            })?,
            projection: freshness_of(self).await,
        }))
    }

    async fn orders_by_customer(&self, customer_id: Uuid, page: PageRequest) -> Result<CustomerOrdersPage, StoreError> {
        let limit = page.effective_limit();
        if page.after.is_none() && page.offset > MAX_OFFSET {
            return Err(StoreError::Unsupported {
                backend: "cql",
                what: format!(
                    "offset {} (at most {MAX_OFFSET} on CQL; page with the `after` cursor instead)",
                    page.offset
                ),
            });
        }
        let st = stmts(self).await?;
        let session = self.session();
        let res = session
            .execute_unpaged(&st.count_by_customer, (customer_id,))
            .await
            .map_err(|e| unavailable(format!("orders_by_customer {customer_id}: {e}")))?;
        let total = res
            .into_rows_result()
            .map_err(codec)?
            .maybe_first_row::<(i64,)>()
            .map_err(codec)?
            .map(|(n,)| n)
            .unwrap_or(0);
        let res = match page.after {
            Some(a) => session.execute_unpaged(&st.page_after, (customer_id, a, (limit + 1) as i32)).await,
            None => {
                session.execute_unpaged(&st.page_first, (customer_id, (page.offset as usize + limit + 1) as i32)).await
            }
        }
        .map_err(|e| unavailable(format!("orders_by_customer {customer_id}: {e}")))?;
        type T = (Uuid, Option<String>, Option<i64>, Option<String>, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
        let rows = res.into_rows_result().map_err(codec)?;
        let skip = if page.after.is_some() { 0 } else { page.offset as usize };
        let mut orders = Vec::new();
        for r in rows.rows::<T>().map_err(codec)?.skip(skip) {
            let (order_id, status, total_minor, currency, created, updated) = r.map_err(codec)?;
            let missing = |c: &str| codec(format!("orders_by_customer {customer_id}/{order_id} has null {c}"));
            orders.push(CustomerOrder {
                order_id,
                status: status.ok_or_else(|| missing("status"))?,
                total_minor,
                currency,
                created_at: created.ok_or_else(|| missing("created_at"))?,
                updated_at: updated.ok_or_else(|| missing("updated_at"))?,
            });
        }
        let more = orders.len() > limit;
        orders.truncate(limit);
        let next_after = if more { orders.last().map(|o| o.order_id) } else { None };
        Ok(CustomerOrdersPage {
            customer_id,
            orders,
            total: total.max(0) as u64,
            next_after,
            projection: freshness_of(self).await,
        })
    }

    async fn dump(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        let mut out = Vec::new();
        dump_table(self, "customer_read_model", &["customer_id"], &mut out).await?;
        dump_table(self, "order_read_model", &["order_id"], &mut out).await?;
        dump_table(self, "orders_by_customer", &["customer_id", "order_id"], &mut out).await?;
        out.sort_by(|a, b| (a["table"].as_str(), a["key"].as_str()).cmp(&(b["table"].as_str(), b["key"].as_str())));
        Ok(out)
    }
}

/// The CDC projection's sink: applies each event with [`apply_envelopes`],
/// retrying store failures with backoff until it lands or shutdown.
pub struct CqlProjectionSink {
    store: Arc<CqlStore>,
    currency: String,
    status: watch::Sender<ProjectionStatus>,
}

impl CqlProjectionSink {
    pub fn new(store: Arc<CqlStore>, currency: String, status: watch::Sender<ProjectionStatus>) -> Self {
        CqlProjectionSink { store, currency, status }
    }
}

#[async_trait]
impl EnvelopeSink for CqlProjectionSink {
    async fn handle(&self, env: EventEnvelope, shutdown: &mut Shutdown) -> Result<(), CdcError> {
        let at = env.timestamp;
        let mut attempt: u32 = 0;
        loop {
            match apply_envelopes(&self.store, vec![env.clone()], &self.currency).await {
                Ok(o) => {
                    self.status.send_modify(|s| {
                        s.applied += o.applied + o.gap_filled;
                        s.duplicates += o.duplicates;
                        s.skipped += o.skipped;
                        s.store_ok = true;
                        s.last_error = None;
                        // No global head on CQL: lag is the applied event's age in ms.
                        s.checkpoint = s.checkpoint.max(at.timestamp_millis());
                        s.lag = (Utc::now() - at).num_milliseconds().max(0);
                        s.updated_at = Utc::now();
                    });
                    return Ok(());
                }
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, aggregate_id = %env.aggregate_id, sequence = env.sequence, "CQL projection: store write failed; retrying");
                    self.status.send_modify(|s| {
                        s.store_ok = false;
                        s.last_error = Some(e.to_string());
                        s.updated_at = Utc::now();
                    });
                    let delay = Duration::from_millis((50u64 << attempt.min(6)).min(5_000));
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.recv() => return Err(CdcError::Shutdown),
                    }
                }
            }
        }
    }
}

/// Runs the CDC projection until `shutdown`, then stops the reader
/// gracefully (finish the window, save progress), abandoning it after 10 s.
/// Errors when the server has no CDC log (Apache Cassandra) or the reader fails.
pub async fn run_cdc_projection(
    cql: Arc<CqlStore>,
    cfg: &crate::config::Config,
    status: watch::Sender<ProjectionStatus>,
    mut shutdown: Shutdown,
) -> Result<(), String> {
    if !cql.cdc_enabled() {
        return Err(format!("read models on CQL need ScyllaDB CDC: {} has no CDC log on event_store", cql.keyspace()));
    }
    let abandon = Trigger::new();
    let sink = Arc::new(CqlProjectionSink::new(cql.clone(), cfg.service.default_currency.clone(), status.clone()));
    let (mut reader, mut handle) = start_cdc_sink_reader(
        cql.session(),
        cql.keyspace(),
        &cfg.store.cql.cdc,
        PROJECTION_CHECKPOINT_TABLE,
        sink,
        abandon.subscribe(),
    )
    .await
    .map_err(|e| e.to_string())?;
    status.send_modify(|s| {
        s.running = true;
        s.updated_at = Utc::now();
    });
    let res = tokio::select! {
        r = &mut handle => Some(r.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string()))),
        _ = shutdown.recv() => None,
    };
    let res = match res {
        Some(r) => r,
        None => {
            reader.stop();
            match tokio::time::timeout(Duration::from_secs(10), &mut handle).await {
                Ok(r) => r.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())),
                Err(_) => {
                    tracing::warn!("CDC projection reader did not stop within 10 s; abandoning it (the unsaved tail is re-applied after restart as duplicates)");
                    abandon.fire();
                    let _ = handle.await;
                    Ok(())
                }
            }
        }
    };
    status.send_modify(|s| {
        s.running = false;
        if let Err(e) = &res {
            s.last_error = Some(e.clone());
        }
        s.updated_at = Utc::now();
    });
    res
}
