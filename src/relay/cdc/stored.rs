//! An event of `event_store` as the reconciler finds it: decoded, or
//! handed on as undecodable.
//!
//! Guarantee: a row of `event_store` becomes a [`Stored`] that always
//! carries its aggregate and sequence, so an undecodable one keeps its place
//! in its aggregate's order (parked in its turn, never dropped).

use uuid::Uuid;

use super::consumer::UndecodableRow;
use super::CdcError;
use crate::envelope::EventEnvelope;
use crate::store::feed::FeedRow;

/// One event of `event_store` as the reconciler finds it.
pub(super) enum Stored {
    Event(EventEnvelope),
    Undecodable(UndecodableRow),
}

impl Stored {
    /// `None` for a row without a sequence (not an event).
    pub(super) fn of(aggregate: Uuid, row: FeedRow) -> Option<Stored> {
        let (sequence, event_id, error) = match row {
            FeedRow::Event(e) => match e.to_envelope() {
                Ok(env) => return Some(Stored::Event(env)),
                Err(err) => (e.sequence, Some(e.event_id), err.to_string()),
            },
            FeedRow::Unreadable(u) => (u.sequence?, u.event_id.and_then(|id| Uuid::parse_str(&id).ok()), u.error),
        };
        Some(Stored::Undecodable(UndecodableRow {
            aggregate_id: Some(aggregate),
            sequence: Some(sequence),
            event_id,
            position: None,
            error: CdcError::Payload { row: format!("{aggregate}#{sequence}"), error },
        }))
    }

    /// Aggregate and sequence (an undecodable one is always built with both).
    pub(super) fn key(&self) -> (Uuid, i64) {
        match self {
            Stored::Event(e) => (e.aggregate_id, e.sequence),
            Stored::Undecodable(r) => (r.aggregate_id.unwrap_or_default(), r.sequence.unwrap_or_default()),
        }
    }
}
