//! The pure part of the projection: one read-model row per aggregate and
//! how an event changes it.
//!
//! Guarantee: `apply_event` reuses the domain (`upcast` -> `decode` ->
//! `Aggregate::apply`), performs no I/O and reads no clock (timestamps come
//! from the event envelopes), so the same feed always gives the same rows.
//! It is idempotent by (aggregate id, sequence): an event whose sequence is
//! not above the row's `version` changes nothing.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::domain::{Aggregate, Customer, Order};
use crate::envelope::StoredEvent;

/// One read-model row: the aggregate's state after `version` events.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row<A> {
    pub id: Uuid,
    pub state: A,
    /// Sequence of the last event applied (the idempotency key).
    pub version: i64,
    /// Feed position of the last event applied.
    pub last_position: i64,
    /// Timestamp of the first event applied (the creating event).
    pub created_at: DateTime<Utc>,
    /// Timestamp of the last event applied.
    pub updated_at: DateTime<Utc>,
}

pub type OrderRow = Row<Order>;
pub type CustomerRow = Row<Customer>;

/// What one event did to its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The row moved to the event's sequence.
    Applied,
    /// Sequence <= the row's version: already applied, nothing changed.
    Duplicate,
    /// The event could not be decoded (e.g. a schema version newer than this
    /// build); the row is unchanged and the projector parks the aggregate.
    Skipped(String),
}

impl<A: Aggregate> Row<A> {
    fn new(id: Uuid, at: DateTime<Utc>) -> Self {
        Row { id, state: A::default(), version: 0, last_position: 0, created_at: at, updated_at: at }
    }
}

/// Applies one (stored, possibly old-schema) event to `row`, creating the
/// row on the first decodable event of an aggregate.
pub fn apply_event<A: Aggregate>(row: &mut Option<Row<A>>, ev: StoredEvent, default_currency: &str) -> Applied {
    let StoredEvent { position, envelope } = ev;
    let (id, sequence, at) = (envelope.aggregate_id, envelope.sequence, envelope.timestamp);
    let prev = row.as_ref().map(|r| r.version).unwrap_or(0);
    if sequence <= prev {
        return Applied::Duplicate;
    }
    if sequence != prev + 1 {
        // The SQLite feed is commit ordered and sequences are gap free, so this
        // only happens if earlier events of this aggregate were never seen.
        // The projections never get here: they fill a gap from the store
        // first and park the aggregate when the fill comes back short
        // (`page::replay_into`, `cql::apply`).
        tracing::warn!(aggregate_id = %id, sequence, version = prev, "projection: sequence gap");
    }
    let decoded = envelope.upcast(default_currency).and_then(|e| e.decode::<A::Event>());
    match decoded {
        Ok(event) => {
            let r = row.get_or_insert_with(|| Row::new(id, at));
            r.state.apply(&event);
            r.version = sequence;
            r.last_position = position;
            r.updated_at = at;
            Applied::Applied
        }
        // The row stays as it is; the projector parks the aggregate.
        Err(e) => Applied::Skipped(e.to_string()),
    }
}

/// Columns derived from an order's state (what `order_read_model` stores
/// besides the state itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderColumns {
    pub customer_id: Option<Uuid>,
    pub status: &'static str,
    pub total_minor: Option<i64>,
    pub currency: Option<String>,
    /// Number of order lines.
    pub item_count: i64,
    pub tracking_number: Option<String>,
    pub carrier: Option<String>,
    pub cancel_reason: Option<String>,
}

impl OrderColumns {
    pub fn of(o: &Order) -> Self {
        OrderColumns {
            customer_id: o.customer_id,
            status: o.status.as_str(),
            total_minor: o.total.map(|t| t.amount_minor),
            currency: o.total.map(|t| t.currency.as_str().to_string()),
            item_count: o.items.len() as i64,
            tracking_number: o.tracking_number.clone(),
            carrier: o.carrier.clone(),
            cancel_reason: o.cancel_reason.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Currency, Money, OrderCommand, OrderItem, OrderStatus, Sku};
    use crate::envelope::{EventEnvelope, Metadata};

    fn feed(id: Uuid) -> Vec<StoredEvent> {
        let eur = Currency::new("EUR").unwrap();
        let item = |s: &str, q| OrderItem::new(Sku::new(s).unwrap(), q, Money::new(100, eur).unwrap()).unwrap();
        let cmds = [
            OrderCommand::Create { customer_id: Uuid::from_u128(9), items: vec![item("A", 1)] },
            OrderCommand::UpdateItems { items: vec![item("A", 2), item("B", 1)] },
            OrderCommand::Confirm,
            OrderCommand::Ship { tracking_number: "T".into(), carrier: "DHL".into() },
        ];
        let mut o = Order::default();
        let mut out = vec![];
        for (i, c) in cmds.iter().enumerate() {
            let e = o.handle(c).unwrap().remove(0);
            o.apply(&e);
            let at = chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + i as i64 * 1000).unwrap();
            let env = EventEnvelope::new::<Order>(id, i as i64 + 1, &e, &Metadata::default(), at).unwrap();
            out.push(StoredEvent { position: 10 + i as i64, envelope: env });
        }
        out
    }

    #[test]
    fn applies_in_order_and_replays_change_nothing() {
        let id = Uuid::now_v7();
        let events = feed(id);
        let mut row: Option<OrderRow> = None;
        for e in events.clone() {
            assert_eq!(apply_event(&mut row, e, "EUR"), Applied::Applied);
        }
        let once = row.clone().unwrap();
        assert_eq!((once.version, once.last_position), (4, 13));
        assert_eq!(once.state.status, OrderStatus::Shipped);
        assert_eq!(once.created_at, events[0].envelope.timestamp);
        assert_eq!(once.updated_at, events[3].envelope.timestamp);
        let cols = OrderColumns::of(&once.state);
        assert_eq!(
            (cols.status, cols.total_minor, cols.item_count, cols.currency.as_deref()),
            ("shipped", Some(300), 2, Some("EUR"))
        );
        for e in events {
            assert_eq!(apply_event(&mut row, e, "EUR"), Applied::Duplicate);
        }
        assert_eq!(row.unwrap(), once);
    }

    /// The row stays as it was; the projector parks the aggregate (see `parking`).
    #[test]
    fn undecodable_event_leaves_the_row_unchanged() {
        let id = Uuid::now_v7();
        let mut events = feed(id);
        let mut row: Option<OrderRow> = None;
        apply_event(&mut row, events.remove(0), "EUR");
        let mut bad = events.remove(0);
        bad.envelope.schema_version = 99;
        let before = row.clone().unwrap();
        assert!(matches!(apply_event(&mut row, bad, "EUR"), Applied::Skipped(_)));
        let after = row.unwrap();
        assert_eq!(after, before, "nothing of the undecodable event is applied");
    }
}
