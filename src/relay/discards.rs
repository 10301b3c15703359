//! Discarded events ahead of the relay's feed: an operator's discard of an
//! event this term has not read yet (the relay restarted below it, the CLI
//! carried the discard out with no relay running, or a rewind went back
//! before it). The feed brings the event itself later; its marker must take
//! its place there.
//!
//! Guarantee: a feed row whose event an operator discarded is never
//! published as it is: the relay publishes the discard's marker record in
//! its place, in feed order (`outboxd.EventDiscarded`, same `ce_id`, key and
//! `ce_sequence`). The audit rows (`discarded_events`) are read at the start
//! of every term, so this holds across restarts and rewinds.

use std::collections::BTreeMap;
use uuid::Uuid;

use crate::relay::encode::Discarded;
use crate::relay::pipeline::Item;
use crate::store::feed::FeedRow;
use crate::store::parking::DiscardRecord;
use crate::store::{Store, StoreError};

/// Audit rows read at a term's start (discards are rare operator actions).
const LOAD_LIMIT: usize = 100_000;

/// Feed position -> the marker that replaces the event there.
#[derive(Debug, Default)]
pub struct Discards(BTreeMap<i64, Discarded>);

impl Discards {
    /// The discards of `consumer` at positions after `after` (where the term starts reading).
    pub async fn load(store: &dyn Store, consumer: &str, after: i64) -> Result<Discards, StoreError> {
        let rows = store.discards(LOAD_LIMIT).await?;
        Ok(Discards(
            rows.iter()
                .filter(|d| d.consumer == consumer)
                .filter_map(|d| d.position.filter(|p| *p > after).map(|p| (p, marker_of(d))))
                .collect(),
        ))
    }

    /// The event at `position` was discarded (by this term, before the feed brought it).
    pub fn insert(&mut self, position: i64, discarded: Discarded) {
        self.0.insert(position, discarded);
    }

    /// `row` as the relay publishes it: the marker in place of a discarded event.
    pub fn replace(&self, row: FeedRow) -> Item {
        if let Some(d) = self.0.get(&row.position()) {
            tracing::info!(position = row.position(), event = %d.event_id, "a discarded event from the feed: its marker takes its place");
            return Item::Marker { position: row.position(), discarded: d.clone() };
        }
        match row {
            FeedRow::Event(e) => Item::Event(e),
            FeedRow::Unreadable(u) => Item::Unreadable(u),
        }
    }
}

/// What the marker of the discard `d` says about the event it replaces.
pub fn marker_of(d: &DiscardRecord) -> Discarded {
    Discarded {
        event_id: Uuid::parse_str(&d.event_id).unwrap_or_else(|_| crate::store::feed::uuid_of(&d.event_id)),
        aggregate_type: d.aggregate_type.clone().unwrap_or_else(|| "order".into()),
        aggregate_key: crate::store::feed::aggregate_key(&d.aggregate_id),
        sequence: d.sequence.unwrap_or(0),
        event_type: d.event_type.clone().unwrap_or_default(),
        reason: d.reason.clone(),
        discarded_at: d.discarded_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::feed::Unreadable;

    fn record(consumer: &str, position: Option<i64>) -> DiscardRecord {
        DiscardRecord {
            consumer: consumer.into(),
            event_id: Uuid::now_v7().to_string(),
            aggregate_id: Uuid::now_v7().to_string(),
            aggregate_type: Some("Order".into()),
            sequence: Some(2),
            position,
            event_type: Some("OrderItemsUpdated".into()),
            payload: None,
            error: "too large".into(),
            reason: "fixed upstream".into(),
            discarded_at: chrono::Utc::now(),
        }
    }

    fn unreadable(position: i64) -> FeedRow {
        FeedRow::Unreadable(Unreadable {
            position,
            aggregate_key: "a".into(),
            sequence: Some(2),
            event_id: Some(Uuid::now_v7().to_string()),
            event_type: Some("OrderItemsUpdated".into()),
            aggregate_type: Some("order".into()),
            error: "payload is not JSON".into(),
        })
    }

    #[test]
    fn a_discarded_row_becomes_its_marker_and_the_others_pass() {
        let d = record("relay", Some(7));
        let mut ds = Discards::default();
        assert!(matches!(ds.replace(unreadable(7)), Item::Unreadable(_)), "nothing discarded yet");
        ds.insert(7, marker_of(&d));
        match ds.replace(unreadable(7)) {
            Item::Marker { position, discarded } => {
                assert_eq!((position, discarded.event_id.to_string(), discarded.sequence), (7, d.event_id, 2));
                assert_eq!(&*discarded.aggregate_key, d.aggregate_id.as_str());
                assert_eq!(discarded.reason, "fixed upstream");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(ds.replace(unreadable(8)), Item::Unreadable(_)));
        // Read again (a respawned feed reader): the marker again.
        assert!(matches!(ds.replace(unreadable(7)), Item::Marker { .. }));
    }
}
