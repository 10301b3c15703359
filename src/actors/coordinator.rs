//! CoordinatorActor: the root of the supervision tree.
//!
//! Starts the children in the seed's order (Health -> DLQ -> Order -> CDC),
//! then the ProjectionActor when the backend has read models,
//! holds their addresses, answers lookups, and shuts the system down:
//! on `ShutdownSystem` (a signal) with exit code 0, or when a supervised
//! child used up its restart budget (`ChildGaveUp`) with
//! [`super::EXIT_RESTART_BUDGET`].
//!
//! Shutdown sequence (each step bounded by `shutdown_deadline_ms` overall):
//! 1. close intake (the command API answers 503) and mark /health;
//! 2. let the OrderActor finish the commands it already accepted (within
//!    half the deadline; the projector's stop gets half of what is left, so
//!    the relay keeps a share: `ShutdownBudget`);
//! 3. stop the children in reverse start order: the projector (the batch
//!    being committed finishes), CDC (the relay stops
//!    reading, settles in-flight deliveries, persists its checkpoint),
//!    Order, DLQ, Health;
//! 4. report the exit code.

use actix::prelude::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

use super::cdc_processor::RelayBody;
use super::health::{CheckNow, GetSystemHealth, MarkShuttingDown, RegisterComponents};
use super::messages::{ActorError, ActorName, ChildGaveUp, FailureMode, InjectFailure, StopActor};
use super::order_actor::DrainCommands;
use super::projection_actor::ProjectionBody;
use super::supervision::SupervisedTask;
use super::{
    ActorDeps, CdcStreamProcessor, DlqActor, DlqSink, HealthCheckActor, OrderActor, ProjectionActor,
    EXIT_RESTART_BUDGET,
};

const NAME: ActorName = ActorName::Coordinator;

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

/// Routes a test failure to a child (admin `/debug/fail/{actor}`).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), ActorError>")]
pub struct InjectFailureInto {
    pub actor: ActorName,
    pub mode: FailureMode,
}

/// How the shutdown deadline is shared: the commands already accepted get
/// at most half of it, and the projector at most half of what is left, so
/// the relay (which settles in-flight deliveries and persists its
/// checkpoint) keeps a share however slow the steps before it are (a store
/// write-locked by a backup holds commands up to the busy timeout). Every
/// step gets at least 100 ms.
#[derive(Debug, Clone, Copy)]
struct ShutdownBudget {
    deadline: Duration,
    started: Instant,
}

impl ShutdownBudget {
    const FLOOR: Duration = Duration::from_millis(100);

    fn new(deadline: Duration, started: Instant) -> ShutdownBudget {
        ShutdownBudget { deadline, started }
    }

    fn remaining(&self, now: Instant) -> Duration {
        self.deadline.saturating_sub(now.saturating_duration_since(self.started)).max(Self::FLOOR)
    }

    /// The command drain's share.
    fn drain(&self, now: Instant) -> Duration {
        self.remaining(now).min(self.deadline / 2).max(Self::FLOOR)
    }

    /// The share of a step before the relay's stop: half of what is left.
    fn before_relay(&self, now: Instant) -> Duration {
        (self.remaining(now) / 2).max(Self::FLOOR)
    }
}

pub struct CoordinatorActor {
    deps: ActorDeps,
    health: Option<Addr<HealthCheckActor>>,
    dlq: Option<Addr<DlqActor>>,
    order: Option<Addr<OrderActor>>,
    cdc: Option<Addr<CdcStreamProcessor>>,
    projection: Option<Addr<ProjectionActor>>,
    exit: Option<oneshot::Sender<u8>>,
    shutting_down: Option<u8>,
    /// The exit code once the shutdown sequence has finished.
    finished: Option<u8>,
    done: Vec<oneshot::Sender<u8>>,
}

impl CoordinatorActor {
    pub fn new(deps: ActorDeps, exit: oneshot::Sender<u8>) -> CoordinatorActor {
        CoordinatorActor {
            deps,
            health: None,
            dlq: None,
            order: None,
            cdc: None,
            projection: None,
            exit: Some(exit),
            shutting_down: None,
            finished: None,
            done: Vec::new(),
        }
    }

    fn start_children(&mut self, ctx: &mut Context<Self>) {
        tracing::info!("starting supervised child actors");
        let deps = self.deps.clone();
        // 1. Health first: it monitors the others.
        let health = HealthCheckActor::new(deps.clone()).start();
        // 2. DLQ next: the relay needs it.
        let dlq = DlqActor::new(deps.clone()).start();
        let me = ctx.address();
        // 3. Order: commands.
        let (d, p, h) = (deps.clone(), me.clone().recipient(), health.clone().recipient());
        let order = actix::Supervisor::start(move |_| OrderActor::new(d, p, h));
        // 4. CDC: the relay, dead letters through the DlqActor.
        let sink = Arc::new(DlqSink(dlq.clone()));
        let (d, p, h) = (deps.clone(), me.clone().recipient(), health.clone().recipient());
        let cdc = actix::Supervisor::start(move |_| {
            let status = d.relay_status.clone();
            SupervisedTask::new(d, RelayBody::new(sink), status, p, h)
        });
        // 5. Projections: only where the backend has read models.
        let projection = match deps.read_models.clone() {
            Some(models) => {
                let (d, p, h) = (deps, me.recipient(), health.clone().recipient());
                Some(actix::Supervisor::start(move |_| {
                    let status = d.projection_status.clone();
                    SupervisedTask::new(d, ProjectionBody { models }, status, p, h)
                }))
            }
            None => {
                tracing::info!(backend = ?deps.cfg.store.backend, "read models are not available on this backend; the projection actor is not started");
                None
            }
        };
        health.do_send(RegisterComponents {
            dlq: dlq.clone(),
            order: order.clone(),
            cdc: cdc.clone(),
            projection: projection.clone(),
        });
        self.health = Some(health);
        self.dlq = Some(dlq);
        self.order = Some(order);
        self.cdc = Some(cdc);
        let started = if projection.is_some() {
            "health_check, dlq_actor, order_actor, cdc_processor, projection_actor"
        } else {
            "health_check, dlq_actor, order_actor, cdc_processor"
        };
        self.projection = projection;
        tracing::info!("all supervised actors started ({started})");
    }

    fn begin_shutdown(&mut self, reason: String, exit_code: u8, ctx: &mut Context<Self>) {
        if self.shutting_down.is_some() {
            return;
        }
        self.shutting_down = Some(exit_code);
        tracing::info!(%reason, exit_code, "shutting down the actor system");
        self.deps.intake.close();
        let budget = ShutdownBudget::new(Duration::from_millis(self.deps.cfg.shutdown_deadline_ms), Instant::now());
        let remaining = move || budget.remaining(Instant::now());
        let (health, dlq, order, cdc, projection) =
            (self.health.clone(), self.dlq.clone(), self.order.clone(), self.cdc.clone(), self.projection.clone());
        let seq = async move {
            if let Some(h) = &health {
                let _ = h.send(MarkShuttingDown).await;
            }
            if let Some(o) = &order {
                let drain = budget.drain(Instant::now());
                match tokio::time::timeout(drain, o.send(DrainCommands { deadline: drain })).await {
                    Ok(Ok(0)) => tracing::info!("in-flight commands finished"),
                    Ok(Ok(n)) => tracing::warn!(still_running = n, "commands still running at the deadline"),
                    _ => tracing::warn!("order actor did not drain in time"),
                }
            }
            // Reverse start order: Projection, CDC, Order, DLQ, Health.
            if let Some(p) = &projection {
                let share = budget.before_relay(Instant::now());
                if tokio::time::timeout(
                    share,
                    p.send(StopActor { deadline: share.saturating_sub(Duration::from_millis(50)) }),
                )
                .await
                .is_err()
                {
                    tracing::warn!("projection actor did not stop before the shutdown deadline");
                }
            }
            if let Some(c) = &cdc {
                if tokio::time::timeout(
                    remaining(),
                    c.send(StopActor { deadline: remaining().saturating_sub(Duration::from_millis(50)) }),
                )
                .await
                .is_err()
                {
                    tracing::warn!("cdc processor did not stop before the shutdown deadline");
                }
            }
            if let Some(o) = &order {
                let _ = tokio::time::timeout(remaining(), o.send(StopActor { deadline: remaining() })).await;
            }
            if let Some(d) = &dlq {
                let _ = tokio::time::timeout(remaining(), d.send(StopActor { deadline: remaining() })).await;
            }
            if let Some(h) = &health {
                let _ = tokio::time::timeout(remaining(), h.send(StopActor { deadline: remaining() })).await;
            }
        };
        ctx.spawn(actix::fut::wrap_future::<_, Self>(seq).map(move |_, act, _| {
            tracing::info!(exit_code, "actor system stopped");
            act.finished = Some(exit_code);
            if let Some(tx) = act.exit.take() {
                let _ = tx.send(exit_code);
            }
            for tx in act.done.drain(..) {
                let _ = tx.send(exit_code);
            }
        }));
    }
}

impl Actor for CoordinatorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        tracing::info!("coordinator started");
        self.start_children(ctx);
        // Seed: the coordinator logs the system health every 30 s.
        ctx.run_interval(Duration::from_secs(30), |act, _| {
            let r = act.deps.health.borrow();
            match r.status {
                super::HealthStatus::Healthy => tracing::debug!("system health: healthy"),
                s => {
                    let bad: Vec<String> = r
                        .components
                        .iter()
                        .filter(|(_, c)| c.status != super::HealthStatus::Healthy)
                        .map(|(n, c)| format!("{n}: {}", c.detail))
                        .collect();
                    tracing::warn!(status = s.as_str(), "system health: {}", bad.join("; "));
                }
            }
        });
    }
}

impl Handler<GetSystemHealth> for CoordinatorActor {
    type Result = MessageResult<GetSystemHealth>;

    fn handle(&mut self, _msg: GetSystemHealth, _ctx: &mut Context<Self>) -> Self::Result {
        self.deps.received(NAME);
        MessageResult(self.deps.health.borrow().clone())
    }
}

impl Handler<GetOrderActor> for CoordinatorActor {
    type Result = Option<Addr<OrderActor>>;

    fn handle(&mut self, _msg: GetOrderActor, _ctx: &mut Context<Self>) -> Self::Result {
        self.deps.received(NAME);
        self.order.clone()
    }
}

impl Handler<GetHealthCheckActor> for CoordinatorActor {
    type Result = Option<Addr<HealthCheckActor>>;

    fn handle(&mut self, _msg: GetHealthCheckActor, _ctx: &mut Context<Self>) -> Self::Result {
        self.deps.received(NAME);
        self.health.clone()
    }
}

impl Handler<GetDlqActor> for CoordinatorActor {
    type Result = Option<Addr<DlqActor>>;

    fn handle(&mut self, _msg: GetDlqActor, _ctx: &mut Context<Self>) -> Self::Result {
        self.deps.received(NAME);
        self.dlq.clone()
    }
}

impl Handler<GetCdcProcessor> for CoordinatorActor {
    type Result = Option<Addr<CdcStreamProcessor>>;

    fn handle(&mut self, _msg: GetCdcProcessor, _ctx: &mut Context<Self>) -> Self::Result {
        self.deps.received(NAME);
        self.cdc.clone()
    }
}

impl Handler<GetProjectionActor> for CoordinatorActor {
    type Result = Option<Addr<ProjectionActor>>;

    fn handle(&mut self, _msg: GetProjectionActor, _ctx: &mut Context<Self>) -> Self::Result {
        self.deps.received(NAME);
        self.projection.clone()
    }
}

impl Handler<ShutdownSystem> for CoordinatorActor {
    type Result = ResponseFuture<u8>;

    fn handle(&mut self, msg: ShutdownSystem, ctx: &mut Context<Self>) -> Self::Result {
        self.deps.received(NAME);
        if let Some(code) = self.finished {
            // Already stopped (a child gave up): nobody would answer a new
            // waiter; the first shutdown's code stands.
            return Box::pin(async move { code });
        }
        let (tx, rx) = oneshot::channel();
        self.done.push(tx);
        self.begin_shutdown(msg.reason, msg.exit_code, ctx);
        Box::pin(async move { rx.await.unwrap_or(msg.exit_code) })
    }
}

impl Handler<ChildGaveUp> for CoordinatorActor {
    type Result = ();

    fn handle(&mut self, msg: ChildGaveUp, ctx: &mut Context<Self>) {
        self.deps.received(NAME);
        tracing::error!(actor = %msg.actor, restarts = msg.restarts, last_error = %msg.last_error, "supervised actor gave up; shutting the system down");
        if let Some(h) = &self.health {
            h.do_send(CheckNow);
        }
        self.begin_shutdown(format!("{} exhausted its restart budget", msg.actor), EXIT_RESTART_BUDGET, ctx);
    }
}

impl Handler<InjectFailureInto> for CoordinatorActor {
    type Result = ResponseFuture<Result<(), ActorError>>;

    fn handle(&mut self, msg: InjectFailureInto, _ctx: &mut Context<Self>) -> Self::Result {
        self.deps.received(NAME);
        let actor = msg.actor;
        let not_started = move |reason: &str| ActorError::NotStarted { actor, reason: reason.into() };
        let target: Result<Recipient<InjectFailure>, ActorError> = match actor {
            ActorName::Order => self.order.clone().map(Addr::recipient).ok_or_else(|| not_started("not started yet")),
            ActorName::Cdc => self.cdc.clone().map(Addr::recipient).ok_or_else(|| not_started("not started yet")),
            ActorName::Dlq => self.dlq.clone().map(Addr::recipient).ok_or_else(|| not_started("not started yet")),
            ActorName::HealthCheck => {
                self.health.clone().map(Addr::recipient).ok_or_else(|| not_started("not started yet"))
            }
            ActorName::Projection => self
                .projection
                .clone()
                .map(Addr::recipient)
                .ok_or_else(|| not_started("this backend has no read models")),
            ActorName::Coordinator => {
                Err(ActorError::Refused("the coordinator is the root; it does not take injected failures".into()))
            }
        };
        Box::pin(
            async move { target?.send(InjectFailure(msg.mode)).await.map_err(|e| ActorError::unreachable(actor, e))? },
        )
    }
}

#[cfg(test)]
#[path = "coordinator_tests.rs"]
mod tests;
