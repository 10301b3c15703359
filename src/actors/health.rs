//! HealthCheckActor: Healthy / Degraded / Unhealthy per component and
//! overall (seed 001), every `health.interval_ms`.
//!
//! Each check probes the store (`head_position`, plus, for SQLite, that the
//! database file at `store.path` is still the file that was opened), asks
//! every child for its lifecycle (a child that does not answer is
//! Unhealthy), and reads the relay's status from the CdcStreamProcessor.
//! The result is published on a `watch` channel that /health and
//! /health/ready read (they never query a store) and mirrored in
//! `actor_health_status{component}` (0 healthy, 1 degraded, 2 unhealthy;
//! `component="system"` is the overall status).
//!
//! Rules:
//! - store: probe fails or the database file is gone/replaced -> Unhealthy.
//! - kafka: broker unreachable or circuit breaker not closed -> Degraded
//!   (the breaker state is read live from `circuit_breaker_state`; the lag
//!   is the store head read by this check minus the relay's checkpoint).
//! - cdc_processor: relay cannot read the store -> Unhealthy; lag over
//!   `health.lag_degraded_events` -> Degraded; restarting -> Degraded;
//!   gave up or not answering -> Unhealthy.
//! - order_actor / dlq_actor: restarting -> Degraded; gave up or not
//!   answering -> Unhealthy.
//! - projections (the ProjectionActor): the projector reports store errors
//!   -> Degraded; lag (store head read by this check minus the projection
//!   checkpoint) over `health.projection_lag_degraded_events` -> Degraded;
//!   restarting or not running -> Degraded; gave up or not answering ->
//!   Unhealthy. Backends without read models (CQL) report Healthy with
//!   "not available". The live lag is mirrored in `projection_lag_events`.
//! - overall = the worst component.
//!
//! Policy: resume. A failed probe is a health result, never an actor failure.

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Backend;
use crate::relay::{BreakerState, RelayStatus};
use crate::store::StoreError;

use super::messages::*;
use super::{ActorDeps, CdcStreamProcessor, DlqActor, OrderActor, ProjectionActor};

const NAME: ActorName = ActorName::HealthCheck;

/// The components /health reports, in order.
pub const COMPONENTS: [&str; 6] = ["store", "kafka", "cdc_processor", "order_actor", "dlq_actor", "projections"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Unhealthy,
}

impl HealthStatus {
    /// Value of `actor_health_status`.
    pub fn gauge(&self) -> i64 {
        match self {
            HealthStatus::Healthy => 0,
            HealthStatus::Degraded => 1,
            HealthStatus::Unhealthy => 2,
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComponentHealth {
    pub status: HealthStatus,
    pub detail: String,
    pub last_check: DateTime<Utc>,
}

/// What /health returns.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    /// Overall status: the worst component.
    pub status: HealthStatus,
    /// When the last check finished (None before the first one).
    pub checked_at: Option<DateTime<Utc>>,
    pub shutting_down: bool,
    pub components: BTreeMap<String, ComponentHealth>,
    /// The relay's progress, lag and breaker state at the last check.
    pub relay: Option<RelayStatus>,
}

impl HealthReport {
    /// Before the first check: nothing known yet.
    pub fn starting() -> HealthReport {
        let now = Utc::now();
        let components = COMPONENTS
            .iter()
            .map(|c| {
                (
                    c.to_string(),
                    ComponentHealth {
                        status: HealthStatus::Healthy,
                        detail: "not checked yet".into(),
                        last_check: now,
                    },
                )
            })
            .collect();
        HealthReport { status: HealthStatus::Healthy, checked_at: None, shutting_down: false, components, relay: None }
    }

    pub fn component(&self, name: &str) -> Option<&ComponentHealth> {
        self.components.get(name)
    }

    /// Ready for traffic: checked at least once, not shutting down, store reachable.
    pub fn ready(&self) -> Result<(), String> {
        if self.shutting_down {
            return Err("shutting down".into());
        }
        if self.checked_at.is_none() {
            return Err("starting: no health check has completed yet".into());
        }
        match self.component("store") {
            Some(c) if c.status == HealthStatus::Unhealthy => Err(format!("store: {}", c.detail)),
            Some(_) => Ok(()),
            None => Err("store not checked".into()),
        }
    }
}

/// What one check gathered (input of [`evaluate`]).
#[derive(Debug, Clone)]
pub struct Probes {
    /// The store's head position (None: the backend has no feed positions).
    pub store: Result<Option<i64>, String>,
    pub order: Option<Lifecycle>,
    pub dlq: Option<Lifecycle>,
    pub dlq_depth: Option<u64>,
    pub cdc: Option<ProcessorStatus>,
    /// Relay status straight from the channel (used when the processor does not answer).
    pub relay: RelayStatus,
    /// Whether the backend has read models (a ProjectionActor was started).
    pub projection_enabled: bool,
    /// The ProjectionActor's answer (None: it did not answer).
    pub projection: Option<ProjectionActorStatus>,
}

/// Health thresholds (from `health.*`).
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub relay_lag_degraded_events: i64,
    pub projection_lag_degraded_events: i64,
}

impl Thresholds {
    pub fn from_config(h: &crate::config::HealthConfig) -> Thresholds {
        Thresholds {
            relay_lag_degraded_events: h.lag_degraded_events,
            projection_lag_degraded_events: h.projection_lag_degraded_events,
        }
    }
}

/// Latest lifecycle detail a child reported about itself.
pub type Reported = HashMap<ActorName, (Lifecycle, String)>;

fn lifecycle_health(actor: ActorName, l: Option<Lifecycle>, reported: &Reported) -> (HealthStatus, String) {
    let note = reported.get(&actor).map(|(_, d)| d.clone()).unwrap_or_default();
    match l {
        None => (HealthStatus::Unhealthy, "not responding".into()),
        Some(Lifecycle::GaveUp) => {
            (HealthStatus::Unhealthy, if note.is_empty() { "gave up: restart budget exhausted".into() } else { note })
        }
        Some(Lifecycle::Restarting { restart }) => {
            (HealthStatus::Degraded, format!("restarting (restart {restart}): {note}"))
        }
        Some(Lifecycle::Starting) => (HealthStatus::Degraded, "starting".into()),
        Some(Lifecycle::Stopped) => (HealthStatus::Degraded, "stopped (shutting down)".into()),
        Some(Lifecycle::Running) => {
            (HealthStatus::Healthy, if note.is_empty() { "running".into() } else { format!("running; {note}") })
        }
    }
}

/// Pure health rules: probes -> status and detail per component.
pub fn evaluate(p: &Probes, reported: &Reported, t: Thresholds) -> BTreeMap<&'static str, (HealthStatus, String)> {
    let lag_degraded_events = t.relay_lag_degraded_events;
    let mut out = BTreeMap::new();
    out.insert(
        "store",
        match &p.store {
            Ok(Some(head)) => (HealthStatus::Healthy, format!("reachable; head position {head}")),
            Ok(None) => (HealthStatus::Healthy, "reachable".into()),
            Err(e) => (HealthStatus::Unhealthy, e.clone()),
        },
    );
    let relay = p.cdc.as_ref().map(|c| &c.relay).unwrap_or(&p.relay);
    let err = relay.last_error.clone().unwrap_or_else(|| "no error recorded".into());
    out.insert(
        "kafka",
        if !relay.broker_ok {
            (
                HealthStatus::Degraded,
                format!("broker unreachable; circuit breaker {}; last error: {err}", relay.breaker.as_str()),
            )
        } else if relay.breaker == BreakerState::Open {
            (HealthStatus::Degraded, format!("circuit breaker open; last error: {err}"))
        } else if relay.breaker == BreakerState::HalfOpen {
            (HealthStatus::Degraded, "circuit breaker half-open: probing the broker".into())
        } else {
            (
                HealthStatus::Healthy,
                format!("broker reachable; circuit breaker closed; {} events delivered", relay.delivered),
            )
        },
    );
    let (mut st, mut detail) = lifecycle_health(ActorName::Cdc, p.cdc.as_ref().map(|c| c.lifecycle), reported);
    if st == HealthStatus::Healthy {
        let progress = format!("checkpoint {}, head {}, lag {} events", relay.checkpoint, relay.head, relay.lag);
        (st, detail) = if !relay.store_ok {
            (HealthStatus::Unhealthy, format!("relay cannot read the store: {err}"))
        } else if relay.lag > lag_degraded_events {
            (HealthStatus::Degraded, format!("lag {} events exceeds {lag_degraded_events}; {progress}", relay.lag))
        } else if !p.cdc.as_ref().is_some_and(|c| c.relay_running) {
            (HealthStatus::Degraded, format!("relay not running; {progress}"))
        } else {
            (HealthStatus::Healthy, format!("relay running; {progress}"))
        };
    }
    out.insert("cdc_processor", (st, detail));
    out.insert("order_actor", lifecycle_health(ActorName::Order, p.order, reported));
    let (st, mut detail) = lifecycle_health(ActorName::Dlq, p.dlq, reported);
    if let Some(n) = p.dlq_depth {
        detail = format!("{detail}; {n} dead letters");
    }
    out.insert("dlq_actor", (st, detail));
    out.insert("projections", projections_health(p, reported, t.projection_lag_degraded_events));
    out
}

fn projections_health(p: &Probes, reported: &Reported, lag_degraded_events: i64) -> (HealthStatus, String) {
    if !p.projection_enabled {
        return (HealthStatus::Healthy, "read models are not available on this backend".into());
    }
    let (st, detail) = lifecycle_health(ActorName::Projection, p.projection.as_ref().map(|s| s.lifecycle), reported);
    let Some(s) = &p.projection else { return (st, detail) };
    let pr = &s.projection;
    let progress = format!("checkpoint {}, head {}, lag {} events", pr.checkpoint, pr.head, pr.lag);
    if st != HealthStatus::Healthy {
        return (st, format!("{detail}; {progress}"));
    }
    if !pr.store_ok {
        let err = pr.last_error.clone().unwrap_or_else(|| "no error recorded".into());
        (HealthStatus::Degraded, format!("projector cannot read or write the store: {err}; {progress}"))
    } else if pr.lag > lag_degraded_events {
        (HealthStatus::Degraded, format!("lag {} events exceeds {lag_degraded_events}; {progress}", pr.lag))
    } else if !s.projector_running {
        (HealthStatus::Degraded, format!("projector not running; {progress}"))
    } else {
        (HealthStatus::Healthy, format!("projector running; {progress}"))
    }
}

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
    sqlite: Option<(PathBuf, Option<(u64, u64)>)>,
    interval: Option<SpawnHandle>,
}

/// Keeps one descriptor of the database file open for the life of the
/// process, so its inode can't be freed and reused by a replacement file
/// (which would defeat the identity check). Never closed: see `check_sqlite_file`.
fn hold_open(path: &Path) {
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    if let Ok(f) = std::fs::File::open(path) {
        if let Ok(mut held) = HELD.lock() {
            held.push(f);
        }
    }
}

#[cfg(unix)]
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_identity(_path: &Path) -> Option<(u64, u64)> {
    None
}

/// The SQLite file must still be the one the store opened: a deleted or
/// replaced file means new commits go to a file nobody will read again.
///
/// Only `stat`, never `open`: closing any file descriptor of the database
/// file drops every POSIX lock this process holds on it, after which another
/// process may checkpoint and delete the WAL under our live connections
/// ("How To Corrupt An SQLite Database File", section 2.2). That happened:
/// a header read here made the daemon see "database disk image is
/// malformed" while CLI processes wrote to the same file.
fn check_sqlite_file(path: &Path, identity: Option<(u64, u64)>) -> Result<(), String> {
    if std::fs::metadata(path).is_err() {
        return Err(format!("database file {} is gone", path.display()));
    }
    if identity.is_some() && file_identity(path) != identity {
        return Err(format!("database file {} was replaced by another file", path.display()));
    }
    Ok(())
}

impl HealthCheckActor {
    pub fn new(deps: ActorDeps) -> HealthCheckActor {
        let sqlite = (deps.cfg.store.backend == Backend::Sqlite).then(|| {
            let p = deps.cfg.store.path.clone();
            hold_open(&p);
            let id = file_identity(&p);
            (p, id)
        });
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
            sqlite,
            interval: None,
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
        let consumer = self.deps.cfg.relay.consumer_name.clone();
        let sqlite = self.sqlite.clone();
        let (order, cdc, dlq) = (self.order.clone(), self.cdc.clone(), self.dlq.clone());
        let relay = self.deps.relay_status.borrow().clone();
        let projection = self.projection.clone();
        let projection_enabled = projection.is_some();
        let fut = async move {
            let store_probe = async {
                let head = match tokio::time::timeout(t, store.head_position()).await {
                    Err(_) => return Err(format!("no answer within {t:?}")),
                    // A backend without feed positions (CQL): probe with a checkpoint read.
                    Ok(Err(StoreError::Unsupported { .. })) => {
                        match tokio::time::timeout(t, store.get_checkpoint(&consumer)).await {
                            Err(_) => return Err(format!("no answer within {t:?}")),
                            Ok(Err(e)) => return Err(format!("unreachable: {e}")),
                            Ok(Ok(_)) => None,
                        }
                    }
                    Ok(Err(e)) => return Err(format!("unreachable: {e}")),
                    Ok(Ok(head)) => Some(head),
                };
                if let Some((path, id)) = sqlite {
                    tokio::task::spawn_blocking(move || check_sqlite_file(&path, id))
                        .await
                        .map_err(|e| e.to_string())??;
                }
                Ok(head)
            };
            let order_probe = async {
                match order {
                    Some(a) => tokio::time::timeout(t, a.send(Ping)).await.ok().and_then(|r| r.ok()),
                    None => Some(Lifecycle::Starting),
                }
            };
            let cdc_probe = async {
                match cdc {
                    Some(a) => tokio::time::timeout(t, a.send(GetRelayStatus)).await.ok().and_then(|r| r.ok()),
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
                    Some(a) => tokio::time::timeout(t, a.send(GetProjectionStatus)).await.ok().and_then(|r| r.ok()),
                    None => None,
                }
            };
            let (store, order, cdc, (dlq, dlq_depth), projection) =
                tokio::join!(store_probe, order_probe, cdc_probe, dlq_probe, projection_probe);
            Probes { store, order, dlq, dlq_depth, cdc, relay, projection_enabled, projection }
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

    /// Completes the relay's status with live values: the breaker state as
    /// the breaker itself last set it (`circuit_breaker_state`), and the lag
    /// against the head this check just read from the store.
    fn live_relay(&self, probes: &mut Probes) {
        let breaker = match self.deps.metrics.circuit_breaker_state.get() {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        };
        let head = probes.store.as_ref().ok().copied().flatten();
        for r in [Some(&mut probes.relay), probes.cdc.as_mut().map(|c| &mut c.relay)].into_iter().flatten() {
            r.breaker = breaker;
            if let Some(h) = head {
                r.head = r.head.max(h);
                r.lag = (r.head - r.checkpoint).max(0);
            }
        }
        // The projection lag against the same head: a projector that is
        // stopped or stuck does not update its own lag.
        if let Some(p) = probes.projection.as_mut().map(|s| &mut s.projection) {
            if let Some(h) = head {
                p.head = p.head.max(h);
                p.lag = (p.head - p.checkpoint).max(0);
            }
            self.deps.metrics.projection_lag_events.set(p.lag);
        }
    }

    fn publish(&mut self, probes: &mut Probes) {
        self.live_relay(probes);
        let verdict = evaluate(probes, &self.reported, Thresholds::from_config(&self.deps.cfg.health));
        let now = Utc::now();
        let metrics = &self.deps.metrics;
        let components: BTreeMap<String, ComponentHealth> = verdict
            .into_iter()
            .map(|(name, (status, detail))| {
                metrics.actor_health_status.with_label_values(&[name]).set(status.gauge());
                (name.to_string(), ComponentHealth { status, detail, last_check: now })
            })
            .collect();
        let overall = components.values().map(|c| c.status).max().unwrap_or(HealthStatus::Healthy);
        metrics.actor_health_status.with_label_values(&["system"]).set(overall.gauge());
        let relay = probes.cdc.as_ref().map(|c| c.relay.clone()).unwrap_or_else(|| probes.relay.clone());
        let shutting_down = self.stopped || !self.deps.intake.is_open();
        let previous = self.deps.health.borrow().clone();
        let report =
            HealthReport { status: overall, checked_at: Some(now), shutting_down, components, relay: Some(relay) };
        for (name, c) in &report.components {
            let before = previous.components.get(name).map(|p| p.status);
            if previous.checked_at.is_some() && !shutting_down && before != Some(c.status) {
                match c.status {
                    HealthStatus::Healthy => tracing::info!(component = %name, "component healthy again: {}", c.detail),
                    HealthStatus::Degraded => tracing::warn!(component = %name, "component degraded: {}", c.detail),
                    HealthStatus::Unhealthy => tracing::error!(component = %name, "component unhealthy: {}", c.detail),
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
    type Result = Result<(), String>;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn probes() -> Probes {
        let relay = RelayStatus { running: true, ..RelayStatus::default() };
        Probes {
            store: Ok(Some(10)),
            order: Some(Lifecycle::Running),
            dlq: Some(Lifecycle::Running),
            dlq_depth: Some(0),
            cdc: Some(ProcessorStatus {
                lifecycle: Lifecycle::Running,
                restarts_in_window: 0,
                relay_running: true,
                relay: relay.clone(),
            }),
            relay,
            projection_enabled: true,
            projection: Some(ProjectionActorStatus {
                lifecycle: Lifecycle::Running,
                restarts_in_window: 0,
                projector_running: true,
                projection: crate::projection::ProjectionStatus { running: true, ..Default::default() },
            }),
        }
    }

    const T: Thresholds = Thresholds { relay_lag_degraded_events: 100, projection_lag_degraded_events: 100 };

    fn worst(v: &BTreeMap<&'static str, (HealthStatus, String)>) -> HealthStatus {
        v.values().map(|(s, _)| *s).max().unwrap()
    }

    #[test]
    fn all_good_is_healthy() {
        let v = evaluate(&probes(), &HashMap::new(), T);
        assert_eq!(worst(&v), HealthStatus::Healthy, "{v:?}");
        assert_eq!(v.len(), COMPONENTS.len());
    }

    #[test]
    fn broker_breaker_and_lag_degrade() {
        let mut p = probes();
        p.cdc.as_mut().unwrap().relay.broker_ok = false;
        assert_eq!(evaluate(&p, &HashMap::new(), T)["kafka"].0, HealthStatus::Degraded);
        let mut p = probes();
        p.cdc.as_mut().unwrap().relay.breaker = BreakerState::Open;
        assert_eq!(evaluate(&p, &HashMap::new(), T)["kafka"].0, HealthStatus::Degraded);
        let mut p = probes();
        p.cdc.as_mut().unwrap().relay.lag = 101;
        let v = evaluate(&p, &HashMap::new(), T);
        assert_eq!(v["cdc_processor"].0, HealthStatus::Degraded);
        assert!(v["cdc_processor"].1.contains("lag 101"));
    }

    #[test]
    fn store_failures_and_gave_up_are_unhealthy() {
        let mut p = probes();
        p.store = Err("database file x is gone".into());
        assert_eq!(evaluate(&p, &HashMap::new(), T)["store"].0, HealthStatus::Unhealthy);
        let mut p = probes();
        p.cdc.as_mut().unwrap().relay.store_ok = false;
        assert_eq!(evaluate(&p, &HashMap::new(), T)["cdc_processor"].0, HealthStatus::Unhealthy);
        let mut p = probes();
        p.order = Some(Lifecycle::GaveUp);
        assert_eq!(evaluate(&p, &HashMap::new(), T)["order_actor"].0, HealthStatus::Unhealthy);
        let mut p = probes();
        p.cdc = None;
        assert_eq!(evaluate(&p, &HashMap::new(), T)["cdc_processor"].0, HealthStatus::Unhealthy);
        let mut p = probes();
        p.order = Some(Lifecycle::Restarting { restart: 1 });
        assert_eq!(evaluate(&p, &HashMap::new(), T)["order_actor"].0, HealthStatus::Degraded);
    }

    #[test]
    fn projection_lag_store_errors_and_lifecycle() {
        let mut p = probes();
        p.projection.as_mut().unwrap().projection.lag = 100;
        assert_eq!(evaluate(&p, &HashMap::new(), T)["projections"].0, HealthStatus::Healthy);
        p.projection.as_mut().unwrap().projection.lag = 101;
        let v = evaluate(&p, &HashMap::new(), T);
        assert_eq!(v["projections"].0, HealthStatus::Degraded);
        assert!(v["projections"].1.contains("lag 101"), "{}", v["projections"].1);
        let mut p = probes();
        let s = &mut p.projection.as_mut().unwrap().projection;
        s.store_ok = false;
        s.last_error = Some("disk I/O error".into());
        let v = evaluate(&p, &HashMap::new(), T);
        assert_eq!(v["projections"].0, HealthStatus::Degraded);
        assert!(v["projections"].1.contains("disk I/O error"));
        let mut p = probes();
        p.projection.as_mut().unwrap().lifecycle = Lifecycle::Restarting { restart: 1 };
        assert_eq!(evaluate(&p, &HashMap::new(), T)["projections"].0, HealthStatus::Degraded);
        let mut p = probes();
        p.projection = None;
        assert_eq!(evaluate(&p, &HashMap::new(), T)["projections"].0, HealthStatus::Unhealthy);
        // No read models on this backend: nothing to report.
        p.projection_enabled = false;
        let v = evaluate(&p, &HashMap::new(), T);
        assert_eq!(v["projections"].0, HealthStatus::Healthy);
        assert!(v["projections"].1.contains("not available"));
    }

    #[test]
    fn ready_needs_a_check_a_store_and_no_shutdown() {
        let mut r = HealthReport::starting();
        assert!(r.ready().is_err());
        r.checked_at = Some(Utc::now());
        assert!(r.ready().is_ok());
        r.components.get_mut("store").unwrap().status = HealthStatus::Unhealthy;
        assert!(r.ready().is_err());
        r.components.get_mut("store").unwrap().status = HealthStatus::Healthy;
        r.shutting_down = true;
        assert!(r.ready().is_err());
    }

    #[test]
    fn sqlite_file_checks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.db");
        assert!(check_sqlite_file(&p, None).unwrap_err().contains("gone"));
        std::fs::write(&p, b"SQLite format 3\0rest").unwrap();
        hold_open(&p);
        let id = file_identity(&p);
        assert!(check_sqlite_file(&p, id).is_ok());
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, b"garbage garbage garbage").unwrap();
        let e = check_sqlite_file(&p, id).unwrap_err();
        assert!(e.contains("replaced"), "{e}");
    }
}
