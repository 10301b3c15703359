//! The pure domain: aggregates decide (`handle`) and evolve (`apply`).
//!
//! Guarantee: nothing in this module performs I/O, reads a clock, spawns a task
//! or knows about actors. Every command carries what it needs; state is only
//! ever rebuilt by applying events, so the same events always give the same
//! aggregate.

pub mod customer;
pub mod error;
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
}

fn body_err(event_type: &str, e: serde_json::Error) -> DecodeError {
    DecodeError::Body { event_type: event_type.to_string(), message: e.to_string() }
}

pub(crate) fn decode<T: DeserializeOwned>(event_type: &str, v: serde_json::Value) -> Result<T, DecodeError> {
    serde_json::from_value(v).map_err(|e| body_err(event_type, e))
}
