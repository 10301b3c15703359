//! The relay's coordination tables on CQL: `LeaseStore`, `ParkingStore` and
//! `RequestStore` for [`CqlStore`] (CQL in `lease` and `parking`).
//!
//! Guarantee: every lease and request-claim write is a lightweight
//! transaction, unknown outcomes resolved by SERIAL reads (see `lease` and
//! `requests`); park rows are conditional upserts keyed by (consumer,
//! aggregate) (see `parking`). A fenced park, unpark, request claim or
//! outcome first reads the lease SERIAL (a moved lease is refused with its
//! epoch), then writes on condition of its partition's fence (see `fence`):
//! the park rows and requests live outside the lease partition, so the
//! fence in their own partition, raised by every term before it reads them,
//! is what refuses a write that lands after the next term began. A lease
//! that cannot be read is an error the caller retries, never a refusal.
//! The named operations of `store::faults` (checkpoint, unpark, aggregate
//! rows, request outcome) fail here, before the cluster, when a test armed them.

use async_trait::async_trait;
use uuid::Uuid;

use super::CqlStore;
use crate::store::feed::FeedRow;
use crate::store::lease::{Lease, LeaseCas, LeaseInfo, LeaseStore};
use crate::store::parking::{DiscardRecord, Parked, ParkedInfo, ParkingStore};
use crate::store::requests::{RelayRequest, RequestStatus, RequestStore};
use crate::store::{faults, StoreError};

#[async_trait]
impl LeaseStore for CqlStore {
    async fn lease_get(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        self.lease_read(name).await
    }

    async fn lease_cas(&self, cas: &LeaseCas) -> Result<bool, StoreError> {
        self.lease_write(cas).await
    }

    async fn lease_list(&self) -> Result<Vec<LeaseInfo>, StoreError> {
        self.lease_all().await
    }

    async fn set_checkpoint_fenced(&self, name: &str, epoch: i64, position: i64) -> Result<(), StoreError> {
        self.faults.check_named(faults::CHECKPOINT)?;
        self.checkpoint_fenced(name, epoch, position).await
    }

    async fn lease_epoch_floor(&self, name: &str) -> Result<i64, StoreError> {
        self.fence_floor(name).await
    }
}

#[async_trait]
impl ParkingStore for CqlStore {
    async fn park(&self, p: &Parked) -> Result<(), StoreError> {
        self.park_row(p).await
    }

    async fn parked(&self, consumer: &str) -> Result<Vec<ParkedInfo>, StoreError> {
        self.parked_rows(consumer).await
    }

    /// One read of the park rows, without `parked`'s held count per park.
    async fn parked_positions(&self, consumer: &str) -> Result<Vec<(String, Option<i64>)>, StoreError> {
        self.parked_position_rows(consumer).await
    }

    async fn unpark(&self, consumer: &str, aggregate_id: &str) -> Result<bool, StoreError> {
        self.faults.check_named(faults::UNPARK)?;
        self.unpark_row(consumer, aggregate_id).await
    }

    async fn park_fenced(&self, p: &Parked, epoch: i64) -> Result<(), StoreError> {
        self.fence_check(&p.consumer, epoch).await?;
        self.park_row_fenced(p, epoch).await
    }

    async fn unpark_fenced(&self, consumer: &str, aggregate_id: &str, epoch: i64) -> Result<bool, StoreError> {
        self.faults.check_named(faults::UNPARK)?;
        self.fence_check(consumer, epoch).await?;
        self.unpark_row_fenced(consumer, aggregate_id, epoch).await
    }

    async fn fence_term(&self, consumer: &str, epoch: i64) -> Result<(), StoreError> {
        self.raise_fence("parked_aggregates", consumer, epoch).await?;
        self.raise_fence("relay_requests", consumer, epoch).await
    }

    async fn aggregate_rows(
        &self,
        aggregate_id: &str,
        _from_position: Option<i64>,
        from_sequence: Option<i64>,
        _up_to_position: Option<i64>,
    ) -> Result<Vec<FeedRow>, StoreError> {
        self.faults.check_named(faults::AGGREGATE_ROWS)?;
        self.rows_of(aggregate_id, from_sequence).await
    }

    async fn record_discard(&self, d: &DiscardRecord) -> Result<(), StoreError> {
        self.discard_row(d).await
    }

    async fn discards(&self, limit: usize) -> Result<Vec<DiscardRecord>, StoreError> {
        self.discard_rows(limit).await
    }

    async fn discards_of(&self, consumer: &str, event_id: Option<&str>) -> Result<Vec<DiscardRecord>, StoreError> {
        self.consumer_discard_rows(consumer, event_id).await
    }
}

#[async_trait]
impl RequestStore for CqlStore {
    async fn request_submit(&self, r: &RelayRequest) -> Result<(), StoreError> {
        self.request_insert(r).await
    }

    async fn request_get(&self, id: Uuid) -> Result<Option<RelayRequest>, StoreError> {
        Ok(self.requests_of(None, Some(id)).await?.into_iter().next())
    }

    async fn request_get_of(&self, consumer: &str, id: Uuid) -> Result<Option<RelayRequest>, StoreError> {
        Ok(self.requests_of(Some(consumer), Some(id)).await?.into_iter().next())
    }

    async fn requests_open(&self, consumer: &str, epoch: i64) -> Result<Vec<RelayRequest>, StoreError> {
        Ok(self
            .requests_of(Some(consumer), None)
            .await?
            .into_iter()
            .filter(|r| {
                r.status == RequestStatus::Pending
                    || (r.status == RequestStatus::Running && r.claimed_epoch.unwrap_or(-1) <= epoch)
            })
            .collect())
    }

    async fn request_claim(&self, r: &RelayRequest, epoch: i64) -> Result<bool, StoreError> {
        if epoch > 0
            && !(fenced_ok(self.fence_check(&r.consumer, epoch).await)?
                && fenced_ok(self.raise_fence("relay_requests", &r.consumer, epoch).await)?)
        {
            return Ok(false);
        }
        self.request_cas(r, epoch).await
    }

    async fn request_finish(
        &self,
        consumer: &str,
        id: Uuid,
        epoch: i64,
        status: RequestStatus,
        result: serde_json::Value,
    ) -> Result<bool, StoreError> {
        self.faults.check_named(faults::REQUEST_FINISH)?;
        if epoch > 0
            && !(fenced_ok(self.fence_check(consumer, epoch).await)?
                && fenced_ok(self.raise_fence("relay_requests", consumer, epoch).await)?)
        {
            return Ok(false);
        }
        self.request_done(consumer, id, epoch, status, &result).await
    }
}

/// A fence check's answer for a request write: `Ok(false)` when another
/// epoch holds the lease (the write is refused, for good), an error when the
/// lease could not be read (the caller retries: "refused" would end a
/// request's outcome for good on a passing timeout).
fn fenced_ok(check: Result<(), StoreError>) -> Result<bool, StoreError> {
    match check {
        Ok(()) => Ok(true),
        Err(StoreError::Fenced { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}
