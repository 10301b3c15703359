//! A relay request row this build cannot read (a kind a newer build wrote,
//! a hand-edited row) is left as it is and never blocks the requests after
//! it, on both backends (CQL against a real server when `CASSANDRA_URI` or
//! `SCYLLA_URI` is set, else SKIPPED).

mod harness;
use harness::cql::{cql_uri_or_skip, fresh_cql_store};
use harness::sqlite3;

use outboxd::store::requests::{RelayRequest, RequestKind, RequestStore};
use outboxd::store::sqlite::SqliteStore;

const NAME: &str = "kafka-relay";

/// Review finding: one row whose kind did not parse failed the whole
/// `requests_open` call, and the relay (which only logs that) carried out no
/// request of its consumer any more.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_an_unreadable_request_row_does_not_block_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let s = SqliteStore::open(&path, Default::default()).await.unwrap();
    let newer = RelayRequest::new(NAME, RequestKind::ReplayAllParked, "a newer build");
    let good = RelayRequest::new(NAME, RequestKind::RewindToPosition { position: 3 }, "test");
    s.request_submit(&newer).await.unwrap();
    s.request_submit(&good).await.unwrap();
    sqlite3(&path, &format!("UPDATE relay_requests SET kind = '{{\"kind\":\"future\"}}' WHERE id = '{}'", newer.id));
    let open = s.requests_open(NAME, 0).await.expect("the readable ones, not an error");
    assert_eq!(open.iter().map(|r| r.id).collect::<Vec<_>>(), vec![good.id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_an_unreadable_request_row_does_not_block_the_others() {
    let Some(uri) = cql_uri_or_skip("CQL request rows this build cannot read") else { return };
    let (s, keyspace, session) = fresh_cql_store(&uri, "ur").await;
    let newer = RelayRequest::new(NAME, RequestKind::ReplayAllParked, "a newer build");
    let good = RelayRequest::new(NAME, RequestKind::RewindToPosition { position: 3 }, "test");
    s.request_submit(&newer).await.unwrap();
    s.request_submit(&good).await.unwrap();
    session
        .query_unpaged(
            format!("UPDATE {keyspace}.relay_requests SET kind = ? WHERE consumer = ? AND id = ?"),
            ("{\"kind\":\"future\"}", NAME, newer.id),
        )
        .await
        .unwrap();
    let open = s.requests_open(NAME, 0).await.expect("the readable ones, not an error");
    assert_eq!(open.iter().map(|r| r.id).collect::<Vec<_>>(), vec![good.id]);
}
