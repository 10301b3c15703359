//! `plan` against a real SQLite store: a discard that is refused writes no
//! audit row (a later rewind would publish that row's marker in place of an
//! event that was delivered); and dead letters read back as the event that
//! failed, its payload byte for byte.

use super::*;
use crate::relay::discards::Discards;
use crate::store::parking::{Parked, ParkingStore};
use crate::store::sqlite::{SqliteOptions, SqliteStore};

/// Review finding: the discard wrote its audit row (and counted it) before
/// the unpark plan's checks: with the aggregate unparked in the relay's
/// memory by a replay still running (its park record not yet removed), the
/// discard was refused, but the audit row stayed.
#[tokio::test]
async fn a_refused_discard_leaves_no_audit_row() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("plan.db"), SqliteOptions::default()).await.unwrap();
    let agg = Uuid::now_v7().to_string();
    let event_id = Uuid::now_v7().to_string();
    store
        .park(&Parked {
            consumer: "kafka-relay".into(),
            aggregate_id: agg.clone(),
            aggregate_type: Some("order".into()),
            position: Some(1),
            sequence: Some(1),
            event_id: Some(event_id.clone()),
            event_type: Some("OrderPlaced".into()),
            error: "refused by the broker".into(),
            parked_at: Utc::now(),
        })
        .await
        .unwrap();
    let metrics = crate::metrics::Metrics::new();
    let discards = Discards::default();
    let ctx = PlanCtx {
        store: &*store,
        metrics: &metrics,
        consumer: "kafka-relay",
        parked: Vec::new(), // a replay unparked it in memory; the record stays until it finishes
        last_pushed: 10,
        checkpoint: 10,
        positions: true,
        discards: &discards,
        resuming: false,
    };
    let r = RelayRequest::new(
        "kafka-relay",
        RequestKind::Discard { event_id: event_id.clone(), reason: "poison".into() },
        "test",
    );
    let err = plan(&ctx, &r).await.unwrap_err();
    assert!(matches!(err, RelayError::Refused(ref m) if m.contains("not parked")), "{err:?}");
    assert!(store.discards(100).await.unwrap().is_empty(), "no audit row for a refused discard");
    assert_eq!(metrics.relay_discards.get(), 0);
}

/// A dead letter of an event whose payload is `payload` (stored text).
fn letter_of(payload: &str) -> (RawEvent, crate::store::DeadLetter) {
    let env = crate::envelope::test_events(Uuid::now_v7(), 0, 1).remove(0);
    let mut raw = RawEvent::from_envelope(&env, 7).unwrap();
    raw.payload = crate::store::feed::raw_json(payload.to_string()).unwrap();
    let e = crate::relay::error::PublishError::permanent("MessageSizeTooLarge", "too large");
    let letter = crate::relay::parking::dead_letter_of(&Item::Event(raw.clone()), &e, 3).unwrap();
    (raw, letter)
}

/// Review finding: the dead letter held the envelope parsed and re-encoded
/// (keys sorted, a big integer turned into a float), and a number outside
/// f64's range made it the bare payload, which no replay could read. The
/// letter now holds the stored payload text, and a replay reads it back
/// byte for byte: the event it publishes is the event that failed.
#[test]
fn a_dead_letter_keeps_the_stored_payload_bytes() {
    for stored in [r#"{"z":1,"n":12345678901234567890123}"#, r#"{ "z": 1e400, "a" : [1.50, -0] }"#] {
        let (raw, letter) = letter_of(stored);
        let back = letter_event(&letter).unwrap_or_else(|e| panic!("{stored}: {e}"));
        assert_eq!(back.payload.get(), stored);
        assert_eq!(back, raw, "the whole event round-trips");
        // As published: the same record value as the original event.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        crate::relay::encode::envelope_json(&raw, &mut a);
        crate::relay::encode::envelope_json(&back, &mut b);
        assert_eq!(a, b);
    }
}

/// Letters written before (the envelope's serde form) still replay.
#[test]
fn an_older_dead_letter_still_reads() {
    let (raw, mut letter) = letter_of(r#"{"a":"x","n":[1,2]}"#);
    letter.payload = serde_json::to_string(&raw.to_envelope().unwrap()).unwrap();
    assert_eq!(letter_event(&letter).unwrap(), raw);
    letter.payload = r#"{"a":"x"}"#.into();
    let err = letter_event(&letter).unwrap_err();
    assert!(err["error"].as_str().unwrap().contains("not a valid event"), "{err}");
}

/// Review finding: a parked aggregate whose rows were stored with a
/// non-canonical aggregate_id (upper-case, by another writer before schema
/// version 4 refused it) was not found by the replay's lookup: the park
/// record went and its held events were never published. Now refused, the
/// park stays; a canonical one replays.
#[tokio::test]
async fn a_replay_that_does_not_find_its_parked_event_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.db");
    let store = SqliteStore::open(&path, SqliteOptions::default()).await.unwrap();
    let (upper, lower) = (Uuid::now_v7(), Uuid::now_v7());
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("DROP TRIGGER event_store_aggregate_id_insert").unwrap();
        for (n, id) in [upper.to_string().to_uppercase(), lower.to_string()].into_iter().enumerate() {
            c.execute(
                "INSERT INTO event_store (event_id, aggregate_type, aggregate_id, sequence_number, event_type, \
                 event_version, payload, correlation_id, timestamp) VALUES (?1, 'order', ?2, 1, 'OrderPlaced', 1, '{}', ?1, ?3)",
                rusqlite::params![Uuid::now_v7().to_string(), id, format!("2026-12-06T00:00:0{n}.000Z")],
            )
            .unwrap();
        }
    }
    for (position, agg) in [(1, upper), (2, lower)] {
        let parked = Parked {
            consumer: "kafka-relay".into(),
            aggregate_id: agg.to_string(),
            aggregate_type: Some("order".into()),
            position: Some(position),
            sequence: Some(1),
            event_id: None,
            event_type: Some("OrderPlaced".into()),
            error: "refused by the broker".into(),
            parked_at: Utc::now(),
        };
        store.park(&parked).await.unwrap();
    }
    let (metrics, discards) = (crate::metrics::Metrics::new(), Discards::default());
    let ctx = PlanCtx {
        store: &*store,
        metrics: &metrics,
        consumer: "kafka-relay",
        parked: vec![AggKey::from(upper.to_string()), AggKey::from(lower.to_string())],
        last_pushed: 2,
        checkpoint: 2,
        positions: true,
        discards: &discards,
        resuming: false,
    };
    let replay = |id: Uuid| {
        RelayRequest::new("kafka-relay", RequestKind::ReplayAggregate { aggregate_id: id.to_string() }, "test")
    };
    let err = plan(&ctx, &replay(upper)).await.unwrap_err();
    assert!(matches!(err, RelayError::Refused(ref m) if m.contains("not found under that aggregate id")), "{err:?}");
    assert_eq!(store.parked("kafka-relay").await.unwrap().len(), 2, "the park record stays");
    let plans = plan(&ctx, &replay(lower)).await.unwrap();
    assert!(matches!(&plans[..], [Plan::Unpark { items, .. }] if items.len() == 1), "{plans:?}");
    // Replaying every parked aggregate: the other one is not held back.
    let all = RelayRequest::new("kafka-relay", RequestKind::ReplayAllParked, "test");
    let plans = plan(&ctx, &all).await.unwrap();
    assert!(
        matches!(&plans[..], [Plan::Letters { items, bad }, Plan::Unpark { .. }]
            if items.is_empty() && bad[0]["aggregate_id"] == upper.to_string()),
        "{plans:?}"
    );
}
