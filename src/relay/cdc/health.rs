//! Pure health rules of the CDC path: the CDC log TTL guard and the
//! reconciliation of appends whose outcome was unknown. The health actor
//! maps a [`Verdict`] onto its component status.
//!
//! Guarantees:
//! - TTL guard: Scylla drops CDC log rows after the log TTL, so a change not
//!   published by then is lost silently. With `age` = now - the oldest
//!   per-stream progress (what the relay's checkpoint saver reports), the
//!   verdict is Degraded from 50 % of the TTL and Unhealthy from 80 %, long
//!   before anything expires.
//! - Reconciliation: Degraded while a recorded unknown-outcome append is
//!   older than its bound and still not confirmed published.

use std::time::Duration;

/// A health verdict (mapped by the health actor onto its `HealthStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Healthy,
    Degraded,
    Unhealthy,
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3_600 {
        format!("{}h{:02}m", s / 3_600, (s % 3_600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// The CDC log TTL guard. `oldest_unpublished_age` is `None` while unknown
/// (no stream progress yet).
pub fn ttl_health(oldest_unpublished_age: Option<Duration>, ttl: Duration) -> (Verdict, String) {
    let Some(age) = oldest_unpublished_age else {
        return (Verdict::Healthy, format!("CDC progress not known yet; CDC log TTL {}", human(ttl)));
    };
    let share = if ttl.is_zero() { 0.0 } else { age.as_secs_f64() / ttl.as_secs_f64() };
    let detail = format!(
        "oldest unpublished CDC change is {} old, {:.0}% of the CDC log TTL ({})",
        human(age),
        share * 100.0,
        human(ttl)
    );
    let verdict = if share >= 0.8 {
        Verdict::Unhealthy
    } else if share >= 0.5 {
        Verdict::Degraded
    } else {
        Verdict::Healthy
    };
    match verdict {
        Verdict::Healthy => (verdict, detail),
        _ => (verdict, format!("{detail}: changes are dropped unpublished when they reach the TTL")),
    }
}

/// Unknown-outcome appends still waiting for their CDC row: `pending` rows,
/// the oldest `oldest_age` old; Degraded when it is older than `bound`
/// (the reconciler then publishes it from the event table).
pub fn reconcile_health(pending: usize, oldest_age: Option<Duration>, bound: Duration) -> (Verdict, String) {
    match oldest_age {
        Some(age) if pending > 0 && age > bound => (
            Verdict::Degraded,
            format!("{pending} append(s) with an unknown outcome not yet confirmed published; the oldest is {} old (bound {})", human(age), human(bound)),
        ),
        _ if pending > 0 => (Verdict::Healthy, format!("{pending} append(s) with an unknown outcome waiting for their CDC row (bound {})", human(bound))),
        _ => (Verdict::Healthy, "no unreconciled appends".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn ttl_guard_thresholds() {
        let h = |s: u64| ttl_health(Some(Duration::from_secs(s)), DAY).0;
        assert_eq!(h(0), Verdict::Healthy);
        assert_eq!(h(43_199), Verdict::Healthy);
        assert_eq!(h(43_200), Verdict::Degraded, "50 %");
        assert_eq!(h(69_119), Verdict::Degraded);
        assert_eq!(h(69_120), Verdict::Unhealthy, "80 %");
        assert_eq!(h(200_000), Verdict::Unhealthy);
        assert_eq!(ttl_health(None, DAY).0, Verdict::Healthy);
        // Scales with the TTL.
        assert_eq!(ttl_health(Some(Duration::from_secs(1_800)), Duration::from_secs(3_600)).0, Verdict::Degraded);
        let (_, d) = ttl_health(Some(Duration::from_secs(70_000)), DAY);
        assert!(
            d.contains("19h26m") && d.contains("81%") && d.contains("24h00m") && d.contains("dropped unpublished"),
            "{d}"
        );
    }

    #[test]
    fn reconciliation_is_degraded_only_past_the_bound() {
        let bound = Duration::from_secs(120);
        assert_eq!(reconcile_health(0, None, bound).0, Verdict::Healthy);
        assert_eq!(reconcile_health(3, Some(Duration::from_secs(5)), bound).0, Verdict::Healthy);
        let (v, d) = reconcile_health(3, Some(Duration::from_secs(121)), bound);
        assert_eq!(v, Verdict::Degraded);
        assert!(d.contains("3 append(s)") && d.contains("2m01s") && d.contains("bound 2m00s"), "{d}");
    }
}
