//! Unit tests of the health rules (`rules.rs`): every state, including the
//! ones that must never be reported healthy.

use super::super::lag::{projection_lag_seconds, relay_lag_gauges};
use super::super::report::COMPONENTS;
use super::*;

fn active() -> RelayStatus {
    RelayStatus {
        role: Role::Active { epoch: 3 },
        running: true,
        broker: BrokerState::Reachable { since: Utc::now() },
        feed: FeedState::Ok,
        checkpoint: Some(10),
        ..RelayStatus::default()
    }
}

pub(crate) fn probes() -> Probes {
    let relay = active();
    Probes {
        now: Utc::now(),
        store: Ok(Some(10)),
        order: Some(Lifecycle::Running),
        dlq: Some(Lifecycle::Running),
        dlq_depth: Some(0),
        cdc: Some(TaskStatus {
            lifecycle: Lifecycle::Running,
            restarts_in_window: 0,
            running: true,
            starting_ms: None,
            progress: relay.clone(),
        }),
        relay,
        relay_backlog: Some(Backlog { checkpoint: Some(10), head: Some(10), events: Some(0), oldest: None }),
        parked: Some(0),
        cdc_age: None,
        cdc_unreadable: None,
        cdc_log_ttl: None,
        projection_cdc_age: None,
        projection_cdc_unreadable: None,
        projection_enabled: true,
        projection: Some(TaskStatus {
            lifecycle: Lifecycle::Running,
            restarts_in_window: 0,
            running: true,
            starting_ms: None,
            progress: crate::projection::ProjectionStatus { running: true, ..Default::default() },
        }),
        projection_backlog: Some(Backlog { checkpoint: Some(10), head: Some(10), events: Some(0), oldest: None }),
    }
}

pub(crate) const T: Thresholds = Thresholds {
    relay_lag_degraded_events: 100,
    projection_lag_degraded_events: 100,
    lag_degraded_seconds: 60,
    feed_unhealthy_after: Duration::from_secs(60),
    cdc_reader_delay: Duration::from_secs(66),
};

fn worst(v: &BTreeMap<&'static str, (HealthStatus, String)>) -> HealthStatus {
    v.values().map(|(s, _)| *s).max().unwrap()
}

fn relay_mut(p: &mut Probes) -> &mut RelayStatus {
    &mut p.cdc.as_mut().unwrap().progress
}

#[test]
fn all_good_is_healthy() {
    let v = evaluate(&probes(), &HashMap::new(), T);
    assert_eq!(worst(&v), HealthStatus::Healthy, "{v:?}");
    assert_eq!(v.len(), COMPONENTS.len());
}

#[test]
fn nothing_known_is_never_healthy() {
    let mut p = probes();
    *relay_mut(&mut p) = RelayStatus::default();
    let v = evaluate(&p, &HashMap::new(), T);
    assert_eq!(v["kafka"].0, HealthStatus::Unknown, "{v:?}");
    assert_eq!(v["cdc_processor"].0, HealthStatus::Unknown, "{v:?}");
    assert_ne!(worst(&v), HealthStatus::Healthy);
    // Active but no broker has answered yet.
    let mut p = probes();
    relay_mut(&mut p).broker = BrokerState::Unknown;
    assert_eq!(evaluate(&p, &HashMap::new(), T)["kafka"].0, HealthStatus::Unknown);
    let mut p = probes();
    relay_mut(&mut p).feed = FeedState::Unknown;
    assert_eq!(evaluate(&p, &HashMap::new(), T)["cdc_processor"].0, HealthStatus::Unknown);
    let mut p = probes();
    p.order = Some(Lifecycle::Starting);
    assert_eq!(evaluate(&p, &HashMap::new(), T)["order_actor"].0, HealthStatus::Unknown);
}

#[test]
fn broker_breaker_and_lag_degrade() {
    let mut p = probes();
    let since = "2026-12-07T11:29:32.759532726Z".parse().unwrap();
    relay_mut(&mut p).broker = BrokerState::Unreachable { since, error: "connection refused".into() };
    let v = evaluate(&p, &HashMap::new(), T);
    assert_eq!(v["kafka"].0, HealthStatus::Degraded);
    // The time as the report's fields give it (it read "2026-12-07 11:29:32.759532726 UTC").
    assert!(
        v["kafka"].1.contains("broker unreachable since 2026-12-07T11:29:32.759Z: connection refused"),
        "{}",
        v["kafka"].1
    );
    let mut p = probes();
    relay_mut(&mut p).breaker = BreakerState::Open;
    assert_eq!(evaluate(&p, &HashMap::new(), T)["kafka"].0, HealthStatus::Degraded);
    let mut p = probes();
    p.relay_backlog =
        Some(Backlog { checkpoint: Some(10), head: Some(111), events: Some(101), oldest: Some(Utc::now()) });
    let v = evaluate(&p, &HashMap::new(), T);
    assert_eq!(v["cdc_processor"].0, HealthStatus::Degraded);
    assert!(v["cdc_processor"].1.contains("lag 101"), "{}", v["cdc_processor"].1);
    let mut p = probes();
    let old = Utc::now() - chrono::Duration::seconds(61);
    p.relay_backlog = Some(Backlog { checkpoint: Some(10), head: Some(11), events: Some(1), oldest: Some(old) });
    let v = evaluate(&p, &HashMap::new(), T);
    assert_eq!(v["cdc_processor"].0, HealthStatus::Degraded, "lag in seconds: {}", v["cdc_processor"].1);
}

#[test]
fn feed_failures_degrade_then_turn_unhealthy() {
    let mut p = probes();
    relay_mut(&mut p).feed = FeedState::Failing {
        since: Utc::now() - chrono::Duration::seconds(5),
        errors: 3,
        error: "disk I/O error".into(),
    };
    let v = evaluate(&p, &HashMap::new(), T);
    assert_eq!(v["cdc_processor"].0, HealthStatus::Degraded);
    assert!(v["cdc_processor"].1.contains("disk I/O error"));
    relay_mut(&mut p).feed = FeedState::Failing {
        since: Utc::now() - chrono::Duration::seconds(61),
        errors: 30,
        error: "disk I/O error".into(),
    };
    assert_eq!(evaluate(&p, &HashMap::new(), T)["cdc_processor"].0, HealthStatus::Unhealthy);
}

#[test]
fn parked_aggregates_degrade() {
    let mut p = probes();
    p.parked = Some(2);
    let v = evaluate(&p, &HashMap::new(), T);
    assert_eq!(v["cdc_processor"].0, HealthStatus::Degraded);
    assert!(v["cdc_processor"].1.contains("2 aggregates parked"), "{}", v["cdc_processor"].1);
}

#[test]
fn cdc_log_ttl_guard() {
    let ttl = Duration::from_secs(1000);
    let mut p = probes();
    let lenient = Thresholds { lag_degraded_seconds: 10_000, ..T }; // the TTL rule alone
    let evaluate = |p: &Probes, r: &Reported, _: Thresholds| evaluate(p, r, lenient);
    p.cdc_age = Some(Duration::from_secs(499));
    p.cdc_log_ttl = Some(ttl);
    assert_eq!(evaluate(&p, &HashMap::new(), T)["cdc_processor"].0, HealthStatus::Healthy);
    p.cdc_age = Some(Duration::from_secs(500));
    p.cdc_log_ttl = Some(ttl);
    assert_eq!(evaluate(&p, &HashMap::new(), T)["cdc_processor"].0, HealthStatus::Degraded);
    p.cdc_age = Some(Duration::from_secs(800));
    p.cdc_log_ttl = Some(ttl);
    let v = evaluate(&p, &HashMap::new(), T);
    assert_eq!(v["cdc_processor"].0, HealthStatus::Unhealthy);
    assert!(v["cdc_processor"].1.contains("CDC log TTL"));
}

/// Review finding: a CDC reader whose task runs but makes no progress (a
/// scylla-cdc run that never ends) showed Healthy until the TTL guard's
/// 50 % (12 h by default). Its lag now counts from a caught-up reader's
/// normal delay, against `health.lag_degraded_seconds`.
#[test]
fn a_cdc_reader_that_stops_progressing_degrades_past_the_lag_limit() {
    let ttl = Duration::from_secs(86_400);
    let mut p = probes();
    p.cdc_age = Some(Duration::from_secs(66 + 60));
    p.cdc_log_ttl = Some(ttl);
    assert_eq!(evaluate(&p, &HashMap::new(), T)["cdc_processor"].0, HealthStatus::Healthy, "caught up");
    p.cdc_age = Some(Duration::from_secs(66 + 61));
    p.cdc_log_ttl = Some(ttl);
    let v = evaluate(&p, &HashMap::new(), T);
    assert_eq!(v["cdc_processor"].0, HealthStatus::Degraded);
    assert!(v["cdc_processor"].1.contains("not progressing"), "{}", v["cdc_processor"].1);
}

#[test]
fn an_overdue_unknown_outcome_append_degrades_the_cdc_relay() {
    let mut p = probes();
    let cdc = |pending, oldest_pending_ms| crate::relay::status::Reconciliation {
        pending,
        oldest_pending_ms,
        bound_ms: 120_000,
    };
    relay_mut(&mut p).reconciliation = Some(cdc(0, None));
    assert_eq!(evaluate(&p, &HashMap::new(), T)["cdc_processor"].0, HealthStatus::Healthy);
    relay_mut(&mut p).reconciliation = Some(cdc(2, Some(119_000)));
    assert_eq!(evaluate(&p, &HashMap::new(), T)["cdc_processor"].0, HealthStatus::Healthy, "within the bound");
    relay_mut(&mut p).reconciliation = Some(cdc(2, Some(121_000)));
    let v = evaluate(&p, &HashMap::new(), T);
    assert_eq!(v["cdc_processor"].0, HealthStatus::Degraded);
    assert!(v["cdc_processor"].1.contains("2 append(s) with an unknown outcome"), "{}", v["cdc_processor"].1);
}

#[test]
fn a_task_still_starting_is_unknown_within_the_grace_then_degraded() {
    // The relay's task was spawned but has not said it runs (producer, lease, first read).
    let mut p = probes();
    relay_mut(&mut p).running = false;
    let task = p.cdc.as_mut().unwrap();
    (task.running, task.starting_ms) = (false, Some(130));
    let v = evaluate(&p, &HashMap::new(), T);
    assert_eq!(v["cdc_processor"].0, HealthStatus::Unknown, "{v:?}");
    assert!(v["cdc_processor"].1.starts_with("relay starting (not running for 130 ms yet)"), "{v:?}");
    p.cdc.as_mut().unwrap().starting_ms = Some(START_GRACE.as_millis() as u64 + 5_000);
    let v = evaluate(&p, &HashMap::new(), T);
    assert_eq!(v["cdc_processor"].0, HealthStatus::Degraded, "{v:?}");
    assert!(v["cdc_processor"].1.starts_with("relay not running (still starting after 35 s)"), "{v:?}");
    // Operator walkthrough: why it is still starting was only in the log.
    relay_mut(&mut p).last_error = Some("topic creation: broker transport failure".into());
    let v = evaluate(&p, &HashMap::new(), T);
    assert!(v["cdc_processor"].1.ends_with("; last error: topic creation: broker transport failure"), "{v:?}");
    relay_mut(&mut p).last_error = None;
    // No task alive at all (between restarts): not running, Degraded.
    p.cdc.as_mut().unwrap().starting_ms = None;
    let v = evaluate(&p, &HashMap::new(), T);
    assert_eq!(v["cdc_processor"].0, HealthStatus::Degraded, "{v:?}");
    assert!(v["cdc_processor"].1.starts_with("relay not running;"), "{v:?}");

    let mut p = probes();
    let task = p.projection.as_mut().unwrap();
    (task.running, task.starting_ms, task.progress.running) = (false, Some(20), false);
    let v = evaluate(&p, &HashMap::new(), T);
    assert_eq!(v["projections"].0, HealthStatus::Unknown, "{v:?}");
    assert!(v["projections"].1.starts_with("projector starting"), "{v:?}");
    p.projection.as_mut().unwrap().starting_ms = Some(START_GRACE.as_millis() as u64);
    assert_eq!(evaluate(&p, &HashMap::new(), T)["projections"].0, HealthStatus::Degraded);
}

#[test]
fn a_standby_is_healthy_and_says_who_publishes() {
    let mut p = probes();
    let r = relay_mut(&mut p);
    r.role = Role::Standby { holder: "host-a:1:2".into(), epoch: 7 };
    r.running = false;
    r.broker = BrokerState::Unknown;
    p.cdc.as_mut().unwrap().running = true;
    let v = evaluate(&p, &HashMap::new(), T);
    assert_eq!(v["kafka"].0, HealthStatus::Healthy, "{v:?}");
    assert_eq!(v["cdc_processor"].0, HealthStatus::Healthy, "{v:?}");
    assert!(v["cdc_processor"].1.contains("host-a:1:2"));
    assert!(!v["kafka"].1.contains("broker"), "nothing is known of the broker yet: {v:?}");

    // Its producer (made ahead of its term) reaches the broker: ready.
    relay_mut(&mut p).broker = BrokerState::Reachable { since: Utc::now() };
    let v = evaluate(&p, &HashMap::new(), T);
    assert_eq!(v["kafka"].0, HealthStatus::Healthy, "{v:?}");
    assert!(v["kafka"].1.ends_with("broker reachable"), "{v:?}");

    // It does not: it could not publish if it took over.
    let error = "Connect to ipv4#127.0.0.1:9 failed: Connection refused".to_string();
    relay_mut(&mut p).broker = BrokerState::Unreachable { since: Utc::now(), error: error.clone() };
    let v = evaluate(&p, &HashMap::new(), T);
    assert_eq!(v["kafka"].0, HealthStatus::Degraded, "{v:?}");
    assert!(v["kafka"].1.contains("could not publish if it took over") && v["kafka"].1.contains(&error), "{v:?}");
    assert!(v["kafka"].1.contains("host-a:1:2"), "{v:?}");
    assert_eq!(v["cdc_processor"].0, HealthStatus::Healthy, "the relay itself stands by as it should: {v:?}");
}

#[test]
fn store_failures_and_gave_up_are_unhealthy() {
    let mut p = probes();
    p.store = Err("database file x is gone".into());
    assert_eq!(evaluate(&p, &HashMap::new(), T)["store"].0, HealthStatus::Unhealthy);
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
fn projection_lag_store_errors_parking_and_lifecycle() {
    let mut p = probes();
    p.projection_backlog = Some(Backlog { checkpoint: Some(0), head: Some(100), events: Some(100), oldest: None });
    assert_eq!(evaluate(&p, &HashMap::new(), T)["projections"].0, HealthStatus::Healthy);
    p.projection_backlog = Some(Backlog { checkpoint: Some(0), head: Some(101), events: Some(101), oldest: None });
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
    p.projection.as_mut().unwrap().progress.parked_aggregates = 1;
    assert_eq!(evaluate(&p, &HashMap::new(), T)["projections"].0, HealthStatus::Degraded);
    let mut p = probes();
    p.projection.as_mut().unwrap().lifecycle = Lifecycle::Restarting { restart: 1 };
    assert_eq!(evaluate(&p, &HashMap::new(), T)["projections"].0, HealthStatus::Degraded);
    let mut p = probes();
    p.projection = None;
    assert_eq!(evaluate(&p, &HashMap::new(), T)["projections"].0, HealthStatus::Unhealthy);
    p.projection_enabled = false;
    let v = evaluate(&p, &HashMap::new(), T);
    assert_eq!(v["projections"].0, HealthStatus::Healthy);
    assert!(v["projections"].1.contains("not available"));
}

/// Review finding: a projector waiting for the `projections` lease (another
/// instance projects) counted as not running, so after the start grace
/// every standby reported itself degraded. It stands by as it should.
#[test]
fn a_projection_standby_is_healthy_and_says_who_projects() {
    use crate::actors::supervision::Progress;
    let mut status = crate::projection::ProjectionStatus { running: false, ..Default::default() };
    assert!(!status.running(), "not projecting and not standing by: not running");
    status.standby = Some("host-b:1:2".into());
    assert!(status.running(), "a standby runs as intended");
    let mut p = probes();
    let task = p.projection.as_mut().unwrap();
    task.progress = status;
    task.running = task.progress.running();
    task.starting_ms = None;
    let v = evaluate(&p, &HashMap::new(), T);
    assert_eq!(v["projections"].0, HealthStatus::Healthy, "{v:?}");
    assert!(v["projections"].1.starts_with("standby (active projector host-b:1:2)"), "{v:?}");
    // Without the standby mark, the same task after the start grace is degraded.
    let task = p.projection.as_mut().unwrap();
    task.progress.standby = None;
    task.running = false;
    task.starting_ms = Some(60_000);
    assert_eq!(evaluate(&p, &HashMap::new(), T)["projections"].0, HealthStatus::Degraded);
}

/// Review finding: a relay whose lease was lost (the store refused or did
/// not answer the renewal) reported Unknown, "waiting for the relay lease to
/// be read", for ever, skipping the lag and CDC-log TTL checks: nothing was
/// published and /health said 200 unknown while the log neared expiry.
#[test]
fn a_lost_lease_still_meets_the_lag_and_ttl_rules_and_degrades() {
    use crate::lease::keeper::LeaseState;
    let lost = |p: &mut Probes| {
        let task = p.cdc.as_mut().unwrap();
        task.progress.role = Role::of(&LeaseState::Lost { epoch: 3 });
        task.progress.running = false;
        task.running = false;
        task.starting_ms = Some(120_000);
    };
    let mut p = probes();
    lost(&mut p);
    let ttl = Duration::from_secs(1000);
    p.cdc_age = Some(Duration::from_secs(900));
    p.cdc_log_ttl = Some(ttl);
    let v = evaluate(&p, &HashMap::new(), Thresholds { lag_degraded_seconds: 10_000, ..T });
    assert_eq!(v["cdc_processor"].0, HealthStatus::Unhealthy, "{}", v["cdc_processor"].1);
    let mut p = probes();
    lost(&mut p);
    p.relay_backlog = Some(Backlog { checkpoint: Some(10), head: Some(1_000), events: Some(990), oldest: None });
    let v = evaluate(&p, &HashMap::new(), T);
    assert_eq!(v["cdc_processor"].0, HealthStatus::Degraded, "{}", v["cdc_processor"].1);
    // No lag, no log: still Degraded once the start grace is over (no term).
    let mut p = probes();
    lost(&mut p);
    let v = evaluate(&p, &HashMap::new(), T);
    assert_eq!(v["cdc_processor"].0, HealthStatus::Degraded, "{}", v["cdc_processor"].1);
}

/// A standby that has not read the lease yet (role unknown, task starting)
/// saw the active relay's lag in the store and reported Degraded until its
/// first read: within the start grace it is Unknown "starting"; past the
/// grace the lag rules apply again (a relay that never gets a term).
#[test]
fn a_relay_before_its_first_lease_read_does_not_claim_the_active_relays_lag() {
    let starting = |p: &mut Probes, ms: u64| {
        let task = p.cdc.as_mut().unwrap();
        task.progress.role = Role::Unknown;
        task.progress.running = false;
        task.progress.feed = FeedState::Unknown;
        task.running = false;
        task.starting_ms = Some(ms);
    };
    let mut p = probes();
    starting(&mut p, 200);
    p.relay_backlog = Some(Backlog { checkpoint: Some(10), head: Some(1_000), events: Some(990), oldest: None });
    let v = evaluate(&p, &HashMap::new(), T);
    assert_eq!(v["cdc_processor"].0, HealthStatus::Unknown, "{}", v["cdc_processor"].1);
    assert!(
        v["cdc_processor"].1.contains("starting") && v["cdc_processor"].1.contains("not held"),
        "{}",
        v["cdc_processor"].1
    );
    starting(&mut p, START_GRACE.as_millis() as u64 + 1);
    let v = evaluate(&p, &HashMap::new(), T);
    assert_eq!(v["cdc_processor"].0, HealthStatus::Degraded, "{}", v["cdc_processor"].1);
    assert!(v["cdc_processor"].1.contains("lag 990 events"), "{}", v["cdc_processor"].1);
    // The CDC log's TTL is not waived by the grace.
    let mut p = probes();
    starting(&mut p, 200);
    p.cdc_age = Some(Duration::from_secs(900));
    p.cdc_log_ttl = Some(Duration::from_secs(1000));
    let v = evaluate(&p, &HashMap::new(), Thresholds { lag_degraded_seconds: 10_000, ..T });
    assert_eq!(v["cdc_processor"].0, HealthStatus::Unhealthy, "{}", v["cdc_processor"].1);
}

/// Review finding: the CQL projection put the applied event's age in ms
/// where the rules read a lag in events, so every Scylla deployment
/// (events 30 s old at least, behind the CDC safety interval) read
/// "lag 30000 events exceeds 10000": Degraded for ever, even idle.
#[test]
fn a_cql_projection_is_not_degraded_by_the_age_of_its_events() {
    use crate::projection::cql::apply::CqlApplyOutcome;
    use crate::projection::cql::cdc::record_applied;
    let mut p = probes();
    p.projection_backlog = Some(Backlog { checkpoint: None, head: None, events: None, oldest: None });
    let now = Utc::now();
    let pr = &mut p.projection.as_mut().unwrap().progress;
    let one = CqlApplyOutcome { applied: 1, ..Default::default() };
    record_applied(pr, &one, now - chrono::Duration::seconds(30), now);
    assert_eq!(pr.lag_ms, Some(30_000));
    let v = evaluate(&p, &HashMap::new(), T);
    assert_eq!(v["projections"].0, HealthStatus::Healthy, "{}", v["projections"].1);
}

/// Review finding: on CQL one failed read of the CDC progress (a timeout
/// on a loaded cluster) made the relay's lag 0 (the held events' age) and
/// skipped the TTL and "not progressing" rules: /health said "relay
/// running" with the reader 20 h behind, and every such check reset the lag
/// alerts' `for`. Now it is Degraded, and the gauge keeps its last value.
#[test]
fn an_unread_cdc_progress_degrades_and_leaves_the_lag_gauge_alone() {
    let mut p = probes();
    p.relay_backlog = Some(Backlog { checkpoint: None, head: None, events: None, oldest: None });
    p.cdc_log_ttl = Some(Duration::from_secs(86_400));
    p.cdc_age = Some(Duration::from_secs(72_000));
    assert_eq!(relay_lag_gauges(&p, &T).1, Some(72_000.0 - 66.0));
    p.cdc_age = None;
    p.cdc_unreadable = Some("no answer within 5s".into());
    assert_eq!(relay_lag_gauges(&p, &T), (Some(0), None), "unknown seconds, not 0");
    let v = evaluate(&p, &HashMap::new(), T);
    assert_eq!(v["cdc_processor"].0, HealthStatus::Degraded, "{}", v["cdc_processor"].1);
    assert!(v["cdc_processor"].1.contains("could not be read (no answer within 5s)"), "{}", v["cdc_processor"].1);
    p.cdc_unreadable = None;
    let v = evaluate(&p, &HashMap::new(), T);
    assert_eq!(v["cdc_processor"].0, HealthStatus::Healthy, "none saved yet: {}", v["cdc_processor"].1);
}

/// Review finding: the CDC projection's reader had no health rule: hours
/// behind, or its changes about to expire from the CDC log, /health still
/// said "projector running". It now meets the relay's rules: the TTL guard
/// (Degraded at 50 %, Unhealthy at 80 %), the lag past a caught-up
/// reader's delay, and an unread progress.
#[test]
fn a_cdc_projection_behind_or_near_the_log_ttl_is_not_healthy() {
    let at = |age: u64, unreadable: Option<&str>| {
        let mut p = probes();
        p.projection_backlog = Some(Backlog { checkpoint: None, head: None, events: None, oldest: None });
        p.cdc_log_ttl = Some(Duration::from_secs(86_400));
        p.projection_cdc_age = Some(Duration::from_secs(age)).filter(|_| unreadable.is_none());
        p.projection_cdc_unreadable = unreadable.map(Into::into);
        let v = evaluate(&p, &HashMap::new(), T);
        (v["projections"].clone(), projection_lag_seconds(&p, &T))
    };
    assert_eq!(at(30, None).0 .0, HealthStatus::Healthy, "caught up");
    assert_eq!(at(66 + 60, None).0 .0, HealthStatus::Healthy, "at the limit");
    let ((st, detail), _) = at(66 + 61, None);
    assert_eq!(st, HealthStatus::Degraded, "{detail}");
    assert!(detail.contains("the read models are behind"), "{detail}");
    let ((st, detail), _) = at(50_000, None);
    assert_eq!(st, HealthStatus::Degraded, "{detail}");
    assert!(detail.contains("of the CDC log TTL"), "{detail}");
    assert_eq!(at(70_000, None).0 .0, HealthStatus::Unhealthy);
    let ((st, detail), lag) = at(0, Some("no answer within 5s"));
    assert_eq!(st, HealthStatus::Degraded, "{detail}");
    assert!(detail.contains("projector's CDC progress could not be read"), "{detail}");
    assert_eq!(lag, None, "the gauge keeps its last value");
}
