//! `SupervisedTask<B>`: the one actor shell that runs a [`TaskBody`] under
//! actix supervision (restart policy).
//!
//! The body's task runs on the multi-threaded runtime (`ActorDeps.runtime`),
//! never on the actix system thread. The shell watches it: when the task
//! ends without being asked to (it returned, failed or panicked) the actor
//! stops itself; the actix `Supervisor` restarts it, `restarting` kills what
//! is left of the task and counts the restart against the budget, and
//! `started` starts a fresh task after the restart backoff, once the previous
//! task is gone. When the budget is exhausted the actor gives up and tells
//! its parent (`ChildGaveUp`). The body's status channel outlives restarts.
//!
//! Guarantees: at most one task per actor at a time; every end of a task is
//! either asked for (`StopActor`, a restart) or treated as a failure; a
//! `StopActor` runs the body's drain before the shutdown signal and aborts
//! the task at the deadline, one budget for drain and wait together.

use actix::prelude::*;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tokio::task::AbortHandle;

use crate::actors::messages::{
    ActorError, ActorName, ChildGaveUp, ComponentEvent, FailureMode, InjectFailure, Lifecycle, Ping, StopActor,
};
use crate::actors::ActorDeps;
use crate::shutdown::Trigger;

use super::{record_restart, GetTaskStatus, Progress, Restart, RestartBudget, TaskBody, TaskError, TaskStatus};

/// Longest wait for the previous task to end before a new one starts.
const PREVIOUS_TASK_WAIT: Duration = Duration::from_secs(30);

/// One running task.
struct TaskRun {
    generation: u64,
    trigger: Trigger,
    abort: AbortHandle,
    /// Closed (sender dropped) when the task is gone, however it ended.
    gone: watch::Receiver<()>,
    /// Makes the task panic (failure injection).
    panic: Option<oneshot::Sender<()>>,
    /// `tokio` time, so tests on a paused clock see the counts move.
    spawned: tokio::time::Instant,
    /// A standby that took the lease over: since the first status query
    /// that found it no longer a standby and not running yet (it starts its
    /// term). Its start grace counts from there, not from its spawn.
    took_over: Option<tokio::time::Instant>,
    /// The last status query found it a standby.
    was_standby: bool,
}

/// A supervised actor: one [`TaskBody`]'s task under actix supervision.
pub struct SupervisedTask<B: TaskBody> {
    deps: ActorDeps,
    body: B,
    /// Where the task publishes its status (outlives restarts).
    status: watch::Sender<B::Status>,
    parent: Recipient<ChildGaveUp>,
    health: Recipient<ComponentEvent>,
    run: Option<TaskRun>,
    /// The previous task, which must be gone before a new one starts.
    previous: Option<watch::Receiver<()>>,
    generation: u64,
    lifecycle: Lifecycle,
    budget: RestartBudget,
    stopping: bool,
    /// A failure was injected and the actor is about to restart.
    failing: bool,
    last_error: Option<String>,
}

/// Signalled (by dropping the sender) when a supervised task has ended.
async fn gone(mut rx: watch::Receiver<()>) {
    while rx.changed().await.is_ok() {}
}

/// How long `started()` waits before starting the task: `None` when it must
/// not start (gave up or stopped).
fn start_delay(lifecycle: Lifecycle, budget: &RestartBudget) -> Option<Duration> {
    match lifecycle {
        Lifecycle::GaveUp | Lifecycle::Stopped => None,
        Lifecycle::Restarting { restart } => Some(budget.delay(restart)),
        Lifecycle::Starting | Lifecycle::Running => Some(Duration::ZERO),
    }
}

/// Sleeps `delay`, then waits (bounded) for the previous task to end.
async fn after_previous(delay: Duration, previous: Option<watch::Receiver<()>>, actor: ActorName, task: &'static str) {
    tokio::time::sleep(delay).await;
    if let Some(p) = previous {
        if tokio::time::timeout(PREVIOUS_TASK_WAIT, gone(p)).await.is_err() {
            tracing::warn!(actor = %actor, "previous {task} task still running after 30 s; starting anyway");
        }
    }
}

impl<B: TaskBody> SupervisedTask<B> {
    /// `status` is the channel the body's task publishes on; `parent` hears
    /// when the budget is exhausted; `health` gets every lifecycle change.
    pub fn new(
        deps: ActorDeps,
        body: B,
        status: watch::Sender<B::Status>,
        parent: Recipient<ChildGaveUp>,
        health: Recipient<ComponentEvent>,
    ) -> SupervisedTask<B> {
        let budget = RestartBudget::new(&deps.cfg.supervision);
        SupervisedTask {
            deps,
            body,
            status,
            parent,
            health,
            run: None,
            previous: None,
            generation: 0,
            lifecycle: Lifecycle::Starting,
            budget,
            stopping: false,
            failing: false,
            last_error: None,
        }
    }

    /// No task runs any more: clear the published running flag.
    fn mark_stopped(&self) {
        self.status.send_modify(|s| s.set_running(false));
    }

    fn event(&self, detail: String) {
        self.health.do_send(ComponentEvent { actor: B::INFO.actor, lifecycle: self.lifecycle, detail });
    }

    fn start_task(&mut self, ctx: &mut Context<Self>) {
        if self.stopping || matches!(self.lifecycle, Lifecycle::GaveUp | Lifecycle::Stopped) || self.run.is_some() {
            return;
        }
        // The previous task is gone (`run` is None): what it said about its
        // role no longer holds (a restarted standby looked running, with a
        // broker "reachable" by a producer that no longer exists).
        self.status.send_modify(|s| s.new_task());
        let trigger = Trigger::new();
        let task = match self.body.spawn(&self.deps, trigger.subscribe()) {
            Ok(task) => task,
            Err(TaskError::Disabled(why)) => {
                tracing::warn!(actor = %B::INFO.actor, "{why}");
                self.lifecycle = Lifecycle::Stopped;
                self.last_error = Some(why.clone());
                self.event(why);
                return;
            }
            Err(TaskError::Failed(e)) => {
                tracing::error!(actor = %B::INFO.actor, error = %e, "cannot create the {}", B::INFO.task);
                self.last_error = Some(e);
                ctx.stop();
                return;
            }
        };
        self.generation += 1;
        let generation = self.generation;
        let (alive, gone_rx) = watch::channel(());
        let (panic_tx, panic_rx) = oneshot::channel::<()>();
        let handle = self.deps.runtime.spawn(async move {
            let _alive = alive;
            tokio::select! {
                r = task => r,
                Ok(()) = panic_rx => panic!("injected failure: {} task panicked", B::INFO.task),
            }
        });
        let abort = handle.abort_handle();
        self.run = Some(TaskRun {
            generation,
            trigger,
            abort,
            gone: gone_rx,
            panic: Some(panic_tx),
            spawned: tokio::time::Instant::now(),
            took_over: None,
            was_standby: false,
        });
        let restarted = matches!(self.lifecycle, Lifecycle::Restarting { .. });
        self.lifecycle = Lifecycle::Running;
        let detail = if restarted {
            format!("{} restarted ({} restarts in total)", B::INFO.task, self.budget.total())
        } else {
            format!("{} started", B::INFO.task)
        };
        tracing::info!(actor = %B::INFO.actor, generation, "{detail}");
        self.event(detail);
        // Watch the task: an end we did not ask for is a failure.
        ctx.spawn(actix::fut::wrap_future::<_, Self>(handle).map(move |res, act, ctx| {
            if act.stopping || act.run.as_ref().is_none_or(|r| r.generation != generation) {
                return;
            }
            let why = match res {
                Ok(Ok(())) => format!("{} task returned unexpectedly", B::INFO.task),
                Ok(Err(e)) => format!("{} task failed: {e}", B::INFO.task),
                Err(e) if e.is_panic() => format!("{} task panicked", B::INFO.task),
                Err(_) => format!("{} task was aborted", B::INFO.task),
            };
            tracing::error!(actor = %B::INFO.actor, generation, "{why}; stopping the actor so it restarts");
            act.last_error = Some(why);
            ctx.stop();
        }));
    }

    /// Kills the current task, if any (restart path): its shutdown signal
    /// fires and it is aborted; the next task waits until it is gone.
    fn kill_task(&mut self) {
        if let Some(run) = self.run.take() {
            run.trigger.fire();
            run.abort.abort();
            self.previous = Some(run.gone);
        }
    }
}

impl<B: TaskBody> Actor for SupervisedTask<B> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.failing = false;
        let Some(delay) = start_delay(self.lifecycle, &self.budget) else { return };
        let wait = after_previous(delay, self.previous.take(), B::INFO.actor, B::INFO.task);
        ctx.spawn(actix::fut::wrap_future::<_, Self>(wait).map(|_, act, ctx| act.start_task(ctx)));
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        if !self.stopping {
            self.kill_task();
        }
    }
}

impl<B: TaskBody> Supervised for SupervisedTask<B> {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.kill_task();
        if matches!(self.lifecycle, Lifecycle::GaveUp | Lifecycle::Stopped) || self.stopping {
            return;
        }
        let error = self.last_error.take().unwrap_or_else(|| "actor stopped unexpectedly".into());
        self.mark_stopped();
        match record_restart(&mut self.budget, &self.deps.metrics, &self.deps.cfg.supervision, B::INFO.actor, &error) {
            Restart::Again { n, event } => {
                self.lifecycle = Lifecycle::Restarting { restart: n };
                self.event(event);
            }
            Restart::GiveUp { n, event } => {
                self.lifecycle = Lifecycle::GaveUp;
                self.event(event);
                self.parent.do_send(ChildGaveUp { actor: B::INFO.actor, restarts: n, last_error: error });
            }
        }
    }
}

impl<B: TaskBody> Handler<GetTaskStatus<B::Status>> for SupervisedTask<B> {
    type Result = MessageResult<GetTaskStatus<B::Status>>;

    fn handle(&mut self, _msg: GetTaskStatus<B::Status>, _ctx: &mut Context<Self>) -> Self::Result {
        let progress = self.status.borrow().clone();
        // Counted from the spawn, except for a standby that took the lease
        // over: spawned hours ago, it is starting its term, not hours late.
        // A task that ran as active and stopped (a lost lease, a failed
        // term) gets no new grace: its lag and "not running" apply at once.
        let starting_ms = match &mut self.run {
            Some(run) if !progress.running() => {
                if run.was_standby && run.took_over.is_none() {
                    run.took_over = Some(tokio::time::Instant::now());
                }
                run.was_standby = false;
                Some(run.took_over.unwrap_or(run.spawned).elapsed().as_millis() as u64)
            }
            Some(run) => {
                run.took_over = None;
                run.was_standby = progress.standby();
                None
            }
            None => None,
        };
        MessageResult(TaskStatus {
            lifecycle: self.lifecycle,
            restarts_in_window: self.budget.in_window(Instant::now()),
            running: self.run.is_some() && progress.running(),
            starting_ms,
            progress,
        })
    }
}

impl<B: TaskBody> Handler<StopActor> for SupervisedTask<B> {
    type Result = ResponseActFuture<Self, ()>;

    /// Drains (the body's hook), fires the task's shutdown signal, waits for
    /// the task and aborts it at the deadline. The deadline is one budget for
    /// all of it: a drain that overruns is cut off there, and the wait gets
    /// what the drain left (not a second full deadline).
    fn handle(&mut self, msg: StopActor, _ctx: &mut Context<Self>) -> Self::Result {
        self.deps.received(B::INFO.actor);
        self.stopping = true;
        let until = tokio::time::Instant::now() + msg.deadline;
        let run = self.run.take();
        let previous = self.previous.take();
        let drain = run.as_ref().map(|_| self.body.drain(&self.deps, msg.deadline));
        let wait = async move {
            if let Some(run) = run {
                if let Some(drain) = drain {
                    let _ = tokio::time::timeout_at(until, drain).await;
                }
                run.trigger.fire();
                if tokio::time::timeout_at(until, gone(run.gone)).await.is_err() {
                    tracing::warn!(actor = %B::INFO.actor, "{} did not stop within {:?}; aborting it ({})", B::INFO.task, msg.deadline, B::INFO.on_abort);
                    run.abort.abort();
                }
            }
            if let Some(p) = previous {
                let _ = tokio::time::timeout_at(until, gone(p)).await;
            }
        };
        Box::pin(actix::fut::wrap_future::<_, Self>(wait).map(|_, act, _| {
            if act.lifecycle != Lifecycle::GaveUp {
                act.lifecycle = Lifecycle::Stopped;
            }
            act.mark_stopped();
            tracing::info!(actor = %B::INFO.actor, "stopped");
            act.event(format!("{} stopped for shutdown", B::INFO.task));
        }))
    }
}

impl<B: TaskBody> Handler<InjectFailure> for SupervisedTask<B> {
    type Result = Result<(), ActorError>;

    fn handle(&mut self, msg: InjectFailure, ctx: &mut Context<Self>) -> Self::Result {
        self.deps.received(B::INFO.actor);
        let not_running = ActorError::NotRunning { actor: B::INFO.actor, lifecycle: self.lifecycle };
        if self.lifecycle != Lifecycle::Running || self.stopping || self.failing {
            return Err(not_running);
        }
        let Some(run) = self.run.as_mut() else { return Err(not_running) };
        tracing::error!(actor = %B::INFO.actor, mode = ?msg.0, "injected failure");
        match msg.0 {
            FailureMode::Stop => {
                self.last_error = Some("injected failure (stop)".into());
                ctx.stop();
            }
            // The watcher sees the task end and stops the actor.
            FailureMode::Kill => run.abort.abort(),
            FailureMode::Panic => match run.panic.take() {
                Some(tx) => {
                    let _ = tx.send(());
                }
                None => return Err(not_running),
            },
        }
        self.failing = true;
        Ok(())
    }
}

impl<B: TaskBody> Handler<Ping> for SupervisedTask<B> {
    type Result = MessageResult<Ping>;

    fn handle(&mut self, _msg: Ping, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.lifecycle)
    }
}

#[cfg(test)]
#[path = "shell_tests.rs"]
mod tests;
