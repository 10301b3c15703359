//! Discarded events the relay may read again: an operator's discard of an
//! event this term has not read yet (the relay restarted below it, the CLI
//! carried the discard out with no relay running, or a rewind went back
//! before it), whose marker must take its place when the feed brings it;
//! or one behind the checkpoint whose discard was interrupted after its
//! audit row, which a later replay of its still-parked aggregate reads.
//!
//! Guarantee: a feed row whose event an operator discarded is never
//! published as it is: the relay publishes the discard's marker record in
//! its place, in feed order (`outboxd.EventDiscarded`, same `ce_id`, key and
//! `ce_sequence`), from the feed or in a replay. The audit rows
//! (`discarded_events`) are read at the start of every term, so this holds
//! across restarts, rewinds and interrupted discards.

use std::collections::BTreeMap;
use uuid::Uuid;

use crate::relay::encode::Discarded;
use crate::relay::pipeline::Item;
use crate::store::feed::FeedRow;
use crate::store::parking::DiscardRecord;
use crate::store::{Store, StoreError};

/// Feed position -> the marker that replaces the event there.
#[derive(Debug, Default)]
pub struct Discards(BTreeMap<i64, Discarded>);

impl Discards {
    /// The discards of `consumer`, wherever the term starts reading: one
    /// behind its checkpoint still replaces its event in a later replay of
    /// the aggregate (a discard interrupted after its audit row, its
    /// aggregate still parked at that event). Every one of them, however
    /// many discards there are (audit rows are rare operator actions).
    pub async fn load(store: &dyn Store, consumer: &str) -> Result<Discards, StoreError> {
        let rows = store.discards_of(consumer, None).await?;
        Ok(Discards(rows.iter().filter_map(|d| d.position.map(|p| (p, marker_of(d)))).collect()))
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

    /// A discard behind the term's checkpoint (interrupted after its audit
    /// row: the aggregate is still parked at the event) is loaded too: a
    /// replay of the aggregate reads the event again and must publish the
    /// marker. Only the discards after the checkpoint were loaded, and the
    /// replay published the discarded event as it was.
    #[tokio::test]
    async fn a_discard_behind_the_checkpoint_still_replaces_its_event() {
        use crate::store::parking::ParkingStore;
        use crate::store::EventStore;
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::sqlite::SqliteStore::open(dir.path().join("s.db"), Default::default()).await.unwrap();
        store.record_discard(&record("relay", Some(5))).await.unwrap();
        store.record_discard(&record("other-relay", Some(6))).await.unwrap();
        store.set_checkpoint("relay", 10).await.unwrap();
        let ds = Discards::load(&*store, "relay").await.unwrap();
        assert!(matches!(ds.replace(unreadable(5)), Item::Marker { position: 5, .. }));
        assert!(matches!(ds.replace(unreadable(6)), Item::Unreadable(_)), "another consumer's discard");
    }
}
