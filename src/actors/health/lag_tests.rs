//! Unit tests of the lag gauges' figures (`lag.rs`): the CDC progress age
//! counted past a caught-up reader's delay, and the role label kept while
//! a relay's role is briefly unknown.

use std::time::Duration;

use chrono::Utc;

use super::super::rules::tests::{probes, T};
use super::*;
use crate::store::Backlog;

/// `relay_lag_seconds` on a CDC feed is its progress age past a caught-up
/// reader's delay (it read 0 whatever that age: the CQL backlog's `oldest`
/// is None with nothing parked), the larger of it and a held event's age;
/// a position-less feed with nothing held has 0 events, not none.
#[test]
fn lag_gauges_count_the_cdc_progress_age() {
    let now = Utc::now();
    let cql = Backlog { checkpoint: None, head: None, events: None, oldest: None };
    let cdc = |secs| Some(Duration::from_secs(secs));
    assert_eq!(lag_gauges(Some(&cql), cdc(7_200), now, &T), (Some(0), Some(7_200.0 - 66.0)));
    assert_eq!(lag_gauges(Some(&cql), cdc(30), now, &T), (Some(0), Some(0.0)), "caught up");
    assert_eq!(lag_gauges(None, cdc(7_200), now, &T), (None, Some(7_134.0)), "backlog unread");
    let held = Backlog { events: Some(4), oldest: Some(now - chrono::Duration::seconds(9_000)), ..cql };
    assert_eq!(lag_gauges(Some(&held), cdc(100), now, &T), (Some(4), Some(9_000.0)));
    // SQLite: positions, no CDC age.
    let sqlite = Backlog {
        checkpoint: Some(5),
        head: Some(8),
        events: Some(3),
        oldest: Some(now - chrono::Duration::seconds(2)),
    };
    assert_eq!(lag_gauges(Some(&sqlite), None, now, &T), (Some(3), Some(2.0)));
    let unstarted = Backlog { checkpoint: None, head: Some(8), events: None, oldest: None };
    assert_eq!(lag_gauges(Some(&unstarted), None, now, &T), (None, Some(0.0)));
    assert_eq!(lag_gauges(None, None, now, &T), (None, None));
}

/// `projection_lag_seconds` on the CDC projection is its progress age past a
/// caught-up reader's delay (it read the backlog only: 0 with no parks,
/// whatever the reader's age), the larger of it and a held event's age; on
/// SQLite (no CDC age) the backlog's.
#[test]
fn projection_lag_seconds_counts_the_cdc_projections_progress_age() {
    let mut p = probes();
    let now = p.now;
    p.projection_backlog = Some(Backlog { checkpoint: None, head: None, events: None, oldest: None });
    p.projection_cdc_age = Some(Duration::from_secs(7_200));
    assert_eq!(projection_lag_seconds(&p, &T), Some(7_200.0 - 66.0));
    p.projection_cdc_age = Some(Duration::from_secs(30));
    assert_eq!(projection_lag_seconds(&p, &T), Some(0.0), "caught up");
    p.projection_backlog =
        Some(Backlog { events: Some(2), oldest: Some(now - chrono::Duration::seconds(9_000)), ..Backlog::default() });
    assert_eq!(projection_lag_seconds(&p, &T), Some(9_000.0), "a held event older than the progress");
    p.projection_cdc_age = None;
    assert_eq!(projection_lag_seconds(&p, &T), Some(9_000.0), "SQLite: the backlog's age");
}

/// Review finding: a relay restart (a new task has not read the lease yet)
/// moved the lag gauges from `role="active"` to `role="unknown"` for a
/// check, resetting the `for` of the alerts on `role="active"`. An unknown
/// role keeps the last known role's label; a known one replaces it.
#[test]
fn the_lag_gauges_keep_their_role_label_while_the_role_is_unknown() {
    let briefly = Duration::from_secs(5);
    assert_eq!(lag_label("unknown", Some("active"), briefly), "active");
    assert_eq!(lag_label("unknown", Some("standby"), briefly), "standby");
    assert_eq!(lag_label("unknown", None, briefly), "unknown", "nothing known yet");
    assert_eq!(lag_label("standby", Some("active"), briefly), "standby");
    assert_eq!(lag_label("active", Some("unknown"), briefly), "active");
    // Last-read finding: a lease that stays lost kept exporting
    // role="active" for good (its alerts firing from an instance that no
    // longer publishes): the label is kept for the start grace only.
    assert_eq!(lag_label("unknown", Some("active"), START_GRACE), "unknown");
}
