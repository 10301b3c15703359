//! The outbox rows as the feed hands them out: [`RawEvent`] (metadata columns
//! parsed, payload kept as the stored JSON text) or [`Unreadable`] (a row that
//! cannot be an event, with enough raw columns to park the right aggregate).
//!
//! Guarantees:
//! - A feed page is decoded row by row: one bad row never fails its page.
//! - `RawEvent::payload` is exactly the stored text, checked once to be JSON
//!   and never re-encoded, so what is published is what was stored.
//! - `RawEvent` and [`EventEnvelope`] convert both ways without loss.

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use std::sync::Arc;
use uuid::Uuid;

use crate::envelope::{EventEnvelope, TraceContext};

/// One stored event, ready to publish as stored.
#[derive(Debug, Clone)]
pub struct RawEvent {
    /// Feed position (0 where the backend has none: CDC).
    pub position: i64,
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    /// `aggregate_id` as text (the key the relay fences and parks by).
    pub aggregate_key: Arc<str>,
    pub sequence: i64,
    pub event_type: String,
    pub schema_version: i32,
    /// The stored payload JSON, byte for byte.
    pub payload: Box<RawValue>,
    pub causation_id: Option<Uuid>,
    pub correlation_id: Uuid,
    pub timestamp: DateTime<Utc>,
    pub trace: Option<TraceContext>,
}

impl PartialEq for RawEvent {
    fn eq(&self, o: &Self) -> bool {
        self.position == o.position
            && self.event_id == o.event_id
            && self.aggregate_type == o.aggregate_type
            && self.aggregate_id == o.aggregate_id
            && self.sequence == o.sequence
            && self.event_type == o.event_type
            && self.schema_version == o.schema_version
            && self.payload.get() == o.payload.get()
            && self.causation_id == o.causation_id
            && self.correlation_id == o.correlation_id
            && self.timestamp == o.timestamp
            && self.trace == o.trace
    }
}

/// A stored row that is not a readable event (bad JSON, a bad UUID, a null column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub position: i64,
    /// The aggregate id column as stored (canonical UUID text when it parses).
    pub aggregate_key: Arc<str>,
    pub sequence: Option<i64>,
    /// The event id column as stored, if any.
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    /// The aggregate type column as stored, if any (where the marker of a
    /// discard of this row goes).
    pub aggregate_type: Option<String>,
    pub error: String,
}

/// One row of the feed.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedRow {
    Event(RawEvent),
    Unreadable(Unreadable),
}

impl FeedRow {
    pub fn position(&self) -> i64 {
        match self {
            FeedRow::Event(e) => e.position,
            FeedRow::Unreadable(u) => u.position,
        }
    }

    /// The row as an envelope (payload parsed); None for an unreadable row.
    pub fn envelope(&self) -> Option<EventEnvelope> {
        match self {
            FeedRow::Event(e) => e.to_envelope().ok(),
            FeedRow::Unreadable(_) => None,
        }
    }

    pub fn aggregate_key(&self) -> &Arc<str> {
        match self {
            FeedRow::Event(e) => &e.aggregate_key,
            FeedRow::Unreadable(u) => &u.aggregate_key,
        }
    }

    /// The row's sequence number, when known.
    pub fn sequence(&self) -> Option<i64> {
        match self {
            FeedRow::Event(e) => Some(e.sequence),
            FeedRow::Unreadable(u) => u.sequence,
        }
    }
}

/// The canonical text of an aggregate id as a key (one allocation).
pub fn uuid_key(u: &Uuid) -> Arc<str> {
    Arc::from(&*u.hyphenated().encode_lower(&mut [0u8; uuid::fmt::Hyphenated::LENGTH]))
}

/// The canonical key of an aggregate id column: the UUID's lower-case hyphenated
/// form when it parses, the raw text otherwise.
pub fn aggregate_key(raw: &str) -> Arc<str> {
    match Uuid::parse_str(raw.trim()) {
        Ok(u) => uuid_key(&u),
        Err(_) => Arc::from(raw),
    }
}

/// A stable id for a text that is not a UUID (an unreadable event id column,
/// a position): the same text always gives the same id.
pub fn uuid_of(text: &str) -> Uuid {
    use std::hash::{Hash, Hasher};
    let half = |salt: u64| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut h);
        text.hash(&mut h);
        h.finish()
    };
    Uuid::from_u64_pair(half(0x6f75_7462_6f78_6431), half(0x6f75_7462_6f78_6432))
}

/// Checks that `text` is one JSON value and keeps it verbatim.
pub fn raw_json(text: String) -> Result<Box<RawValue>, String> {
    RawValue::from_string(text).map_err(|e| format!("payload is not JSON: {e}"))
}

impl RawEvent {
    /// The envelope of a freshly decided event, as it will be stored.
    pub fn from_envelope(e: &EventEnvelope, position: i64) -> Result<RawEvent, serde_json::Error> {
        Ok(RawEvent {
            position,
            event_id: e.event_id,
            aggregate_type: e.aggregate_type.clone(),
            aggregate_id: e.aggregate_id,
            aggregate_key: uuid_key(&e.aggregate_id),
            sequence: e.sequence,
            event_type: e.event_type.clone(),
            schema_version: e.schema_version,
            payload: serde_json::value::to_raw_value(&e.payload)?,
            causation_id: e.causation_id,
            correlation_id: e.correlation_id,
            timestamp: e.timestamp,
            trace: e.trace.clone(),
        })
    }

    /// Parses the payload: the form the domain (load, projections) works with.
    pub fn to_envelope(&self) -> Result<EventEnvelope, serde_json::Error> {
        Ok(EventEnvelope {
            event_id: self.event_id,
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id,
            sequence: self.sequence,
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            payload: serde_json::from_str(self.payload.get())?,
            causation_id: self.causation_id,
            correlation_id: self.correlation_id,
            timestamp: self.timestamp,
            trace: self.trace.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_json_checks() {
        let u = Uuid::now_v7();
        assert_eq!(&*aggregate_key(&u.to_string().to_uppercase()), u.to_string().as_str());
        assert_eq!(&*aggregate_key("not-a-uuid"), "not-a-uuid");
        assert_eq!(raw_json(r#"{"a": [1, 2]}"#.into()).unwrap().get(), r#"{"a": [1, 2]}"#, "kept byte for byte");
        assert!(raw_json("{not json".into()).unwrap_err().contains("payload is not JSON"));
        assert!(raw_json("{} {}".into()).is_err(), "exactly one value");
    }
}
