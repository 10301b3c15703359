//! The relay: store feed -> Kafka, with retry, circuit breaker, DLQ and checkpoints.
//!
//! Guarantees (see docs/OPERATIONS.md):
//! - At-least-once: the checkpoint only moves past events whose delivery the
//!   broker confirmed (acks=all, idempotent producer); a crash re-sends at
//!   most the unconfirmed tail, with the same `ce_id`.
//! - Order per aggregate: key = aggregate id, events are submitted in feed
//!   order, and after a failure the relay retries from the first failed event.
//! - A transient failure (broker down, timeout) pauses the relay: retries with
//!   backoff, the breaker opens, the checkpoint stays, nothing is dead-lettered.
//!   Only events that can never be published as they are go to the DLQ.

pub mod breaker;
pub mod cdc;
pub mod deliver;
pub mod dlq;
pub mod pipeline;
pub mod publisher;
pub mod retry;
pub mod topics;

pub use breaker::{BreakerState, CircuitBreaker};
pub use deliver::{Deliverer, RelayStatus, Retried};
pub use pipeline::Relay;
pub use publisher::{KafkaPublisher, PublishError};
pub use retry::{Backoff, IsTransient};
