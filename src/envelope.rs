//! `EventEnvelope`: the stored and published form of one domain event.
//!
//! Guarantee: an envelope carries everything a consumer needs to order,
//! deduplicate and trace an event (event id, aggregate id + sequence,
//! type + schema version, causation and correlation ids, UTC timestamp, the
//! W3C trace context when the command had one), and round-trips through
//! serde unchanged. Timestamps are truncated to whole
//! milliseconds so every backend (SQLite, CQL `timestamp`) stores them exactly.

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{upcast, Aggregate, DecodeError, DomainEvent};

/// `P`: the payload's form, parsed JSON (the default, what the domain works
/// with) or the stored text kept as it is (`Box<RawValue>`: a dead letter
/// read back for replay, `relay::plan::letter_event`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope<P = serde_json::Value> {
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
    pub payload: P,
    pub causation_id: Option<Uuid>,
    pub correlation_id: Uuid,
    /// RFC 3339 in UTC, always with milliseconds (`2026-11-25T13:20:29.900Z`).
    #[serde(with = "millis")]
    pub timestamp: DateTime<Utc>,
    /// W3C trace context of the command that produced the event, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

/// The envelope's time format: always three fractional digits, as stored
/// and as in the `ce_time` header (chrono's default drops `.000`).
mod millis {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        DateTime::<Utc>::deserialize(d)
    }
}

/// An envelope with its global position in the store's feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub position: i64,
    pub envelope: EventEnvelope,
}

/// Tracing metadata a command carries into the events it produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    /// W3C trace context received with the command (HTTP `traceparent`/`tracestate`).
    pub trace: Option<TraceContext>,
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata { correlation_id: Uuid::now_v7(), causation_id: None, trace: None }
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
        meta: &Metadata,
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
            trace: meta.trace.clone(),
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

/// W3C trace context received with a command (`traceparent`, `tracestate`),
/// stored with its events and emitted as Kafka headers of the same names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    /// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>` (validated by [`TraceContext::parse`]).
    pub traceparent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// Longest `tracestate` kept (W3C: 32 list members of at most 256 characters).
    pub const MAX_TRACESTATE: usize = 8192;

    /// Validates a `traceparent` (version 00 format; other versions must at
    /// least start with that shape) and an optional `tracestate`.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Result<TraceContext, TraceContextError> {
        let tp = traceparent.trim();
        let parts: Vec<&str> = tp.split('-').collect();
        let hex =
            |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let ok = parts.len() >= 4
            && hex(parts[0], 2)
            && parts[0] != "ff"
            && hex(parts[1], 32)
            && parts[1] != "0".repeat(32)
            && hex(parts[2], 16)
            && parts[2] != "0".repeat(16)
            && hex(parts[3], 2)
            && (parts[0] != "00" || parts.len() == 4);
        if !ok {
            return Err(TraceContextError {
                header: "traceparent",
                message:
                    "traceparent must look like 00-<32 lowercase hex>-<16 lowercase hex>-<2 hex> (W3C Trace Context)"
                        .into(),
            });
        }
        let tracestate = match tracestate.map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(s) if s.len() > Self::MAX_TRACESTATE || !s.bytes().all(|b| (0x20..0x7f).contains(&b)) => {
                return Err(TraceContextError {
                    header: "tracestate",
                    message: format!(
                        "tracestate must be printable ASCII of at most {} characters",
                        Self::MAX_TRACESTATE
                    ),
                })
            }
            Some(s) => Some(s.to_string()),
        };
        Ok(TraceContext { traceparent: tp.to_string(), tracestate })
    }
}

/// Why a trace context was refused, and which of its two headers (or
/// columns) is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TraceContextError {
    /// `traceparent` or `tracestate`.
    pub header: &'static str,
    pub message: String,
}

/// Tests: `n` events of aggregate `id` with sequences `from + 1 ..` (the
/// shape the store and the relay need; the payload is any JSON).
#[cfg(test)]
pub(crate) fn test_events(id: Uuid, from: i64, n: usize) -> Vec<EventEnvelope> {
    (0..n)
        .map(|i| EventEnvelope {
            event_id: Uuid::now_v7(),
            aggregate_type: "order".into(),
            aggregate_id: id,
            sequence: from + 1 + i as i64,
            event_type: "OrderCancelled".into(),
            schema_version: 1,
            payload: serde_json::json!({ "reason": format!("r{i}") }),
            causation_id: None,
            correlation_id: Uuid::now_v7(),
            timestamp: now_millis(),
            trace: None,
        })
        .collect()
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
        let meta = Metadata { correlation_id: Uuid::now_v7(), causation_id: Some(Uuid::now_v7()), trace: None };
        let env = EventEnvelope::new::<Customer>(Uuid::now_v7(), 1, e, &meta, Utc::now()).unwrap();
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

    #[test]
    fn trace_context_is_validated() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert_eq!(
            TraceContext::parse(tp, Some("congo=t61rcWkgMzE")).unwrap().tracestate.as_deref(),
            Some("congo=t61rcWkgMzE")
        );
        assert_eq!(TraceContext::parse(tp, Some("  ")).unwrap().tracestate, None);
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        ] {
            assert!(TraceContext::parse(bad, None).is_err(), "{bad:?}");
        }
        assert!(TraceContext::parse(tp, Some("a=\u{1}")).is_err());
    }
}
