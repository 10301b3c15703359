//! An `EventStore` wrapper that records what loading an aggregate reads,
//! around a real store (never a fake one): the snapshot and create paths
//! assert on it.

use uuid::Uuid;

use outboxd::envelope::EventEnvelope;
use outboxd::store::{Appended, DeadLetter, DynStore, EventStore, Snapshot, StoreError};

/// An `EventStore` that counts what loading an aggregate reads: every
/// `load_after(after_sequence)` call with the number of events it returned.
pub struct CountingStore {
    pub inner: DynStore,
    pub reads: std::sync::Mutex<Vec<(i64, usize)>>,
}

impl CountingStore {
    pub fn take_reads(&self) -> Vec<(i64, usize)> {
        std::mem::take(&mut *self.reads.lock().unwrap())
    }
}

#[async_trait::async_trait]
impl EventStore for CountingStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn migrate(&self) -> Result<(), StoreError> {
        self.inner.migrate().await
    }
    async fn append(&self, id: Uuid, expected: i64, events: Vec<EventEnvelope>) -> Result<Appended, StoreError> {
        self.inner.append(id, expected, events).await
    }
    async fn load_after(&self, id: Uuid, after_sequence: i64) -> Result<Vec<EventEnvelope>, StoreError> {
        let events = self.inner.load_after(id, after_sequence).await?;
        self.reads.lock().unwrap().push((after_sequence, events.len()));
        Ok(events)
    }
    async fn read_feed(&self, after: i64, limit: usize) -> Result<Vec<outboxd::store::feed::FeedRow>, StoreError> {
        self.inner.read_feed(after, limit).await
    }
    async fn backlog(&self, consumer: &str) -> Result<outboxd::store::Backlog, StoreError> {
        self.inner.backlog(consumer).await
    }
    async fn head_position(&self) -> Result<i64, StoreError> {
        self.inner.head_position().await
    }
    async fn get_checkpoint(&self, consumer: &str) -> Result<Option<i64>, StoreError> {
        self.inner.get_checkpoint(consumer).await
    }
    async fn set_checkpoint(&self, consumer: &str, position: i64) -> Result<(), StoreError> {
        self.inner.set_checkpoint(consumer, position).await
    }
    async fn dlq_insert(&self, letter: DeadLetter) -> Result<(), StoreError> {
        self.inner.dlq_insert(letter).await
    }
    async fn dlq_list(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.inner.dlq_list(limit).await
    }
    async fn dlq_get(&self, ids: &[Uuid]) -> Result<Vec<DeadLetter>, StoreError> {
        self.inner.dlq_get(ids).await
    }
    async fn dlq_remove(&self, id: Uuid) -> Result<bool, StoreError> {
        self.inner.dlq_remove(id).await
    }
    async fn dlq_count(&self) -> Result<u64, StoreError> {
        self.inner.dlq_count().await
    }
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        self.inner.save_snapshot(snapshot).await
    }
    async fn load_snapshot(&self, id: Uuid) -> Result<Option<Snapshot>, StoreError> {
        self.inner.load_snapshot(id).await
    }
}
