//! The fenced writes' own conditions, against a real server (`CASSANDRA_URI`
//! or `SCYLLA_URI`): the narrow case the raise before each write cannot
//! catch, a newer term raising the fence between that raise and the write.
//! Here the fence is raised past the writer's epoch before the write step
//! runs alone: each write is refused by its condition.

use std::sync::Arc;

use uuid::Uuid;

use super::*;
use crate::config::CqlConfig;
use crate::store::requests::{RelayRequest, RequestKind, RequestStatus};
use crate::store::EventStore;

async fn live() -> Option<Arc<CqlStore>> {
    let uri = crate::store::cql::connect::test_server_uri("CQL fence conditions")?;
    let cfg = CqlConfig { uri, keyspace: format!("f_{}", Uuid::now_v7().simple()), ..CqlConfig::default() };
    let store = CqlStore::connect(&cfg).await.expect("connect");
    store.migrate().await.expect("migrate");
    Some(store)
}

fn parked(agg: &str) -> Parked {
    Parked {
        consumer: "kafka-relay".into(),
        aggregate_id: agg.into(),
        aggregate_type: Some("order".into()),
        position: None,
        sequence: Some(1),
        event_id: None,
        event_type: None,
        error: "refused".into(),
        parked_at: chrono::Utc::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fenced_write_is_refused_by_its_own_condition() {
    let Some(s) = live().await else { return };
    let c = "kafka-relay";
    let agg = Uuid::now_v7().to_string();
    s.raise_fence("parked_aggregates", c, 1).await.unwrap();
    s.park_row_if(&parked(&agg), Some(1)).await.unwrap();
    let r = RelayRequest::new(c, RequestKind::ReplayAllParked, "test");
    s.request_insert(&r).await.unwrap();
    s.raise_fence("relay_requests", c, 1).await.unwrap();
    assert!(s.request_cas(&r, 1).await.unwrap(), "claimed at the fence's epoch");

    // A newer term raises both fences; the epoch-1 writes then run alone.
    s.raise_fence("parked_aggregates", c, 2).await.unwrap();
    s.raise_fence("relay_requests", c, 2).await.unwrap();
    let fenced = |e: &StoreError| matches!(e, StoreError::Fenced { epoch: 1, current: Some(2), .. });
    let e = s.park_row_if(&parked(&agg), Some(1)).await.unwrap_err();
    assert!(fenced(&e), "update of an existing row: {e:?}");
    let e = s.park_row_if(&parked(&Uuid::now_v7().to_string()), Some(1)).await.unwrap_err();
    assert!(fenced(&e), "insert of a new row: {e:?}");
    let e = s.unpark_row_if(c, &agg, Some(1)).await.unwrap_err();
    assert!(fenced(&e), "delete: {e:?}");
    let other = RelayRequest::new(c, RequestKind::ReplayAllParked, "test");
    s.request_insert(&other).await.unwrap();
    assert!(!s.request_cas(&other, 1).await.unwrap(), "claim refused");
    assert!(!s.request_done(c, r.id, 1, RequestStatus::Done, &serde_json::json!({})).await.unwrap(), "outcome refused");

    // Nothing changed; the new epoch writes.
    let rows = s.parked_rows(c).await.unwrap();
    assert_eq!(rows.iter().map(|p| p.parked.aggregate_id.as_str()).collect::<Vec<_>>(), vec![agg.as_str()]);
    assert!(s.unpark_row_if(c, &agg, Some(2)).await.unwrap());
    assert!(s.request_cas(&other, 2).await.unwrap());
}
