//! `EventEnvelope`: the stored and published form of one domain event.
//!
//! Guarantee: an envelope carries everything a consumer needs to order,
//! deduplicate and trace an event (event id, aggregate id + sequence,
//! type + schema version, causation and correlation ids, UTC timestamp), and
//! round-trips through serde unchanged. Timestamps are truncated to whole
//! milliseconds so every backend (SQLite, CQL `timestamp`) stores them exactly.

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{upcast, Aggregate, DecodeError, DomainEvent};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// Time-ordered (v7) unique id; the consumer's deduplication key (`ce_id`).
    pub event_id: Uuid,
    /// `order` or `customer`; selects the topic.
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    /// 1-based, gap-free position of the event within its aggregate.
    pub sequence: i64,
    pub event_type: String,
    /// Schema version of `payload` for `event_type`.
    pub schema_version: i32,
    pub payload: serde_json::Value,
    pub causation_id: Option<Uuid>,
    pub correlation_id: Uuid,
    pub timestamp: DateTime<Utc>,
}

/// An envelope with its global position in the store's feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub position: i64,
    pub envelope: EventEnvelope,
}

/// Tracing metadata a command carries into the events it produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata { correlation_id: Uuid::now_v7(), causation_id: None }
    }
}

/// Current UTC time truncated to milliseconds.
pub fn now_millis() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

impl EventEnvelope {
    /// Wraps a freshly decided event.
    pub fn new<A: Aggregate>(
        aggregate_id: Uuid,
        sequence: i64,
        event: &A::Event,
        meta: Metadata,
        at: DateTime<Utc>,
    ) -> Result<Self, serde_json::Error> {
        let event_type = event.event_type();
        Ok(EventEnvelope {
            event_id: Uuid::now_v7(),
            aggregate_type: A::TYPE.to_string(),
            aggregate_id,
            sequence,
            event_type: event_type.to_string(),
            schema_version: A::Event::schema_version(event_type),
            payload: event.to_payload()?,
            causation_id: meta.causation_id,
            correlation_id: meta.correlation_id,
            timestamp: at.trunc_subsecs(3),
        })
    }

    /// Brings the payload to the current schema version (see `domain::upcast`).
    pub fn upcast(mut self, default_currency: &str) -> Result<Self, DecodeError> {
        let (v, body) =
            upcast::upcast(&self.event_type, self.schema_version, std::mem::take(&mut self.payload), default_currency)?;
        self.schema_version = v;
        self.payload = body;
        Ok(self)
    }

    /// Decodes the (already upcast) payload into the aggregate's event type.
    pub fn decode<E: DomainEvent>(&self) -> Result<E, DecodeError> {
        E::from_payload(&self.event_type, self.payload.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Customer, CustomerCommand, Email};

    #[test]
    fn serde_round_trip() {
        let c = Customer::default();
        let cmd = CustomerCommand::Register { name: "A".into(), email: Email::new("a@b.co").unwrap(), phone: None };
        let e = &c.handle(&cmd).unwrap()[0];
        let meta = Metadata { correlation_id: Uuid::now_v7(), causation_id: Some(Uuid::now_v7()) };
        let env = EventEnvelope::new::<Customer>(Uuid::now_v7(), 1, e, meta, Utc::now()).unwrap();
        assert_eq!(env.event_id.get_version_num(), 7);
        assert_eq!(env.timestamp.timestamp_subsec_nanos() % 1_000_000, 0);
        let json = serde_json::to_string(&env).unwrap();
        let back: EventEnvelope = serde_json::from_str(&json).unwrap();
        assert_eq!(back, env);
        let stored = StoredEvent { position: 42, envelope: env };
        let back: StoredEvent = serde_json::from_str(&serde_json::to_string(&stored).unwrap()).unwrap();
        assert_eq!(back, stored);
        assert_eq!(back.envelope.decode::<crate::domain::CustomerEvent>().unwrap(), *e);
    }
}
