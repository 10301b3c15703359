//! A rebuild racing a running projector's batch on a real SQLite file: the
//! projector loaded an order's row after the rebuild reset the read models
//! and commits after the rebuild's last page reached its checkpoint again
//! (its compare-and-set passes). Its row must still hold every event of the
//! order: it applied the new event to an empty row, and the upsert (a higher
//! version) replaced the rebuild's row with one that had lost the order's
//! customer, items and total until the next rebuild. And a projector that
//! cannot apply an event the rebuild beside it applies (an older build)
//! leaves no park behind when its batch loses to the rebuild; nor does a
//! projector that held an aggregate's event on a park the rebuild's reset
//! removed skip that event.

mod harness;

use harness::read_models::{hooked, open, service, ModelsHook};
use harness::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

use outboxd::domain::{Order, OrderCommand};
use outboxd::envelope::Metadata;
use outboxd::metrics::Metrics;
use outboxd::projection::{CommitBatch, DynReadModels, Projector, ProjectorOptions, CONSUMER};
use outboxd::store::{DynStore, StoreError};

/// The read models, with the rebuild's next page (one event) committed
/// first when armed: between this projector's load and its commit.
struct RebuildPageFirst {
    store: DynStore,
    armed: AtomicBool,
}

#[async_trait::async_trait]
impl ModelsHook for RebuildPageFirst {
    async fn commit_batch(&self, inner: &DynReadModels, batch: CommitBatch) -> Result<bool, StoreError> {
        if self.armed.swap(false, Ordering::SeqCst) {
            let opts = ProjectorOptions { batch_size: 1, ..ProjectorOptions::default() };
            let mut rebuild = Projector::new(self.store.clone(), inner.clone(), Metrics::new(), opts);
            assert_eq!(rebuild.step().await?, 1, "the rebuild's page: the order's first event");
        }
        inner.commit_batch(batch).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_batch_racing_a_rebuild_keeps_the_events_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir.path().join("s.db")).await;
    let svc = service(&db.store);
    let (order, customer) = (Uuid::now_v7(), Uuid::now_v7());
    let create = OrderCommand::Create { customer_id: customer, items: sample_items(1, 2) };
    svc.execute::<Order>(order, &create, Metadata::default(), None).await.unwrap(); // position 1
    let models = hooked(&db.models, RebuildPageFirst { store: db.store.clone(), armed: false.into() });
    let opts = ProjectorOptions { poll_interval: Duration::from_millis(20), ..ProjectorOptions::default() };
    let mut projector = Projector::new(db.store.clone(), models.clone(), Metrics::new(), opts);
    projector.catch_up().await.unwrap();

    // The rebuild resets the read models and has read head 1; then the order is confirmed.
    db.models.reset(CONSUMER).await.unwrap();
    svc.execute::<Order>(order, &OrderCommand::Confirm, Metadata::default(), None).await.unwrap(); // position 2
                                                                                                   // The projector's batch (position 2) loads no row for the order; the
                                                                                                   // rebuild commits the order at version 1 before the projector commits.
    models.hook.armed.store(true, Ordering::SeqCst);
    assert_eq!(projector.step().await.unwrap(), 1);
    assert!(!models.hook.armed.load(Ordering::SeqCst), "the rebuild's page ran inside the batch");
    assert_eq!(db.models.projection_checkpoint(CONSUMER).await.unwrap(), 2, "the batch committed");

    let v = db.models.get_order(order).await.unwrap().expect("the order's row");
    assert_eq!((v.status.as_str(), v.version), ("confirmed", 2));
    assert_eq!(v.customer_id, Some(customer), "the row keeps what the order's first event said");
    assert_eq!(v.item_count, 2);
    assert!(v.total_minor.is_some());
}

/// The rebuild's read models: right after its reset, a projector that
/// cannot read order x's event 2 runs one batch (it parks x; its
/// compare-and-set loses to the reset), then the row is repaired (as if
/// the rebuild, a newer build, could read it).
struct OlderProjectorAfterReset {
    projector: tokio::sync::Mutex<Projector>,
    path: std::path::PathBuf,
    repair: String,
}

#[async_trait::async_trait]
impl ModelsHook for OlderProjectorAfterReset {
    async fn reset(&self, inner: &DynReadModels, consumer: &str) -> Result<(), StoreError> {
        inner.reset(consumer).await?;
        let mut p = self.projector.lock().await;
        assert_eq!(p.step().await?, 1, "the projector's page: x's unreadable event 2");
        sqlite3(&self.path, &self.repair);
        Ok(())
    }
}

/// Review finding: a running projector that could not apply x's event
/// wrote its park before its commit, which then lost to a rebuild; the
/// rebuild (which could apply it) had cleared the parks only at its start,
/// so the park outlived it and the projector held x's later events for
/// good. The park is now written in the batch's commit: none when it loses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_park_from_a_batch_that_loses_to_a_rebuild_is_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let db = open(&path).await;
    let svc = service(&db.store);
    let y = order_lifecycle(&svc, 0).await;
    let x = Uuid::now_v7();
    let create = OrderCommand::Create { customer_id: Uuid::from_u128(2), items: sample_items(1, 2) };
    svc.execute::<Order>(x, &create, Metadata::default(), None).await.unwrap();
    let opts = ProjectorOptions { poll_interval: Duration::from_millis(20), ..ProjectorOptions::default() };
    let mut projector = Projector::new(db.store.clone(), db.models.clone(), Metrics::new(), opts);
    projector.catch_up().await.unwrap();
    // x's event 2, a row this projector cannot read.
    copy_event(&path, y, x, 2, Some("{not json"));
    let repair = format!(
        "UPDATE event_store SET payload = (SELECT payload FROM event_store WHERE aggregate_id = '{y}' AND sequence_number = 2) WHERE aggregate_id = '{x}' AND sequence_number = 2"
    );
    let hook = OlderProjectorAfterReset { projector: tokio::sync::Mutex::new(projector), path: path.clone(), repair };
    let models = hooked(&db.models, hook);
    let report =
        outboxd::projection::rebuild(db.store.clone(), models.clone() as DynReadModels, "EUR", false).await.unwrap();
    let head = db.store.head_position().await.unwrap();
    assert_eq!(report.checkpoint, head);
    assert_eq!(db.models.get_order(x).await.unwrap().unwrap().version, 2, "the rebuild applied x's event 2");
    let parks = db.store.parked(CONSUMER).await.unwrap();
    assert!(parks.is_empty(), "no park from the projector's lost batch: {parks:?}");

    // The projector goes on from the rebuild's checkpoint and applies x's next event.
    svc.execute::<Order>(x, &OrderCommand::Confirm, Metadata::default(), None).await.unwrap();
    let models = Arc::try_unwrap(models).ok().expect("the rebuild is done");
    let mut projector = models.hook.projector.into_inner();
    projector.catch_up().await.unwrap();
    assert_eq!(db.models.get_order(x).await.unwrap().unwrap().version, 3, "x's event 3 is applied, not held");
    assert_eq!(projector.status().borrow().parked_aggregates, 0);
}

/// The read models, with a rebuild's reset and first page (one event)
/// committed first when armed: between the projector's park read and its
/// commit, ending at the checkpoint that projector's batch starts from.
struct ResetAndFirstPage {
    store: DynStore,
    armed: AtomicBool,
}

#[async_trait::async_trait]
impl ModelsHook for ResetAndFirstPage {
    async fn commit_batch(&self, inner: &DynReadModels, batch: CommitBatch) -> Result<bool, StoreError> {
        if self.armed.swap(false, Ordering::SeqCst) {
            inner.reset(CONSUMER).await?;
            let opts = ProjectorOptions { batch_size: 1, ..ProjectorOptions::default() };
            let mut rebuild = Projector::new(self.store.clone(), inner.clone(), Metrics::new(), opts);
            assert_eq!(rebuild.step().await?, 1, "the rebuild's page: the order's first event");
        }
        inner.commit_batch(batch).await
    }
}

/// Review finding: x parked at its event 2 (a cause since repaired), the
/// projector at 1 read the park, held event 2 and committed 1 -> 2 after a
/// rebuild had reset (park removed) and committed up to 1: its
/// compare-and-set passed, and x's row stayed at version 1 with no park
/// and no lag. The commit now also checks the parks it held on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_held_on_a_park_a_rebuild_removed_does_not_skip_the_event() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir.path().join("s.db")).await;
    let svc = service(&db.store);
    let x = Uuid::now_v7();
    let create = OrderCommand::Create { customer_id: Uuid::now_v7(), items: sample_items(1, 2) };
    svc.execute::<Order>(x, &create, Metadata::default(), None).await.unwrap(); // position 1
    let opts = ProjectorOptions { poll_interval: Duration::from_millis(20), ..ProjectorOptions::default() };
    Projector::new(db.store.clone(), db.models.clone(), Metrics::new(), opts.clone()).catch_up().await.unwrap();
    svc.execute::<Order>(x, &OrderCommand::Confirm, Metadata::default(), None).await.unwrap(); // position 2
    db.store.park(&order_parked_at(CONSUMER, x, 2)).await.unwrap();
    // A projector (re)started now: at 1, it reads the park of x at 2.
    let models = hooked(&db.models, ResetAndFirstPage { store: db.store.clone(), armed: true.into() });
    let mut projector = Projector::new(db.store.clone(), models.clone(), Metrics::new(), opts);

    projector.step().await.unwrap();
    assert!(!models.hook.armed.load(Ordering::SeqCst), "the rebuild's reset and page ran inside the batch");
    projector.catch_up().await.unwrap();
    assert_eq!(db.models.projection_checkpoint(CONSUMER).await.unwrap(), 2);
    assert!(db.store.parked(CONSUMER).await.unwrap().is_empty(), "the reset removed the park");
    let v = db.models.get_order(x).await.unwrap().expect("x's row");
    assert_eq!((v.status.as_str(), v.version), ("confirmed", 2), "x's event 2 is applied, not skipped");
}
