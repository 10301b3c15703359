//! `[store.cql.cdc]`: how the Scylla CDC log of `event_store` is read.
//!
//! Guarantee: plain options with their defaults and the checks of their own
//! keys (see docs/OPERATIONS.md, "Scylla CDC feed"); the CDC log TTL here is
//! the one number the schema, the TTL guard, the read start and the progress
//! rows' TTL all derive from.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use super::ConfigError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CdcConfig {
    /// Width of each CDC log query window once caught up.
    pub window_size_ms: u64,
    /// Rows younger than this are not read yet: covers the clock skew
    /// allowance plus the time a write (or a Paxos learn) takes to land.
    pub safety_interval_ms: u64,
    /// Largest tolerated clock difference between writers, nodes and the
    /// relay (the `cdc:origin` margin and the TTL floor margin).
    pub clock_skew_allowance_ms: u64,
    /// Pause after every window once caught up.
    pub sleep_interval_ms: u64,
    /// How often the CDC progress is written to `relay_leases`.
    pub checkpoint_interval_ms: u64,
    /// The CDC log TTL (`cdc = {..., 'ttl': N}` in the schema).
    pub log_ttl_seconds: u64,
    /// Behind by more than this at (re)start: read with the catch-up settings first.
    pub catch_up_threshold_ms: u64,
    /// Window width while catching up.
    pub catch_up_window_ms: u64,
    /// Pause after every window while catching up.
    pub catch_up_sleep_ms: u64,
    /// An unknown-outcome append not seen in the log within
    /// safety interval + window + this is published from `event_store`.
    pub reconcile_margin_ms: u64,
    /// How often the relay reloads `append_reconciliation`.
    pub reconcile_refresh_ms: u64,
    /// Aggregates whose last published sequence the relay remembers (gap
    /// check and no re-send after an in-process reader restart).
    pub reconcile_remember_aggregates: usize,
    /// A reader whose progress stands still this long while its consumer
    /// is idle is restarted from its progress (0: never). Unset: 300 000,
    /// or the floor ([`CdcConfig::stall_restart_floor_ms`]) when higher.
    pub stall_restart_ms: Option<u64>,
}

impl Default for CdcConfig {
    fn default() -> Self {
        CdcConfig {
            window_size_ms: 30_000,
            safety_interval_ms: 30_000,
            clock_skew_allowance_ms: 10_000,
            sleep_interval_ms: 1_000,
            checkpoint_interval_ms: 5_000,
            log_ttl_seconds: 86_400,
            catch_up_threshold_ms: 120_000,
            catch_up_window_ms: 300_000,
            catch_up_sleep_ms: 100,
            reconcile_margin_ms: 60_000,
            reconcile_refresh_ms: 5_000,
            reconcile_remember_aggregates: 100_000,
            stall_restart_ms: None,
        }
    }
}

/// Shortest stall restart limit (ms).
const MIN_STALL_RESTART_MS: u64 = 60_000;
/// The stall restart limit when unset (ms), unless the floor is higher.
const DEFAULT_STALL_RESTART_MS: u64 = 300_000;

/// Cassandra's (and Scylla's) largest TTL (20 years): the widest log TTL,
/// and the cap of the relay's progress rows' TTL.
pub const MAX_TTL_SECONDS: u64 = 630_720_000;

/// Longest value of every `*_ms` key but `stall_restart_ms` (7 days): far
/// beyond any useful window, sleep or margin, and small enough that no sum
/// of them overflows.
const MAX_INTERVAL_MS: u64 = 604_800_000;

/// Longest `stall_restart_ms` (70 days): ten times [`MAX_INTERVAL_MS`], so
/// never below [`CdcConfig::stall_restart_floor_ms`] of valid settings.
const MAX_STALL_RESTART_MS: u64 = 10 * MAX_INTERVAL_MS;

impl CdcConfig {
    pub fn log_ttl(&self) -> Duration {
        Duration::from_secs(self.log_ttl_seconds)
    }

    /// Age after which an unknown-outcome append is published from `event_store`.
    pub fn reconcile_bound(&self) -> Duration {
        Duration::from_millis(
            self.safety_interval_ms.saturating_add(self.window_size_ms).saturating_add(self.reconcile_margin_ms),
        )
    }

    /// The stall watchdog's limit (zero: off).
    pub fn stall_restart(&self) -> Duration {
        Duration::from_millis(
            self.stall_restart_ms.unwrap_or(DEFAULT_STALL_RESTART_MS.max(self.stall_restart_floor_ms())),
        )
    }

    /// The shortest `stall_restart_ms` a healthy reader never reaches: it
    /// moves its progress after every window (a sleep interval apart), and a
    /// reader started at `now` first waits out the safety interval.
    pub fn stall_restart_floor_ms(&self) -> u64 {
        let sleeps = self.sleep_interval_ms.max(self.catch_up_sleep_ms).saturating_mul(10);
        let first_wait = self.safety_interval_ms.saturating_add(self.window_size_ms).saturating_mul(2);
        MIN_STALL_RESTART_MS.max(sleeps).max(first_wait)
    }

    /// How old a caught-up reader's saved progress may be (ms): safety
    /// interval + window + sleep + checkpoint interval. Each is bounded at
    /// load; saturating all the same (a sum never panics).
    pub fn caught_up_delay_ms(&self) -> u64 {
        [self.window_size_ms, self.sleep_interval_ms, self.checkpoint_interval_ms]
            .into_iter()
            .fold(self.safety_interval_ms, u64::saturating_add)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(format!("store.cql.cdc.{m}")));
        // (key, value, whether 0 is refused): every one at most 7 days.
        for (key, v, positive) in [
            ("window_size_ms", self.window_size_ms, true),
            ("safety_interval_ms", self.safety_interval_ms, true),
            ("clock_skew_allowance_ms", self.clock_skew_allowance_ms, false),
            ("sleep_interval_ms", self.sleep_interval_ms, true),
            ("checkpoint_interval_ms", self.checkpoint_interval_ms, true),
            ("catch_up_threshold_ms", self.catch_up_threshold_ms, false),
            ("catch_up_window_ms", self.catch_up_window_ms, true),
            ("catch_up_sleep_ms", self.catch_up_sleep_ms, true),
            ("reconcile_margin_ms", self.reconcile_margin_ms, false),
            ("reconcile_refresh_ms", self.reconcile_refresh_ms, true),
        ] {
            if positive && v == 0 {
                return err(format!("{key} must be at least 1"));
            }
            if v > MAX_INTERVAL_MS {
                return err(format!("{key} = {v}: must be at most {MAX_INTERVAL_MS} (7 days)"));
            }
        }
        if let Some(v) = self.stall_restart_ms.filter(|v| *v > MAX_STALL_RESTART_MS) {
            return err(format!("stall_restart_ms = {v}: must be at most {MAX_STALL_RESTART_MS} (70 days; 0: never)"));
        }
        if self.safety_interval_ms < self.clock_skew_allowance_ms {
            return err(format!(
                "safety_interval_ms ({}) must be at least clock_skew_allowance_ms ({}): rows stamped by a clock that far ahead would be skipped",
                self.safety_interval_ms, self.clock_skew_allowance_ms
            ));
        }
        if !(60..=MAX_TTL_SECONDS).contains(&self.log_ttl_seconds) {
            return err(format!(
                "log_ttl_seconds = {}: use 60 .. {MAX_TTL_SECONDS} (a CDC log without TTL, 0, is not supported: it grows forever)",
                self.log_ttl_seconds
            ));
        }
        if self.log_ttl_seconds.saturating_mul(1_000) <= self.safety_interval_ms.saturating_add(self.window_size_ms) {
            return err(format!(
                "log_ttl_seconds ({}) must exceed safety_interval_ms + window_size_ms: rows would expire before they are read",
                self.log_ttl_seconds
            ));
        }
        // scylla-cdc reads at most a window, then sleeps: a sleep as long as
        // the window falls behind the log for good, and rows expire unread.
        for (sleep, window, sleep_key, window_key) in [
            (self.sleep_interval_ms, self.window_size_ms, "sleep_interval_ms", "window_size_ms"),
            (self.catch_up_sleep_ms, self.catch_up_window_ms, "catch_up_sleep_ms", "catch_up_window_ms"),
        ] {
            if sleep >= window {
                return err(format!(
                    "{sleep_key} ({sleep}) must be less than {window_key} ({window}): a reader that sleeps as long as it reads falls further behind the log every round"
                ));
            }
        }
        // A caught-up reader's progress is this old: at half the TTL the
        // TTL guard says Degraded, for good.
        let delay = self.caught_up_delay_ms();
        if delay.saturating_mul(2) >= self.log_ttl_seconds.saturating_mul(1_000) {
            return err(format!(
                "log_ttl_seconds ({}) must be more than twice a caught-up reader's delay (safety_interval_ms + window_size_ms + sleep_interval_ms + checkpoint_interval_ms = {delay} ms): its progress would always be past half the TTL, and /health Degraded",
                self.log_ttl_seconds
            ));
        }
        let floor = self.stall_restart_floor_ms();
        if let Some(v) = self.stall_restart_ms.filter(|v| *v != 0 && *v < floor) {
            return err(format!(
                "stall_restart_ms = {v}: use 0 (never) or at least {floor} (the largest of 60 s, 10 sleep intervals and twice safety_interval_ms + window_size_ms, a fresh reader's first wait)"
            ));
        }
        if self.reconcile_remember_aggregates < 2 {
            return err("reconcile_remember_aggregates must be at least 2".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_safe() {
        let c = CdcConfig::default();
        c.validate().unwrap();
        assert!(c.safety_interval_ms >= 30_000, "the safety interval default is at least 30 s");
        assert_eq!(c.reconcile_bound(), Duration::from_secs(120));
        assert_eq!(c.log_ttl(), Duration::from_secs(86_400));
    }

    #[test]
    fn bad_values_name_their_key() {
        let bad = |f: fn(&mut CdcConfig)| {
            let mut c = CdcConfig::default();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(|c| c.safety_interval_ms = 5_000)
            .contains("store.cql.cdc.safety_interval_ms (5000) must be at least clock_skew_allowance_ms"));
        assert!(bad(|c| c.log_ttl_seconds = 0).contains("store.cql.cdc.log_ttl_seconds = 0"));
        assert!(bad(|c| c.log_ttl_seconds = 59).contains("log_ttl_seconds"));
        assert!(bad(|c| c.log_ttl_seconds = 60).contains("must exceed safety_interval_ms + window_size_ms"));
        assert!(bad(|c| c.catch_up_sleep_ms = 0).contains("store.cql.cdc.catch_up_sleep_ms must be at least 1"));
        // Review finding: settings that can never keep up were accepted.
        assert!(bad(|c| c.sleep_interval_ms = 30_000)
            .contains("store.cql.cdc.sleep_interval_ms (30000) must be less than window_size_ms (30000)"));
        assert!(bad(|c| c.catch_up_sleep_ms = 300_000).contains("catch_up_sleep_ms (300000) must be less than"));
        assert!(bad(|c| {
            c.checkpoint_interval_ms = 7_200_000;
            c.log_ttl_seconds = 3_600;
        })
        .contains("must be more than twice a caught-up reader's delay"));
        assert!(bad(|c| c.log_ttl_seconds = 132).contains("66000 ms"), "the defaults' delay is 66 s");
        let mut ok = CdcConfig { log_ttl_seconds: 133, ..CdcConfig::default() };
        ok.validate().unwrap();
        ok.sleep_interval_ms = 29_999;
        ok.log_ttl_seconds = 3_600;
        ok.validate().unwrap();
        assert!(bad(|c| c.reconcile_remember_aggregates = 0).contains("reconcile_remember_aggregates"));
        assert!(bad(|c| c.stall_restart_ms = Some(119_999))
            .contains("store.cql.cdc.stall_restart_ms = 119999: use 0 (never) or at least 120000"));
        let floor = |f: fn(&mut CdcConfig)| {
            let mut c = CdcConfig::default();
            f(&mut c);
            c.stall_restart_floor_ms()
        };
        assert_eq!(floor(|_| {}), 120_000, "2 x (30 s safety + 30 s window)");
        assert_eq!(
            floor(|c| {
                c.safety_interval_ms = 10_000;
                c.window_size_ms = 5_000
            }),
            60_000
        );
        assert_eq!(floor(|c| c.sleep_interval_ms = 20_000), 200_000);
        for ok in [0, 120_000, 3_600_000] {
            let c = CdcConfig { stall_restart_ms: Some(ok), ..CdcConfig::default() };
            c.validate().unwrap();
            assert_eq!(c.stall_restart(), Duration::from_millis(ok));
        }
        // Unset: 5 min, or the floor when the other settings raise it past
        // that (a config written before the key existed still loads).
        assert_eq!(CdcConfig::default().stall_restart(), Duration::from_secs(300));
        let wide = CdcConfig { window_size_ms: 150_000, ..CdcConfig::default() };
        wide.validate().unwrap();
        assert_eq!(wide.stall_restart(), Duration::from_secs(360));
        assert!(bad(|c| {
            c.window_size_ms = 150_000;
            c.stall_restart_ms = Some(300_000)
        })
        .contains("stall_restart_ms = 300000: use 0 (never) or at least 360000"));
    }

    /// Review finding: `safety_interval_ms + window_size_ms` (and the other
    /// sums of these keys) overflowed: a panic in debug builds, a wrapped
    /// sum, and the configuration accepted, in release builds. Every key has
    /// an upper bound, checked before any sum.
    #[test]
    fn huge_values_are_refused_by_name_without_overflow() {
        type Set = fn(&mut CdcConfig, u64);
        let keys: [(&str, Set, u64); 11] = [
            ("window_size_ms", |c, v| c.window_size_ms = v, MAX_INTERVAL_MS),
            ("safety_interval_ms", |c, v| c.safety_interval_ms = v, MAX_INTERVAL_MS),
            ("clock_skew_allowance_ms", |c, v| c.clock_skew_allowance_ms = v, MAX_INTERVAL_MS),
            ("sleep_interval_ms", |c, v| c.sleep_interval_ms = v, MAX_INTERVAL_MS),
            ("checkpoint_interval_ms", |c, v| c.checkpoint_interval_ms = v, MAX_INTERVAL_MS),
            ("catch_up_threshold_ms", |c, v| c.catch_up_threshold_ms = v, MAX_INTERVAL_MS),
            ("catch_up_window_ms", |c, v| c.catch_up_window_ms = v, MAX_INTERVAL_MS),
            ("catch_up_sleep_ms", |c, v| c.catch_up_sleep_ms = v, MAX_INTERVAL_MS),
            ("reconcile_margin_ms", |c, v| c.reconcile_margin_ms = v, MAX_INTERVAL_MS),
            ("reconcile_refresh_ms", |c, v| c.reconcile_refresh_ms = v, MAX_INTERVAL_MS),
            ("stall_restart_ms", |c, v| c.stall_restart_ms = Some(v), MAX_STALL_RESTART_MS),
        ];
        // Every key at its limit at once is valid (a 20-year log outlives the
        // sums), the sleeps just under their windows (a reader that sleeps
        // as long as it reads is refused).
        let mut widest = CdcConfig { log_ttl_seconds: MAX_TTL_SECONDS, ..CdcConfig::default() };
        for (_, set, max) in keys {
            set(&mut widest, max);
        }
        widest.sleep_interval_ms = MAX_INTERVAL_MS - 1;
        widest.catch_up_sleep_ms = MAX_INTERVAL_MS - 1;
        widest.validate().unwrap();
        assert!(widest.stall_restart_floor_ms() <= MAX_STALL_RESTART_MS, "the floor never passes the limit");
        assert_eq!(widest.reconcile_bound(), Duration::from_millis(3 * MAX_INTERVAL_MS));
        for (key, set, max) in keys {
            for v in [max + 1, u64::MAX] {
                let mut c = widest.clone();
                set(&mut c, v);
                let e = c.validate().unwrap_err().to_string();
                assert!(e.contains(&format!("store.cql.cdc.{key} = {v}: must be at most {max}")), "{e}");
                // Unchecked settings saturate instead of overflowing.
                assert!(c.stall_restart_floor_ms() >= MIN_STALL_RESTART_MS && c.reconcile_bound() > Duration::ZERO);
            }
        }
        let worst = CdcConfig { safety_interval_ms: u64::MAX, window_size_ms: u64::MAX, ..CdcConfig::default() };
        assert_eq!(worst.stall_restart_floor_ms(), u64::MAX);
        assert_eq!(worst.reconcile_bound(), Duration::from_millis(u64::MAX));
    }
}
