//! A rebuild racing a running projector's batch on a real SQLite file: the
//! projector loaded an order's row after the rebuild reset the read models
//! and commits after the rebuild's last page reached its checkpoint again
//! (its compare-and-set passes). Its row must still hold every event of the
//! order: it applied the new event to an empty row, and the upsert (a higher
//! version) replaced the rebuild's row with one that had lost the order's
//! customer, items and total until the next rebuild.

mod harness;

use harness::read_models::{hooked, open, service, ModelsHook};
use harness::*;
use std::sync::atomic::{AtomicBool, Ordering};
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
