//! HealthCheckActor: runs the health check every `health.interval_ms` (and
//! on every lifecycle event a child reports), publishes the [`HealthReport`]
//! on a `watch` channel that /health and /health/ready read (they never
//! query a store), and mirrors it in `actor_health_status{component}` (0
//! healthy, 1 degraded, 2 unhealthy; `component="system"` is the overall).
//!
//! One check: `EventStore::probe` (the backend decides what reachable means;
//! on SQLite it also stats the database file, never opening it), a `Ping` to
//! every child (a child that does not answer is Unhealthy), the status of
//! the relay (CdcStreamProcessor) and the projector, the DLQ depth, and the
//! relay's and the projection's backlog read from the store
//! (`EventStore::backlog`: head - persisted checkpoint + held events, and the
//! age of the oldest), whatever state the relay is in; on CQL also the
//! relay's oldest per-stream CDC progress (`CqlStore::cdc_oldest_progress`,
//! the CDC log TTL guard's input). The verdict is the pure
//! [`super::rules::evaluate`].
//!
//! Metrics it owns: `relay_lag_events{role}`, `relay_lag_seconds{role}`
//! (role = this instance's relay role, so a standby's gauges never raise an
//! active-relay alert), `relay_checkpoint_position` (persisted),
//! `projection_lag_events` and `projection_checkpoint_position` (persisted;
//! the projector writes both from the same backlog reading),
//! `projection_lag_seconds`, `dlq_parked_aggregates`,
//! `cdc_log_ttl_seconds` (CQL with a CDC log); on the CDC feed, which has no
//! positions, `relay_lag_seconds` is now − the oldest per-stream progress.
//!
//! Status changes are visible at once: a change of the relay's or the
//! projector's state (role, broker, breaker, feed, parked aggregates,
//! running) triggers a check immediately; the interval covers what must be
//! polled.
//!
//! Policy: resume. A failed probe is a health result, never an actor failure.

use actix::prelude::*;
use chrono::Utc;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::relay::RelayStatus;

use super::lag::{cdc_progress_age, lag_label, lag_seconds, projection_lag_seconds, relay_lag_gauges};
use super::report::{ComponentHealth, HealthReport, HealthStatus, Lag};
use super::rules::{evaluate, Probes, Reported, Thresholds};
use crate::actors::dlq_actor::CountDeadLetters;
use crate::actors::messages::{ActorError, ActorName, ComponentEvent, InjectFailure, Lifecycle, Ping, StopActor};
use crate::actors::supervision::GetTaskStatus;
use crate::actors::{ActorDeps, CdcStreamProcessor, DlqActor, OrderActor, ProjectionActor};

const NAME: ActorName = ActorName::HealthCheck;

/// Tells the health actor whom to check (sent by the coordinator once the
/// children are started).
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct RegisterComponents {
    pub dlq: Addr<DlqActor>,
    pub order: Addr<OrderActor>,
    pub cdc: Addr<CdcStreamProcessor>,
    /// None when the backend has no read models (`ActorDeps.read_models`).
    pub projection: Option<Addr<ProjectionActor>>,
}

/// The latest aggregated health (answered by this actor and the coordinator).
#[derive(Message)]
#[rtype(result = "HealthReport")]
pub struct GetSystemHealth;

/// Runs a health check now (besides the periodic ones).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct CheckNow;

/// Marks the system as shutting down in the published report.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct MarkShuttingDown;

pub struct HealthCheckActor {
    deps: ActorDeps,
    order: Option<Addr<OrderActor>>,
    cdc: Option<Addr<CdcStreamProcessor>>,
    dlq: Option<Addr<DlqActor>>,
    projection: Option<Addr<ProjectionActor>>,
    reported: Reported,
    checking: bool,
    recheck: bool,
    stopped: bool,
    interval: Option<SpawnHandle>,
    /// The role label the lag gauges were last set under.
    lag_role: Option<&'static str>,
    /// Since when the relay's role has been unknown (None: it is known).
    role_unknown_since: Option<std::time::Instant>,
}

impl HealthCheckActor {
    pub fn new(deps: ActorDeps) -> HealthCheckActor {
        HealthCheckActor {
            deps,
            order: None,
            cdc: None,
            dlq: None,
            projection: None,
            reported: HashMap::new(),
            checking: false,
            recheck: false,
            stopped: false,
            interval: None,
            lag_role: None,
            role_unknown_since: None,
        }
    }

    fn probe_timeout(&self) -> Duration {
        Duration::from_millis(self.deps.cfg.health.interval_ms)
            .clamp(Duration::from_millis(200), Duration::from_secs(5))
    }

    fn check(&mut self, ctx: &mut Context<Self>) {
        if self.cdc.is_none() {
            return; // the coordinator registers the children right after starting them
        }
        if self.checking {
            self.recheck = true;
            return;
        }
        self.checking = true;
        let t = self.probe_timeout();
        let store = self.deps.store.clone();
        let (order, cdc, dlq) = (self.order.clone(), self.cdc.clone(), self.dlq.clone());
        let relay = self.deps.relay_status.borrow().clone();
        let cql = self.deps.cql.clone();
        let log_ttl = self.deps.cfg.store.cql.cdc.log_ttl();
        let projection = self.projection.clone();
        let projection_enabled = projection.is_some();
        let consumer = self.deps.cfg.relay.consumer_name.clone();
        let backlog_store = self.deps.store.clone();
        let fut = async move {
            let backlogs = async {
                let relay_backlog =
                    tokio::time::timeout(t, backlog_store.backlog(&consumer)).await.ok().and_then(|r| r.ok());
                let parked = tokio::time::timeout(t, backlog_store.parked(&consumer))
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .map(|v| v.len() as u64);
                let projection_backlog = if projection_enabled {
                    tokio::time::timeout(t, backlog_store.backlog(crate::projection::CONSUMER))
                        .await
                        .ok()
                        .and_then(|r| r.ok())
                } else {
                    None
                };
                // CQL: the relay's oldest per-stream CDC progress, from the
                // table, so it is known whatever state or instance the relay is in.
                let relay_cdc = cdc_progress_age(cql.as_deref(), &consumer, t).await;
                // The CDC projection's own progress (the backlog knows only its parks).
                let projection_cdc = match projection_enabled {
                    true => cdc_progress_age(cql.as_deref(), crate::projection::cql::PROJECTION_CONSUMER, t).await,
                    false => (None, None),
                };
                (relay_backlog, parked, projection_backlog, relay_cdc, projection_cdc)
            };
            let store_probe = async {
                match tokio::time::timeout(t, store.probe()).await {
                    Err(_) => Err(format!("no answer within {t:?}")),
                    Ok(Err(e)) => Err(e.to_string()),
                    Ok(Ok(probe)) => Ok(probe.head),
                }
            };
            let order_probe = async {
                match order {
                    Some(a) => tokio::time::timeout(t, a.send(Ping)).await.ok().and_then(|r| r.ok()),
                    None => Some(Lifecycle::Starting),
                }
            };
            let cdc_probe = async {
                match cdc {
                    Some(a) => tokio::time::timeout(t, a.send(GetTaskStatus::new())).await.ok().and_then(|r| r.ok()),
                    None => None,
                }
            };
            let dlq_probe = async {
                match dlq {
                    Some(a) => {
                        let l = tokio::time::timeout(t, a.send(Ping)).await.ok().and_then(|r| r.ok());
                        let n = tokio::time::timeout(t, a.send(CountDeadLetters))
                            .await
                            .ok()
                            .and_then(|r| r.ok())
                            .and_then(|r| r.ok());
                        (l, n)
                    }
                    None => (Some(Lifecycle::Starting), None),
                }
            };
            let projection_probe = async {
                match projection {
                    Some(a) => tokio::time::timeout(t, a.send(GetTaskStatus::new())).await.ok().and_then(|r| r.ok()),
                    None => None,
                }
            };
            let (
                store,
                order,
                cdc,
                (dlq, dlq_depth),
                projection,
                (relay_backlog, parked, projection_backlog, (relay_cdc_age, cdc_unreadable), projection_cdc),
            ) = tokio::join!(store_probe, order_probe, cdc_probe, dlq_probe, projection_probe, backlogs);
            let cdc_log_ttl = cql.as_ref().map(|_| log_ttl);
            Probes {
                now: Utc::now(),
                store,
                order,
                dlq,
                dlq_depth,
                cdc,
                relay,
                relay_backlog,
                parked,
                cdc_age: relay_cdc_age,
                cdc_unreadable,
                cdc_log_ttl,
                projection_enabled,
                projection,
                projection_backlog,
                projection_cdc_age: projection_cdc.0,
                projection_cdc_unreadable: projection_cdc.1,
            }
        };
        ctx.spawn(actix::fut::wrap_future::<_, Self>(fut).map(|mut probes, act, ctx| {
            act.checking = false;
            act.publish(&mut probes);
            if act.recheck {
                act.recheck = false;
                act.check(ctx);
            }
        }));
    }

    /// Sets the lag gauges from the store's view (under this instance's role).
    fn lag_metrics(&mut self, probes: &Probes, t: &Thresholds) -> (Option<Lag>, Option<Lag>) {
        let m = &self.deps.metrics;
        let relay = probes.cdc.as_ref().map(|c| &c.progress).unwrap_or(&probes.relay);
        let current = relay.role.label();
        let unknown_for = match current {
            "unknown" => self.role_unknown_since.get_or_insert_with(std::time::Instant::now).elapsed(),
            _ => {
                self.role_unknown_since = None;
                Duration::ZERO
            }
        };
        let role = lag_label(current, self.lag_role, unknown_for);
        if let Some(old) = self.lag_role.filter(|r| *r != role) {
            let _ = m.relay_lag_events.remove_label_values(&[old]);
            let _ = m.relay_lag_seconds.remove_label_values(&[old]);
        }
        self.lag_role = Some(role);
        // A backlog as /health reports it: positions, events, age of the oldest.
        let lag = |b: crate::store::Backlog| Lag {
            checkpoint: b.checkpoint,
            head: b.head,
            events: b.events,
            seconds: lag_seconds(&b, probes.now),
        };
        let relay_lag = probes.relay_backlog.map(lag);
        let (events, seconds) = relay_lag_gauges(probes, t);
        if let Some(e) = events {
            m.relay_lag_events.with_label_values(&[role]).set(e);
        }
        if let Some(s) = seconds {
            m.relay_lag_seconds.with_label_values(&[role]).set(s);
        }
        if let Some(c) = relay_lag.as_ref().and_then(|l| l.checkpoint) {
            m.relay_checkpoint_position.set(c);
        }
        if let Some(n) = probes.parked {
            m.dlq_parked_aggregates.set(n as i64);
        }
        // The store's count on every instance (the relay's own increments
        // only saw what this instance did; a standby kept its start value).
        if let Some(n) = probes.dlq_depth {
            m.dlq_depth.set(n as i64);
        }
        if self.deps.cql.as_ref().is_some_and(|c| c.cdc_enabled()) {
            m.cdc_log_ttl_seconds.set(self.deps.cfg.store.cql.cdc.log_ttl_seconds as i64);
        }
        // The projector writes these gauges from the same reading
        // (`EventStore::backlog`, held events included); here on every
        // instance, so a standby's follow the active projector's checkpoint.
        // CQL: `events` is None while nothing is held (its lag in events is
        // unknown, reported 0), so a manual unpark brings the gauge to 0.
        let projection_lag = probes.projection_backlog.map(lag);
        if let Some(l) = &projection_lag {
            m.set_projection_backlog(l.events, l.checkpoint);
        }
        if let Some(s) = projection_lag_seconds(probes, t) {
            m.projection_lag_seconds.set(s);
        }
        (relay_lag, projection_lag)
    }

    fn publish(&mut self, probes: &mut Probes) {
        let thresholds = Thresholds::from_config(&self.deps.cfg);
        let (relay_lag, projection_lag) = self.lag_metrics(probes, &thresholds);
        let verdict = evaluate(probes, &self.reported, thresholds);
        let now = Utc::now();
        let metrics = &self.deps.metrics;
        let components: BTreeMap<String, ComponentHealth> = verdict
            .into_iter()
            .map(|(name, (status, detail))| {
                metrics.actor_health_status.with_label_values(&[name]).set(status.gauge());
                (name.to_string(), ComponentHealth { status, detail, last_check: now })
            })
            .collect();
        let overall = components.values().map(|c| c.status).max().unwrap_or(HealthStatus::Unknown);
        metrics.actor_health_status.with_label_values(&["system"]).set(overall.gauge());
        let relay = probes.cdc.as_ref().map(|c| c.progress.clone()).unwrap_or_else(|| probes.relay.clone());
        let shutting_down = self.stopped || !self.deps.intake.is_open();
        let previous = self.deps.health.borrow().clone();
        let report = HealthReport {
            status: overall,
            checked_at: Some(now),
            shutting_down,
            components,
            relay: Some(relay),
            relay_lag,
            projection_lag,
        };
        for (name, c) in &report.components {
            let before = previous.components.get(name).map(|p| p.status);
            if previous.checked_at.is_some() && !shutting_down && before != Some(c.status) {
                match c.status {
                    // "Again" only after a degraded or unhealthy check, not after "unknown" (a start).
                    HealthStatus::Healthy
                        if matches!(before, Some(HealthStatus::Degraded | HealthStatus::Unhealthy)) =>
                    {
                        tracing::info!(component = %name, "component healthy again: {}", c.detail)
                    }
                    HealthStatus::Healthy => tracing::info!(component = %name, "component healthy: {}", c.detail),
                    HealthStatus::Degraded => tracing::warn!(component = %name, "component degraded: {}", c.detail),
                    HealthStatus::Unhealthy => tracing::error!(component = %name, "component unhealthy: {}", c.detail),
                    HealthStatus::Unknown => tracing::info!(component = %name, "component state unknown: {}", c.detail),
                }
            }
        }
        if !shutting_down && (previous.status != overall || previous.checked_at.is_none()) {
            tracing::info!(status = overall.as_str(), "system health");
        }
        self.deps.health.send_replace(report);
    }
}

impl Actor for HealthCheckActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        tracing::info!(actor = %NAME, interval_ms = self.deps.cfg.health.interval_ms, "started");
        let every = Duration::from_millis(self.deps.cfg.health.interval_ms);
        self.interval = Some(ctx.run_interval(every, |act, ctx| act.check(ctx)));
        // State changes of the relay and the projector are checked at once.
        let me = ctx.address();
        let mut relay = self.deps.relay_status.subscribe();
        let mut projection = self.deps.projection_status.subscribe();
        self.deps.runtime.spawn(async move {
            let mut last = (signature(&relay.borrow()), projection_signature(&projection.borrow()));
            loop {
                tokio::select! {
                    r = relay.changed() => if r.is_err() { return },
                    r = projection.changed() => if r.is_err() { return },
                }
                let now = (signature(&relay.borrow()), projection_signature(&projection.borrow()));
                if now != last {
                    last = now;
                    if me.try_send(CheckNow).is_err() && !me.connected() {
                        return;
                    }
                }
            }
        });
    }
}

impl Handler<RegisterComponents> for HealthCheckActor {
    type Result = ();

    fn handle(&mut self, msg: RegisterComponents, ctx: &mut Context<Self>) {
        self.deps.received(NAME);
        self.order = Some(msg.order);
        self.cdc = Some(msg.cdc);
        self.dlq = Some(msg.dlq);
        self.projection = msg.projection;
        self.check(ctx);
    }
}

impl Handler<ComponentEvent> for HealthCheckActor {
    type Result = ();

    fn handle(&mut self, msg: ComponentEvent, ctx: &mut Context<Self>) {
        self.deps.received(NAME);
        self.reported.insert(msg.actor, (msg.lifecycle, msg.detail));
        if !self.stopped {
            self.check(ctx);
        }
    }
}

impl Handler<CheckNow> for HealthCheckActor {
    type Result = ();

    fn handle(&mut self, _msg: CheckNow, ctx: &mut Context<Self>) {
        self.deps.received(NAME);
        self.check(ctx);
    }
}

impl Handler<MarkShuttingDown> for HealthCheckActor {
    type Result = ();

    fn handle(&mut self, _msg: MarkShuttingDown, _ctx: &mut Context<Self>) {
        self.deps.received(NAME);
        self.deps.health.send_modify(|r| r.shutting_down = true);
    }
}

impl Handler<GetSystemHealth> for HealthCheckActor {
    type Result = MessageResult<GetSystemHealth>;

    fn handle(&mut self, _msg: GetSystemHealth, _ctx: &mut Context<Self>) -> Self::Result {
        self.deps.received(NAME);
        MessageResult(self.deps.health.borrow().clone())
    }
}

impl Handler<StopActor> for HealthCheckActor {
    type Result = ();

    fn handle(&mut self, _msg: StopActor, ctx: &mut Context<Self>) {
        self.deps.received(NAME);
        self.stopped = true;
        if let Some(h) = self.interval.take() {
            ctx.cancel_future(h);
        }
        self.deps.health.send_modify(|r| r.shutting_down = true);
        tracing::info!(actor = %NAME, "stopped");
    }
}

impl Handler<InjectFailure> for HealthCheckActor {
    type Result = Result<(), ActorError>;

    /// Resume policy: the failure is logged and checking goes on.
    fn handle(&mut self, msg: InjectFailure, ctx: &mut Context<Self>) -> Self::Result {
        self.deps.received(NAME);
        tracing::error!(actor = %NAME, mode = ?msg.0, "injected failure; resuming (policy: resume)");
        self.check(ctx);
        Ok(())
    }
}

impl Handler<Ping> for HealthCheckActor {
    type Result = MessageResult<Ping>;

    fn handle(&mut self, _msg: Ping, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(if self.stopped { Lifecycle::Stopped } else { Lifecycle::Running })
    }
}

/// The parts of the relay status whose change must show in /health at once
/// (counters like `delivered` do not count).
fn signature(s: &RelayStatus) -> String {
    let broker = match &s.broker {
        crate::relay::producer::BrokerState::Unknown => "unknown".to_string(),
        crate::relay::producer::BrokerState::Reachable { .. } => "reachable".to_string(),
        crate::relay::producer::BrokerState::Unreachable { .. } => "unreachable".to_string(),
    };
    let feed = match &s.feed {
        crate::relay::status::FeedState::Unknown => "unknown",
        crate::relay::status::FeedState::Ok => "ok",
        crate::relay::status::FeedState::Failing { .. } => "failing",
    };
    format!("{:?}|{broker}|{:?}|{feed}|{}|{}", s.role, s.breaker, s.parked_aggregates, s.running)
}

fn projection_signature(s: &crate::projection::ProjectionStatus) -> String {
    format!("{}|{}|{}", s.running, s.store_ok, s.parked_aggregates)
}
