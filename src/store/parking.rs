//! Parked aggregates: an aggregate whose event k can never be published is
//! held from k on, durably, instead of skipping k.
//!
//! Guarantees every backend gives:
//! - `park` is durable before it returns and idempotent per (consumer,
//!   aggregate): parking again updates the error (and moves the first held
//!   event forward when a replay got further), it never adds a second row.
//! - The held events themselves are the aggregate's rows in `event_store`
//!   from the park point on; nothing is copied, so nothing can diverge.
//! - A discard leaves an audit row (`discarded_events`) with the event as it
//!   was stored and the operator's reason; nothing is dropped silently.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::feed::FeedRow;
use super::StoreError;

/// One parked aggregate of one relay consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parked {
    /// The relay consumer (`relay.consumer_name`) that parked it.
    pub consumer: String,
    /// The aggregate id as stored.
    pub aggregate_id: String,
    pub aggregate_type: Option<String>,
    /// Feed position of the first held event (position feeds).
    pub position: Option<i64>,
    /// Its sequence, when readable.
    pub sequence: Option<i64>,
    /// Its event id as stored.
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    /// Why it can never be published as it is.
    pub error: String,
    pub parked_at: DateTime<Utc>,
}

/// A parked aggregate with how many of its events are held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParkedInfo {
    #[serde(flatten)]
    pub parked: Parked,
    /// Events of the aggregate from the park point on (the first one included).
    pub held_events: u64,
}

/// The audit row of a discarded event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscardRecord {
    pub consumer: String,
    pub event_id: String,
    pub aggregate_id: String,
    pub aggregate_type: Option<String>,
    pub sequence: Option<i64>,
    pub position: Option<i64>,
    pub event_type: Option<String>,
    /// The stored payload text (may be unreadable; kept as is).
    pub payload: Option<String>,
    /// The error that parked it.
    pub error: String,
    /// The operator's reason.
    pub reason: String,
    pub discarded_at: DateTime<Utc>,
}

#[async_trait]
pub trait ParkingStore: Send + Sync {
    /// Records (or updates) a parked aggregate; durable on return.
    async fn park(&self, p: &Parked) -> Result<(), StoreError>;
    /// Parked aggregates of `consumer` with their held counts.
    async fn parked(&self, consumer: &str) -> Result<Vec<ParkedInfo>, StoreError>;
    /// Only which aggregates of `consumer` are parked, and at which feed
    /// position (None: a backend without positions): what a hot loop needs
    /// (the projector reads it before every page while anything is parked),
    /// without the held counts `parked` computes per park.
    async fn parked_positions(&self, consumer: &str) -> Result<Vec<(String, Option<i64>)>, StoreError> {
        Ok(self.parked(consumer).await?.into_iter().map(|p| (p.parked.aggregate_id, p.parked.position)).collect())
    }
    /// Removes the park record; `false` if there was none.
    async fn unpark(&self, consumer: &str, aggregate_id: &str) -> Result<bool, StoreError>;
    /// `park`, only while lease `p.consumer` is at `epoch` (`Fenced` otherwise):
    /// a relay that lost its lease cannot change what the new leader holds.
    async fn park_fenced(&self, p: &Parked, epoch: i64) -> Result<(), StoreError>;
    /// `unpark`, only while lease `consumer` is at `epoch` (`Fenced` otherwise).
    async fn unpark_fenced(&self, consumer: &str, aggregate_id: &str, epoch: i64) -> Result<bool, StoreError>;
    /// A new term at `epoch` of `consumer`'s relay, before it reads the park
    /// rows and requests: from here on their fenced writes of an older
    /// epoch are refused (`Fenced`), even one whose lease check passed
    /// before this term began. SQLite checks the lease in the fenced write's
    /// own transaction: nothing to do there.
    async fn fence_term(&self, _consumer: &str, _epoch: i64) -> Result<(), StoreError> {
        Ok(())
    }
    /// Rows of one aggregate from `from_position` (or, without positions,
    /// from `from_sequence`) up to `up_to_position` (inclusive; `None`: all), in order.
    async fn aggregate_rows(
        &self,
        aggregate_id: &str,
        from_position: Option<i64>,
        from_sequence: Option<i64>,
        up_to_position: Option<i64>,
    ) -> Result<Vec<FeedRow>, StoreError>;
    /// Writes the audit row of a discard, once per (consumer, event id): a
    /// discard carried out again after a crash keeps its first row.
    async fn record_discard(&self, d: &DiscardRecord) -> Result<(), StoreError>;
    async fn discards(&self, limit: usize) -> Result<Vec<DiscardRecord>, StoreError>;
    /// Every audit row of `consumer` (only that of `event_id`, as the
    /// discard request wrote it, when given), newest first, however many
    /// discards there are (of this consumer or others).
    async fn discards_of(&self, consumer: &str, event_id: Option<&str>) -> Result<Vec<DiscardRecord>, StoreError>;
}
