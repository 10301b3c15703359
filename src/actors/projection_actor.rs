//! ProjectionActor: runs the projector (`projection::Projector::run`: the
//! store's feed -> `order_read_model`, `orders_by_customer`,
//! `customer_read_model`) and reports its checkpoint, lag and store errors.
//!
//! Thin shell, same shape and policy as the [`super::CdcStreamProcessor`]:
//! the projector owns reading, applying, checkpoints and store retries; this
//! actor starts it as a task on the multi-threaded runtime, watches that
//! task, and stops it on shutdown.
//! Policy: restart (actix `Supervised`, restart budget, exponential backoff,
//! `actor_restarts_total{actor="projection_actor"}`). When the projector
//! task ends without being asked to (it returned or panicked) the actor stops
//! itself; the supervisor restarts it and `started()` starts a fresh
//! projector after the backoff, once the previous task is gone. The projector
//! resumes from its checkpoint (rows and checkpoint commit together, rows are
//! idempotent by (aggregate id, sequence)), so a restart changes no row.
//! The status channel outlives restarts.
//!
//! Only started when the backend has read models; see the coordinator. On
//! CQL the projector is the CDC projection (`projection::cql::run_cdc_projection`,
//! its own scylla-cdc progress); without a CDC log (Apache Cassandra) the
//! actor logs "read models on CQL need ScyllaDB CDC" and stays Stopped.

use actix::prelude::*;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tokio::task::AbortHandle;

use crate::projection::{DynReadModels, Projector, ProjectorOptions};
use crate::shutdown::Trigger;

use super::messages::*;
use super::supervision::{after_previous, gone, record_restart, start_delay, Restart, RestartBudget};
use super::ActorDeps;

const NAME: ActorName = ActorName::Projection;

/// One running projector task.
struct ProjectorRun {
    generation: u64,
    trigger: Trigger,
    abort: AbortHandle,
    /// Closed (sender dropped) when the task is gone, however it ended.
    gone: watch::Receiver<()>,
    /// Makes the task panic (failure injection).
    panic: Option<oneshot::Sender<()>>,
}

pub struct ProjectionActor {
    deps: ActorDeps,
    models: DynReadModels,
    parent: Recipient<ChildGaveUp>,
    health: Recipient<ComponentEvent>,
    run: Option<ProjectorRun>,
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

impl ProjectionActor {
    pub fn new(
        deps: ActorDeps,
        models: DynReadModels,
        parent: Recipient<ChildGaveUp>,
        health: Recipient<ComponentEvent>,
    ) -> ProjectionActor {
        let budget = RestartBudget::new(&deps.cfg.supervision);
        ProjectionActor {
            deps,
            models,
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

    fn event(&self, detail: String) {
        self.health.do_send(ComponentEvent { actor: NAME, lifecycle: self.lifecycle, detail });
    }

    fn start_projector(&mut self, ctx: &mut Context<Self>) {
        if self.stopping || matches!(self.lifecycle, Lifecycle::GaveUp | Lifecycle::Stopped) || self.run.is_some() {
            return;
        }
        // CQL: the feed is the Scylla CDC log; without it there is nothing to project.
        if let Some(cql) = &self.deps.cql {
            if !cql.cdc_enabled() {
                let why = format!(
                    "read models on CQL need ScyllaDB CDC ({}.event_store has no CDC log); projection not started",
                    cql.keyspace()
                );
                tracing::warn!(actor = %NAME, "{why}");
                self.lifecycle = Lifecycle::Stopped;
                self.last_error = Some(why.clone());
                self.deps.projection_status.send_modify(|s| {
                    s.running = false;
                    s.last_error = Some(why.clone());
                });
                self.event(why);
                return;
            }
        }
        let trigger = Trigger::new();
        let shutdown = trigger.subscribe();
        let projector: futures::future::BoxFuture<'static, ()> = match self.deps.cql.clone() {
            None => {
                let projector = Projector::with_status(
                    self.deps.store.clone(),
                    self.models.clone(),
                    self.deps.metrics.clone(),
                    ProjectorOptions::from_config(&self.deps.cfg),
                    self.deps.projection_status.clone(),
                );
                Box::pin(async move { projector.run(shutdown).await })
            }
            Some(cql) => {
                let cfg = self.deps.cfg.clone();
                let status = self.deps.projection_status.clone();
                Box::pin(async move {
                    if let Err(e) = crate::projection::cql::run_cdc_projection(cql, &cfg, status, shutdown).await {
                        tracing::error!(actor = %NAME, error = %e, "CQL projection (CDC reader) failed");
                    }
                })
            }
        };
        self.generation += 1;
        let generation = self.generation;
        let (alive, gone_rx) = watch::channel(());
        let (panic_tx, panic_rx) = oneshot::channel::<()>();
        let task = self.deps.runtime.spawn(async move {
            let _alive = alive;
            tokio::select! {
                _ = projector => {},
                Ok(()) = panic_rx => panic!("injected failure: projector task panicked"),
            }
        });
        let abort = task.abort_handle();
        self.run = Some(ProjectorRun { generation, trigger, abort, gone: gone_rx, panic: Some(panic_tx) });
        let restarted = matches!(self.lifecycle, Lifecycle::Restarting { .. });
        self.lifecycle = Lifecycle::Running;
        let detail = if restarted {
            format!("projector restarted ({} restarts in total)", self.budget.total())
        } else {
            "projector started".to_string()
        };
        tracing::info!(actor = %NAME, generation, "{detail}");
        self.event(detail);
        // Watch the task: an end we did not ask for is a failure.
        ctx.spawn(actix::fut::wrap_future::<_, Self>(task).map(move |res, act, ctx| {
            if act.stopping || act.run.as_ref().is_none_or(|r| r.generation != generation) {
                return;
            }
            let why = match res {
                Ok(()) => "projector task returned unexpectedly".to_string(),
                Err(e) if e.is_panic() => "projector task panicked".to_string(),
                Err(_) => "projector task was aborted".to_string(),
            };
            tracing::error!(actor = %NAME, generation, "{why}; stopping the actor so it restarts");
            act.last_error = Some(why);
            ctx.stop();
        }));
    }

    /// Kills the current projector task, if any (restart path). A batch being
    /// committed is one transaction: it lands whole or not at all.
    fn kill_projector(&mut self) {
        if let Some(run) = self.run.take() {
            run.trigger.fire();
            run.abort.abort();
            self.previous = Some(run.gone);
        }
    }
}

impl Actor for ProjectionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.failing = false;
        let Some(delay) = start_delay(self.lifecycle, &self.budget) else { return };
        let wait = after_previous(delay, self.previous.take(), NAME, "projector");
        ctx.spawn(actix::fut::wrap_future::<_, Self>(wait).map(|_, act, ctx| act.start_projector(ctx)));
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        if !self.stopping {
            self.kill_projector();
        }
    }
}

impl Supervised for ProjectionActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.kill_projector();
        if matches!(self.lifecycle, Lifecycle::GaveUp | Lifecycle::Stopped) || self.stopping {
            return;
        }
        let error = self.last_error.take().unwrap_or_else(|| "actor stopped unexpectedly".into());
        self.deps.projection_status.send_modify(|s| s.running = false);
        match record_restart(&mut self.budget, &self.deps.metrics, &self.deps.cfg.supervision, NAME, &error) {
            Restart::Again { n, event } => {
                self.lifecycle = Lifecycle::Restarting { restart: n };
                self.event(event);
            }
            Restart::GiveUp { n, event } => {
                self.lifecycle = Lifecycle::GaveUp;
                self.event(event);
                self.parent.do_send(ChildGaveUp { actor: NAME, restarts: n, last_error: error });
            }
        }
    }
}

impl Handler<GetProjectionStatus> for ProjectionActor {
    type Result = MessageResult<GetProjectionStatus>;

    fn handle(&mut self, _msg: GetProjectionStatus, _ctx: &mut Context<Self>) -> Self::Result {
        let projection = self.deps.projection_status.borrow().clone();
        MessageResult(ProjectionActorStatus {
            lifecycle: self.lifecycle,
            restarts_in_window: self.budget.in_window(Instant::now()),
            projector_running: self.run.is_some() && projection.running,
            projection,
        })
    }
}

impl Handler<StopActor> for ProjectionActor {
    type Result = ResponseActFuture<Self, ()>;

    /// Stops the projector: the batch being committed finishes (one
    /// transaction), nothing else is read.
    fn handle(&mut self, msg: StopActor, _ctx: &mut Context<Self>) -> Self::Result {
        self.deps.received(NAME);
        self.stopping = true;
        let run = self.run.take();
        let previous = self.previous.take();
        let wait = async move {
            if let Some(run) = run {
                run.trigger.fire();
                if tokio::time::timeout(msg.deadline, gone(run.gone)).await.is_err() {
                    tracing::warn!(actor = %NAME, "projector did not stop within {:?}; aborting it (it resumes from its checkpoint)", msg.deadline);
                    run.abort.abort();
                }
            }
            if let Some(p) = previous {
                let _ = tokio::time::timeout(Duration::from_secs(5), gone(p)).await;
            }
        };
        Box::pin(actix::fut::wrap_future::<_, Self>(wait).map(|_, act, _| {
            if act.lifecycle != Lifecycle::GaveUp {
                act.lifecycle = Lifecycle::Stopped;
            }
            act.deps.projection_status.send_modify(|s| s.running = false);
            tracing::info!(actor = %NAME, "stopped");
            act.event("projector stopped for shutdown".into());
        }))
    }
}

impl Handler<InjectFailure> for ProjectionActor {
    type Result = Result<(), String>;

    fn handle(&mut self, msg: InjectFailure, ctx: &mut Context<Self>) -> Self::Result {
        self.deps.received(NAME);
        if self.lifecycle != Lifecycle::Running || self.stopping || self.failing || self.run.is_none() {
            return Err(format!("{NAME} is not running ({:?})", self.lifecycle));
        }
        self.failing = true;
        tracing::error!(actor = %NAME, mode = ?msg.0, "injected failure");
        match msg.0 {
            FailureMode::Stop => {
                self.last_error = Some("injected failure (stop)".into());
                ctx.stop();
            }
            // The watcher sees the task end and stops the actor.
            FailureMode::Kill => match &self.run {
                Some(run) => run.abort.abort(),
                None => return Err("no projector task is running".into()),
            },
            FailureMode::Panic => match self.run.as_mut().and_then(|r| r.panic.take()) {
                Some(tx) => {
                    let _ = tx.send(());
                }
                None => return Err("no projector task is running".into()),
            },
        }
        Ok(())
    }
}

impl Handler<Ping> for ProjectionActor {
    type Result = MessageResult<Ping>;

    fn handle(&mut self, _msg: Ping, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.lifecycle)
    }
}
