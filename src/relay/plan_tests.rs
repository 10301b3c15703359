//! `plan` against a real SQLite store: a discard that is refused writes no
//! audit row (a later rewind would publish that row's marker in place of an
//! event that was delivered).

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
