//! CQL parking (`parked_aggregates`, partition per relay consumer) and the
//! `discarded_events` audit table; relay requests (`relay_requests`,
//! partition per consumer).
//!
//! Guarantees: park rows are upserts (one per aggregate and consumer); the
//! held count comes from `event_store` itself (rows from the parked
//! sequence on); a request is claimed with a compare-and-set on its status
//! and epoch, so one lease holder carries it out.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::rows::lwt_answer;
use super::{codec, exec_err, CqlStore};
use crate::store::feed::FeedRow;
use crate::store::parking::{DiscardRecord, Parked, ParkedInfo};
use crate::store::requests::{RelayRequest, RequestStatus};
use crate::store::StoreError;

type ParkRow = (
    String,
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<DateTime<Utc>>,
);

impl CqlStore {
    pub(super) async fn park_row(&self, p: &Parked) -> Result<(), StoreError> {
        let cql = format!(
            "INSERT INTO {} (consumer, aggregate_id, aggregate_type, position, sequence_number, event_id, event_type, error, parked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            self.t("parked_aggregates")
        );
        self.session
            .query_unpaged(
                cql,
                (
                    &p.consumer,
                    &p.aggregate_id,
                    &p.aggregate_type,
                    p.position,
                    p.sequence,
                    &p.event_id,
                    &p.event_type,
                    &p.error,
                    p.parked_at,
                ),
            )
            .await
            .map_err(|e| exec_err("write parked aggregate", e))?;
        Ok(())
    }

    pub(super) async fn parked_rows(&self, consumer: &str) -> Result<Vec<ParkedInfo>, StoreError> {
        let cql = format!(
            "SELECT consumer, aggregate_id, aggregate_type, position, sequence_number, event_id, event_type, error, parked_at FROM {} WHERE consumer = ?",
            self.t("parked_aggregates")
        );
        let res =
            self.session.query_unpaged(cql, (consumer,)).await.map_err(|e| exec_err("list parked aggregates", e))?;
        let mut out = Vec::new();
        for r in res.into_rows_result().map_err(codec)?.rows::<ParkRow>().map_err(codec)? {
            let (consumer, aggregate_id, aggregate_type, position, sequence, event_id, event_type, error, parked_at) =
                r.map_err(codec)?;
            let held = self.held_count(&aggregate_id, sequence.unwrap_or(0)).await?;
            out.push(ParkedInfo {
                parked: Parked {
                    consumer,
                    aggregate_id,
                    aggregate_type,
                    position,
                    sequence,
                    event_id,
                    event_type,
                    error: error.unwrap_or_default(),
                    parked_at: parked_at.unwrap_or_else(Utc::now),
                },
                held_events: held,
            });
        }
        out.sort_by_key(|p| p.parked.parked_at);
        Ok(out)
    }

    async fn held_count(&self, aggregate_id: &str, from_sequence: i64) -> Result<u64, StoreError> {
        let Ok(id) = Uuid::parse_str(aggregate_id) else { return Ok(0) };
        let cql =
            format!("SELECT COUNT(*) FROM {} WHERE aggregate_id = ? AND sequence_number >= ?", self.t("event_store"));
        let res =
            self.session.query_unpaged(cql, (id, from_sequence)).await.map_err(|e| exec_err("count held events", e))?;
        let (n,) = res.into_rows_result().map_err(codec)?.first_row::<(i64,)>().map_err(codec)?;
        Ok(n.max(0) as u64)
    }

    pub(super) async fn unpark_row(&self, consumer: &str, aggregate_id: &str) -> Result<bool, StoreError> {
        let cql =
            format!("DELETE FROM {} WHERE consumer = ? AND aggregate_id = ? IF EXISTS", self.t("parked_aggregates"));
        let res = self
            .session
            .query_unpaged(cql, (consumer, aggregate_id))
            .await
            .map_err(|e| exec_err("delete parked aggregate", e))?;
        Ok(lwt_answer(res, "aggregate_id")?.0)
    }

    /// One aggregate's rows from `from_sequence` on (CQL has no positions), in sequence order.
    pub(super) async fn rows_of(
        &self,
        aggregate_id: &str,
        from_sequence: Option<i64>,
    ) -> Result<Vec<FeedRow>, StoreError> {
        let Ok(id) = Uuid::parse_str(aggregate_id) else { return Ok(Vec::new()) };
        self.raw_rows(id, from_sequence.unwrap_or(1) - 1).await
    }

    /// Writes the audit row unless one for (consumer, event id) exists (one
    /// partition per consumer; discards are rare, so the filtered read is small).
    pub(super) async fn discard_row(&self, d: &DiscardRecord) -> Result<(), StoreError> {
        let exists = format!(
            "SELECT event_id FROM {} WHERE consumer = ? AND event_id = ? LIMIT 1 ALLOW FILTERING",
            self.t("discarded_events")
        );
        let found = self
            .session
            .query_unpaged(exists, (&d.consumer, &d.event_id))
            .await
            .map_err(|e| exec_err("read discard audit rows", e))?
            .into_rows_result()
            .map_err(codec)?
            .rows_num();
        if found > 0 {
            return Ok(());
        }
        let cql = format!(
            "INSERT INTO {} (consumer, discarded_at, event_id, aggregate_id, aggregate_type, sequence_number, position, event_type, payload, error, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            self.t("discarded_events")
        );
        self.session
            .query_unpaged(
                cql,
                (
                    &d.consumer,
                    d.discarded_at,
                    &d.event_id,
                    &d.aggregate_id,
                    &d.aggregate_type,
                    d.sequence,
                    d.position,
                    &d.event_type,
                    &d.payload,
                    &d.error,
                    &d.reason,
                ),
            )
            .await
            .map_err(|e| exec_err("write discard audit row", e))?;
        Ok(())
    }

    pub(super) async fn discard_rows(&self, limit: usize) -> Result<Vec<DiscardRecord>, StoreError> {
        let cql = format!(
            "SELECT consumer, discarded_at, event_id, aggregate_id, aggregate_type, sequence_number, position, event_type, payload, error, reason FROM {}",
            self.t("discarded_events")
        );
        let res = self.session.query_unpaged(cql, ()).await.map_err(|e| exec_err("list discards", e))?;
        type Row = (
            String,
            DateTime<Utc>,
            String,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let mut out = Vec::new();
        for r in res.into_rows_result().map_err(codec)?.rows::<Row>().map_err(codec)? {
            let (
                consumer,
                discarded_at,
                event_id,
                aggregate_id,
                aggregate_type,
                sequence,
                position,
                event_type,
                payload,
                error,
                reason,
            ) = r.map_err(codec)?;
            out.push(DiscardRecord {
                consumer,
                event_id,
                aggregate_id: aggregate_id.unwrap_or_default(),
                aggregate_type,
                sequence,
                position,
                event_type,
                payload,
                error: error.unwrap_or_default(),
                reason: reason.unwrap_or_default(),
                discarded_at,
            });
        }
        out.sort_by_key(|d| std::cmp::Reverse(d.discarded_at));
        out.truncate(limit.clamp(1, 100_000));
        Ok(out)
    }

    pub(super) async fn request_insert(&self, r: &RelayRequest) -> Result<(), StoreError> {
        let kind = serde_json::to_string(&r.kind).map_err(codec)?;
        let cql = format!(
            "INSERT INTO {} (consumer, id, kind, status, requested_by, created_at, claimed_epoch, result, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            self.t("relay_requests")
        );
        let result = r.result.as_ref().map(|v| v.to_string());
        self.session
            .query_unpaged(
                cql,
                (
                    &r.consumer,
                    r.id,
                    kind,
                    r.status.as_str(),
                    &r.requested_by,
                    r.created_at,
                    r.claimed_epoch,
                    result,
                    r.finished_at,
                ),
            )
            .await
            .map_err(|e| exec_err("write relay request", e))?;
        Ok(())
    }

    pub(super) async fn requests_of(
        &self,
        consumer: Option<&str>,
        id: Option<Uuid>,
    ) -> Result<Vec<RelayRequest>, StoreError> {
        let t = self.t("relay_requests");
        let cols = "consumer, id, kind, status, requested_by, created_at, claimed_epoch, result, finished_at";
        let res = match (consumer, id) {
            (Some(c), _) => {
                self.session.query_unpaged(format!("SELECT {cols} FROM {t} WHERE consumer = ?"), (c,)).await
            }
            (None, Some(id)) => {
                self.session.query_unpaged(format!("SELECT {cols} FROM {t} WHERE id = ? ALLOW FILTERING"), (id,)).await
            }
            (None, None) => self.session.query_unpaged(format!("SELECT {cols} FROM {t}"), ()).await,
        }
        .map_err(|e| exec_err("read relay requests", e))?;
        type Row = (
            String,
            Uuid,
            String,
            String,
            Option<String>,
            Option<DateTime<Utc>>,
            Option<i64>,
            Option<String>,
            Option<DateTime<Utc>>,
        );
        let mut out = Vec::new();
        for r in res.into_rows_result().map_err(codec)?.rows::<Row>().map_err(codec)? {
            let (consumer, id, kind, status, by, created, epoch, result, finished) = r.map_err(codec)?;
            out.push(RelayRequest {
                id,
                consumer,
                kind: serde_json::from_str(&kind).map_err(|e| codec(format!("request kind: {e}")))?,
                status: RequestStatus::parse(&status).ok_or_else(|| codec(format!("request status {status:?}")))?,
                requested_by: by.unwrap_or_default(),
                created_at: created.unwrap_or_else(Utc::now),
                claimed_epoch: epoch,
                result: result.map(|s| serde_json::from_str(&s).unwrap_or(serde_json::Value::String(s))),
                finished_at: finished,
            });
        }
        out.sort_by_key(|r| (r.created_at, r.id));
        Ok(out)
    }

    pub(super) async fn request_cas(&self, r: &RelayRequest, epoch: i64) -> Result<bool, StoreError> {
        let t = self.t("relay_requests");
        let res = match (r.status, r.claimed_epoch) {
            (RequestStatus::Pending, _) => {
                let cql = format!("UPDATE {t} SET status = 'running', claimed_epoch = ? WHERE consumer = ? AND id = ? IF status = 'pending'");
                self.session.query_unpaged(cql, (epoch, &r.consumer, r.id)).await
            }
            (RequestStatus::Running, Some(old)) if old <= epoch => {
                let cql = format!("UPDATE {t} SET claimed_epoch = ? WHERE consumer = ? AND id = ? IF status = 'running' AND claimed_epoch = ?");
                self.session.query_unpaged(cql, (epoch, &r.consumer, r.id, old)).await
            }
            _ => return Ok(false),
        }
        .map_err(|e| exec_err("claim relay request", e))?;
        Ok(lwt_answer(res, "status")?.0)
    }

    /// Records the outcome if the request is still running under `epoch`.
    pub(super) async fn request_done(
        &self,
        consumer: &str,
        id: Uuid,
        epoch: i64,
        status: RequestStatus,
        result: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        // An LWT like the claim (never mix plain and conditional writes on the same cells).
        let cql = format!(
            "UPDATE {} SET status = ?, result = ?, finished_at = ? WHERE consumer = ? AND id = ? IF status = 'running' AND claimed_epoch = ?",
            self.t("relay_requests")
        );
        let res = self
            .session
            .query_unpaged(cql, (status.as_str(), result.to_string(), Utc::now(), consumer, id, epoch))
            .await
            .map_err(|e| exec_err("finish relay request", e))?;
        Ok(lwt_answer(res, "status")?.0)
    }
}
