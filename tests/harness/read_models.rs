//! SQLite stores with read models for the projection tests: open a file,
//! a command service, a projector polling every 20 ms, and read models whose
//! writes a test hooks into (`Hooked`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

use outboxd::app::{CommandService, ServiceOptions};
use outboxd::metrics::Metrics;
use outboxd::projection::{
    CommitBatch, CustomerOrdersPage, CustomerView, DynReadModels, Freshness, OrderView, PageRequest, Projector,
    ProjectorOptions, ReadModelStore, StoredRows,
};
use outboxd::store::sqlite::{SqliteOptions, SqliteStore, Synchronous};
use outboxd::store::{DynStore, StoreError};

/// A SQLite store with its read models (the same handle, two views).
pub struct Db {
    pub store: DynStore,
    pub models: DynReadModels,
}

pub async fn open(path: &Path) -> Db {
    open_with(path, SqliteOptions::default()).await
}

pub async fn open_with(path: &Path, opts: SqliteOptions) -> Db {
    let s = SqliteStore::open(path, opts).await.unwrap();
    Db { store: s.clone(), models: s }
}

pub fn fast() -> SqliteOptions {
    SqliteOptions { synchronous: Synchronous::Normal, ..SqliteOptions::default() }
}

pub fn service(store: &DynStore) -> CommandService {
    CommandService::new(store.clone(), ServiceOptions::default())
}

pub fn projector(db: &Db, metrics: Metrics, batch_size: usize) -> Projector {
    let opts = ProjectorOptions { batch_size, poll_interval: Duration::from_millis(20), ..ProjectorOptions::default() };
    Projector::new(db.store.clone(), db.models.clone(), metrics, opts)
}

/// What a test does around the read models' writes (the rest passes
/// through): a projector or rebuild moving first, a commit that fails.
#[async_trait::async_trait]
pub trait ModelsHook: Send + Sync + 'static {
    async fn commit_batch(&self, inner: &DynReadModels, batch: CommitBatch) -> Result<bool, StoreError> {
        inner.commit_batch(batch).await
    }
    async fn reset(&self, inner: &DynReadModels, consumer: &str) -> Result<(), StoreError> {
        inner.reset(consumer).await
    }
}

/// The read models `inner`, their writes through `hook`.
pub struct Hooked<H> {
    pub inner: DynReadModels,
    pub hook: H,
}

/// `inner` with `hook` around its writes, as read models to hand out.
pub fn hooked<H: ModelsHook>(inner: &DynReadModels, hook: H) -> Arc<Hooked<H>> {
    Arc::new(Hooked { inner: inner.clone(), hook })
}

#[async_trait::async_trait]
impl<H: ModelsHook> ReadModelStore for Hooked<H> {
    async fn projection_checkpoint(&self, consumer: &str) -> Result<i64, StoreError> {
        self.inner.projection_checkpoint(consumer).await
    }
    async fn load_rows(&self, orders: Vec<Uuid>, customers: Vec<Uuid>) -> Result<StoredRows, StoreError> {
        self.inner.load_rows(orders, customers).await
    }
    async fn commit_batch(&self, batch: CommitBatch) -> Result<bool, StoreError> {
        self.hook.commit_batch(&self.inner, batch).await
    }
    async fn reset(&self, consumer: &str) -> Result<(), StoreError> {
        self.hook.reset(&self.inner, consumer).await
    }
    async fn freshness(&self) -> Result<Freshness, StoreError> {
        self.inner.freshness().await
    }
    async fn get_order(&self, id: Uuid) -> Result<Option<OrderView>, StoreError> {
        self.inner.get_order(id).await
    }
    async fn get_customer(&self, id: Uuid) -> Result<Option<CustomerView>, StoreError> {
        self.inner.get_customer(id).await
    }
    async fn orders_by_customer(&self, id: Uuid, page: PageRequest) -> Result<CustomerOrdersPage, StoreError> {
        self.inner.orders_by_customer(id, page).await
    }
    async fn dump(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        self.inner.dump().await
    }
}
