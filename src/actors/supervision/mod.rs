//! Supervision: the restart policy ([`budget`]) and ONE generic
//! supervised-task actor ([`SupervisedTask`], in [`shell`]) that runs a
//! long-lived task body under actix supervision.
//!
//! A [`TaskBody`] says what differs between supervised tasks: its name, the
//! task it runs, the status it reports, and what to do before it is told to
//! stop (its drain). The shell owns everything else, once: spawning the task
//! on `ActorDeps.runtime`, watching it (an end nobody asked for is a failure:
//! the actor stops and the actix `Supervisor` restarts it), killing it on
//! restart, the restart budget with exponential backoff and
//! `actor_restarts_total`, `ChildGaveUp` to the parent, `InjectFailure`
//! (stop | kill | panic), `Ping`, `GetTaskStatus` and `StopActor` (drain, then
//! the shutdown trigger, then abort at the deadline).
//!
//! Guarantee: at most one task of a body runs at a time: a restarted actor
//! starts a new task only after the restart backoff and once the previous
//! task is gone (waited for at most 30 s). The body is started and stopped by
//! the shell only, so a later change can wrap the start in a store lease
//! (several instances, one active consumer per name) in one place.

pub mod budget;
pub mod shell;

use actix::Message;
use futures::future::BoxFuture;
use std::marker::PhantomData;
use std::time::Duration;

use crate::shutdown::Shutdown;

use super::messages::{ActorName, Lifecycle};
use super::ActorDeps;

pub use budget::{record_restart, Restart, RestartBudget};
pub use shell::SupervisedTask;

/// Why a task body could not run.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TaskError {
    /// The body failed (creating it, or while running): restart.
    #[error("{0}")]
    Failed(String),
    /// The body cannot run on this deployment (e.g. no CDC log): the actor
    /// stays Stopped and reports why; no restart.
    #[error("{0}")]
    Disabled(String),
}

/// The future of one running task: ends `Ok` after its shutdown signal,
/// `Err` on failure (an `Ok` end without a signal counts as failure too).
pub type TaskFuture = BoxFuture<'static, Result<(), TaskError>>;

/// What a supervised task publishes about itself on its status channel.
pub trait Progress: Clone + Send + serde::Serialize + 'static {
    /// The task says it is running (reading its feed).
    fn running(&self) -> bool;
    /// The task waits for another instance's lease (counts as running).
    fn standby(&self) -> bool;
    /// Cleared by the shell when no task runs any more (restart, stop).
    fn set_running(&mut self, running: bool);
    /// Before a new task starts: forget what the previous one said about
    /// its role and its connections (a new relay has not read the lease nor
    /// reached the broker yet), keep the history (checkpoint, counters).
    fn new_task(&mut self);
}

impl Progress for crate::relay::RelayStatus {
    fn running(&self) -> bool {
        // A standby runs as intended while it waits for the lease.
        self.running || self.standby()
    }
    fn standby(&self) -> bool {
        matches!(self.role, crate::relay::Role::Standby { .. })
    }
    fn set_running(&mut self, running: bool) {
        self.running = running;
    }
    fn new_task(&mut self) {
        self.running = false;
        self.role = crate::relay::Role::Unknown;
        self.broker = crate::relay::producer::BrokerState::Unknown;
        self.feed = crate::relay::status::FeedState::Unknown;
    }
}

impl Progress for crate::projection::ProjectionStatus {
    fn running(&self) -> bool {
        // A standby runs as intended while it waits for the lease.
        self.running || self.standby.is_some()
    }
    fn standby(&self) -> bool {
        self.standby.is_some()
    }
    fn set_running(&mut self, running: bool) {
        self.running = running;
    }
    fn new_task(&mut self) {
        self.running = false;
        self.standby = None;
    }
}

/// How a supervised task is named in metrics, logs and /health.
#[derive(Debug, Clone, Copy)]
pub struct TaskInfo {
    /// The actor's name.
    pub actor: ActorName,
    /// The task's name in logs and health details (`relay`, `projector`).
    pub task: &'static str,
    /// What happens to unfinished work when the task is aborted (logged).
    pub on_abort: &'static str,
}

/// What differs between supervised tasks (see the module doc). The shell
/// passes the actor's [`ActorDeps`] to every hook.
pub trait TaskBody: Unpin + Sized + 'static {
    const INFO: TaskInfo;
    /// The status the task publishes on the channel the shell was given
    /// (read by [`GetTaskStatus`]; it outlives restarts).
    type Status: Progress;

    /// Creates the task; it runs until `shutdown` fires (or it fails).
    fn spawn(&mut self, deps: &ActorDeps, shutdown: Shutdown) -> Result<TaskFuture, TaskError>;

    /// Called by `StopActor` before the task's shutdown signal fires, within
    /// `deadline`: work the task should finish first (the relay publishes
    /// what was committed before shutdown). Default: nothing.
    fn drain(&self, deps: &ActorDeps, deadline: Duration) -> BoxFuture<'static, ()> {
        let _ = (deps, deadline);
        Box::pin(async {})
    }
}

/// A supervised task's lifecycle, restarts and the task's own status.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskStatus<S> {
    pub lifecycle: Lifecycle,
    pub restarts_in_window: u32,
    /// A task is alive and says it is running.
    pub running: bool,
    /// A task is alive but does not say it runs: milliseconds since it was
    /// spawned or, for a standby that took the lease over, since a status
    /// query first found it no longer a standby (None when it runs, or when
    /// no task is alive).
    pub starting_ms: Option<u64>,
    pub progress: S,
}

/// Asks a [`SupervisedTask`] for its [`TaskStatus`].
pub struct GetTaskStatus<S>(PhantomData<fn() -> S>);

impl<S> GetTaskStatus<S> {
    pub fn new() -> Self {
        GetTaskStatus(PhantomData)
    }
}

impl<S> Default for GetTaskStatus<S> {
    fn default() -> Self {
        GetTaskStatus::new()
    }
}

impl<S: Send + 'static> Message for GetTaskStatus<S> {
    type Result = TaskStatus<S>;
}
