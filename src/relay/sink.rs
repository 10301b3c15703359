//! Where dead letters go (policy `skip`): the store by default; the actor
//! layer routes them through the DlqActor.
//!
//! Guarantee: `dead_letter` returns Ok only once the row is durable.

use async_trait::async_trait;

use crate::store::{DeadLetter, DynStore, StoreError};

#[async_trait]
pub trait DeadLetterSink: Send + Sync {
    async fn dead_letter(&self, letter: DeadLetter) -> Result<(), StoreError>;
}

#[async_trait]
impl DeadLetterSink for DynStore {
    async fn dead_letter(&self, letter: DeadLetter) -> Result<(), StoreError> {
        self.dlq_insert(letter).await
    }
}
