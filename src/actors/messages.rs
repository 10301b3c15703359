//! Every message the actors exchange, by name.
//!
//! Guarantee: messages carry data only; what a message *does* is decided by
//! the application service or the relay the receiving actor wraps.

use actix::prelude::*;
use std::fmt;
use std::time::Duration;
use uuid::Uuid;

use crate::app::{AppError, Loaded, Outcome};
use crate::domain::Aggregate;
use crate::envelope::Metadata;
use crate::relay::dlq::ReplayReport;
use crate::relay::RelayStatus;
use crate::store::{DeadLetter, StoreError};

use super::health::HealthReport;
use super::{CdcStreamProcessor, DlqActor, HealthCheckActor, OrderActor, ProjectionActor};
use crate::projection::ProjectionStatus;

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
    /// Stopped by the coordinator during shutdown.
    Stopped,
}

// ---- Coordinator -------------------------------------------------------

/// The latest aggregated health (from the HealthCheckActor).
#[derive(Message)]
#[rtype(result = "HealthReport")]
pub struct GetSystemHealth;

#[derive(Message)]
#[rtype(result = "Option<Addr<OrderActor>>")]
pub struct GetOrderActor;

#[derive(Message)]
#[rtype(result = "Option<Addr<HealthCheckActor>>")]
pub struct GetHealthCheckActor;

#[derive(Message)]
#[rtype(result = "Option<Addr<DlqActor>>")]
pub struct GetDlqActor;

#[derive(Message)]
#[rtype(result = "Option<Addr<CdcStreamProcessor>>")]
pub struct GetCdcProcessor;

/// The ProjectionActor (None when the backend has no read models).
#[derive(Message)]
#[rtype(result = "Option<Addr<ProjectionActor>>")]
pub struct GetProjectionActor;

/// Stops intake, drains commands, stops the children in reverse start order
/// and reports `exit_code` on the coordinator's exit channel. Idempotent: a
/// second request while shutting down only waits. Answers the exit code used.
#[derive(Message, Debug, Clone)]
#[rtype(result = "u8")]
pub struct ShutdownSystem {
    pub reason: String,
    pub exit_code: u8,
}

/// A supervised child used up its restart budget.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct ChildGaveUp {
    pub actor: ActorName,
    pub restarts: u32,
    pub last_error: String,
}

/// Routes a test failure to a child (admin `/debug/fail/{actor}`).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), String>")]
pub struct InjectFailureInto {
    pub actor: ActorName,
    pub mode: FailureMode,
}

// ---- Children (common) -------------------------------------------------

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
#[rtype(result = "Result<(), String>")]
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

// ---- OrderActor ----------------------------------------------------------

/// Runs one command against one Order or Customer through `CommandService`.
#[derive(Debug)]
pub struct ExecuteCommand<A: Aggregate> {
    pub id: Uuid,
    pub command: A::Command,
    pub meta: Metadata,
    pub expected_version: Option<i64>,
}

impl<A: Aggregate> Message for ExecuteCommand<A> {
    type Result = Result<Outcome<A>, AppError>;
}

/// Loads one aggregate's current state (version 0 = unknown id).
#[derive(Debug)]
pub struct LoadAggregate<A: Aggregate> {
    pub id: Uuid,
    _a: std::marker::PhantomData<fn() -> A>,
}

impl<A: Aggregate> LoadAggregate<A> {
    pub fn new(id: Uuid) -> Self {
        LoadAggregate { id, _a: std::marker::PhantomData }
    }
}

impl<A: Aggregate> Message for LoadAggregate<A> {
    type Result = Result<Loaded<A>, AppError>;
}

/// Waits until every command already accepted has finished (shutdown).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "usize")]
pub struct DrainCommands {
    pub deadline: Duration,
}

// ---- CdcStreamProcessor --------------------------------------------------

/// What the CDC processor reports: its lifecycle, restarts and the relay's
/// progress, lag and breaker state.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProcessorStatus {
    pub lifecycle: Lifecycle,
    pub restarts_in_window: u32,
    pub relay_running: bool,
    pub relay: RelayStatus,
}

#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "ProcessorStatus")]
pub struct GetRelayStatus;

// ---- ProjectionActor ----------------------------------------------------

/// What the ProjectionActor reports: its lifecycle, restarts and the
/// projector's checkpoint, lag and store errors.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProjectionActorStatus {
    pub lifecycle: Lifecycle,
    pub restarts_in_window: u32,
    /// A projector task is running (and says so).
    pub projector_running: bool,
    pub projection: ProjectionStatus,
}

#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "ProjectionActorStatus")]
pub struct GetProjectionStatus;

// ---- DlqActor ------------------------------------------------------------

/// Durably records a dead letter (the relay's `DeadLetterSink`).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), StoreError>")]
pub struct WriteDeadLetter(pub DeadLetter);

#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Result<Vec<DeadLetter>, StoreError>")]
pub struct ListDeadLetters {
    pub limit: usize,
}

/// Re-publishes dead letters (all, or the given ids) and removes the ones
/// the broker confirmed.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<ReplayReport, String>")]
pub struct ReplayDeadLetters {
    pub ids: Option<Vec<Uuid>>,
}

#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Result<u64, StoreError>")]
pub struct CountDeadLetters;

// ---- HealthCheckActor ----------------------------------------------------

/// Tells the health actor whom to check (sent by the coordinator once the
/// children are started).
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct RegisterComponents {
    pub dlq: Addr<DlqActor>,
    pub order: Addr<OrderActor>,
    pub cdc: Addr<CdcStreamProcessor>,
    /// None when the backend has no read models (CQL).
    pub projection: Option<Addr<ProjectionActor>>,
}

/// A lifecycle change a child reports about itself.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct ComponentEvent {
    pub actor: ActorName,
    pub lifecycle: Lifecycle,
    pub detail: String,
}

/// Runs a health check now (besides the periodic ones).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct CheckNow;

/// Marks the system as shutting down in the published report.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct MarkShuttingDown;
