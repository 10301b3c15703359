//! Events -> CQL read-model rows: the code path of the CDC projection,
//! callable directly (tests, replays).
//!
//! Guarantee: idempotent and order-insensitive per aggregate: events at or
//! below a row's version change nothing, a gap is filled from the event store
//! first (a fill the store answers short parks the aggregate at the first
//! sequence it lacks, a row it cannot read at that row, each after applying
//! the events before it), and every row is written `USING TIMESTAMP <version>`, so the
//! highest version wins whatever the arrival order. A row never reflects a
//! state with an event missing: an event this build cannot apply stops its
//! aggregate at the version before it and parks it (`parked_aggregates`,
//! consumer `projections`); a park the row is written past (another build
//! parked it, this one applied the event) is removed.

use chrono::{DateTime, Utc};
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::CqlValue;
use std::collections::HashMap;
use uuid::Uuid;

use super::{codec, load_stored, stmts, unavailable, Stmts};
use crate::domain::{Aggregate, Customer, Order};
use crate::envelope::{EventEnvelope, StoredEvent};
use crate::projection::model::{apply_event, Applied, OrderColumns, Row};
use crate::projection::page::{decode_row, missing, rows_through, Earlier};
use crate::projection::parking::record;
use crate::projection::{StoredRow, CONSUMER};
use crate::store::cql::CqlStore;
use crate::store::parking::ParkingStore;
use crate::store::StoreError;

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

pub(super) fn stored_event(env: EventEnvelope) -> StoredEvent {
    StoredEvent { position: env.timestamp.timestamp_millis(), envelope: env }
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
        // A row that cannot be re-derived (its events unreadable) starts from
        // no row: the gap fill below meets what stopped it and parks.
        Some(s) => decode_row::<A>(store, id, s, currency).await?,
        None => None,
    };
    let mut dirty = false;
    for env in events {
        let version = row.as_ref().map(|r| r.version).unwrap_or(0);
        if env.sequence > version + 1 {
            // Earlier events of this aggregate were not seen (yet): take them
            // from the event store, so the state never skips an event.
            let (earlier, unreadable) = rows_through(store, id, version + 1, env.sequence - 1).await?;
            // The readable events before a row that cannot be read are
            // applied too: the row stops at the version before the first
            // event it cannot take, however the fill stops.
            for ev in earlier {
                // The fill must come back whole: a sequence the store did not
                // return stops the aggregate there (applying the next one
                // would leave a row that looks current with an event missing).
                let next = row.as_ref().map_or(0, |r| r.version) + 1;
                if ev.sequence != next {
                    break;
                }
                let key = ParkKey::of(&ev);
                match apply_event(&mut row, stored_event(ev), currency) {
                    Applied::Applied => {
                        out.gap_filled += 1;
                        dirty = true;
                    }
                    Applied::Duplicate => {}
                    Applied::Skipped(error) => {
                        park(store, key, &error).await?;
                        out.skipped += 1;
                        return Ok(dirty.then_some(row).flatten());
                    }
                }
            }
            let reached = row.as_ref().map_or(0, |r| r.version);
            if unreadable.is_some() || reached != env.sequence - 1 {
                stop_fill(store, &env, reached, unreadable).await?;
                out.skipped += 1;
                return Ok(dirty.then_some(row).flatten());
            }
        }
        let key = ParkKey::of(&env);
        match apply_event(&mut row, stored_event(env), currency) {
            Applied::Applied => {
                out.applied += 1;
                dirty = true;
            }
            Applied::Duplicate => out.duplicates += 1,
            Applied::Skipped(error) => {
                park(store, key, &error).await?;
                out.skipped += 1;
                return Ok(dirty.then_some(row).flatten());
            }
        }
    }
    Ok(if dirty { row } else { None })
}

/// Parks the aggregate of `env` where its gap fill stopped, the row at
/// version `reached`: at the row that cannot be read when it is the next
/// one (retried, it fails the same way for ever; the reader parked it there
/// when it met it: that record stays, if none it is written here), else at
/// the first sequence the store did not return.
async fn stop_fill(
    store: &CqlStore,
    env: &EventEnvelope,
    reached: i64,
    unreadable: Option<Earlier>,
) -> Result<(), StoreError> {
    match unreadable {
        Some(e) if e.sequence <= reached + 1 => {
            if store.is_parked(CONSUMER, &env.aggregate_id.to_string()).await? {
                return Ok(());
            }
            let at = ParkKey { sequence: e.sequence, event_id: e.event_id, event_type: None, ..ParkKey::of(env) };
            park(store, at, &e.error).await
        }
        _ => {
            let gap = missing(reached + 1);
            let at = ParkKey { sequence: gap.sequence, event_id: None, event_type: None, ..ParkKey::of(env) };
            park(store, at, &gap.error).await
        }
    }
}

/// What a park record names of the event that stopped an aggregate.
struct ParkKey {
    aggregate_id: Uuid,
    aggregate_type: String,
    sequence: i64,
    event_id: Option<Uuid>,
    event_type: Option<String>,
}

impl ParkKey {
    fn of(e: &EventEnvelope) -> ParkKey {
        ParkKey {
            aggregate_id: e.aggregate_id,
            aggregate_type: e.aggregate_type.clone(),
            sequence: e.sequence,
            event_id: Some(e.event_id),
            event_type: Some(e.event_type.clone()),
        }
    }
}

/// An event this build cannot apply stops its aggregate: the row stays at
/// the version before it (every later call meets the same event through the
/// gap fill and stops there again), and a park record under the projection's
/// consumer makes it visible (`outboxd projections status`), as on SQLite.
async fn park(store: &CqlStore, k: ParkKey, error: &str) -> Result<(), StoreError> {
    let agg = k.aggregate_id.to_string();
    let mut p =
        record(CONSUMER, &agg, None, Some(k.sequence), k.event_id.map(|e| e.to_string()), k.event_type, error.into());
    p.aggregate_type = Some(k.aggregate_type);
    store.park(&p).await?;
    tracing::error!(aggregate = %p.aggregate_id, sequence = k.sequence, error, "projection: event cannot be applied; the aggregate's read-model row stays at the version before it");
    Ok(())
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
    let mut parks = Parks::default();
    for (id, ty, mut evs) in groups {
        evs.sort_by_key(|e| e.sequence);
        let skipped = out.skipped;
        // The version of the row written, if one was.
        let written = match ty.as_str() {
            Order::TYPE => {
                let stored = load_stored(store, &st.load_order, id).await?;
                match project::<Order>(store, id, stored, evs, currency, &mut out).await? {
                    Some(row) => write_order(store, &st, &row).await.map(|()| Some(row.version))?,
                    None => None,
                }
            }
            Customer::TYPE => {
                let stored = load_stored(store, &st.load_customer, id).await?;
                match project::<Customer>(store, id, stored, evs, currency, &mut out).await? {
                    Some(row) => write_customer(store, &st, &row).await.map(|()| Some(row.version))?,
                    None => None,
                }
            }
            // An aggregate type without a read model.
            _ => {
                out.duplicates += evs.len() as u64;
                None
            }
        };
        if let Some(version) = written {
            out.rows_written += 1;
            // Parked (again) in this call: the row stops before it.
            if out.skipped == skipped {
                parks.applied_past(store, id, version).await?;
            }
        }
    }
    Ok(out)
}

/// The projection's park rows, read once per call when a row was written:
/// a park this build applied past (another build's, that could not apply
/// the event this one did) is removed, or the aggregate's read model would
/// be flagged stale (`stale: true`, `/health` Degraded) while current.
#[derive(Default)]
struct Parks(Option<HashMap<String, Option<i64>>>);

impl Parks {
    async fn applied_past(&mut self, store: &CqlStore, id: Uuid, version: i64) -> Result<(), StoreError> {
        if self.0.is_none() {
            self.0 = Some(store.park_sequences(CONSUMER).await?);
        }
        let parks = self.0.as_mut().expect("read above");
        let key = id.to_string();
        if let Some(Some(from)) = parks.get(&key).copied() {
            if version >= from {
                store.unpark(CONSUMER, &key).await?;
                parks.remove(&key);
                tracing::info!(aggregate = %key, sequence = from, version, "projection: the parked event is applied now; park removed");
            }
        }
        Ok(())
    }
}

pub(super) async fn write_order(store: &CqlStore, st: &Stmts, r: &Row<Order>) -> Result<(), StoreError> {
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

pub(super) fn ts_value(t: DateTime<Utc>) -> CqlValue {
    CqlValue::Timestamp(scylla::value::CqlTimestamp(t.timestamp_millis()))
}

pub(super) async fn write_customer(store: &CqlStore, st: &Stmts, r: &Row<Customer>) -> Result<(), StoreError> {
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
