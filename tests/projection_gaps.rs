//! The SQLite projection on rows it cannot trust, on real SQLite files: a
//! gap fill the store answers short parks the aggregate (its row is never
//! advanced past a missing event), a read-model row whose timestamps,
//! state or version cannot be read is re-derived from its events (never
//! stalling the other aggregates), and the projector's lag gauges read the same backlog
//! as /health (events held behind a park included).

mod harness;

use harness::read_models::{fast, open_with, projector, service};
use harness::*;
use uuid::Uuid;

use outboxd::domain::{Order, OrderCommand};
use outboxd::envelope::Metadata;
use outboxd::metrics::Metrics;
use outboxd::projection::CONSUMER;

/// Order `x` with events 1 (create, one line), 2 (three lines), 3 (confirm).
async fn three_events(svc: &outboxd::app::CommandService, x: Uuid) {
    let meta = Metadata::default();
    let create = OrderCommand::Create { customer_id: Uuid::from_u128(3), items: sample_items(7, 1) };
    svc.execute::<Order>(x, &create, meta.clone(), None).await.unwrap();
    svc.execute::<Order>(x, &OrderCommand::UpdateItems { items: sample_items(7, 3) }, meta.clone(), None)
        .await
        .unwrap();
    svc.execute::<Order>(x, &OrderCommand::Confirm, meta, None).await.unwrap();
}

/// Review finding: a gap fill was never checked for completeness. When the
/// store returned fewer events than the fill needed (here: event 2 deleted
/// by hand), the next event was applied to a partial row (re-derived from
/// events 1 and 3, or a fresh one), which the upsert kept (higher version)
/// and GET served. Now the aggregate parks at the missing event instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_gap_fill_parks_the_aggregate_instead_of_applying_onto_a_partial_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let db = open_with(&path, fast()).await;
    let svc = service(&db.store);
    let y = order_lifecycle(&svc, 0).await;
    let (stale, gone) = (Uuid::now_v7(), Uuid::now_v7());
    three_events(&svc, stale).await;
    three_events(&svc, gone).await;
    let mut p = projector(&db, Metrics::new(), 50);
    p.catch_up().await.unwrap();
    let before = db.models.get_order(stale).await.unwrap().unwrap();
    assert_eq!((before.version, before.status.as_str(), before.item_count), (3, "confirmed", 3));

    // `stale`: its row is re-derived on the next load (an older state shape);
    // `gone`: its row is absent (as under a rebuild's reset). Event 2 of both
    // is missing from the store, then each gets an event 4 (shipped).
    sqlite3(
        &path,
        &format!(
            "UPDATE order_read_model SET state_schema = 0 WHERE order_id = '{stale}';
             DELETE FROM order_read_model WHERE order_id = '{gone}';
             DELETE FROM orders_by_customer WHERE order_id = '{gone}';
             DELETE FROM event_store WHERE aggregate_id IN ('{stale}', '{gone}') AND sequence_number = 2;"
        ),
    );
    copy_event(&path, y, stale, 4, None);
    copy_event(&path, y, gone, 4, None);
    let other = Uuid::now_v7();
    three_events(&svc, other).await;
    p.catch_up().await.unwrap();

    let head = db.store.head_position().await.unwrap();
    assert_eq!(db.models.projection_checkpoint(CONSUMER).await.unwrap(), head);
    // Still in the older shape, so the read path does not serve it (the
    // events answer); the row itself is as it was.
    assert!(!db.models.get_order(stale).await.unwrap().unwrap().current_shape, "another state shape is marked");
    let row: (i64, String, i64, String) = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT version, status, item_count, state FROM order_read_model WHERE order_id = ?1",
            [stale.to_string()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    let state: Order = serde_json::from_str(&row.3).unwrap();
    assert_eq!(
        (row.0, row.1.as_str(), row.2, state),
        (3, "confirmed", 3, before.state.clone()),
        "the row is not overwritten by events 1, 3 and 4 without 2"
    );
    assert!(db.models.get_order(gone).await.unwrap().is_none(), "no row built with event 2 missing");
    assert_eq!(db.models.get_order(other).await.unwrap().unwrap().version, 3, "other orders go on");
    let mut parks: Vec<_> = db
        .store
        .parked(CONSUMER)
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.parked.aggregate_id, p.parked.sequence, p.parked.error.contains("missing")))
        .collect();
    parks.sort();
    let mut want = vec![(stale.to_string(), Some(2), true), (gone.to_string(), Some(2), true)];
    want.sort();
    assert_eq!(parks, want, "both parked at the missing event 2");
    assert_eq!(p.status().borrow().parked_aggregates, 2);
}

/// Review finding: a read-model row with an unparseable `created_at` or a
/// non-text `state` made loading the rows of every batch that touched it
/// fail; the projector retried for ever and no aggregate moved. Such a row
/// is now re-derived from its events (timestamps included), like a row of
/// an older state shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_row_is_rederived_and_the_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let db = open_with(&path, fast()).await;
    let svc = service(&db.store);
    let meta = Metadata::default();
    let (bad_ts, bad_state, fine) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    for x in [bad_ts, bad_state, fine] {
        let create = OrderCommand::Create { customer_id: Uuid::from_u128(4), items: sample_items(2, 2) };
        svc.execute::<Order>(x, &create, meta.clone(), None).await.unwrap();
    }
    let mut p = projector(&db, Metrics::new(), 50);
    p.catch_up().await.unwrap();
    let created = db.models.get_order(bad_ts).await.unwrap().unwrap().created_at;
    sqlite3(
        &path,
        &format!(
            "UPDATE order_read_model SET created_at = 'x' WHERE order_id = '{bad_ts}';
             UPDATE order_read_model SET state = 42 WHERE order_id = '{bad_state}';"
        ),
    );
    for x in [bad_ts, bad_state, fine] {
        svc.execute::<Order>(x, &OrderCommand::Confirm, meta.clone(), None).await.unwrap();
    }
    p.catch_up().await.expect("the projector is not stopped by one row");

    let head = db.store.head_position().await.unwrap();
    assert_eq!(db.models.projection_checkpoint(CONSUMER).await.unwrap(), head);
    let f = db.models.get_order(fine).await.unwrap().unwrap();
    assert_eq!((f.version, f.status.as_str()), (2, "confirmed"));
    for x in [bad_ts, bad_state] {
        let r = db.models.get_order(x).await.unwrap().unwrap();
        assert_eq!((r.version, r.status.as_str(), r.item_count), (2, "confirmed", 2), "{x} re-derived");
        assert_eq!(r.state, svc.load::<Order>(x).await.unwrap().state);
    }
    assert_eq!(db.models.get_order(bad_ts).await.unwrap().unwrap().created_at, created, "created_at re-derived");
    assert!(db.store.parked(CONSUMER).await.unwrap().is_empty());
}

/// Review finding: the projector set `projection_lag_events` to head -
/// checkpoint, the health actor to the store's backlog (events held behind
/// parks included): the gauge jumped between the two. Both now write the
/// backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projectors_lag_gauge_counts_held_events_as_health_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let db = open_with(&path, fast()).await;
    let svc = service(&db.store);
    let y = order_lifecycle(&svc, 0).await;
    let x = Uuid::now_v7();
    let create = OrderCommand::Create { customer_id: Uuid::from_u128(1), items: sample_items(1, 2) };
    svc.execute::<Order>(x, &create, Metadata::default(), None).await.unwrap();
    // x's event 2 cannot be read (parks x); its event 3 is held behind it.
    copy_event(&path, y, x, 2, Some("{not json"));
    copy_event(&path, y, x, 3, None);
    let metrics = Metrics::new();
    let mut p = projector(&db, metrics.clone(), 50);
    p.catch_up().await.unwrap();
    let head = db.store.head_position().await.unwrap();
    let backlog = db.store.backlog(CONSUMER).await.unwrap();
    assert_eq!((backlog.checkpoint, backlog.events), (Some(head), Some(2)), "x's events 2 and 3 are held");
    assert_eq!(metrics.projection_lag_events.get(), 2, "the held events, as /health counts them");
    assert_eq!(metrics.projection_checkpoint_position.get(), head);
    assert_eq!(p.status().borrow().parked_aggregates, 1);
}

/// Review finding: a read-model row whose `version` (or `last_position`) is
/// not an integer (written by hand, or by a foreign tool) failed loading the
/// rows of every batch that touched it, like the unreadable timestamps and
/// states above: the projector retried the same batch for ever and no
/// aggregate moved. Such a row is now re-derived from all its events and
/// rewritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_with_an_unreadable_version_is_rederived_and_the_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let db = open_with(&path, fast()).await;
    let svc = service(&db.store);
    let meta = Metadata::default();
    let (bad_version, bad_position, fine) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    for x in [bad_version, bad_position, fine] {
        let create = OrderCommand::Create { customer_id: Uuid::from_u128(5), items: sample_items(3, 2) };
        svc.execute::<Order>(x, &create, meta.clone(), None).await.unwrap();
    }
    let mut p = projector(&db, Metrics::new(), 50);
    p.catch_up().await.unwrap();
    sqlite3(
        &path,
        &format!(
            "UPDATE order_read_model SET version = 'one' WHERE order_id = '{bad_version}';
             UPDATE order_read_model SET last_position = 'x' WHERE order_id = '{bad_position}';"
        ),
    );
    for x in [bad_version, bad_position, fine] {
        svc.execute::<Order>(x, &OrderCommand::Confirm, meta.clone(), None).await.unwrap();
    }
    p.catch_up().await.expect("the projector is not stopped by one row");

    let head = db.store.head_position().await.unwrap();
    assert_eq!(db.models.projection_checkpoint(CONSUMER).await.unwrap(), head);
    for x in [fine, bad_version, bad_position] {
        let r = db.models.get_order(x).await.unwrap().unwrap();
        assert_eq!((r.version, r.status.as_str(), r.item_count), (2, "confirmed", 2), "{x}");
        assert_eq!(r.state, svc.load::<Order>(x).await.unwrap().state);
    }
    let by_customer = db.models.orders_by_customer(Uuid::from_u128(5), Default::default()).await.unwrap();
    assert!(by_customer.orders.iter().all(|o| o.status == "confirmed"), "{by_customer:?}");
    assert!(db.store.parked(CONSUMER).await.unwrap().is_empty());
}
