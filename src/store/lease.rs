//! Leases: which instance is the one active consumer of a name (the relay,
//! the projection, a CDC reader), decided by compare-and-set in the store.
//!
//! Guarantees every backend gives (tested on SQLite and Cassandra):
//! - `lease_cas` writes the new row only if the current row is exactly the
//!   expected one (`None`: no row yet), atomically; it answers whether it
//!   wrote. An outcome the backend cannot know at first is never guessed:
//!   CQL answers a timed-out compare-and-set applied when a SERIAL read
//!   shows it, `StoreError::OutcomeUnknown` otherwise; SQLite
//!   answers `StoreError::OutcomeUnknown` for a COMMIT that failed after its
//!   WAL write (an fsync error: it may be replayed at the next open), as for
//!   `set_checkpoint_fenced`. The lease keeper takes any failed write as
//!   possibly applied (adopted if read back).
//! - `set_checkpoint_fenced` moves the named checkpoint only while the
//!   lease's epoch is the caller's, in the same atomic step; otherwise it
//!   fails with `StoreError::Fenced` and writes nothing. A former holder can
//!   therefore never move a checkpoint after a takeover. One exception,
//!   CQL: a write whose outcome was unknown, resolved by a SERIAL read after
//!   a takeover, answers `Fenced` though it may have applied before the
//!   takeover (the read cannot tell); the position it wrote is one the
//!   caller had confirmed, and `Fenced` ends its term all the same.
//! - Lease operations never wait behind the append path (SQLite: their own
//!   connection with a short busy timeout, not the group-commit queue).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::StoreError;

/// One row of `relay_leases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// Consumer name (`relay.consumer_name`, `projections`, ...).
    pub name: String,
    /// Instance id of the holder.
    pub holder: String,
    /// Grows by one on every takeover.
    pub epoch: i64,
    /// Renewals within this epoch.
    pub counter: i64,
    pub ttl_ms: i64,
}

/// A lease row with what the store knows about its last write (for `outboxd leases`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseInfo {
    #[serde(flatten)]
    pub lease: Lease,
    /// Wall-clock time of the last write, as the writer's clock saw it (informational only).
    pub renewed_at: Option<DateTime<Utc>>,
    /// The fenced checkpoint kept with the lease, if any.
    pub position: Option<i64>,
}

/// A compare-and-set of one lease row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseCas {
    /// `(epoch, counter)` the row must have now; `None`: the row must not exist.
    pub expected: Option<(i64, i64)>,
    pub new: Lease,
}

#[async_trait]
pub trait LeaseStore: Send + Sync {
    async fn lease_get(&self, name: &str) -> Result<Option<Lease>, StoreError>;
    /// Applies `cas` if the row is as expected; `Ok(false)` when it is not.
    async fn lease_cas(&self, cas: &LeaseCas) -> Result<bool, StoreError>;
    async fn lease_list(&self) -> Result<Vec<LeaseInfo>, StoreError>;
    /// Sets checkpoint `name` to `position` if lease `name` is at `epoch`.
    async fn set_checkpoint_fenced(&self, name: &str, epoch: i64, position: i64) -> Result<(), StoreError>;
    /// The highest epoch any term of lease `name` left in a fence outside
    /// the lease row (0: none). A lease created anew (its row deleted)
    /// must start above it, or every fenced write of its terms is refused.
    /// SQLite fences by the lease row itself: 0.
    async fn lease_epoch_floor(&self, _name: &str) -> Result<i64, StoreError> {
        Ok(0)
    }
}
