//! Parked read models beside other projectors on real SQLite files: a
//! rebuild that releases a parked aggregate lets a running projector apply
//! its next events, and a projector (or a rebuild) whose checkpoint another
//! projector moved re-reads the park records with it (it holds what the
//! other parked); an idle projector notices a rebuild that stopped short of
//! its checkpoint, and reports the parks it finds at start; a rebuild
//! interrupted before its reset leaves the parks in place.

mod harness;

use harness::read_models::{fast, hooked, open, open_with, projector, service, ModelsHook};
use harness::*;
use std::time::Duration;
use uuid::Uuid;

use outboxd::domain::{Order, OrderCommand};
use outboxd::envelope::Metadata;
use outboxd::envelope::StoredEvent;
use outboxd::metrics::Metrics;
use outboxd::projection::{self, CommitBatch, DynReadModels, CONSUMER};
use outboxd::shutdown::Trigger;
use outboxd::store::{DynStore, StoreError};

/// The projector's park record of order `x` at (`position`, `sequence`).
fn park_of(x: Uuid, position: i64, sequence: i64, event_type: &str) -> outboxd::store::parking::Parked {
    outboxd::store::parking::Parked {
        consumer: CONSUMER.to_string(),
        aggregate_id: x.to_string(),
        aggregate_type: Some("order".into()),
        position: Some(position),
        sequence: Some(sequence),
        event_id: None,
        event_type: Some(event_type.into()),
        error: "parked by another projector".into(),
        parked_at: chrono::Utc::now(),
    }
}

/// Places order `x` (its event 1).
async fn create_order(svc: &outboxd::app::CommandService, x: Uuid) {
    let create = OrderCommand::Create { customer_id: Uuid::from_u128(1), items: sample_items(1, 2) };
    svc.execute::<Order>(x, &create, Metadata::default(), None).await.unwrap();
}

/// Review finding: a projector that had parked an aggregate kept holding
/// its events after a rebuild released it (the row was fixed by hand): the
/// rebuild ended at the projector's own checkpoint, so its compare-and-set
/// passed and the aggregate's next event was skipped for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_releases_a_parked_aggregate_for_a_running_projector() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let db = open_with(&path, fast()).await;
    let svc = service(&db.store);
    let y = order_lifecycle(&svc, 0).await;
    let (x, meta) = (Uuid::now_v7(), Metadata::default());
    create_order(&svc, x).await;
    // Event 2 of x is a row no build can read (written by hand).
    copy_event(&path, y, x, 2, Some("{not json"));
    let p = projector(&db, Metrics::new(), 25);
    let mut status = p.status();
    let trigger = Trigger::new();
    let task = tokio::spawn(p.run(trigger.subscribe()));
    let head = db.store.head_position().await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| s.checkpoint == head && s.parked_aggregates == 1),
    )
    .await
    .expect("x parked, the rest projected")
    .unwrap();
    // Review finding: x's event 1, in the page of its unreadable event 2,
    // was held with it (the park held the whole aggregate, not from its
    // position on) while the checkpoint moved past it.
    assert_eq!(db.models.get_order(x).await.unwrap().map(|r| r.version), Some(1), "x at the version before its park");
    // The operator repairs the row, then rebuilds while the projector runs.
    sqlite3(
        &path,
        &format!(
            "UPDATE event_store SET payload = (SELECT payload FROM event_store WHERE aggregate_id = '{y}' AND sequence_number = 2) WHERE aggregate_id = '{x}' AND sequence_number = 2"
        ),
    );
    let report = projection::rebuild(db.store.clone(), db.models.clone(), "EUR", false).await.unwrap();
    assert_eq!(report.checkpoint, head, "the rebuild ends at the projector's checkpoint");
    assert_eq!(db.models.get_order(x).await.unwrap().unwrap().version, 2, "the rebuild applied the repaired event");
    // The next event of x reaches the read model.
    svc.execute::<Order>(x, &OrderCommand::Confirm, meta, None).await.unwrap();
    let head = db.store.head_position().await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), status.wait_for(|s| s.checkpoint == head))
        .await
        .expect("caught up")
        .unwrap();
    assert_eq!(db.models.get_order(x).await.unwrap().unwrap().version, 3, "x's event 3 is projected, not held");
    assert_eq!(status.borrow().parked_aggregates, 0);
    trigger.fire();
    task.await.unwrap();
}

/// Review finding: a projector with nothing parked read the park records
/// once per run. When another projector (here: a rebuild by a build that
/// cannot read x's event 2) parks an aggregate and moves the checkpoint
/// meanwhile, this projector's compare-and-set fails and it re-reads the
/// checkpoint; it must re-read the parks with it, or it applies x's later
/// events onto the row the other left before the parked event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_projector_rereads_the_parks_when_another_moves_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let db = open(&path).await;
    let svc = service(&db.store);
    let (x, meta) = (Uuid::now_v7(), Metadata::default());
    create_order(&svc, x).await;
    let mut p = projector(&db, Metrics::new(), 64);
    p.catch_up().await.unwrap();
    assert_eq!(db.models.get_order(x).await.unwrap().unwrap().version, 1);
    // x's event 2; the other projector parks x at it and ends past it.
    svc.execute::<Order>(x, &OrderCommand::Confirm, meta.clone(), None).await.unwrap();
    let parked_at = db.store.head_position().await.unwrap();
    db.store.park(&park_of(x, parked_at, 2, "OrderConfirmed")).await.unwrap();
    sqlite3(&path, &format!("UPDATE checkpoints SET position = {parked_at} WHERE consumer = '{CONSUMER}'"));
    // x's event 3, then this projector goes on from its own (stale) checkpoint.
    svc.execute::<Order>(x, &OrderCommand::Ship { tracking_number: "T1".into(), carrier: "DHL".into() }, meta, None)
        .await
        .unwrap();
    p.catch_up().await.unwrap();
    let head = db.store.head_position().await.unwrap();
    assert_eq!(db.models.projection_checkpoint(CONSUMER).await.unwrap(), head);
    let row = db.models.get_order(x).await.unwrap().unwrap();
    assert_eq!(row.version, 1, "x is held from its parked event 2 on, not advanced past it");
    let parks = db.store.parked(CONSUMER).await.unwrap();
    assert_eq!(parks.len(), 1);
    assert_eq!((parks[0].parked.sequence, parks[0].held_events), (Some(2), 2));
}

/// Review finding: a rebuild reset the rows and the checkpoint, then
/// removed the parks in a later step. A projector beside it whose
/// compare-and-set failed on the reset re-read checkpoint 0 and the parks
/// still there, and held those aggregates' events from position 0 while it
/// committed past them: lost. The reset now drops the parks with the
/// checkpoint, in one transaction.
#[tokio::test]
async fn the_reset_drops_the_parks_with_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let db = open(&path).await;
    let svc = service(&db.store);
    let x = Uuid::now_v7();
    create_order(&svc, x).await;
    let mut p = projector(&db, Metrics::new(), 64);
    p.catch_up().await.unwrap();
    db.store.park(&park_of(x, 1, 1, "OrderCreated")).await.unwrap();
    assert_eq!(db.store.parked(CONSUMER).await.unwrap().len(), 1);
    db.models.reset(CONSUMER).await.unwrap();
    assert_eq!(db.models.projection_checkpoint(CONSUMER).await.unwrap(), 0);
    assert!(db.store.parked(CONSUMER).await.unwrap().is_empty(), "no park outlives the reset");
    assert!(db.models.get_order(x).await.unwrap().is_none());
}

/// Read models beside which a projector moves first, right after the
/// rebuild's reset: it projects x's event 1 (at `p1`), parks x at its event 2
/// (at `p2`) and commits past it, so the rebuild's first compare-and-set fails.
struct ProjectorParksFirst {
    store: DynStore,
    x: Uuid,
    p1: i64,
    p2: i64,
}

#[async_trait::async_trait]
impl ModelsHook for ProjectorParksFirst {
    async fn reset(&self, inner: &DynReadModels, consumer: &str) -> Result<(), StoreError> {
        inner.reset(consumer).await?;
        let first = self.store.load(self.x).await?.remove(0);
        let mut row = None;
        projection::apply_event(&mut row, StoredEvent { position: self.p1, envelope: first }, "EUR");
        let batch = |from, to, orders| CommitBatch {
            consumer: CONSUMER.into(),
            from,
            to,
            orders,
            customers: vec![],
            parks: vec![],
            held_by: vec![],
        };
        assert!(inner.commit_batch(batch(0, self.p1, row.into_iter().collect())).await?);
        self.store.park(&park_of(self.x, self.p2, 2, "OrderConfirmed")).await?;
        assert!(inner.commit_batch(batch(self.p1, self.p2, vec![])).await?);
        Ok(())
    }
}

/// Review finding: a rebuild whose compare-and-set lost to a running
/// projector went on from the projector's checkpoint with its own parking
/// set, built once at its start. The projector had parked x at event 2, so
/// the rebuild applied x's event 3 onto x's row at version 1. It now re-reads
/// the parks with the checkpoint (and a sequence gap never applies either).
#[tokio::test]
async fn a_rebuild_that_loses_to_a_projector_rereads_its_parks() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir.path().join("s.db")).await;
    let svc = service(&db.store);
    let (x, meta) = (Uuid::now_v7(), Metadata::default());
    create_order(&svc, x).await;
    let p1 = db.store.head_position().await.unwrap();
    svc.execute::<Order>(x, &OrderCommand::Confirm, meta.clone(), None).await.unwrap();
    let p2 = db.store.head_position().await.unwrap();
    svc.execute::<Order>(x, &OrderCommand::Ship { tracking_number: "T1".into(), carrier: "DHL".into() }, meta, None)
        .await
        .unwrap();
    let head = db.store.head_position().await.unwrap();
    let models = hooked(&db.models, ProjectorParksFirst { store: db.store.clone(), x, p1, p2 });
    let report = projection::rebuild(db.store.clone(), models, "EUR", false).await.unwrap();
    assert_eq!(report.checkpoint, head);
    let row = db.models.get_order(x).await.unwrap().unwrap();
    assert_eq!(row.version, 1, "x stays at the version before its parked event 2, not at 3 with 2 missing");
    let parks = db.store.parked(CONSUMER).await.unwrap();
    assert_eq!(parks.len(), 1);
    assert_eq!((parks[0].parked.sequence, parks[0].held_events), (Some(2), 2));
}

/// Read models whose first commit fails (the store went away for a moment).
struct FirstCommitFails(std::sync::atomic::AtomicBool);

#[async_trait::async_trait]
impl ModelsHook for FirstCommitFails {
    async fn commit_batch(&self, inner: &DynReadModels, batch: CommitBatch) -> Result<bool, StoreError> {
        if self.0.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Unavailable("injected: the first commit fails".into()));
        }
        inner.commit_batch(batch).await
    }
}

/// An order x, created and confirmed, whose event 2 comes from a newer
/// build (a version this one cannot read).
async fn order_with_unreadable_event_2(db: &harness::read_models::Db, path: &std::path::Path) -> Uuid {
    let svc = service(&db.store);
    let x = Uuid::now_v7();
    create_order(&svc, x).await;
    svc.execute::<Order>(x, &OrderCommand::Confirm, Metadata::default(), None).await.unwrap();
    sqlite3(
        path,
        &format!("UPDATE event_store SET event_version = 99 WHERE aggregate_id = '{x}' AND sequence_number = 2"),
    );
    x
}

/// Review finding: the park record of x's undecodable event 2 is written
/// before the page commits; when that commit failed, the page read again
/// found x parked and held its event 1 too, though it is before the park:
/// x's row stayed missing for good.
#[tokio::test]
async fn a_page_read_again_after_a_failed_commit_applies_the_events_before_a_park() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let db = open(&path).await;
    let x = order_with_unreadable_event_2(&db, &path).await;
    let models = hooked(&db.models, FirstCommitFails(true.into()));
    let opts = outboxd::projection::ProjectorOptions { batch_size: 64, ..Default::default() };
    let mut p = outboxd::projection::Projector::new(db.store.clone(), models, Metrics::new(), opts);
    assert!(p.step().await.is_err(), "the injected failure");
    p.catch_up().await.unwrap();
    let head = db.store.head_position().await.unwrap();
    assert_eq!(db.models.projection_checkpoint(CONSUMER).await.unwrap(), head);
    let row = db.models.get_order(x).await.unwrap();
    assert_eq!(row.map(|r| r.version), Some(1), "x's event 1 applied, its event 2 parked");
    let parks = db.store.parked(CONSUMER).await.unwrap();
    assert_eq!((parks.len(), parks[0].parked.sequence), (1, Some(2)));
}

/// Review finding: a projector caught up and idle kept its cached
/// checkpoint while a rebuild beside it reset the read models and stopped
/// short of it (interrupted): no batch of its own failed a compare-and-set,
/// so the read models stayed partial, its status saying lag 0, until the
/// next append. Idle, it now compares the stored checkpoint.
#[tokio::test]
async fn an_idle_projector_finishes_a_rebuild_that_stopped_short() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir.path().join("s.db")).await;
    let svc = service(&db.store);
    let orders: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    for x in &orders {
        create_order(&svc, *x).await;
    }
    let mut p = projector(&db, Metrics::new(), 64);
    p.catch_up().await.unwrap();
    let head = db.store.head_position().await.unwrap();
    // The interrupted rebuild: rows and checkpoint reset, nothing re-applied.
    db.models.reset(CONSUMER).await.unwrap();
    assert!(db.models.get_order(orders[0]).await.unwrap().is_none());
    p.catch_up().await.unwrap();
    assert_eq!(db.models.projection_checkpoint(CONSUMER).await.unwrap(), head);
    for x in &orders {
        assert_eq!(db.models.get_order(*x).await.unwrap().map(|o| o.version), Some(1), "order {x} projected again");
    }
    assert_eq!((p.status().borrow().checkpoint, p.status().borrow().lag), (head, 0));
}

/// Review finding: the projector counted its parks only after a committed
/// batch, so one started (after a restart) with an aggregate parked and no
/// new event reported none: /health healthy while a read model was held.
#[tokio::test]
async fn a_projector_reports_the_parks_it_finds_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir.path().join("s.db")).await;
    let svc = service(&db.store);
    let x = Uuid::now_v7();
    create_order(&svc, x).await;
    let mut first = projector(&db, Metrics::new(), 64);
    first.catch_up().await.unwrap();
    let head = db.store.head_position().await.unwrap();
    db.store.park(&park_of(x, head + 1, 2, "OrderConfirmed")).await.unwrap();
    // A new projector (a restart), nothing new in the feed.
    let mut p = projector(&db, Metrics::new(), 64);
    assert_eq!(p.step().await.unwrap(), 0);
    assert_eq!(p.status().borrow().parked_aggregates, 1);
    // Released (a rebuild, an operator): counted away as well.
    db.store.unpark(CONSUMER, &x.to_string()).await.unwrap();
    p.step().await.unwrap();
    // (The parked set is read again only while something is parked.)
    assert_eq!(p.status().borrow().parked_aggregates, 0);
}

/// Read models whose reset fails (the rebuild is interrupted there: a
/// write lock it could not take, a signal).
struct ResetFails;

#[async_trait::async_trait]
impl ModelsHook for ResetFails {
    async fn reset(&self, _inner: &DynReadModels, _consumer: &str) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("injected: the reset fails".into()))
    }
}

/// Review finding: a rebuild removed the projection's park records one by
/// one before its reset (which drops them itself, with the rows and the
/// checkpoint, in one transaction). Interrupted between the two, it left
/// x's row at the version before its parked event and the checkpoint past
/// its held events with no park: `projections status` and /health showed
/// nothing parked, and x's read model stayed behind for good (a delivered
/// order gets no later event to meet the gap).
#[tokio::test]
async fn a_rebuild_interrupted_before_its_reset_keeps_the_parks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let db = open(&path).await;
    order_with_unreadable_event_2(&db, &path).await;
    let mut p = projector(&db, Metrics::new(), 64);
    p.catch_up().await.unwrap();
    assert_eq!(db.store.parked(CONSUMER).await.unwrap().len(), 1, "x parked at its event 2");

    let models = hooked(&db.models, ResetFails);
    assert!(projection::rebuild(db.store.clone(), models, "EUR", false).await.is_err(), "the injected failure");
    let parks = db.store.parked(CONSUMER).await.unwrap();
    assert_eq!(parks.len(), 1, "the park stays while the rows and the checkpoint stay");
    assert_eq!((parks[0].parked.sequence, parks[0].held_events), (Some(2), 1));
    let mut again = projector(&db, Metrics::new(), 64);
    again.step().await.unwrap();
    assert_eq!(again.status().borrow().parked_aggregates, 1, "a projector (re)started after it still reports x");
}
