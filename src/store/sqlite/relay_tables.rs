//! The relay's coordination tables on SQLite: `LeaseStore`, `ParkingStore`
//! and `RequestStore` for [`SqliteStore`] (SQL in `lease`, `parking`,
//! `requests`).
//!
//! Guarantee: lease writes run on the lease connection (never behind the
//! append queue; the writer thread lets a waiting lease write go before its
//! next group); lease reads and every other read use the reader pool; every
//! other write goes through the writer thread like all writes.

use async_trait::async_trait;
use uuid::Uuid;

use super::{lease, parking, requests, SqliteStore};
use crate::store::feed::FeedRow;
use crate::store::lease::{Lease, LeaseCas, LeaseInfo, LeaseStore};
use crate::store::parking::{DiscardRecord, Parked, ParkedInfo, ParkingStore};
use crate::store::requests::{RelayRequest, RequestStatus, RequestStore};
use crate::store::StoreError;

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn lease_get(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        // A read: the reader pool (WAL readers never wait for the write lock).
        let name = name.to_string();
        self.read(move |c| lease::get(c, &name)).await
    }

    async fn lease_cas(&self, cas: &LeaseCas) -> Result<bool, StoreError> {
        let cas = cas.clone();
        self.lease_op(move |c| lease::cas(c, &cas)).await
    }

    async fn lease_list(&self) -> Result<Vec<LeaseInfo>, StoreError> {
        self.read(lease::list).await
    }

    async fn set_checkpoint_fenced(&self, name: &str, epoch: i64, position: i64) -> Result<(), StoreError> {
        self.faults.check_named(crate::store::faults::CHECKPOINT)?;
        let name = name.to_string();
        self.lease_op(move |c| lease::set_checkpoint_fenced(c, &name, epoch, position)).await
    }
}

#[async_trait]
impl ParkingStore for SqliteStore {
    async fn park(&self, p: &Parked) -> Result<(), StoreError> {
        let p = p.clone();
        self.write(move |c| parking::park(c, &p)).await
    }

    async fn parked(&self, consumer: &str) -> Result<Vec<ParkedInfo>, StoreError> {
        let consumer = consumer.to_string();
        self.read(move |c| parking::parked(c, &consumer)).await
    }

    async fn parked_positions(&self, consumer: &str) -> Result<Vec<(String, Option<i64>)>, StoreError> {
        let consumer = consumer.to_string();
        self.read(move |c| parking::parked_positions(c, &consumer)).await
    }

    async fn unpark(&self, consumer: &str, aggregate_id: &str) -> Result<bool, StoreError> {
        self.faults.check_named(crate::store::faults::UNPARK)?;
        let (consumer, aggregate_id) = (consumer.to_string(), aggregate_id.to_string());
        self.write(move |c| parking::unpark(c, &consumer, &aggregate_id)).await
    }

    async fn park_fenced(&self, p: &Parked, epoch: i64) -> Result<(), StoreError> {
        let p = p.clone();
        self.lease_op(move |c| lease::fenced(c, &p.consumer, epoch, |tx| parking::park(tx, &p))).await
    }

    async fn unpark_fenced(&self, consumer: &str, aggregate_id: &str, epoch: i64) -> Result<bool, StoreError> {
        self.faults.check_named(crate::store::faults::UNPARK)?;
        let (consumer, aggregate_id) = (consumer.to_string(), aggregate_id.to_string());
        self.lease_op(move |c| lease::fenced(c, &consumer, epoch, |tx| parking::unpark(tx, &consumer, &aggregate_id)))
            .await
    }

    async fn aggregate_rows(
        &self,
        aggregate_id: &str,
        from_position: Option<i64>,
        from_sequence: Option<i64>,
        up_to_position: Option<i64>,
    ) -> Result<Vec<FeedRow>, StoreError> {
        self.faults.check_named(crate::store::faults::AGGREGATE_ROWS)?;
        let aggregate_id = aggregate_id.to_string();
        self.read(move |c| parking::aggregate_rows(c, &aggregate_id, from_position, from_sequence, up_to_position))
            .await
    }

    async fn record_discard(&self, d: &DiscardRecord) -> Result<(), StoreError> {
        let d = d.clone();
        self.write(move |c| parking::record_discard(c, &d)).await
    }

    async fn discards(&self, limit: usize) -> Result<Vec<DiscardRecord>, StoreError> {
        self.read(move |c| parking::discards(c, limit)).await
    }

    async fn discards_of(&self, consumer: &str, event_id: Option<&str>) -> Result<Vec<DiscardRecord>, StoreError> {
        let (consumer, event_id) = (consumer.to_string(), event_id.map(str::to_string));
        self.read(move |c| parking::discards_of(c, &consumer, event_id.as_deref())).await
    }
}

#[async_trait]
impl RequestStore for SqliteStore {
    async fn request_submit(&self, r: &RelayRequest) -> Result<(), StoreError> {
        let r = r.clone();
        self.write(move |c| requests::submit(c, &r)).await
    }

    async fn request_get(&self, id: Uuid) -> Result<Option<RelayRequest>, StoreError> {
        self.read(move |c| requests::get(c, id)).await
    }

    async fn requests_open(&self, consumer: &str, epoch: i64) -> Result<Vec<RelayRequest>, StoreError> {
        let consumer = consumer.to_string();
        self.read(move |c| requests::open(c, &consumer, epoch)).await
    }

    async fn request_claim(&self, r: &RelayRequest, epoch: i64) -> Result<bool, StoreError> {
        let id = r.id;
        self.write(move |c| requests::claim(c, id, epoch)).await
    }

    async fn request_finish(
        &self,
        _consumer: &str,
        id: Uuid,
        epoch: i64,
        status: RequestStatus,
        result: serde_json::Value,
    ) -> Result<bool, StoreError> {
        self.faults.check_named(crate::store::faults::REQUEST_FINISH)?;
        self.write(move |c| requests::finish(c, id, epoch, status, &result)).await
    }
}
