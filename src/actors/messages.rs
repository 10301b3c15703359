//! The actor protocol every actor shares: names, lifecycles, the messages
//! every child answers, and the actor layer's error.
//!
//! Guarantee: messages carry data only; what a message *does* is decided by
//! the application service or the relay the receiving actor wraps. This file
//! imports no actor type: a message that only one actor handles lives next
//! to that actor (`order_actor`, `dlq_actor`, `coordinator`, `health`,
//! `supervision`).

use actix::prelude::*;
use std::fmt;
use std::time::Duration;

use crate::store::StoreError;

/// The actors of the supervision tree, as named in metrics and /health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum ActorName {
    #[serde(rename = "coordinator")]
    Coordinator,
    #[serde(rename = "health_check")]
    HealthCheck,
    #[serde(rename = "dlq_actor")]
    Dlq,
    #[serde(rename = "order_actor")]
    Order,
    #[serde(rename = "cdc_processor")]
    Cdc,
    #[serde(rename = "projection_actor")]
    Projection,
}

impl ActorName {
    pub const ALL: [ActorName; 6] = [
        ActorName::Coordinator,
        ActorName::HealthCheck,
        ActorName::Dlq,
        ActorName::Order,
        ActorName::Cdc,
        ActorName::Projection,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            ActorName::Coordinator => "coordinator",
            ActorName::HealthCheck => "health_check",
            ActorName::Dlq => "dlq_actor",
            ActorName::Order => "order_actor",
            ActorName::Cdc => "cdc_processor",
            ActorName::Projection => "projection_actor",
        }
    }

    /// Parses the names used by the admin API (`order_actor`, `order`, ...).
    pub fn parse(s: &str) -> Option<ActorName> {
        Some(match s {
            "coordinator" => ActorName::Coordinator,
            "health_check" | "health" => ActorName::HealthCheck,
            "dlq_actor" | "dlq" => ActorName::Dlq,
            "order_actor" | "order" => ActorName::Order,
            "cdc_processor" | "cdc" | "relay" => ActorName::Cdc,
            "projection_actor" | "projection" | "projections" | "projector" => ActorName::Projection,
            _ => return None,
        })
    }
}

impl fmt::Display for ActorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lifecycle of a child actor as seen by its supervisor and /health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Lifecycle {
    Starting,
    Running,
    /// Waiting out the backoff before restart number `restart`.
    Restarting {
        restart: u32,
    },
    /// The restart budget is exhausted; the actor does no more work.
    GaveUp,
    /// Stopped by the coordinator during shutdown (or not startable here).
    Stopped,
}

/// The errors actors answer with (the actor layer's one error enum). The
/// HTTP layer maps them: `is_unavailable` -> 503, otherwise 409.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActorError {
    /// The actor cannot take this request in its current lifecycle.
    #[error("{actor} is not running ({lifecycle:?})")]
    NotRunning { actor: ActorName, lifecycle: Lifecycle },
    /// The actor does not exist in this deployment (or not yet).
    #[error("{actor} is not started: {reason}")]
    NotStarted { actor: ActorName, reason: String },
    /// The request makes no sense for this actor.
    #[error("{0}")]
    Refused(String),
    /// The actor's mailbox is closed or full.
    #[error("{actor} unreachable: {reason}")]
    Unreachable { actor: ActorName, reason: String },
    #[error("shutting down")]
    ShuttingDown,
    /// A Kafka producer could not be created.
    #[error("cannot create a Kafka producer: {0}")]
    Publisher(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ActorError {
    /// Retrying later may succeed (503), rather than a refusal (409).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            ActorError::Unreachable { .. } | ActorError::ShuttingDown | ActorError::Publisher(_) | ActorError::Store(_)
        )
    }

    /// `Unreachable` from a failed `send`.
    pub fn unreachable(actor: ActorName, e: MailboxError) -> ActorError {
        ActorError::Unreachable { actor, reason: e.to_string() }
    }
}

/// A supervised child used up its restart budget (child -> parent).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct ChildGaveUp {
    pub actor: ActorName,
    pub restarts: u32,
    pub last_error: String,
}

/// A lifecycle change a child reports about itself (child -> health check).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct ComponentEvent {
    pub actor: ActorName,
    pub lifecycle: Lifecycle,
    pub detail: String,
}

/// How an injected failure hits an actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// The actor stops itself (`ctx.stop()`), as after a fatal error.
    Stop,
    /// The relay (or projector) task is aborted mid-flight (like a killed consumer).
    Kill,
    /// The relay (or projector) task panics.
    Panic,
}

impl FailureMode {
    pub fn parse(s: &str) -> Option<FailureMode> {
        Some(match s {
            "stop" => FailureMode::Stop,
            "kill" => FailureMode::Kill,
            "panic" => FailureMode::Panic,
            _ => return None,
        })
    }
}

/// Test-only failure injection (enabled by `OUTBOXD_ENABLE_FAULT_INJECTION=1`).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Result<(), ActorError>")]
pub struct InjectFailure(pub FailureMode);

/// Liveness probe; answers the actor's lifecycle.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Lifecycle")]
pub struct Ping;

/// Graceful stop during shutdown (the actor stays addressable but idle).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct StopActor {
    /// How long the actor may take to finish in-flight work.
    pub deadline: Duration,
}
