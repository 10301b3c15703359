//! CdcStreamProcessor: runs the relay (`relay::Relay::run` on the store's
//! position feed; for the CQL backend the Scylla CDC reader of `relay::cdc`)
//! and reports its progress, lag and breaker state.
//!
//! Thin shell: the relay owns reading, publishing, retries, the breaker and
//! checkpoints; this actor starts it as a task on the multi-threaded
//! runtime, watches that task, and stops it on shutdown.
//! Policy: restart (actix `Supervised`). When the relay task ends without
//! being asked to (it returned or panicked) the actor stops itself; the
//! supervisor restarts it and `started()` starts a fresh relay after the
//! restart backoff, once the previous task is gone. The relay resumes from
//! its persisted checkpoint, so a restart re-sends at most the unconfirmed
//! tail (same `ce_id`). The status channel outlives restarts.

use actix::prelude::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tokio::task::AbortHandle;

use futures::future::{BoxFuture, FutureExt};

use crate::config::CdcConfig;
use crate::relay::cdc::start_cdc_reader;
use crate::relay::deliver::{DeadLetterSink, Deliverer};
use crate::relay::{BreakerState, Relay};
use crate::shutdown::{Shutdown, Trigger};
use crate::store::cql::CqlStore;

use super::messages::*;
use super::supervision::{after_previous, gone, record_restart, start_delay, Restart, RestartBudget};
use super::ActorDeps;

const NAME: ActorName = ActorName::Cdc;

/// Longest wait at shutdown for the relay to publish what is already committed.
const MAX_CATCH_UP: Duration = Duration::from_secs(10);

/// One running relay task.
struct RelayRun {
    generation: u64,
    trigger: Trigger,
    abort: AbortHandle,
    /// Closed (sender dropped) when the task is gone, however it ended.
    gone: watch::Receiver<()>,
    /// Makes the task panic (failure injection).
    panic: Option<oneshot::Sender<()>>,
}

pub struct CdcStreamProcessor {
    deps: ActorDeps,
    sink: Arc<dyn DeadLetterSink>,
    parent: Recipient<ChildGaveUp>,
    health: Recipient<ComponentEvent>,
    run: Option<RelayRun>,
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

/// The CQL feed: reads the Scylla CDC log until `shutdown`, then stops the
/// reader gracefully (finish the window, save progress); abandons it if
/// that takes longer than 10 s (progress stays at the last saved window).
async fn run_cdc_reader(
    cql: Arc<CqlStore>,
    cdc: CdcConfig,
    deliverer: Arc<Deliverer>,
    mut shutdown: Shutdown,
) -> Result<(), String> {
    let abandon = Trigger::new();
    let (mut reader, mut handle) =
        start_cdc_reader(cql.session(), cql.keyspace(), &cdc, deliverer, abandon.subscribe())
            .await
            .map_err(|e| e.to_string())?;
    tokio::select! {
        r = &mut handle => return r.map_err(|e| e.to_string())?.map_err(|e| e.to_string()),
        _ = shutdown.recv() => {}
    }
    reader.stop();
    match tokio::time::timeout(Duration::from_secs(10), &mut handle).await {
        Ok(r) => r.map_err(|e| e.to_string())?.map_err(|e| e.to_string()),
        Err(_) => {
            tracing::warn!(actor = %NAME, "CDC reader did not stop within 10 s; abandoning it (the unsaved tail is re-read after restart)");
            abandon.fire();
            let _ = handle.await;
            Ok(())
        }
    }
}

impl CdcStreamProcessor {
    /// `sink` receives dead letters (the DlqActor's [`super::DlqSink`]).
    pub fn new(
        deps: ActorDeps,
        sink: Arc<dyn DeadLetterSink>,
        parent: Recipient<ChildGaveUp>,
        health: Recipient<ComponentEvent>,
    ) -> CdcStreamProcessor {
        let budget = RestartBudget::new(&deps.cfg.supervision);
        CdcStreamProcessor {
            deps,
            sink,
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

    /// The feed task: `Relay::run` on the position feed, or the Scylla CDC
    /// reader for the CQL backend. Resolves when the feed has stopped.
    fn feed(&self, shutdown: Shutdown) -> Result<BoxFuture<'static, Result<(), String>>, String> {
        let cfg = &self.deps.cfg;
        let status = self.deps.relay_status.clone();
        match self.deps.cql.clone() {
            None => {
                let relay = Relay::with_status(cfg, self.deps.store.clone(), self.deps.metrics.clone(), status)
                    .map_err(|e| e.to_string())?
                    .with_sink(self.sink.clone());
                Ok(async move { relay.run(shutdown).await.map_err(|e| e.to_string()) }.boxed())
            }
            Some(cql) => {
                let deliverer = Arc::new(
                    Deliverer::new(cfg, self.sink.clone(), self.deps.metrics.clone(), status).map_err(|e| e.message)?,
                );
                let cdc = cfg.store.cql.cdc.clone();
                Ok(run_cdc_reader(cql, cdc, deliverer, shutdown).boxed())
            }
        }
    }

    fn start_relay(&mut self, ctx: &mut Context<Self>) {
        if self.stopping || matches!(self.lifecycle, Lifecycle::GaveUp | Lifecycle::Stopped) || self.run.is_some() {
            return;
        }
        let trigger = Trigger::new();
        let feed = match self.feed(trigger.subscribe()) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(actor = %NAME, error = %e, "cannot create the relay");
                self.last_error = Some(e);
                ctx.stop();
                return;
            }
        };
        self.generation += 1;
        let generation = self.generation;
        let (alive, gone_rx) = watch::channel(());
        let (panic_tx, panic_rx) = oneshot::channel::<()>();
        let task = self.deps.runtime.spawn(async move {
            let _alive = alive;
            tokio::select! {
                r = feed => r,
                Ok(()) = panic_rx => panic!("injected failure: relay task panicked"),
            }
        });
        let abort = task.abort_handle();
        self.run = Some(RelayRun { generation, trigger, abort, gone: gone_rx, panic: Some(panic_tx) });
        let restarted = matches!(self.lifecycle, Lifecycle::Restarting { .. });
        self.lifecycle = Lifecycle::Running;
        let detail = if restarted {
            format!("relay restarted ({} restarts in total)", self.budget.total())
        } else {
            "relay started".to_string()
        };
        tracing::info!(actor = %NAME, generation, "{detail}");
        self.event(detail);
        // Watch the task: an end we did not ask for is a failure.
        ctx.spawn(actix::fut::wrap_future::<_, Self>(task).map(move |res, act, ctx| {
            if act.stopping || act.run.as_ref().is_none_or(|r| r.generation != generation) {
                return;
            }
            let why = match res {
                Ok(Ok(())) => "relay task returned unexpectedly".to_string(),
                Ok(Err(e)) => format!("relay task failed: {e}"),
                Err(e) if e.is_panic() => "relay task panicked".to_string(),
                Err(_) => "relay task was aborted".to_string(),
            };
            tracing::error!(actor = %NAME, generation, "{why}; stopping the processor so it restarts");
            act.last_error = Some(why);
            ctx.stop();
        }));
    }

    /// Kills the current relay task, if any (restart path).
    fn kill_relay(&mut self) {
        if let Some(run) = self.run.take() {
            run.trigger.fire();
            run.abort.abort();
            self.previous = Some(run.gone);
        }
    }
}

impl Actor for CdcStreamProcessor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.failing = false;
        let Some(delay) = start_delay(self.lifecycle, &self.budget) else { return };
        let wait = after_previous(delay, self.previous.take(), NAME, "relay");
        ctx.spawn(actix::fut::wrap_future::<_, Self>(wait).map(|_, act, ctx| act.start_relay(ctx)));
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        if !self.stopping {
            self.kill_relay();
        }
    }
}

impl Supervised for CdcStreamProcessor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.kill_relay();
        if matches!(self.lifecycle, Lifecycle::GaveUp | Lifecycle::Stopped) || self.stopping {
            return;
        }
        let error = self.last_error.take().unwrap_or_else(|| "actor stopped unexpectedly".into());
        self.deps.relay_status.send_modify(|s| s.running = false);
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

impl Handler<GetRelayStatus> for CdcStreamProcessor {
    type Result = MessageResult<GetRelayStatus>;

    fn handle(&mut self, _msg: GetRelayStatus, _ctx: &mut Context<Self>) -> Self::Result {
        let relay = self.deps.relay_status.borrow().clone();
        MessageResult(ProcessorStatus {
            lifecycle: self.lifecycle,
            restarts_in_window: self.budget.in_window(Instant::now()),
            relay_running: self.run.is_some() && relay.running,
            relay,
        })
    }
}

impl Handler<StopActor> for CdcStreamProcessor {
    type Result = ResponseActFuture<Self, ()>;

    /// Stops the relay gracefully: it stops reading, lets in-flight
    /// deliveries settle and persists its checkpoint.
    fn handle(&mut self, msg: StopActor, _ctx: &mut Context<Self>) -> Self::Result {
        self.deps.received(NAME);
        self.stopping = true;
        let run = self.run.take();
        let previous = self.previous.take();
        let store = self.deps.store.clone();
        let mut status = self.deps.relay_status.subscribe();
        let catch_up = (msg.deadline / 2).min(MAX_CATCH_UP);
        let wait = async move {
            if let Some(run) = run {
                // Intake is closed: publish what was committed before the
                // signal, as long as the broker takes it (bounded).
                if let Ok(Ok(head)) = tokio::time::timeout(catch_up, store.head_position()).await {
                    let caught_up = tokio::time::timeout(
                        catch_up,
                        status.wait_for(|s| {
                            s.checkpoint >= head
                                || !s.running
                                || !s.broker_ok
                                || !s.store_ok
                                || s.breaker != BreakerState::Closed
                        }),
                    )
                    .await
                    .is_ok();
                    let cp = status.borrow().checkpoint;
                    if !caught_up || cp < head {
                        tracing::info!(actor = %NAME, checkpoint = cp, head, "stopping the relay before it caught up; the rest is published after restart");
                    }
                }
                run.trigger.fire();
                if tokio::time::timeout(msg.deadline, gone(run.gone)).await.is_err() {
                    tracing::warn!(actor = %NAME, "relay did not stop within {:?}; aborting it (unconfirmed events are re-sent on restart)", msg.deadline);
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
            tracing::info!(actor = %NAME, "stopped");
            act.event("relay stopped for shutdown".into());
        }))
    }
}

impl Handler<InjectFailure> for CdcStreamProcessor {
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
                None => return Err("no relay task is running".into()),
            },
            FailureMode::Panic => match self.run.as_mut().and_then(|r| r.panic.take()) {
                Some(tx) => {
                    let _ = tx.send(());
                }
                None => return Err("no relay task is running".into()),
            },
        }
        Ok(())
    }
}

impl Handler<Ping> for CdcStreamProcessor {
    type Result = MessageResult<Ping>;

    fn handle(&mut self, _msg: Ping, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.lifecycle)
    }
}
