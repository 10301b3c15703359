//! What /health returns: the status per component and overall, and the
//! relay's progress at the last check (read by the HTTP layer).
//!
//! Guarantee: plain data; `ready` is the one readiness rule (checked once,
//! not shutting down, store reachable).

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;

use crate::relay::RelayStatus;

/// The components /health reports, in order.
pub const COMPONENTS: [&str; 6] = ["store", "kafka", "cdc_processor", "order_actor", "dlq_actor", "projections"];

/// The least [`HealthReport::stale_after`]: a report this recent is never stale.
pub const MIN_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// A component's state; ordered from best to worst (the overall status is
/// the worst component). `Unknown`: not known yet, never reported healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Healthy,
    Unknown,
    Degraded,
    Unhealthy,
}

impl HealthStatus {
    /// Value of `actor_health_status`: 0 healthy, 1 degraded, 2 unhealthy, 3 unknown.
    pub fn gauge(&self) -> i64 {
        match self {
            HealthStatus::Healthy => 0,
            HealthStatus::Degraded => 1,
            HealthStatus::Unhealthy => 2,
            HealthStatus::Unknown => 3,
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unknown => "unknown",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

/// How far a consumer is behind, as the store saw it at the last check.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Lag {
    pub checkpoint: Option<i64>,
    pub head: Option<i64>,
    /// Unpublished (or unapplied) events, held events of parked aggregates included.
    pub events: Option<i64>,
    /// Age of the oldest of them (0 when caught up).
    pub seconds: f64,
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
    /// The relay's role, progress, broker and breaker state at the last check.
    pub relay: Option<RelayStatus>,
    /// The relay's lag as the store saw it at the last check.
    pub relay_lag: Option<Lag>,
    /// The read models' lag as the store saw it at the last check.
    pub projection_lag: Option<Lag>,
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
                        status: HealthStatus::Unknown,
                        detail: "not checked yet".into(),
                        last_check: now,
                    },
                )
            })
            .collect();
        HealthReport {
            status: HealthStatus::Unknown,
            checked_at: None,
            shutting_down: false,
            components,
            relay: None,
            relay_lag: None,
            projection_lag: None,
        }
    }

    /// How old a report may get before /health and /health/ready stop
    /// trusting it: 6 check intervals (one check may take several probe
    /// timeouts of `health.interval_ms` each when the store hangs), at least
    /// [`MIN_STALE_AFTER`].
    pub fn stale_after(interval_ms: u64) -> std::time::Duration {
        std::time::Duration::from_millis(interval_ms.saturating_mul(6)).max(MIN_STALE_AFTER)
    }

    /// `Err(reason)` when the last check finished more than `max_age` before
    /// `now`: the health check actor stopped publishing (stalled, stopped),
    /// so the report no longer says anything about the process. Before the
    /// first check the age counts from the starting report's creation (a
    /// health actor that died before its first report is not "starting"
    /// for ever).
    pub fn fresh(&self, now: DateTime<Utc>, max_age: std::time::Duration) -> Result<(), String> {
        let (at, what) = match self.checked_at {
            Some(at) => (at, "the last health check finished"),
            None => match self.components.values().map(|c| c.last_check).min() {
                Some(created) => (created, "no health check has finished since the start"),
                None => return Ok(()),
            },
        };
        let age = (now - at).to_std().unwrap_or_default();
        if age > max_age {
            return Err(format!(
                "stale: {what} {}s ago (at {}), over the {}s bound; the health check actor is not reporting",
                age.as_secs(),
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                max_age.as_secs()
            ));
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_a_check_a_store_and_no_shutdown() {
        let mut r = HealthReport::starting();
        assert!(r.ready().is_err());
        assert_eq!(r.status, HealthStatus::Unknown, "nothing is healthy before the first check");
        r.checked_at = Some(Utc::now());
        assert!(r.ready().is_ok());
        r.components.get_mut("store").unwrap().status = HealthStatus::Unhealthy;
        assert!(r.ready().is_err());
        r.components.get_mut("store").unwrap().status = HealthStatus::Healthy;
        r.shutting_down = true;
        assert!(r.ready().is_err());
    }

    /// Review finding: a report was served whatever its age, so a stalled
    /// health actor left /health saying 200 healthy forever.
    #[test]
    fn a_report_older_than_the_bound_is_stale() {
        use std::time::Duration;
        assert_eq!(HealthReport::stale_after(10_000), Duration::from_secs(60));
        assert_eq!(HealthReport::stale_after(100), MIN_STALE_AFTER);
        let now = Utc::now();
        let mut r = HealthReport::starting();
        assert!(r.fresh(now, Duration::from_secs(30)).is_ok(), "before the first check: starting, not stale");
        r.checked_at = Some(now - chrono::Duration::seconds(29));
        assert!(r.fresh(now, Duration::from_secs(30)).is_ok());
        r.checked_at = Some(now - chrono::Duration::seconds(31));
        let why = r.fresh(now, Duration::from_secs(30)).unwrap_err();
        assert!(why.starts_with("stale:") && why.contains("31s ago"), "{why}");
    }

    /// Review finding: a starting report was never stale, so a health actor
    /// that died before its first report left /health answering "unknown"
    /// (200) for ever.
    #[test]
    fn a_starting_report_goes_stale_too() {
        use std::time::Duration;
        let r = HealthReport::starting();
        let later = Utc::now() + chrono::Duration::minutes(10);
        let why = r.fresh(later, Duration::from_secs(60)).unwrap_err();
        assert!(why.starts_with("stale: no health check has finished since the start"), "{why}");
    }
}
