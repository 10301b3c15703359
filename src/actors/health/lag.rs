//! The lag gauges' figures (`relay_lag_*`, `projection_lag_seconds`) from
//! a health check's probes, and the CDC progress age they read.
//!
//! Guarantees: a lag that cannot be known is not reported as 0 (an
//! unread CDC progress leaves `relay_lag_seconds` and
//! `projection_lag_seconds` at their last value), and a relay that does not
//! know its role yet keeps its last role's series, so the alerts on
//! `role="active"` keep their `for`.

use chrono::{DateTime, Utc};
use std::time::Duration;

use super::rules::{Probes, Thresholds, START_GRACE};
use crate::store::Backlog;

/// How old `consumer`'s oldest saved CDC progress is (CQL only; None when
/// none is saved yet), or why it could not be read within `t`: an unread
/// age is unknown, not 0 (the rules degrade, the lag gauges keep their
/// last value).
pub async fn cdc_progress_age(
    cql: Option<&crate::store::cql::CqlStore>,
    consumer: &str,
    t: Duration,
) -> (Option<Duration>, Option<String>) {
    let Some(cql) = cql else { return (None, None) };
    match tokio::time::timeout(t, cql.cdc_oldest_progress(consumer)).await {
        Err(_) => (None, Some(format!("no answer within {t:?}"))),
        Ok(Err(e)) => (None, Some(e.to_string())),
        Ok(Ok(at)) => (at.map(|at| (Utc::now() - at).to_std().unwrap_or_default()), None),
    }
}

/// The relay's `relay_lag_events` and `relay_lag_seconds` from the store's
/// backlog and, on a CDC feed, the age of its oldest progress: the larger
/// of the oldest held event's age and that age past a caught-up reader's
/// delay (so a caught-up reader reads 0, a stalled one its real lag). A
/// feed without positions counts only held events: none is 0, not unknown.
pub fn lag_gauges(
    backlog: Option<&Backlog>,
    cdc_age: Option<Duration>,
    now: DateTime<Utc>,
    t: &Thresholds,
) -> (Option<i64>, Option<f64>) {
    let events = backlog.and_then(|b| b.events.or(b.head.is_none().then_some(0)));
    let held = backlog.map(|b| lag_seconds(b, now));
    let cdc = cdc_age.map(|age| age.saturating_sub(t.cdc_reader_delay).as_secs_f64());
    let seconds = match (held, cdc) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    (events, seconds)
}

/// The relay's lag gauges from a check's probes: [`lag_gauges`], but no
/// seconds when its CDC progress could not be read (the held events alone
/// would read 0 with the reader hours behind, resetting the lag alerts'
/// `for`; the gauge keeps its last value instead).
pub fn relay_lag_gauges(p: &Probes, t: &Thresholds) -> (Option<i64>, Option<f64>) {
    let (events, seconds) = lag_gauges(p.relay_backlog.as_ref(), p.cdc_age, p.now, t);
    (events, seconds.filter(|_| p.cdc_unreadable.is_none()))
}

/// The role label the lag gauges go under: the relay's, except that a
/// relay whose role is unknown again (a restarted task that has not read
/// the lease yet, a missed renewal) keeps the last known role's series for
/// up to [`START_GRACE`] (`unknown_for`): moving them to `role="unknown"`
/// for a check would reset the `for` of every alert on `role="active"`
/// while the lag still grows. A role unknown for longer (a lease that
/// stays lost) is reported as such: this instance no longer publishes.
pub fn lag_label(current: &'static str, last: Option<&'static str>, unknown_for: Duration) -> &'static str {
    match last {
        Some(last) if current == "unknown" && unknown_for < START_GRACE => last,
        _ => current,
    }
}

/// `projection_lag_seconds`: the age of its held events and, for the CDC
/// projection, of its progress past a caught-up reader's delay (the CQL
/// backlog knows only parks: it read 0 with the reader hours behind); None
/// when that progress could not be read.
pub fn projection_lag_seconds(p: &Probes, t: &Thresholds) -> Option<f64> {
    if p.projection_cdc_unreadable.is_some() {
        return None;
    }
    lag_gauges(p.projection_backlog.as_ref(), p.projection_cdc_age, p.now, t).1
}

/// The lag of a backlog in seconds at `now` (0 when nothing is unpublished).
pub fn lag_seconds(b: &Backlog, now: DateTime<Utc>) -> f64 {
    match b.oldest {
        Some(t) => ((now - t).num_milliseconds().max(0) as f64) / 1000.0,
        None => 0.0,
    }
}

#[cfg(test)]
#[path = "lag_tests.rs"]
mod tests;
