//! OrderActor: runs Order and Customer commands through `app::CommandService`.
//!
//! Thin shell: it owns a `CommandService` and hands each command to it on
//! the multi-threaded runtime; the domain decides, the store appends.
//! Policy: restart (actix `Supervised`). After a failure the service is
//! rebuilt in `started()` once the restart backoff has passed; while it is
//! restarting, commands are refused as unavailable (HTTP 503, retry).
//! Commands already accepted finish even across a restart (they run as
//! their own tasks), so the caller's answer matches what was appended.

use actix::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

use uuid::Uuid;

use crate::app::{AppError, CommandService, Loaded, Outcome, ServiceOptions};
use crate::domain::Aggregate;
use crate::envelope::Metadata;
use crate::store::StoreError;

use super::messages::{ActorError, ActorName, ChildGaveUp, ComponentEvent, InjectFailure, Lifecycle, Ping, StopActor};
use super::supervision::{record_restart, Restart, RestartBudget};
use super::ActorDeps;

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

const NAME: ActorName = ActorName::Order;

/// Commands accepted but not finished yet.
#[derive(Default)]
pub struct InFlight {
    n: AtomicUsize,
    idle: Notify,
}

pub struct InFlightGuard(Arc<InFlight>);

impl InFlight {
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.n.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.clone())
    }

    pub fn count(&self) -> usize {
        self.n.load(Ordering::SeqCst)
    }

    /// Waits until no command is in flight or `deadline` passed; returns
    /// the number still running.
    pub async fn wait_idle(&self, deadline: Duration) -> usize {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            let notified = self.idle.notified();
            let n = self.count();
            if n == 0 {
                return 0;
            }
            if tokio::time::timeout_at(end, notified).await.is_err() {
                return self.count();
            }
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

pub struct OrderActor {
    deps: ActorDeps,
    parent: Recipient<ChildGaveUp>,
    health: Recipient<ComponentEvent>,
    svc: Option<CommandService>,
    lifecycle: Lifecycle,
    budget: RestartBudget,
    inflight: Arc<InFlight>,
    draining: bool,
    last_error: Option<String>,
}

impl OrderActor {
    pub fn new(deps: ActorDeps, parent: Recipient<ChildGaveUp>, health: Recipient<ComponentEvent>) -> OrderActor {
        let budget = RestartBudget::new(&deps.cfg.supervision);
        OrderActor {
            deps,
            parent,
            health,
            svc: None,
            lifecycle: Lifecycle::Starting,
            budget,
            inflight: Arc::new(InFlight::default()),
            draining: false,
            last_error: None,
        }
    }

    /// (Re)builds the command service: the "connection" of this actor.
    fn connect(&mut self) {
        if matches!(self.lifecycle, Lifecycle::GaveUp | Lifecycle::Stopped) {
            return;
        }
        let opts = ServiceOptions::from(&self.deps.cfg.service);
        self.svc =
            Some(CommandService::new(self.deps.store.clone(), opts).with_observer(Arc::new(self.deps.metrics.clone())));
        let restarted = matches!(self.lifecycle, Lifecycle::Restarting { .. });
        self.lifecycle = Lifecycle::Running;
        let detail = if restarted {
            format!("restarted ({} restarts in total)", self.budget.total())
        } else {
            "accepting commands".to_string()
        };
        tracing::info!(actor = %NAME, "{detail}");
        self.health.do_send(ComponentEvent { actor: NAME, lifecycle: self.lifecycle, detail });
    }

    /// Why no command runs now. A command that passed the HTTP intake just
    /// before it closed meets a draining actor: that is the shutdown, the
    /// same answer the intake gives (503 `shutting_down`).
    fn unavailable(&self) -> AppError {
        if self.draining || matches!(self.lifecycle, Lifecycle::Stopped | Lifecycle::Running) {
            return AppError::ShuttingDown;
        }
        let why = if self.lifecycle == Lifecycle::GaveUp {
            "the order actor gave up after too many failures"
        } else {
            "the order actor is restarting; retry shortly"
        };
        AppError::Store(StoreError::Unavailable(why.into()))
    }

    fn service(&self) -> Option<CommandService> {
        if self.draining || self.lifecycle != Lifecycle::Running {
            return None;
        }
        self.svc.clone()
    }
}

impl Actor for OrderActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        match self.lifecycle {
            Lifecycle::GaveUp | Lifecycle::Stopped => {}
            Lifecycle::Restarting { restart } => {
                let delay = self.budget.delay(restart);
                ctx.run_later(delay, |act, _| act.connect());
            }
            Lifecycle::Starting | Lifecycle::Running => self.connect(),
        }
    }
}

impl Supervised for OrderActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.svc = None;
        if matches!(self.lifecycle, Lifecycle::GaveUp | Lifecycle::Stopped) {
            return;
        }
        let error = self.last_error.take().unwrap_or_else(|| "actor stopped unexpectedly".into());
        match record_restart(&mut self.budget, &self.deps.metrics, &self.deps.cfg.supervision, NAME, &error) {
            Restart::Again { n, event } => {
                self.lifecycle = Lifecycle::Restarting { restart: n };
                self.health.do_send(ComponentEvent { actor: NAME, lifecycle: self.lifecycle, detail: event });
            }
            Restart::GiveUp { n, event } => {
                self.lifecycle = Lifecycle::GaveUp;
                self.health.do_send(ComponentEvent { actor: NAME, lifecycle: self.lifecycle, detail: event });
                self.parent.do_send(ChildGaveUp { actor: NAME, restarts: n, last_error: error });
            }
        }
    }
}

impl<A> Handler<ExecuteCommand<A>> for OrderActor
where
    A: Aggregate,
    A::Command: Sync + 'static,
{
    type Result = ResponseFuture<Result<Outcome<A>, AppError>>;

    fn handle(&mut self, msg: ExecuteCommand<A>, _ctx: &mut Context<Self>) -> Self::Result {
        self.deps.received(NAME);
        let Some(svc) = self.service() else {
            let e = self.unavailable();
            return Box::pin(async move { Err(e) });
        };
        let guard = self.inflight.enter();
        let task = self
            .deps
            .runtime
            .spawn(async move { svc.execute::<A>(msg.id, &msg.command, msg.meta, msg.expected_version).await });
        Box::pin(async move {
            let _guard = guard;
            task.await.unwrap_or_else(|e| Err(task_failed(e)))
        })
    }
}

/// A command task that did not finish (cancelled at shutdown, or panicked)
/// may have appended first (its snapshot, its observer run after): the
/// outcome is unknown, not a retryable unavailability. Told to retry, a
/// client re-ran a command that had been stored and applied it twice.
fn task_failed(e: tokio::task::JoinError) -> AppError {
    AppError::Store(StoreError::OutcomeUnknown(format!(
        "the command task did not finish ({e}); it may have been stored: reload the resource and compare its version"
    )))
}

impl<A: Aggregate> Handler<LoadAggregate<A>> for OrderActor {
    type Result = ResponseFuture<Result<Loaded<A>, AppError>>;

    fn handle(&mut self, msg: LoadAggregate<A>, _ctx: &mut Context<Self>) -> Self::Result {
        self.deps.received(NAME);
        let Some(svc) = self.service() else {
            let e = self.unavailable();
            return Box::pin(async move { Err(e) });
        };
        let task = self.deps.runtime.spawn(async move { svc.load::<A>(msg.id).await });
        Box::pin(async move {
            task.await
                .unwrap_or_else(|e| Err(AppError::Store(StoreError::Unavailable(format!("load task failed: {e}")))))
        })
    }
}

impl Handler<DrainCommands> for OrderActor {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, msg: DrainCommands, _ctx: &mut Context<Self>) -> Self::Result {
        self.deps.received(NAME);
        self.draining = true;
        let inflight = self.inflight.clone();
        Box::pin(async move { inflight.wait_idle(msg.deadline).await })
    }
}

impl Handler<StopActor> for OrderActor {
    type Result = ();

    fn handle(&mut self, _msg: StopActor, _ctx: &mut Context<Self>) {
        self.deps.received(NAME);
        self.draining = true;
        self.svc = None;
        if self.lifecycle != Lifecycle::GaveUp {
            self.lifecycle = Lifecycle::Stopped;
        }
        tracing::info!(actor = %NAME, "stopped");
        self.health.do_send(ComponentEvent {
            actor: NAME,
            lifecycle: self.lifecycle,
            detail: "stopped for shutdown".into(),
        });
    }
}

impl Handler<InjectFailure> for OrderActor {
    type Result = Result<(), ActorError>;

    fn handle(&mut self, msg: InjectFailure, ctx: &mut Context<Self>) -> Self::Result {
        self.deps.received(NAME);
        if self.lifecycle != Lifecycle::Running {
            return Err(ActorError::NotRunning { actor: NAME, lifecycle: self.lifecycle });
        }
        tracing::error!(actor = %NAME, mode = ?msg.0, "injected failure: stopping the actor");
        self.last_error = Some(format!("injected failure ({:?})", msg.0));
        ctx.stop();
        Ok(())
    }
}

impl Handler<Ping> for OrderActor {
    type Result = MessageResult<Ping>;

    fn handle(&mut self, _msg: Ping, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.lifecycle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review finding: a command task that panicked or was cancelled after
    /// its append was answered 503 `unavailable` with `Retry-After`; the
    /// client retried a stored command and applied it twice.
    #[tokio::test]
    async fn a_command_task_that_did_not_finish_is_an_unknown_outcome() {
        let e = tokio::spawn(async { panic!("after the append") }).await.unwrap_err();
        let err = task_failed(e);
        // (The API answers it 503 `outcome_unknown`, without Retry-After.)
        assert!(matches!(err, AppError::Store(StoreError::OutcomeUnknown(_))), "{err:?}");
    }
}
