//! The relay: store feed -> Kafka, in order per aggregate, never losing an
//! event, with retry, circuit breaker, parking/DLQ, checkpoints and leases.
//!
//! Guarantees (see docs/OPERATIONS.md):
//! - Only the lease holder publishes ([`runner`]); checkpoints are fenced by
//!   the lease epoch.
//! - At-least-once ([`pipeline`]): the checkpoint moves only past events the
//!   broker confirmed (acks=all, idempotent producer) or that are durably
//!   parked; a crash re-sends at most the unconfirmed window, same `ce_id`.
//!   Exactly-once ([`exactly_once`]): Kafka transactions with the progress
//!   on a compacted topic; read_committed consumers see each event once.
//! - Per-aggregate order at first arrival through outages of any length:
//!   the [`window`] fence keeps one event per aggregate at the producer.
//! - A transient failure pauses (retry, breaker); an event that can never be
//!   published parks its aggregate ([`parking`]) or, with policy `skip`, goes
//!   to the DLQ. What is stored is published byte for byte ([`encode`]).
//!
//! Files: `feed` (reader task), `window` (fence + watermark), `producer`
//! (librdkafka, delivery reports on a channel), `broker_watch` (the broker
//! state /health reads, probed while unknown or unreachable), `encode`, `pipeline`,
//! `exactly_once` + `progress`, `parking`, `requests` (operator requests) +
//! `plan` (what a request takes),
//! `runner` (lease-gated terms), `warm` (the next term's producer, connected
//! while standing by), `status`, `deliver` + `cdc` (the Scylla CDC
//! feed), `breaker`, `retry`, `error`, `admin` (topics), `sink`, `topics`,
//! `off_runtime` (rdkafka clients, whose drop blocks, dropped off the runtime).

pub mod admin;
pub mod breaker;
pub mod broker_watch;
pub mod cdc;
pub mod checkpoint;
pub mod deliver;
pub mod discards;
pub mod encode;
pub mod error;
pub mod exactly_once;
pub mod feed;
pub mod off_runtime;
pub mod operator;
pub mod parking;
pub mod pipeline;
pub mod plan;
pub mod producer;
pub mod progress;
pub mod requests;
pub mod retry;
pub mod run;
pub mod runner;
pub mod sink;
pub mod status;
pub mod topics;
pub mod warm;
pub mod window;

pub use breaker::{BreakerState, CircuitBreaker};
pub use deliver::{Delivered, Deliverer};
pub use error::PublishError;
pub use pipeline::Relay;
pub use retry::{Backoff, IsTransient};
pub use status::{RelayStatus, Role, StatusTx};
