//! A rebuild racing a running projector's batch on a real SQLite file: the
//! projector loaded an order's row after the rebuild reset the read models
//! and commits after the rebuild's last page reached its checkpoint again
//! (its compare-and-set passes). Its row must still hold every event of the
//! order: it applied the new event to an empty row, and the upsert (a higher
//! version) replaced the rebuild's row with one that had lost the order's
//! customer, items and total until the next rebuild.

mod harness;

use harness::read_models::{open, service};
use harness::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

use outboxd::domain::{Order, OrderCommand};
use outboxd::envelope::Metadata;
use outboxd::metrics::Metrics;
use outboxd::projection::{
    CommitBatch, CustomerOrdersPage, CustomerView, DynReadModels, Freshness, OrderView, PageRequest, Projector,
    ProjectorOptions, ReadModelStore, StoredRows, CONSUMER,
};
use outboxd::store::{DynStore, StoreError};

/// The read models, with the rebuild's next page (one event) committed
/// first when armed: between this projector's load and its commit.
struct RebuildPageFirst {
    inner: DynReadModels,
    store: DynStore,
    armed: AtomicBool,
}

#[async_trait::async_trait]
impl ReadModelStore for RebuildPageFirst {
    async fn projection_checkpoint(&self, consumer: &str) -> Result<i64, StoreError> {
        self.inner.projection_checkpoint(consumer).await
    }
    async fn load_rows(&self, orders: Vec<Uuid>, customers: Vec<Uuid>) -> Result<StoredRows, StoreError> {
        self.inner.load_rows(orders, customers).await
    }
    async fn commit_batch(&self, batch: CommitBatch) -> Result<bool, StoreError> {
        if self.armed.swap(false, Ordering::SeqCst) {
            let opts = ProjectorOptions { batch_size: 1, ..ProjectorOptions::default() };
            let mut rebuild = Projector::new(self.store.clone(), self.inner.clone(), Metrics::new(), opts);
            assert_eq!(rebuild.step().await?, 1, "the rebuild's page: the order's first event");
        }
        self.inner.commit_batch(batch).await
    }
    async fn reset(&self, consumer: &str) -> Result<(), StoreError> {
        self.inner.reset(consumer).await
    }
    async fn freshness(&self) -> Result<Freshness, StoreError> {
        self.inner.freshness().await
    }
    async fn get_order(&self, order_id: Uuid) -> Result<Option<OrderView>, StoreError> {
        self.inner.get_order(order_id).await
    }
    async fn get_customer(&self, customer_id: Uuid) -> Result<Option<CustomerView>, StoreError> {
        self.inner.get_customer(customer_id).await
    }
    async fn orders_by_customer(&self, customer_id: Uuid, page: PageRequest) -> Result<CustomerOrdersPage, StoreError> {
        self.inner.orders_by_customer(customer_id, page).await
    }
    async fn dump(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        self.inner.dump().await
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
    let models = Arc::new(RebuildPageFirst { inner: db.models.clone(), store: db.store.clone(), armed: false.into() });
    let opts = ProjectorOptions { poll_interval: Duration::from_millis(20), ..ProjectorOptions::default() };
    let mut projector = Projector::new(db.store.clone(), models.clone(), Metrics::new(), opts);
    projector.catch_up().await.unwrap();

    // The rebuild resets the read models and has read head 1; then the order is confirmed.
    db.models.reset(CONSUMER).await.unwrap();
    svc.execute::<Order>(order, &OrderCommand::Confirm, Metadata::default(), None).await.unwrap(); // position 2
                                                                                                   // The projector's batch (position 2) loads no row for the order; the
                                                                                                   // rebuild commits the order at version 1 before the projector commits.
    models.armed.store(true, Ordering::SeqCst);
    assert_eq!(projector.step().await.unwrap(), 1);
    assert!(!models.armed.load(Ordering::SeqCst), "the rebuild's page ran inside the batch");
    assert_eq!(db.models.projection_checkpoint(CONSUMER).await.unwrap(), 2, "the batch committed");

    let v = db.models.get_order(order).await.unwrap().expect("the order's row");
    assert_eq!((v.status.as_str(), v.version), ("confirmed", 2));
    assert_eq!(v.customer_id, Some(customer), "the row keeps what the order's first event said");
    assert_eq!(v.item_count, 2);
    assert!(v.total_minor.is_some());
}
