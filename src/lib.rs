//! outboxd: the transactional outbox pattern for event-sourced aggregates.
//!
//! Commands change Order and Customer aggregates; their events are appended
//! atomically to an event store whose event table *is* the outbox; a relay
//! reads the store's feed and publishes every event to Kafka, in order per
//! aggregate (key = aggregate id), never advancing its checkpoint past an
//! event the broker has not confirmed.
//!
//! Layout (dependencies point downwards only; `tests/layering.rs` checks it,
//! docs/ARCHITECTURE.md has the table), lowest first:
//! - [`domain`]: pure aggregates, commands, events, value objects, upcasters.
//! - [`envelope`]: the stored/published form of an event.
//! - [`config`]: configuration from TOML and `OUTBOX_*` variables (plain option types).
//! - [`store`]: the `EventStore` trait and its SQLite and CQL backends.
//! - [`app`]: the application service (load -> handle -> append, with retries).
//! - [`relay`]: feed -> Kafka pipeline with retry, circuit breaker, DLQ, checkpoints;
//!   `relay::cdc` is the Scylla CDC feed.
//! - [`projection`]: read models (order_read_model, orders_by_customer) fed by the store's feed.
//! - [`actors`]: thin Actix shells (coordinator, order, DLQ, health, and the
//!   supervised-task shell behind the relay and the projector).
//! - [`http`]: actix-web command API and admin server (/metrics, /health).
//! - [`daemon`]: `outboxd run` wiring; [`bench`]: `outboxd bench ...`.
//! - leaves used by any layer: [`metrics`] (the Prometheus catalogue),
//!   [`shutdown`] (one signal fanned out).
//! - `main.rs` + `cli/` (the binary): the CLI only.
#![forbid(unsafe_code)]

pub mod actors;
pub mod app;
pub mod args;
pub mod bench;
pub mod config;
pub mod daemon;
pub mod domain;
pub mod envelope;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod projection;
pub mod relay;
pub mod shutdown;
pub mod store;
