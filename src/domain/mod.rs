//! The pure domain: aggregates decide (`handle`) and evolve (`apply`).
//!
//! Guarantee: nothing in this module performs I/O, reads a clock, spawns a task
//! or knows about actors. Every command carries what it needs; state is only
//! ever rebuilt by applying events, so the same events always give the same
//! aggregate.

pub mod customer;
pub mod error;
pub mod iso4217;
pub mod order;
pub mod upcast;
pub mod values;

pub use customer::{Customer, CustomerCommand, CustomerEvent};
pub use error::DomainError;
pub use order::{Order, OrderCommand, OrderEvent, OrderStatus};
pub use values::{Currency, Email, Money, OrderItem, PhoneNumber, Sku};

use serde::{de::DeserializeOwned, Serialize};

/// A domain event that can be stored in an envelope.
pub trait DomainEvent: Sized + Clone + std::fmt::Debug + Send + Sync + 'static {
    /// Every `event_type` this enum writes (one per variant).
    const TYPES: &'static [&'static str];
    /// The stable name stored as `event_type` (e.g. `OrderCreated`).
    fn event_type(&self) -> &'static str;
    /// The schema version this code writes for `event_type`.
    fn schema_version(event_type: &str) -> i32;
    /// Serialises the event body (without the envelope).
    fn to_payload(&self) -> Result<serde_json::Value, serde_json::Error>;
    /// Parses an event body written at the current schema version
    /// (older versions are upcast first, see [`upcast`]).
    fn from_payload(event_type: &str, payload: serde_json::Value) -> Result<Self, DecodeError>;
}

/// Every event type of the domain, from the event enums (`DomainEvent::TYPES`
/// of `OrderEvent` then `CustomerEvent`): the one list that topic routing and
/// the labelled metrics use.
pub const EVENT_TYPES: [&str; OrderEvent::TYPES.len() + CustomerEvent::TYPES.len()] =
    concat_types(OrderEvent::TYPES, CustomerEvent::TYPES);

const fn concat_types<const N: usize>(a: &[&'static str], b: &[&'static str]) -> [&'static str; N] {
    let mut out = [""; N];
    let mut i = 0;
    while i < a.len() {
        out[i] = a[i];
        i += 1;
    }
    let mut j = 0;
    while j < b.len() {
        out[i + j] = b[j];
        j += 1;
    }
    out
}

/// An event body that could not be decoded into a known event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    #[error("event `{event_type}` has an invalid body: {message}")]
    Body { event_type: String, message: String },
    #[error("event `{event_type}` has schema version {version}, newer than this build understands ({supported})")]
    FutureVersion { event_type: String, version: i32, supported: i32 },
}

/// An event-sourced aggregate: `handle` decides, `apply` evolves.
pub trait Aggregate: Default + Clone + std::fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static {
    type Command: std::fmt::Debug + Send;
    type Event: DomainEvent;
    /// Stored as `aggregate_type` and used for topic routing (`order` -> `order-events`).
    const TYPE: &'static str;
    /// Version of the serialised state, used to ignore snapshots of an older shape.
    const STATE_SCHEMA: i32;

    /// Decides which events a command produces, or why it is rejected.
    fn handle(&self, cmd: &Self::Command) -> Result<Vec<Self::Event>, DomainError>;
    /// Evolves the state by one event. Never fails: events are facts.
    fn apply(&mut self, event: &Self::Event);
    /// Whether a creating event has been applied.
    fn exists(&self) -> bool;
    /// Whether `cmd` creates the aggregate, i.e. succeeds only on the empty
    /// state. The application decides such a command on the empty state
    /// without reading the stream first; the append's compare-and-set at
    /// version 0 still refuses it when the id is taken.
    fn creates(cmd: &Self::Command) -> bool;
}

fn body_err(event_type: &str, e: serde_json::Error) -> DecodeError {
    DecodeError::Body { event_type: event_type.to_string(), message: e.to_string() }
}

pub(crate) fn decode<T: DeserializeOwned>(event_type: &str, v: serde_json::Value) -> Result<T, DecodeError> {
    serde_json::from_value(v).map_err(|e| body_err(event_type, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_list_both_aggregates_once() {
        assert_eq!(&EVENT_TYPES[..OrderEvent::TYPES.len()], OrderEvent::TYPES);
        assert_eq!(&EVENT_TYPES[OrderEvent::TYPES.len()..], CustomerEvent::TYPES);
        let unique: std::collections::BTreeSet<_> = EVENT_TYPES.iter().collect();
        assert_eq!(unique.len(), EVENT_TYPES.len());
        assert!(EVENT_TYPES.contains(&"OrderCreated") && EVENT_TYPES.contains(&"CustomerEmailChanged"));
    }
}
