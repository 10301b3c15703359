//! The health rules: what one check gathered ([`Probes`]) -> status and
//! detail per component (seed 001). Pure: no actor, no I/O, no clock.
//!
//! - store: probe fails (unreachable, database file gone or replaced) -> Unhealthy.
//! - kafka: broker unreachable or circuit breaker not closed -> Degraded.
//! - cdc_processor: relay cannot read the store -> Unhealthy; lag over
//!   `health.lag_degraded_events` -> Degraded; restarting -> Degraded;
//!   gave up or not answering -> Unhealthy.
//! - order_actor / dlq_actor: restarting -> Degraded; gave up or not
//!   answering -> Unhealthy.
//! - projections: store errors -> Degraded; lag over
//!   `health.projection_lag_degraded_events` -> Degraded; restarting or not
//!   running -> Degraded; gave up or not answering -> Unhealthy. Backends
//!   without read models report Healthy with "not available".
//! - overall = the worst component.

use std::collections::{BTreeMap, HashMap};

use crate::projection::ProjectionStatus;
use crate::relay::{BreakerState, RelayStatus};

use super::report::HealthStatus;
use crate::actors::messages::{ActorName, Lifecycle};
use crate::actors::supervision::TaskStatus;

/// What one check gathered (input of [`evaluate`]).
#[derive(Debug, Clone)]
pub struct Probes {
    /// The store's head position (None: the backend has no feed positions).
    pub store: Result<Option<i64>, String>,
    pub order: Option<Lifecycle>,
    pub dlq: Option<Lifecycle>,
    pub dlq_depth: Option<u64>,
    pub cdc: Option<TaskStatus<RelayStatus>>,
    /// Relay status straight from the channel (used when the processor does not answer).
    pub relay: RelayStatus,
    /// Whether the backend has read models (a ProjectionActor was started).
    pub projection_enabled: bool,
    /// The ProjectionActor's answer (None: it did not answer).
    pub projection: Option<TaskStatus<ProjectionStatus>>,
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
    let relay = p.cdc.as_ref().map(|c| &c.progress).unwrap_or(&p.relay);
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
        } else if !p.cdc.as_ref().is_some_and(|c| c.running) {
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
    let pr = &s.progress;
    let progress = format!("checkpoint {}, head {}, lag {} events", pr.checkpoint, pr.head, pr.lag);
    if st != HealthStatus::Healthy {
        return (st, format!("{detail}; {progress}"));
    }
    if !pr.store_ok {
        let err = pr.last_error.clone().unwrap_or_else(|| "no error recorded".into());
        (HealthStatus::Degraded, format!("projector cannot read or write the store: {err}; {progress}"))
    } else if pr.lag > lag_degraded_events {
        (HealthStatus::Degraded, format!("lag {} events exceeds {lag_degraded_events}; {progress}", pr.lag))
    } else if !s.running {
        (HealthStatus::Degraded, format!("projector not running; {progress}"))
    } else {
        (HealthStatus::Healthy, format!("projector running; {progress}"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::report::COMPONENTS;
    use super::*;

    fn probes() -> Probes {
        let relay = RelayStatus { running: true, ..RelayStatus::default() };
        Probes {
            store: Ok(Some(10)),
            order: Some(Lifecycle::Running),
            dlq: Some(Lifecycle::Running),
            dlq_depth: Some(0),
            cdc: Some(TaskStatus {
                lifecycle: Lifecycle::Running,
                restarts_in_window: 0,
                running: true,
                progress: relay.clone(),
            }),
            relay,
            projection_enabled: true,
            projection: Some(TaskStatus {
                lifecycle: Lifecycle::Running,
                restarts_in_window: 0,
                running: true,
                progress: crate::projection::ProjectionStatus { running: true, ..Default::default() },
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
        p.cdc.as_mut().unwrap().progress.broker_ok = false;
        assert_eq!(evaluate(&p, &HashMap::new(), T)["kafka"].0, HealthStatus::Degraded);
        let mut p = probes();
        p.cdc.as_mut().unwrap().progress.breaker = BreakerState::Open;
        assert_eq!(evaluate(&p, &HashMap::new(), T)["kafka"].0, HealthStatus::Degraded);
        let mut p = probes();
        p.cdc.as_mut().unwrap().progress.lag = 101;
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
        p.cdc.as_mut().unwrap().progress.store_ok = false;
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
        p.projection.as_mut().unwrap().progress.lag = 100;
        assert_eq!(evaluate(&p, &HashMap::new(), T)["projections"].0, HealthStatus::Healthy);
        p.projection.as_mut().unwrap().progress.lag = 101;
        let v = evaluate(&p, &HashMap::new(), T);
        assert_eq!(v["projections"].0, HealthStatus::Degraded);
        assert!(v["projections"].1.contains("lag 101"), "{}", v["projections"].1);
        let mut p = probes();
        let s = &mut p.projection.as_mut().unwrap().progress;
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
}
