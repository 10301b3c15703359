//! What the CQL projection reads to know which aggregates it has parked,
//! against a real server (Apache Cassandra via `CASSANDRA_URI`; without it
//! the cases print `SKIPPED: ...`). Review finding: the parked count on the
//! status and the gap fill's "is it parked already" check called
//! `parked()`, which counts each park's held events with a query on
//! `event_store`: with thousands of parks, thousands of round trips after
//! every skipped event. They read the park rows alone now. The reads are
//! counted on the server (`system_views.coordinator_read_latency`, Cassandra
//! 4+; elsewhere the count is not observed and says so).

mod harness;
use harness::*;
use uuid::Uuid;

use scylla::client::session::Session;

use outboxd::envelope::{now_millis, EventEnvelope};
use outboxd::projection::cql::CqlProjectionSink;
use outboxd::projection::{ProjectionStatus, ReadModelStore, CONSUMER};
use outboxd::relay::cdc::{CdcError, EnvelopeSink, UndecodableRow};
use outboxd::shutdown::Shutdown;
use outboxd::store::cql::CqlStore;
use outboxd::store::parking::{Parked, ParkingStore};
use outboxd::store::EventStore;

/// Parks made before the measured calls: each read of `event_store` per
/// park would show as at least this many.
const PARKS: usize = 40;

/// Reads of `keyspace`'s `event_store` the server coordinated so far, or
/// `None` where the server has no such table (ScyllaDB).
async fn event_store_reads(session: &Session, keyspace: &str) -> Option<i64> {
    let cql = "SELECT count FROM system_views.coordinator_read_latency WHERE keyspace_name = ? AND table_name = 'event_store'";
    let res = session.query_unpaged(cql, (keyspace,)).await.ok()?;
    res.into_rows_result().ok()?.maybe_first_row::<(i64,)>().ok()?.map(|r| r.0)
}

/// Runs `f` and returns how many `event_store` reads it cost (None: not observable).
async fn reads_of<F: std::future::Future<Output = ()>>(session: &Session, keyspace: &str, f: F) -> Option<i64> {
    let before = event_store_reads(session, keyspace).await;
    f.await;
    Some(event_store_reads(session, keyspace).await? - before?)
}

fn park_of(aggregate: Uuid, sequence: i64) -> Parked {
    Parked {
        consumer: CONSUMER.into(),
        aggregate_id: aggregate.to_string(),
        aggregate_type: Some("order".into()),
        position: None,
        sequence: Some(sequence),
        event_id: None,
        event_type: None,
        error: "cannot be applied".into(),
        parked_at: chrono::Utc::now(),
    }
}

/// Writes a row of `aggregate` at `sequence` whose payload is not JSON.
async fn unreadable_row(store: &CqlStore, aggregate: Uuid, sequence: i64) {
    let cql = format!(
        "INSERT INTO {}.event_store (aggregate_id, sequence_number, version, event_id, aggregate_type, event_type, event_version, payload, causation_id, correlation_id, timestamp)
         VALUES (?, ?, ?, ?, 'order', 'OrderItemsUpdated', 2, 'not json', null, ?, ?)",
        store.keyspace()
    );
    let values = (aggregate, sequence, sequence, Uuid::now_v7(), Uuid::now_v7(), now_millis());
    store.session().query_unpaged(cql, values).await.unwrap();
}

fn check_reads(what: &str, reads: Option<i64>, at_most: i64) {
    match reads {
        Some(n) => {
            eprintln!("{what}: {n} reads of event_store");
            assert!(n <= at_most, "{what}: {n} reads of event_store (at most {at_most}; {PARKS} parks)");
        }
        None => eprintln!("NOT OBSERVED: {what}: the server has no system_views.coordinator_read_latency"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projection_counts_its_parks_without_a_query_per_park() {
    let Some(uri) = cql_uri_or_skip("CQL projection park count") else { return };
    let (store, keyspace, session) = fresh_cql_store(&uri, "pk").await;
    for _ in 0..PARKS {
        store.park(&park_of(Uuid::now_v7(), 2)).await.unwrap();
    }
    let positions = store.parked_positions(CONSUMER).await.unwrap();
    let parked = store.parked(CONSUMER).await.unwrap();
    let of_parked: Vec<_> = parked.iter().map(|p| (p.parked.aggregate_id.clone(), p.parked.position)).collect();
    assert_eq!((positions.len(), &positions), (PARKS, &of_parked), "the same parks, in the same order");
    let listed = reads_of(&session, &keyspace, async {
        store.parked_positions(CONSUMER).await.unwrap();
    })
    .await;
    check_reads("parked_positions", listed, 0);

    let (status, seen) = tokio::sync::watch::channel(ProjectionStatus::default());
    let sink = CqlProjectionSink::new(store.clone(), "EUR".into(), status);
    let mut never = Shutdown::never();

    // An event this build cannot apply: parked, and the count refreshed.
    let y = Uuid::now_v7();
    let mut newer: Vec<EventEnvelope> = order_events(y, 0, 1);
    newer[0].schema_version = 99;
    store.append(y, 0, newer.clone()).await.unwrap();
    let skipped = reads_of(&session, &keyspace, async {
        sink.handle(newer[0].clone(), &mut never).await.unwrap();
    })
    .await;
    assert_eq!(seen.borrow().parked_aggregates, PARKS as u64 + 1, "{:?}", *seen.borrow());
    check_reads("a skipped event", skipped, 1);

    // A gap fill that meets an unreadable row: parked there, counted again.
    let z = Uuid::now_v7();
    let evs = order_events(z, 0, 3);
    store.append(z, 0, evs[..1].to_vec()).await.unwrap();
    unreadable_row(&store, z, 2).await;
    store.append(z, 2, evs[2..].to_vec()).await.unwrap();
    let filled = reads_of(&session, &keyspace, async {
        sink.handle(evs[2].clone(), &mut never).await.unwrap();
    })
    .await;
    assert_eq!(seen.borrow().parked_aggregates, PARKS as u64 + 2, "{:?}", *seen.borrow());
    check_reads("a gap fill stopped by an unreadable row", filled, 2);
    assert_eq!(store.get_order(z).await.unwrap().map(|r| r.version), Some(1), "event 1 applied before the row");
    let at_z = store.parked(CONSUMER).await.unwrap().into_iter().find(|p| p.parked.aggregate_id == z.to_string());
    assert_eq!(at_z.map(|p| p.parked.sequence), Some(Some(2)), "parked at the unreadable row");

    // The reader meets an unreadable row itself.
    let w = Uuid::now_v7();
    let row = UndecodableRow {
        aggregate_id: Some(w),
        sequence: Some(1),
        event_id: Some(Uuid::now_v7()),
        position: None,
        error: CdcError::Payload { row: format!("{w}#1"), error: "payload is not JSON".into() },
    };
    let undecodable = reads_of(&session, &keyspace, async {
        sink.undecodable(row, &mut never).await.unwrap();
    })
    .await;
    assert_eq!(seen.borrow().parked_aggregates, PARKS as u64 + 3, "{:?}", *seen.borrow());
    check_reads("an unreadable CDC row", undecodable, 0);
    assert_eq!(store.parked_positions(CONSUMER).await.unwrap().len(), PARKS + 3);
}

/// The gap fill keeps the park the reader wrote at an unreadable row (it
/// names the row's event id) and adds none: one lookup of that park row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_fill_keeps_the_readers_park_at_an_unreadable_row() {
    let Some(uri) = cql_uri_or_skip("gap fill keeps the reader's park") else { return };
    let (store, _, _) = fresh_cql_store(&uri, "pk").await;
    let other = Uuid::now_v7();
    store.park(&park_of(other, 4)).await.unwrap();
    let z = Uuid::now_v7();
    let evs = order_events(z, 0, 3);
    store.append(z, 0, evs[..1].to_vec()).await.unwrap();
    unreadable_row(&store, z, 2).await;
    store.append(z, 2, evs[2..].to_vec()).await.unwrap();
    let reader_park = Parked { error: "the reader's".into(), event_id: Some("e2".into()), ..park_of(z, 2) };
    store.park(&reader_park).await.unwrap();
    outboxd::projection::cql::apply_envelopes(&store, evs[2..].to_vec(), "EUR").await.unwrap();
    let parked = store.parked(CONSUMER).await.unwrap();
    assert_eq!(parked.len(), 2, "{parked:?}");
    let p = parked.iter().find(|p| p.parked.aggregate_id == z.to_string()).unwrap();
    assert_eq!((p.parked.error.as_str(), p.parked.event_id.as_deref()), ("the reader's", Some("e2")));
    assert_eq!(store.get_order(z).await.unwrap().map(|r| r.version), Some(1));
}

/// Review finding: a park written by another build (an older one that
/// could not apply y's event 2, during a rolling upgrade) was never removed
/// once this build applied y past it (the gap fill applies the event), so
/// the customer's orders page kept marking y stale and /health said
/// Degraded for a current row. It goes once the row is written past it;
/// one that the row has not passed yet stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_park_this_build_applied_past_is_removed() {
    let Some(uri) = cql_uri_or_skip("CQL projection park applied past") else { return };
    let (store, _keyspace, _session) = fresh_cql_store(&uri, "pp").await;
    let (y, z) = (Uuid::now_v7(), Uuid::now_v7());
    let (ys, zs) = (order_events(y, 0, 3), order_events(z, 0, 3));
    store.append(y, 0, ys.clone()).await.unwrap();
    store.append(z, 0, zs.clone()).await.unwrap();
    store.park(&park_of(y, 2)).await.unwrap();
    store.park(&park_of(z, 3)).await.unwrap();
    // y's event 3 arrives: the gap fill applies 1 and 2, then 3.
    let out =
        outboxd::projection::cql::apply_envelopes(&store, vec![ys[2].clone(), zs[1].clone()], "EUR").await.unwrap();
    assert_eq!(out.rows_written, 2, "{out:?}");
    assert_eq!(store.get_order(y).await.unwrap().map(|r| r.version), Some(3));
    assert_eq!(store.get_order(z).await.unwrap().map(|r| r.version), Some(2));
    let parked: Vec<String> = store.parked_positions(CONSUMER).await.unwrap().into_iter().map(|(a, _)| a).collect();
    assert_eq!(parked, vec![z.to_string()], "y's park is gone; z's (at 3, the row at 2) stays");

    // Last read: the park rows are read once per call. w, parked at 2 by
    // another build, is applied through 2 and stopped again at its
    // unreadable row 3 in a call whose first row (v's) read them: its park
    // was removed on the strength of the sequence read before (2), the row
    // left behind with no park. An aggregate parked in the call keeps it.
    let (v, w) = (Uuid::now_v7(), Uuid::now_v7());
    let (vs, ws) = (order_events(v, 0, 1), order_events(w, 0, 4));
    store.append(v, 0, vs.clone()).await.unwrap();
    store.append(w, 0, ws[..2].to_vec()).await.unwrap();
    unreadable_row(&store, w, 3).await;
    store.append(w, 3, ws[3..].to_vec()).await.unwrap();
    store.park(&park_of(w, 2)).await.unwrap();
    outboxd::projection::cql::apply_envelopes(&store, vec![vs[0].clone(), ws[3].clone()], "EUR").await.unwrap();
    assert_eq!(store.get_order(w).await.unwrap().map(|r| r.version), Some(2), "applied up to the unreadable row");
    let parked: Vec<String> = store.parked_positions(CONSUMER).await.unwrap().into_iter().map(|(a, _)| a).collect();
    assert!(parked.contains(&w.to_string()), "w stays parked: {parked:?}");
}
