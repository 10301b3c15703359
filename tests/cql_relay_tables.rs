//! The relay's coordination tables on the CQL store, against a real server
//! (Apache Cassandra in `make test`; ScyllaDB in `make integration-test`):
//! what the shared store suite cannot show because only CQL splits a fenced
//! write into a lease read and a conditional write, and only CQL orders
//! plain and conditional writes by different clocks. Without a server the
//! cases print `SKIPPED: ...`. Each test uses its own keyspace. The
//! highest fence is the floor of a lease created anew.

mod harness;
use harness::cql::{cql_uri_or_skip, fresh_cql_store};
use uuid::Uuid;

use outboxd::store::lease::{Lease, LeaseCas, LeaseStore};
use outboxd::store::parking::{Parked, ParkingStore};
use outboxd::store::requests::{RelayRequest, RequestKind, RequestStatus, RequestStore};
use outboxd::store::StoreError;

const NAME: &str = "kafka-relay";

/// The park row of `agg` at `sequence`, parked at `at`.
fn parked(agg: &str, sequence: i64, at: chrono::DateTime<chrono::Utc>) -> Parked {
    Parked {
        consumer: NAME.into(),
        aggregate_id: agg.into(),
        aggregate_type: Some("Order".into()),
        position: None,
        sequence: Some(sequence),
        event_id: Some(Uuid::now_v7().to_string()),
        event_type: Some("OrderConfirmed".into()),
        error: format!("refused at {sequence}"),
        parked_at: at,
    }
}

fn lease(epoch: i64) -> Lease {
    Lease { name: NAME.into(), holder: "a".into(), epoch, counter: 0, ttl_ms: 3000 }
}

/// Review finding: a claim or an outcome whose lease read failed (a
/// timeout) was answered "refused" (`Ok(false)`), which the relay takes as
/// final: the outcome of a request it carried out was never recorded, and
/// the next leader carried the request out again. A lease that cannot be
/// read is an error now (the caller retries); a moved lease is still a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_cannot_be_read_fails_request_writes_instead_of_refusing_them() {
    let Some(uri) = cql_uri_or_skip("CQL request writes when the lease cannot be read") else { return };
    let (s, keyspace, session) = fresh_cql_store(&uri, "rt").await;
    assert!(s.lease_cas(&LeaseCas { expected: None, new: lease(1) }).await.unwrap());
    let running = RelayRequest::new(NAME, RequestKind::ReplayAllParked, "test");
    let pending = RelayRequest::new(NAME, RequestKind::RewindToPosition { position: 3 }, "test");
    s.request_submit(&running).await.unwrap();
    s.request_submit(&pending).await.unwrap();
    assert!(s.request_claim(&running, 1).await.unwrap());

    session.query_unpaged(format!("DROP TABLE {keyspace}.relay_leases"), ()).await.unwrap();
    let done = s.request_finish(NAME, running.id, 1, RequestStatus::Done, serde_json::json!({})).await;
    assert!(matches!(done, Err(StoreError::Unavailable(_))), "an error to retry, not a refusal: {done:?}");
    let claim = s.request_claim(&pending, 1).await;
    assert!(matches!(claim, Err(StoreError::Unavailable(_))), "an error to retry, not a refusal: {claim:?}");
    let r = s.request_get(running.id).await.unwrap().unwrap();
    assert_eq!((r.status, r.claimed_epoch), (RequestStatus::Running, Some(1)), "nothing recorded");
    let r = s.request_get(pending.id).await.unwrap().unwrap();
    assert_eq!(r.status, RequestStatus::Pending, "not claimed");
}

/// A park row is written like SQLite's upsert, with conditional writes only
/// (its delete is one): parking again updates the failed event and keeps the
/// first `parked_at`; a park after an unpark creates the row again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn park_rows_are_conditional_upserts_that_keep_the_first_parked_at() {
    let Some(uri) = cql_uri_or_skip("CQL park rows") else { return };
    let (s, _keyspace, _session) = fresh_cql_store(&uri, "rt").await;
    let agg = Uuid::now_v7().to_string();
    let first = chrono::Utc::now() - chrono::Duration::minutes(5);
    let park = |sequence: i64, at: chrono::DateTime<chrono::Utc>| parked(&agg, sequence, at);
    let row = || async {
        let rows = s.parked(NAME).await.unwrap();
        assert_eq!(rows.len(), 1, "one row per aggregate and consumer: {rows:?}");
        rows[0].parked.clone()
    };
    s.park(&park(2, first)).await.unwrap();
    s.park(&park(4, chrono::Utc::now())).await.unwrap();
    let p = row().await;
    assert_eq!((p.sequence, p.error.as_str()), (Some(4), "refused at 4"), "the failed event is the latest");
    assert_eq!(p.parked_at.timestamp_millis(), first.timestamp_millis(), "parked since the first time");
    assert!(s.unpark(NAME, &agg).await.unwrap());
    assert!(s.parked(NAME).await.unwrap().is_empty());
    let again = chrono::Utc::now();
    s.park(&park(6, again)).await.unwrap();
    let p = row().await;
    assert_eq!((p.sequence, p.parked_at.timestamp_millis()), (Some(6), again.timestamp_millis()));
}

/// A request is written once (`IF NOT EXISTS`): a second submit of the same
/// id is refused and leaves the first as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_written_once() {
    let Some(uri) = cql_uri_or_skip("CQL request submit") else { return };
    let (s, _keyspace, _session) = fresh_cql_store(&uri, "rt").await;
    assert!(s.lease_cas(&LeaseCas { expected: None, new: lease(1) }).await.unwrap());
    let r = RelayRequest::new(NAME, RequestKind::ReplayAllParked, "first");
    s.request_submit(&r).await.unwrap();
    assert!(s.request_claim(&r, 1).await.unwrap());
    let again = RelayRequest { requested_by: "second".into(), ..r.clone() };
    assert!(s.request_submit(&again).await.is_err(), "the id exists");
    let now = s.request_get(r.id).await.unwrap().unwrap();
    assert_eq!((now.status, now.claimed_epoch, now.requested_by.as_str()), (RequestStatus::Running, Some(1), "first"));
}

/// Review finding: a fenced park, unpark, claim or outcome read the lease
/// and then wrote in a second statement (the rows live outside the lease
/// partition), so a holder that stalled between the two could change what
/// the next term holds: unpark its park record (its held events then lost
/// on the next restart), park behind its back, claim a request it already
/// carries out. Each term now raises a fence in those partitions before it
/// reads them, and every fenced write is conditioned on it. Here the next
/// term raised the fence while the lease row still names the old epoch (the
/// old holder's lease check passes, as in the stall): its writes are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_an_older_term_are_refused_once_the_next_term_raised_its_fence() {
    let Some(uri) = cql_uri_or_skip("CQL fenced writes after the next term began") else { return };
    let (s, _keyspace, _session) = fresh_cql_store(&uri, "rt").await;
    assert!(s.lease_cas(&LeaseCas { expected: None, new: lease(1) }).await.unwrap());
    let agg = Uuid::now_v7().to_string();
    let park = |agg: &str| parked(agg, 2, chrono::Utc::now());
    s.fence_term(NAME, 1).await.unwrap();
    s.park_fenced(&park(&agg), 1).await.unwrap();
    let claimed = RelayRequest::new(NAME, RequestKind::ReplayAllParked, "test");
    let pending = RelayRequest::new(NAME, RequestKind::RewindToPosition { position: 1 }, "test");
    s.request_submit(&claimed).await.unwrap();
    s.request_submit(&pending).await.unwrap();
    assert!(s.request_claim(&claimed, 1).await.unwrap());

    // The next term (epoch 2) begins: it raises the fence before reading.
    s.fence_term(NAME, 2).await.unwrap();
    let refused = |r: Result<bool, StoreError>| matches!(r, Err(StoreError::Fenced { epoch: 1, current: Some(2), .. }));
    let r = s.unpark_fenced(NAME, &agg, 1).await;
    assert!(refused(r.clone()), "the old term's unpark: {r:?}");
    let r = s.park_fenced(&park(&Uuid::now_v7().to_string()), 1).await;
    assert!(matches!(r, Err(StoreError::Fenced { epoch: 1, current: Some(2), .. })), "the old term's park: {r:?}");
    assert!(!s.request_claim(&pending, 1).await.unwrap(), "the old term's claim is refused");
    let done = s.request_finish(NAME, claimed.id, 1, RequestStatus::Done, serde_json::json!({})).await.unwrap();
    assert!(!done, "the old term's outcome is refused");
    let parked: Vec<String> = s.parked(NAME).await.unwrap().into_iter().map(|p| p.parked.aggregate_id).collect();
    assert_eq!(parked, vec![agg.clone()], "nothing changed");
    assert_eq!(s.request_get(pending.id).await.unwrap().unwrap().status, RequestStatus::Pending);

    // The new holder writes at its epoch; a fence never goes down.
    assert!(s.lease_cas(&LeaseCas { expected: Some((1, 0)), new: lease(2) }).await.unwrap());
    assert!(s.request_claim(&pending, 2).await.unwrap());
    assert!(s.unpark_fenced(NAME, &agg, 2).await.unwrap());
    assert!(!s.unpark_fenced(NAME, &agg, 2).await.unwrap(), "gone: false, not an error");
    let r = s.fence_term(NAME, 1).await;
    assert!(matches!(r, Err(StoreError::Fenced { epoch: 1, current: Some(2), .. })), "{r:?}");
}

/// A keyspace made before the fence existed gets its columns from
/// `outboxd schema` (migrate), and fenced writes work on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_adds_the_fence_to_tables_made_before_it() {
    let Some(uri) = cql_uri_or_skip("CQL fence columns added by migrate") else { return };
    let (s, keyspace, session) = fresh_cql_store(&uri, "rt").await;
    for table in ["parked_aggregates", "relay_requests"] {
        session.query_unpaged(format!("ALTER TABLE {keyspace}.{table} DROP fence_epoch"), ()).await.unwrap();
    }
    outboxd::store::EventStore::migrate(&*s).await.unwrap();
    s.fence_term(NAME, 3).await.unwrap();
    assert!(s.lease_cas(&LeaseCas { expected: None, new: lease(3) }).await.unwrap());
    let agg = Uuid::now_v7().to_string();
    s.park_fenced(&parked(&agg, 1, chrono::Utc::now()), 3).await.unwrap();
    assert!(s.unpark_fenced(NAME, &agg, 3).await.unwrap());
}

/// Review finding: a lease row deleted while every instance was stopped
/// was created again at epoch 1 under fences at a higher epoch, and every
/// fenced write of its terms was refused. The store names the highest
/// fence (`lease_epoch_floor`), which the keeper creates a missing row above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_epoch_floor_is_the_highest_fence_the_terms_raised() {
    let Some(uri) = cql_uri_or_skip("CQL lease epoch floor") else { return };
    let (s, _keyspace, _session) = fresh_cql_store(&uri, "rt").await;
    assert_eq!(s.lease_epoch_floor(NAME).await.unwrap(), 0, "no term ever fenced: no floor");
    s.fence_term(NAME, 7).await.unwrap();
    assert_eq!(s.lease_epoch_floor(NAME).await.unwrap(), 7);
    assert_eq!(s.lease_epoch_floor("projections").await.unwrap(), 0, "per consumer");
    // A term at epoch 1 (the row created anew below the floor) is refused;
    // one above it is not.
    assert!(matches!(s.fence_term(NAME, 1).await, Err(StoreError::Fenced { epoch: 1, current: Some(7), .. })));
    s.fence_term(NAME, 8).await.unwrap();
    assert_eq!(s.lease_epoch_floor(NAME).await.unwrap(), 8);
}
