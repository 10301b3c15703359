//! One feed page -> one read-model commit: the apply step the projector loop
//! and the rebuild share.
//!
//! Guarantee: the rows a page touches are loaded, every event is applied with
//! the pure `model::apply_event` (duplicates and out-of-order events change
//! nothing) after the events before it (a row that lacks some, because a
//! rebuild reset the read models under this batch, gets them from the store
//! first; a fill the store answers short stops the aggregate like an event
//! it cannot read), and rows plus the checkpoint move `from -> to` in one
//! `commit_batch`, which refuses (nothing written) when another projector
//! moved the checkpoint first. An event that cannot be applied parks its
//! aggregate (`parking`) in that commit (no park from a commit that loses);
//! later events of a parked aggregate are held, not applied.

use std::collections::{HashMap, HashSet};
use uuid::Uuid;

use super::model::{apply_event, Applied, Row};
use super::parking::{EventKey, ProjectionParking};
use super::{CommitBatch, ReadModelStore, StoredRow};
use crate::domain::{Aggregate, Customer, Order};
use crate::envelope::{EventEnvelope, StoredEvent};
use crate::store::feed::FeedRow;
use crate::store::{DynStore, Store, StoreError};

/// Counts of one applied batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BatchOutcome {
    /// False when another projector moved the checkpoint first (nothing written).
    pub committed: bool,
    pub applied: u64,
    pub duplicates: u64,
    /// Events that could not be applied (their aggregates were parked).
    pub skipped: u64,
    /// Events of parked aggregates, not applied.
    pub held: u64,
}

/// Decodes a stored row; a row of an older state shape (or unreadable:
/// its state, or its timestamps, see `sqlite::load_stored`) is re-derived
/// from its events up to its version instead, timestamps included (None
/// when the store has none of them; a row that stops short of its version,
/// at an event that cannot be applied or read or is missing, keeps the
/// version it reached: the next event meets the gap and parks). Shared by
/// both backends' projections.
pub(crate) async fn decode_row<A: Aggregate>(
    store: &dyn Store,
    id: Uuid,
    stored: StoredRow,
    currency: &str,
) -> Result<Option<Row<A>>, StoreError> {
    if stored.state_schema == A::STATE_SCHEMA {
        if let Ok(state) = serde_json::from_str::<A>(&stored.state) {
            return Ok(Some(Row {
                id,
                state,
                version: stored.version,
                last_position: stored.last_position,
                created_at: stored.created_at,
                updated_at: stored.updated_at,
            }));
        }
    }
    tracing::warn!(%id, state_schema = stored.state_schema, "read-model row has an older or unreadable state; re-deriving it from its events");
    let mut row: Option<Row<A>> = None;
    let stopped = replay_into(store, &mut row, id, stored.version, stored.last_position, currency).await?;
    if let Some(e) = &stopped {
        // The row keeps the version it reached: the next event meets the
        // gap and parks the aggregate at that event.
        tracing::warn!(%id, sequence = e.sequence, error = %e.error, "the re-derived row stops before an event");
    }
    // Timestamps are the re-derived ones (a function of the events, equal
    // to a readable row's): the stored ones may be what was unreadable.
    Ok(row.map(|mut r| {
        r.last_position = stored.last_position;
        r
    }))
}

/// The earlier event that stopped a gap fill or a re-derivation: it cannot
/// be applied, or its row cannot be read (then its id and type are unknown).
pub(crate) struct Earlier {
    pub sequence: i64,
    pub event_id: Option<Uuid>,
    pub event_type: Option<String>,
    pub error: String,
}

/// The stored events of `id` from sequence `from` up to `through`, read row
/// by row (one backend call, both backends): the readable ones before the
/// first row that cannot be read, and that row (its sequence, its id when
/// readable) if there is one. A row after `through` stops nothing.
pub(crate) async fn rows_through(
    store: &dyn Store,
    id: Uuid,
    from: i64,
    through: i64,
) -> Result<(Vec<EventEnvelope>, Option<Earlier>), StoreError> {
    let mut events = Vec::new();
    let key = crate::store::feed::uuid_key(&id);
    for r in store.aggregate_rows(&key, None, Some(from), None).await? {
        let (sequence, env) = match r {
            FeedRow::Event(e) => (e.sequence, e.to_envelope().map_err(|x| (Some(e.event_id), x.to_string()))),
            FeedRow::Unreadable(u) => (
                u.sequence.unwrap_or(from),
                Err((u.event_id.as_deref().and_then(|e| Uuid::parse_str(e).ok()), u.error.clone())),
            ),
        };
        if sequence < from {
            continue;
        }
        if sequence > through {
            break;
        }
        match env {
            Ok(env) => events.push(env),
            Err((event_id, error)) => {
                let error = format!("an earlier event of this aggregate cannot be read: {error}");
                return Ok((events, Some(Earlier { sequence, event_id, event_type: None, error })));
            }
        }
    }
    Ok((events, None))
}

/// Applies the stored events of `id` after `row`'s version up to `through`
/// (at feed `position`) to `row`; `Some` names the event that cannot be
/// applied or read, or the first one the store did not return (the fill is
/// checked for completeness: `None` means the row reached `through`, every
/// event in order); the row then stops before it.
async fn replay_into<A: Aggregate>(
    store: &dyn Store,
    row: &mut Option<Row<A>>,
    id: Uuid,
    through: i64,
    position: i64,
    currency: &str,
) -> Result<Option<Earlier>, StoreError> {
    let after = row.as_ref().map_or(0, |r| r.version);
    let (events, unreadable) = rows_through(store, id, after + 1, through).await?;
    for env in events {
        let (sequence, event_id, event_type) = (env.sequence, env.event_id, env.event_type.clone());
        let next = row.as_ref().map_or(0, |r| r.version) + 1;
        if sequence != next {
            return Ok(Some(missing(next)));
        }
        if let Applied::Skipped(error) = apply_event(row, StoredEvent { position, envelope: env }, currency) {
            let error = format!("an earlier event of this aggregate cannot be applied: {error}");
            return Ok(Some(Earlier { sequence, event_id: Some(event_id), event_type: Some(event_type), error }));
        }
    }
    if unreadable.is_some() {
        return Ok(unreadable);
    }
    // The store returned fewer events than the fill needs (a row deleted
    // or rewritten by hand, ids stored in another spelling): the fill is
    // short, and the next event applied to this row would skip some.
    let reached = row.as_ref().map_or(0, |r| r.version);
    if reached < through {
        return Ok(Some(missing(reached + 1)));
    }
    Ok(None)
}

/// An event a gap fill needs that the store did not return (`sequence`):
/// the aggregate stops (parks) before it, as at an event it cannot read.
pub(crate) fn missing(sequence: i64) -> Earlier {
    Earlier {
        sequence,
        event_id: None,
        event_type: None,
        error: format!(
            "event {sequence} of this aggregate is missing from the event store (a gap fill came back short)"
        ),
    }
}

/// Applies `ev` to `row`, first filling a gap before it from the store: the
/// row may lack earlier events when another writer of the read models (a
/// rebuild resetting them) raced this batch's load; applied alone, the event
/// would leave a row that looks current but has lost the events before it.
/// An earlier event that cannot be applied or read, or that the store does
/// not return (a short fill), stops the aggregate there: `Err` names it, the
/// row unchanged (never `ev` applied to a row that lacks some events).
async fn apply_in_order<A: Aggregate>(
    store: &dyn Store,
    row: &mut Option<Row<A>>,
    ev: StoredEvent,
    currency: &str,
) -> Result<Result<Applied, Earlier>, StoreError> {
    let (id, sequence) = (ev.envelope.aggregate_id, ev.envelope.sequence);
    let version = row.as_ref().map_or(0, |r| r.version);
    if sequence > version + 1 {
        tracing::warn!(aggregate_id = %id, sequence, version, "projection: events missing before this one; re-reading them from the store");
        let before = row.clone();
        if let Some(earlier) = replay_into(store, row, id, sequence - 1, ev.position, currency).await? {
            *row = before;
            return Ok(Err(earlier));
        }
    }
    Ok(Ok(apply_event(row, ev, currency)))
}

/// Applies one feed page (read after `from`) and commits rows + checkpoint.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn apply_page(
    store: &DynStore,
    models: &dyn ReadModelStore,
    consumer: &str,
    from: i64,
    to: i64,
    page: Vec<StoredEvent>,
    currency: &str,
    parking: &mut ProjectionParking,
) -> Result<BatchOutcome, StoreError> {
    let (mut order_ids, mut customer_ids) = (Vec::new(), Vec::new());
    let mut seen = HashSet::new();
    for e in &page {
        let env = &e.envelope;
        if seen.insert(env.aggregate_id) {
            match env.aggregate_type.as_str() {
                Order::TYPE => order_ids.push(env.aggregate_id),
                Customer::TYPE => customer_ids.push(env.aggregate_id),
                _ => {}
            }
        }
    }
    let stored = models.load_rows(order_ids.clone(), customer_ids.clone()).await?;
    let mut orders: HashMap<Uuid, Option<Row<Order>>> = HashMap::with_capacity(order_ids.len());
    for id in order_ids {
        let row = match stored.orders.get(&id) {
            Some(s) => decode_row::<Order>(store.as_ref(), id, s.clone(), currency).await?,
            None => None,
        };
        orders.insert(id, row);
    }
    let mut customers: HashMap<Uuid, Option<Row<Customer>>> = HashMap::with_capacity(customer_ids.len());
    for id in customer_ids {
        let row = match stored.customers.get(&id) {
            Some(s) => decode_row::<Customer>(store.as_ref(), id, s.clone(), currency).await?,
            None => None,
        };
        customers.insert(id, row);
    }

    let mut out = BatchOutcome::default();
    let (mut dirty_orders, mut dirty_customers) = (HashSet::new(), HashSet::new());
    for ev in page {
        let id = ev.envelope.aggregate_id;
        if parking.hold(&id.to_string(), ev.position) {
            out.held += 1;
            continue;
        }
        let key = EventKey::of(&ev);
        let mut earlier = None;
        let applied = match ev.envelope.aggregate_type.as_str() {
            Order::TYPE => {
                let row = orders.entry(id).or_default();
                let r = apply_in_order(store.as_ref(), row, ev, currency).await?;
                let r = stop_at(r, &mut earlier);
                if row.is_some() && r != Applied::Duplicate {
                    dirty_orders.insert(id);
                }
                r
            }
            Customer::TYPE => {
                let row = customers.entry(id).or_default();
                let r = apply_in_order(store.as_ref(), row, ev, currency).await?;
                let r = stop_at(r, &mut earlier);
                if row.is_some() && r != Applied::Duplicate {
                    dirty_customers.insert(id);
                }
                r
            }
            // An aggregate type without a read model: nothing to do.
            _ => Applied::Duplicate,
        };
        match applied {
            Applied::Applied => out.applied += 1,
            Applied::Duplicate => out.duplicates += 1,
            Applied::Skipped(error) => {
                // Written with the checkpoint move past it (the commit below,
                // not if it loses): at the earlier event that stopped it, if one did.
                match earlier {
                    Some(e) => parking.park_earlier(&key, e),
                    None => parking.park_event(&key, &error),
                }
                out.skipped += 1;
            }
        }
    }
    let batch = CommitBatch {
        consumer: consumer.to_string(),
        from,
        to,
        orders: dirty_orders.into_iter().filter_map(|id| orders.remove(&id).flatten()).collect(),
        customers: dirty_customers.into_iter().filter_map(|id| customers.remove(&id).flatten()).collect(),
        // This page's parks (and its unreadable rows', from `parking.sort`).
        parks: parking.take_pending(),
        held_by: parking.take_relied(),
    };
    out.committed = models.commit_batch(batch).await?;
    Ok(out)
}

/// `apply_in_order`'s outcome as an [`Applied`]; an earlier event that
/// stopped it goes to `earlier` (where the aggregate parks).
fn stop_at(r: Result<Applied, Earlier>, earlier: &mut Option<Earlier>) -> Applied {
    match r {
        Ok(applied) => applied,
        Err(e) => {
            let error = e.error.clone();
            *earlier = Some(e);
            Applied::Skipped(error)
        }
    }
}
