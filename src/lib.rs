//! outboxd: the transactional outbox pattern for event-sourced aggregates.
//!
//! Commands change Order and Customer aggregates; their events are appended
//! atomically to an event store whose event table *is* the outbox; a relay
//! reads the store's feed and publishes every event to Kafka, in order per
//! aggregate (key = aggregate id), never advancing its checkpoint past an
//! event the broker has not confirmed.
//!
//! Layout (dependencies point downwards only):
//! - [`domain`]: pure aggregates, commands, events, value objects, upcasters.
//! - [`envelope`]: the stored/published form of an event.
//! - [`store`]: the `EventStore` trait and its SQLite and CQL backends.
//! - [`app`]: the application service (load -> handle -> append, with retries).
//! - [`relay`]: feed -> Kafka pipeline with retry, circuit breaker, DLQ, checkpoints.
//! - [`actors`]: thin Actix shells (coordinator, order, CDC, DLQ, health).
//! - [`http`]: actix-web command API and admin server (/metrics, /health).
//! - [`config`]: configuration from TOML and `OUTBOX_*` variables.
//! - `main.rs`: the CLI only.
#![forbid(unsafe_code)]

pub mod app;
pub mod config;
pub mod domain;
pub mod envelope;
pub mod store;
pub mod metrics;
pub mod relay;
pub mod shutdown;
pub mod bench;
pub mod daemon;
pub mod actors;
pub mod http;
pub mod projection;
