//! `[health]`, `[service]` and `[supervision]`: how the daemon checks,
//! runs commands and restarts its actors.
//!
//! Guarantee: plain option types with their defaults and the checks of their
//! own keys.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Longest backoff between two restarts of a supervised actor.
pub const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(10);

/// How long a failing task is counted to run before it fails, when the
/// restart budget is checked against its window.
const START_ALLOWANCE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    pub interval_ms: u64,
    /// Relay lag (events) above which the relay is Degraded.
    pub lag_degraded_events: i64,
    /// Projection lag (events committed but not yet in the read models)
    /// above which the `projections` component is Degraded.
    pub projection_lag_degraded_events: i64,
    /// Age of the oldest unpublished event above which the relay is Degraded.
    pub lag_degraded_seconds: u64,
    /// The relay is Degraded while its feed reads fail, Unhealthy once they
    /// have failed for this long.
    pub feed_unhealthy_after_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_ms: 10_000,
            lag_degraded_events: 10_000,
            projection_lag_degraded_events: 10_000,
            lag_degraded_seconds: 300,
            feed_unhealthy_after_ms: 60_000,
        }
    }
}

impl HealthConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.interval_ms < 100 {
            return Err(ConfigError("health.interval_ms must be >= 100".into()));
        }
        if self.lag_degraded_events < 1 {
            return Err(ConfigError(
                "health.lag_degraded_events must be >= 1 (some lag is normal while events are being published)".into(),
            ));
        }
        if self.lag_degraded_seconds < 1 {
            return Err(ConfigError(
                "health.lag_degraded_seconds must be >= 1 (at 0 every unpublished event is too old: the relay is always Degraded)"
                    .into(),
            ));
        }
        if self.feed_unhealthy_after_ms < 1_000 {
            return Err(ConfigError(format!(
                "health.feed_unhealthy_after_ms = {}: must be >= 1000 (the relay retries a failed feed read; below that one transient error makes it Unhealthy)",
                self.feed_unhealthy_after_ms
            )));
        }
        if self.projection_lag_degraded_events < 1 {
            return Err(ConfigError(
                "health.projection_lag_degraded_events must be >= 1 (some lag is normal while events are being applied)"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    pub max_conflict_retries: u32,
    pub snapshot_every: i64,
    pub default_currency: String,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig { max_conflict_retries: 3, snapshot_every: 100, default_currency: "EUR".into() }
    }
}

impl ServiceConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.snapshot_every < 0 {
            return Err(ConfigError(format!(
                "service.snapshot_every = {}: must be >= 0 (0: no snapshots)",
                self.snapshot_every
            )));
        }
        // The same two checks a command's currency gets: the shape, then the
        // ISO 4217 list (`domain::iso4217`).
        let known = crate::domain::Currency::new(&self.default_currency).is_ok()
            && crate::domain::iso4217::is_iso_4217(&self.default_currency);
        if !known {
            return Err(ConfigError(format!(
                "service.default_currency {:?}: expected an ISO 4217 code like EUR",
                self.default_currency
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisionConfig {
    /// Restarts allowed within `restart_window_ms` before giving up.
    pub max_restarts: u32,
    pub restart_window_ms: u64,
    pub restart_backoff_ms: u64,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        SupervisionConfig { max_restarts: 5, restart_window_ms: 60_000, restart_backoff_ms: 200 }
    }
}

impl SupervisionConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_restarts == 0 {
            return Err(ConfigError("supervision.max_restarts must be >= 1".into()));
        }
        if self.restart_window_ms == 0 {
            return Err(ConfigError("supervision.restart_window_ms must be >= 1".into()));
        }
        // A task that fails soon after it starts restarts after each
        // backoff: unless its `max_restarts` backoffs, and a second of start
        // each, fit in the window, its early restarts leave the window before
        // the budget is used up, and it loops for ever instead of the daemon
        // exiting 70. (Past 64 restarts every backoff is at its 10 s cap.)
        let window = Duration::from_millis(self.restart_window_ms);
        let counted = self.max_restarts.min(64);
        let mut crash_loop: Duration = (1..=counted).map(|n| self.restart_delay(n) + START_ALLOWANCE).sum();
        crash_loop = crash_loop.saturating_add(
            (MAX_RESTART_BACKOFF + START_ALLOWANCE).saturating_mul(self.max_restarts.saturating_sub(counted)),
        );
        if crash_loop >= window {
            return Err(ConfigError(format!(
                "supervision.restart_window_ms = {} is too short for max_restarts = {} with restart_backoff_ms = {}: \
                 {} restarts of a task that fails within a second of its start take {} ms or more (the backoff \
                 doubles, at most 10 s), so the budget would never run out; make the window longer or the backoff shorter",
                self.restart_window_ms,
                self.max_restarts,
                self.restart_backoff_ms,
                self.max_restarts,
                crash_loop.as_millis()
            )));
        }
        Ok(())
    }

    /// Backoff before restart number `n` (1-based): `restart_backoff_ms *
    /// 2^(n-1)`, at most [`MAX_RESTART_BACKOFF`].
    pub fn restart_delay(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1).min(20)).unwrap_or(u32::MAX);
        Duration::from_millis(self.restart_backoff_ms).saturating_mul(factor).min(MAX_RESTART_BACKOFF)
    }
}
