//! SQLite stores with read models for the projection tests: open a file,
//! a command service and a projector polling every 20 ms.

use std::path::Path;
use std::time::Duration;

use outboxd::app::{CommandService, ServiceOptions};
use outboxd::metrics::Metrics;
use outboxd::projection::{DynReadModels, Projector, ProjectorOptions};
use outboxd::store::sqlite::{SqliteOptions, SqliteStore, Synchronous};
use outboxd::store::DynStore;

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
