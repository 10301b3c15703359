//! The health rules: what one check gathered ([`Probes`]) -> status and
//! detail per component (seed 001). Pure: no actor, no I/O; the clock comes
//! in as `Probes::now`.
//!
//! Nothing is healthy by default: a state not known yet is `unknown`.
//! - store: probe fails (unreachable, database file gone or replaced) -> Unhealthy.
//! - kafka: on the active relay: no broker answered yet -> Unknown; broker
//!   unreachable, breaker open or half-open -> Degraded. A standby does not
//!   publish: Healthy (it says who does), but Degraded when the broker is
//!   unreachable from its producer (made ahead of its term): it could not
//!   publish if it took over.
//! - cdc_processor (the relay): lease not held (not read yet, or lost) ->
//!   the feed, TTL and parked rules, then Unknown within the start grace
//!   (the lag may be the active relay's: this task may be a standby that
//!   has not read the lease yet) and the lag rules and Degraded after it; standby ->
//!   Healthy; feed reads failing -> Degraded, Unhealthy after
//!   `health.feed_unhealthy_after_ms`; parked aggregates -> Degraded; lag
//!   over `health.lag_degraded_events` or `health.lag_degraded_seconds` ->
//!   Degraded; CDC log TTL: lag age >= 50 % of it -> Degraded, >= 80 % ->
//!   Unhealthy (`relay::cdc::health::ttl_health`); CDC progress older than
//!   a caught-up reader's normal delay (safety interval + window + sleep +
//!   checkpoint interval) by more than `health.lag_degraded_seconds` ->
//!   Degraded (a reader behind, or one that stopped making progress while
//!   its task still runs); an unknown-outcome append
//!   unreconciled past its bound -> Degraded (`reconcile_health`);
//!   restarting -> Degraded; gave up or not answering -> Unhealthy. A task
//!   that has not said it runs for less than [`START_GRACE`] (since its
//!   spawn, or since its takeover for a standby that took the lease over)
//!   -> Unknown "starting"; past it -> Degraded.
//!   The lag is the store's (`Backlog`): head - persisted checkpoint + held
//!   events, whatever state the relay is in.
//! - order_actor / dlq_actor: restarting -> Degraded; gave up or not answering -> Unhealthy.
//! - projections: store errors, parked aggregates, lag over
//!   `health.projection_lag_degraded_events` -> Degraded; restarting or not
//!   running -> Degraded (starting within [`START_GRACE`]: Unknown); gave up
//!   or not answering -> Unhealthy. A standby (another instance holds the
//!   `projections` lease) is Healthy and names the holder. Backends without
//!   read models report Healthy with "not available".
//! - overall = the worst component (healthy < unknown < degraded < unhealthy).

use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::projection::ProjectionStatus;
use crate::relay::cdc::health::{reconcile_health, ttl_health, Verdict};
use crate::relay::producer::BrokerState;
use crate::relay::status::FeedState;
use crate::relay::{BreakerState, RelayStatus, Role};
use crate::store::Backlog;

use super::lag::lag_seconds;

use super::report::HealthStatus;
use crate::actors::messages::{ActorName, Lifecycle};
use crate::actors::supervision::TaskStatus;

/// What one check gathered (input of [`evaluate`]).
#[derive(Debug, Clone)]
pub struct Probes {
    pub now: DateTime<Utc>,
    /// The store's head position (None: the backend has no feed positions).
    pub store: Result<Option<i64>, String>,
    pub order: Option<Lifecycle>,
    pub dlq: Option<Lifecycle>,
    pub dlq_depth: Option<u64>,
    pub cdc: Option<TaskStatus<RelayStatus>>,
    /// Relay status straight from the channel (used when the processor does not answer).
    pub relay: RelayStatus,
    /// The relay consumer's backlog as the store sees it (None: could not be read).
    pub relay_backlog: Option<Backlog>,
    /// Parked aggregates of the relay consumer, from the store.
    pub parked: Option<u64>,
    /// CDC feeds: age of the relay's oldest unpublished change (None: not a
    /// CDC feed, or its progress could not be read: `cdc_unreadable`).
    pub cdc_age: Option<Duration>,
    /// CDC feeds: why the relay's CDC progress could not be read (its age,
    /// hence the lag and the TTL guard, are unknown this check).
    pub cdc_unreadable: Option<String>,
    /// CDC feeds: the CDC log TTL (None on a feed without one).
    pub cdc_log_ttl: Option<Duration>,
    /// Whether the backend has read models (a ProjectionActor was started).
    pub projection_enabled: bool,
    /// The ProjectionActor's answer (None: it did not answer).
    pub projection: Option<TaskStatus<ProjectionStatus>>,
    pub projection_backlog: Option<Backlog>,
    /// CDC projection: age of its oldest per-stream progress (None elsewhere).
    pub projection_cdc_age: Option<Duration>,
    /// CDC projection: why its progress could not be read.
    pub projection_cdc_unreadable: Option<String>,
}

/// How long a freshly spawned relay or projector task may take to say it
/// runs (producer created, lease read, first feed read) before "not
/// running" counts as Degraded; until then it is Unknown ("starting").
pub const START_GRACE: Duration = Duration::from_secs(30);

/// A task that does not run: Unknown while it is starting within
/// [`START_GRACE`], Degraded otherwise; `what` names it ("relay").
fn not_running(what: &str, starting_ms: Option<u64>, prog: &str) -> (HealthStatus, String) {
    match starting_ms {
        Some(ms) if Duration::from_millis(ms) < START_GRACE => {
            (HealthStatus::Unknown, format!("{what} starting (not running for {ms} ms yet); {prog}"))
        }
        Some(ms) => {
            (HealthStatus::Degraded, format!("{what} not running (still starting after {} s); {prog}", ms / 1000))
        }
        None => (HealthStatus::Degraded, format!("{what} not running; {prog}")),
    }
}

/// Health thresholds (from `health.*`).
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub relay_lag_degraded_events: i64,
    pub projection_lag_degraded_events: i64,
    pub lag_degraded_seconds: u64,
    pub feed_unhealthy_after: Duration,
    /// How old a caught-up CDC reader's oldest saved progress normally is
    /// (safety interval + window + sleep + checkpoint interval); its lag
    /// counts from there.
    pub cdc_reader_delay: Duration,
}

impl Thresholds {
    pub fn from_config(cfg: &crate::config::Config) -> Thresholds {
        let (h, c) = (&cfg.health, &cfg.store.cql.cdc);
        let delay = c.caught_up_delay_ms();
        Thresholds {
            relay_lag_degraded_events: h.lag_degraded_events,
            projection_lag_degraded_events: h.projection_lag_degraded_events,
            lag_degraded_seconds: h.lag_degraded_seconds,
            feed_unhealthy_after: Duration::from_millis(h.feed_unhealthy_after_ms),
            cdc_reader_delay: Duration::from_millis(delay),
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
        Some(Lifecycle::Starting) => (HealthStatus::Unknown, "starting".into()),
        Some(Lifecycle::Stopped) => (HealthStatus::Degraded, "stopped (shutting down)".into()),
        Some(Lifecycle::Running) => {
            (HealthStatus::Healthy, if note.is_empty() { "running".into() } else { format!("running; {note}") })
        }
    }
}

fn progress(b: Option<&Backlog>, now: DateTime<Utc>) -> String {
    match b {
        Some(b) => format!(
            "checkpoint {}, head {}, lag {} events ({:.1} s)",
            b.checkpoint.map(|c| c.to_string()).unwrap_or_else(|| "none".into()),
            b.head.map(|h| h.to_string()).unwrap_or_else(|| "n/a".into()),
            b.events.map(|e| e.to_string()).unwrap_or_else(|| "n/a".into()),
            lag_seconds(b, now)
        ),
        None => "lag unknown (the store did not answer)".into(),
    }
}

/// A time in a detail as the report's own fields give it (RFC 3339, ms).
fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn kafka_health(relay: &RelayStatus) -> (HealthStatus, String) {
    let err = relay.last_error.clone().unwrap_or_else(|| "no error recorded".into());
    match &relay.role {
        Role::Standby { holder, epoch } => {
            let who = format!("standby: this instance does not publish (active relay {holder}, epoch {epoch})");
            return match &relay.broker {
                BrokerState::Unreachable { since, error } => (
                    HealthStatus::Degraded,
                    format!(
                        "{who}; it could not publish if it took over: broker unreachable since {}: {error}",
                        rfc3339(since)
                    ),
                ),
                BrokerState::Reachable { .. } => (HealthStatus::Healthy, format!("{who}; broker reachable")),
                BrokerState::Unknown => (HealthStatus::Healthy, who),
            };
        }
        Role::Unknown => {
            return (
                HealthStatus::Unknown,
                "the relay lease is not held (not read yet, or lost): no producer in use".into(),
            )
        }
        Role::Active { .. } | Role::Unfenced => {}
    }
    match (&relay.broker, relay.breaker) {
        (BrokerState::Unknown, _) => (HealthStatus::Unknown, "no broker has answered yet".into()),
        (BrokerState::Unreachable { since, error }, b) => (
            HealthStatus::Degraded,
            format!("broker unreachable since {}: {error}; circuit breaker {}", rfc3339(since), b.as_str()),
        ),
        (_, BreakerState::Open) => (HealthStatus::Degraded, format!("circuit breaker open; last error: {err}")),
        (_, BreakerState::HalfOpen) => (HealthStatus::Degraded, "circuit breaker half-open: probing the broker".into()),
        (BrokerState::Reachable { .. }, BreakerState::Closed) => (
            HealthStatus::Healthy,
            format!("broker reachable; circuit breaker closed; {} events delivered", relay.delivered),
        ),
    }
}

fn status_of(v: Verdict) -> HealthStatus {
    match v {
        Verdict::Healthy => HealthStatus::Healthy,
        Verdict::Degraded => HealthStatus::Degraded,
        Verdict::Unhealthy => HealthStatus::Unhealthy,
    }
}

fn relay_health(p: &Probes, task: &TaskStatus<RelayStatus>, t: Thresholds) -> (HealthStatus, String) {
    let relay = &task.progress;
    let prog = progress(p.relay_backlog.as_ref(), p.now);
    let lag_events = p.relay_backlog.and_then(|b| b.events).unwrap_or(0);
    let lag_secs = p.relay_backlog.map(|b| lag_seconds(&b, p.now)).unwrap_or(0.0);
    let parked = p.parked.unwrap_or(relay.parked_aggregates);
    let who = match &relay.role {
        Role::Standby { holder, epoch } => {
            return (HealthStatus::Healthy, format!("standby (active relay {holder}, epoch {epoch}); {prog}"))
        }
        // Not read yet, or lost (the store refused or did not answer the
        // renewal): the checks below still apply (a growing lag, a CDC log
        // about to expire), and a relay that stays without a term turns
        // Degraded after the start grace.
        Role::Unknown => "the relay lease is not held (not read yet, or lost)".to_string(),
        Role::Active { epoch } => format!("active, epoch {epoch}"),
        Role::Unfenced => "active".to_string(),
    };
    if let FeedState::Failing { since, errors, error } = &relay.feed {
        let failing_for = (p.now - *since).to_std().unwrap_or_default();
        let st = if failing_for >= t.feed_unhealthy_after { HealthStatus::Unhealthy } else { HealthStatus::Degraded };
        return (
            st,
            format!(
                "relay cannot read the store feed since {} ({errors} failed reads): {error}; {prog}",
                rfc3339(since)
            ),
        );
    }
    if let (Some(age), Some(ttl)) = (p.cdc_age, p.cdc_log_ttl) {
        let (v, detail) = ttl_health(Some(age), ttl);
        if v != Verdict::Healthy {
            return (status_of(v), format!("{detail}; {prog}"));
        }
    }
    if let Some(e) = &p.cdc_unreadable {
        return (HealthStatus::Degraded, format!("{}; {prog}", unreadable_progress("relay", e)));
    }
    if let Some(r) = &relay.reconciliation {
        let age = r.oldest_pending_ms.map(Duration::from_millis);
        let (v, detail) = reconcile_health(r.pending, age, Duration::from_millis(r.bound_ms));
        if v != Verdict::Healthy {
            return (status_of(v), format!("{detail}; {prog}"));
        }
    }
    if parked > 0 {
        return (
            HealthStatus::Degraded,
            format!("{parked} aggregates parked behind events that cannot be published (outboxd dlq list); {prog}"),
        );
    }
    // A task that has not read the lease yet, within the start grace, may be
    // a standby: the lag below is the active relay's (a standby reports
    // Healthy once it knows), and a starting active relay has a backlog to
    // drain by nature. Unknown "starting" until the first read; the grace
    // bounds it.
    let first_read_pending = relay.role == Role::Unknown
        && !task.running
        && task.starting_ms.is_some_and(|ms| Duration::from_millis(ms) < START_GRACE);
    if first_read_pending {
        return not_running("relay", task.starting_ms, &format!("{who}; {prog}"));
    }
    if lag_events > t.relay_lag_degraded_events {
        return (
            HealthStatus::Degraded,
            format!("lag {lag_events} events exceeds {}; {prog}", t.relay_lag_degraded_events),
        );
    }
    if let Some(age) = p.cdc_age {
        let over = age.saturating_sub(t.cdc_reader_delay).as_secs();
        if over > t.lag_degraded_seconds {
            return (
                HealthStatus::Degraded,
                format!(
                    "the oldest CDC progress is {} s old, {over} s over a caught-up reader's {} s (limit {} s): the reader is behind or not progressing; {prog}",
                    age.as_secs(),
                    t.cdc_reader_delay.as_secs(),
                    t.lag_degraded_seconds
                ),
            );
        }
    }
    if lag_secs > t.lag_degraded_seconds as f64 {
        return (
            HealthStatus::Degraded,
            format!("the oldest unpublished event is {lag_secs:.0} s old (over {} s); {prog}", t.lag_degraded_seconds),
        );
    }
    if !task.running {
        let prog = if relay.role == Role::Unknown { format!("{who}; {prog}") } else { prog };
        // Why it has not started (topics cannot be created: the broker is
        // away, ...): the cause was only in the log.
        let prog = match &relay.last_error {
            Some(e) => format!("{prog}; last error: {e}"),
            None => prog,
        };
        return not_running("relay", task.starting_ms, &prog);
    }
    if relay.feed == FeedState::Unknown {
        return (HealthStatus::Unknown, format!("relay starting ({who}); {prog}"));
    }
    (HealthStatus::Healthy, format!("relay running ({who}); {prog}"))
}

/// Pure health rules: probes -> status and detail per component.
pub fn evaluate(p: &Probes, reported: &Reported, t: Thresholds) -> BTreeMap<&'static str, (HealthStatus, String)> {
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
    out.insert("kafka", kafka_health(relay));
    let (st, detail) = lifecycle_health(ActorName::Cdc, p.cdc.as_ref().map(|c| c.lifecycle), reported);
    let relay_verdict = match (&p.cdc, st) {
        (Some(task), HealthStatus::Healthy) => relay_health(p, task, t),
        _ => (st, format!("{detail}; {}", progress(p.relay_backlog.as_ref(), p.now))),
    };
    out.insert("cdc_processor", relay_verdict);
    out.insert("order_actor", lifecycle_health(ActorName::Order, p.order, reported));
    let (st, mut detail) = lifecycle_health(ActorName::Dlq, p.dlq, reported);
    if let Some(n) = p.dlq_depth {
        detail = format!("{detail}; {n} dead letters");
    }
    out.insert("dlq_actor", (st, detail));
    out.insert("projections", projections_health(p, reported, &t));
    out
}

/// The detail of a CDC reader whose saved progress could not be read.
fn unreadable_progress(reader: &str, error: &str) -> String {
    format!("the {reader}'s CDC progress could not be read ({error}): its lag and the CDC log TTL guard are unknown")
}

/// The CDC projection's reader, from the age of its oldest saved progress:
/// near the CDC log's TTL its changes expire unapplied (Degraded at 50 %,
/// Unhealthy at 80 %, as the relay's); past a caught-up reader's delay by
/// more than `health.lag_degraded_seconds` it is behind (Degraded); an
/// unread progress is Degraded. None: nothing to report.
fn projection_cdc_health(p: &Probes, t: &Thresholds) -> Option<(HealthStatus, String)> {
    if let Some(e) = &p.projection_cdc_unreadable {
        return Some((HealthStatus::Degraded, unreadable_progress("projector", e)));
    }
    let age = p.projection_cdc_age?;
    if let Some(ttl) = p.cdc_log_ttl {
        let (v, detail) = ttl_health(Some(age), ttl);
        if v != Verdict::Healthy {
            return Some((status_of(v), format!("projection: {detail}")));
        }
    }
    let over = age.saturating_sub(t.cdc_reader_delay).as_secs();
    (over > t.lag_degraded_seconds).then(|| {
        (
            HealthStatus::Degraded,
            format!(
                "the projector's oldest CDC progress is {} s old, {over} s over a caught-up reader's {} s (limit {} s): the read models are behind",
                age.as_secs(),
                t.cdc_reader_delay.as_secs(),
                t.lag_degraded_seconds
            ),
        )
    })
}

fn projections_health(p: &Probes, reported: &Reported, t: &Thresholds) -> (HealthStatus, String) {
    let lag_degraded_events = t.projection_lag_degraded_events;
    if !p.projection_enabled {
        return (HealthStatus::Healthy, "read models are not available on this backend".into());
    }
    let (st, detail) = lifecycle_health(ActorName::Projection, p.projection.as_ref().map(|s| s.lifecycle), reported);
    let Some(s) = &p.projection else { return (st, detail) };
    let pr = &s.progress;
    let b = p.projection_backlog;
    let lag = b.and_then(|b| b.events).unwrap_or(pr.lag);
    let prog = match &b {
        Some(b) => progress(Some(b), p.now),
        None => format!("checkpoint {}, head {}, lag {} events", pr.checkpoint, pr.head, pr.lag),
    };
    if st != HealthStatus::Healthy {
        return (st, format!("{detail}; {prog}"));
    }
    if !pr.store_ok {
        let err = pr.last_error.clone().unwrap_or_else(|| "no error recorded".into());
        (HealthStatus::Degraded, format!("projector cannot read or write the store: {err}; {prog}"))
    } else if let Some((st, detail)) = projection_cdc_health(p, t) {
        (st, format!("{detail}; {prog}"))
    } else if pr.parked_aggregates > 0 {
        (HealthStatus::Degraded, format!("{} aggregates' read models parked at an event that cannot be applied (outboxd projections status); {prog}", pr.parked_aggregates))
    } else if lag > lag_degraded_events {
        (HealthStatus::Degraded, format!("lag {lag} events exceeds {lag_degraded_events}; {prog}"))
    } else if let Some(holder) = &pr.standby {
        (HealthStatus::Healthy, format!("standby (active projector {holder}); {prog}"))
    } else if !s.running {
        not_running("projector", s.starting_ms, &prog)
    } else {
        (HealthStatus::Healthy, format!("projector running; {prog}"))
    }
}

#[cfg(test)]
#[path = "rules_tests.rs"]
pub(crate) mod tests;
