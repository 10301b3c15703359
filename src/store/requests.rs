//! Operator requests to the active relay (replay, discard, rewind), as rows.
//!
//! The CLI and the admin API of any instance write a request; the instance
//! holding the relay lease picks it up, carries it out with its own producer
//! (never a second producer racing it) and records the outcome. When no
//! relay runs, the CLI takes the lease itself and carries the request out
//! directly.
//!
//! Guarantees: a request is carried out at most once (`claim` is a
//! compare-and-set from `pending`), its outcome is stored, and a request
//! whose executor died while running it is reclaimable (`running` rows of a
//! former lease epoch).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::StoreError;

/// What the operator asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RequestKind {
    /// Publish a parked aggregate's held events in order, then unpark it.
    ReplayAggregate { aggregate_id: String },
    /// The same for every parked aggregate.
    ReplayAllParked,
    /// Drop the first held event of a parked aggregate (audit row + marker record), publish the rest.
    Discard { event_id: String, reason: String },
    /// Re-publish dead letters (policy "skip"): the given ids, or all.
    ReplayDeadLetters { ids: Option<Vec<Uuid>> },
    /// Re-publish everything after feed position N (position feeds).
    RewindToPosition { position: i64 },
    /// Re-publish everything after time T (CDC feeds, within the log TTL).
    RewindToTime { time: DateTime<Utc> },
}

impl RequestKind {
    /// The kind with the aggregate or event id it names written as the
    /// store writes ids (a UUID lower-case and hyphenated, surrounding
    /// blanks dropped): park records compare them as text, so an id typed
    /// in upper case named nothing parked.
    pub fn canonical(self) -> RequestKind {
        let id = |raw: String| super::feed::aggregate_key(&raw).to_string();
        match self {
            RequestKind::ReplayAggregate { aggregate_id } => {
                RequestKind::ReplayAggregate { aggregate_id: id(aggregate_id) }
            }
            RequestKind::Discard { event_id, reason } => RequestKind::Discard { event_id: id(event_id), reason },
            other => other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    Pending,
    Running,
    Done,
    Failed,
}

impl RequestStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Running => "running",
            RequestStatus::Done => "done",
            RequestStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<RequestStatus> {
        Some(match s {
            "pending" => RequestStatus::Pending,
            "running" => RequestStatus::Running,
            "done" => RequestStatus::Done,
            "failed" => RequestStatus::Failed,
            _ => return None,
        })
    }
}

/// One request row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayRequest {
    pub id: Uuid,
    /// The relay consumer it is for.
    pub consumer: String,
    pub kind: RequestKind,
    pub status: RequestStatus,
    /// Who asked (`cli@host`, `admin-api`, ...).
    pub requested_by: String,
    pub created_at: DateTime<Utc>,
    /// Lease epoch of the executor that claimed it.
    pub claimed_epoch: Option<i64>,
    /// Outcome (JSON: counts, ids, error).
    pub result: Option<serde_json::Value>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl RelayRequest {
    pub fn new(consumer: &str, kind: RequestKind, requested_by: &str) -> RelayRequest {
        RelayRequest {
            id: Uuid::now_v7(),
            consumer: consumer.to_string(),
            kind,
            status: RequestStatus::Pending,
            requested_by: requested_by.to_string(),
            created_at: Utc::now(),
            claimed_epoch: None,
            result: None,
            finished_at: None,
        }
    }
}

#[async_trait]
pub trait RequestStore: Send + Sync {
    async fn request_submit(&self, r: &RelayRequest) -> Result<(), StoreError>;
    async fn request_get(&self, id: Uuid) -> Result<Option<RelayRequest>, StoreError>;
    /// `request_get` of a request the caller knows the consumer of (on
    /// CQL one row of its partition, not a scan of every consumer's; the
    /// admin routes and the CLI poll it while they wait).
    async fn request_get_of(&self, consumer: &str, id: Uuid) -> Result<Option<RelayRequest>, StoreError> {
        Ok(self.request_get(id).await?.filter(|r| r.consumer == consumer))
    }
    /// Requests of `consumer` to carry out: pending ones, and running ones
    /// claimed under an epoch up to `epoch`: their executor lost the lease,
    /// or (the same epoch) was a former term of this holder that ended
    /// before finishing them (terms of one holder run one at a time, so a
    /// term skips only the requests it claimed itself); oldest first, ties
    /// by id (v7: increasing within the submitting process).
    async fn requests_open(&self, consumer: &str, epoch: i64) -> Result<Vec<RelayRequest>, StoreError>;
    /// Claims `r` (as read by `requests_open`) for the lease holder at `epoch`
    /// (taking it over if it runs under an epoch up to `epoch`); false if
    /// someone else did meanwhile, or (`epoch` > 0: a fenced relay) if lease
    /// `r.consumer` is no longer at `epoch`.
    async fn request_claim(&self, r: &RelayRequest, epoch: i64) -> Result<bool, StoreError>;
    /// Records the outcome of a request claimed at `epoch`; false (nothing
    /// written) when it is no longer claimed at `epoch` or (`epoch` > 0) the
    /// lease moved on: a former leader cannot report a request done that
    /// the new one carries out again.
    async fn request_finish(
        &self,
        consumer: &str,
        id: Uuid,
        epoch: i64,
        status: RequestStatus,
        result: serde_json::Value,
    ) -> Result<bool, StoreError>;
}
