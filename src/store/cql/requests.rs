//! CQL relay requests (`relay_requests`, partition per consumer): the
//! operator's rewinds, replays and discards, carried out by the lease holder.
//!
//! Guarantees: every write to a request row is a lightweight transaction
//! (submit `IF NOT EXISTS`, claim and outcome conditioned on status and
//! epoch, and under a lease on the partition's fence: see `fence`), so one
//! lease holder carries a request out and plain and conditional writes
//! never race on its cells; a write whose outcome is
//! unknown (timeout, broken connection) is resolved by a SERIAL read before
//! answering, like the lease's: a claim that landed is reported claimed.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use scylla::value::{CqlTimestamp, CqlValue};

use super::append::outcome_unknown;
use super::fence::fence_condition;
use super::rows::lwt_answer;
use super::{codec, exec_err, CqlStore};
use crate::store::requests::{RelayRequest, RequestStatus};
use crate::store::StoreError;

impl CqlStore {
    /// Writes a new request (`IF NOT EXISTS`: every write to a request row
    /// is conditional). An unknown outcome is resolved by a SERIAL read:
    /// written iff the row with this id now exists.
    pub(super) async fn request_insert(&self, r: &RelayRequest) -> Result<(), StoreError> {
        let kind = serde_json::to_string(&r.kind).map_err(codec)?;
        let cql = format!(
            "INSERT INTO {} (consumer, id, kind, status, requested_by, created_at, claimed_epoch, result, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS",
            self.t("relay_requests")
        );
        let result = r.result.as_ref().map(|v| v.to_string());
        let values = (
            &r.consumer,
            r.id,
            kind,
            r.status.as_str(),
            &r.requested_by,
            r.created_at,
            r.claimed_epoch,
            result,
            r.finished_at,
        );
        match self.session.query_unpaged(cql, values).await {
            Ok(res) => match lwt_answer(res, "id")?.0 {
                true => Ok(()),
                false => Err(StoreError::InvalidAppend(format!("relay request {} exists already", r.id))),
            },
            Err(e) if outcome_unknown(&e) => match self.request_row(&r.consumer, r.id).await? {
                Some(_) => Ok(()),
                None => Err(exec_err("write relay request", e)),
            },
            Err(e) => Err(exec_err("write relay request", e)),
        }
    }

    /// One request's (status, claimed epoch), read SERIAL: the read also
    /// finishes a Paxos round in progress on it, so what it returns is what
    /// an unknown-outcome write left.
    pub(super) async fn request_row(
        &self,
        consumer: &str,
        id: Uuid,
    ) -> Result<Option<(String, Option<i64>)>, StoreError> {
        let st = self.serial_read(format!(
            "SELECT status, claimed_epoch FROM {} WHERE consumer = ? AND id = ?",
            self.t("relay_requests")
        ));
        let res =
            self.session.query_unpaged(st, (consumer, id)).await.map_err(|e| exec_err("read relay request", e))?;
        res.into_rows_result().map_err(codec)?.maybe_first_row::<(String, Option<i64>)>().map_err(codec)
    }

    pub(super) async fn requests_of(
        &self,
        consumer: Option<&str>,
        id: Option<Uuid>,
    ) -> Result<Vec<RelayRequest>, StoreError> {
        let t = self.t("relay_requests");
        let cols = "consumer, id, kind, status, requested_by, created_at, claimed_epoch, result, finished_at";
        let res = match (consumer, id) {
            (Some(c), Some(id)) => {
                let cql = format!("SELECT {cols} FROM {t} WHERE consumer = ? AND id = ?");
                self.session.query_unpaged(cql, (c, id)).await
            }
            (Some(c), None) => {
                self.session.query_unpaged(format!("SELECT {cols} FROM {t} WHERE consumer = ?"), (c,)).await
            }
            (None, Some(id)) => {
                self.session.query_unpaged(format!("SELECT {cols} FROM {t} WHERE id = ? ALLOW FILTERING"), (id,)).await
            }
            (None, None) => self.session.query_unpaged(format!("SELECT {cols} FROM {t}"), ()).await,
        }
        .map_err(|e| exec_err("read relay requests", e))?;
        // `id` (and `kind`, `status`) are None on a partition's static-only
        // row (its fence, see `fence`, with no request).
        type Row = (
            String,
            Option<Uuid>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<DateTime<Utc>>,
            Option<i64>,
            Option<String>,
            Option<DateTime<Utc>>,
        );
        let mut out = Vec::new();
        for r in res.into_rows_result().map_err(codec)?.rows::<Row>().map_err(codec)? {
            let (consumer, id, kind, status, by, created, epoch, result, finished) = r.map_err(codec)?;
            let (Some(id), Some(kind), Some(status)) = (id, kind, status) else { continue };
            // One row this build cannot read (a kind from a newer build)
            // is left for a build that can; it never blocks the others.
            let (Ok(kind), Some(status)) = (serde_json::from_str(&kind), RequestStatus::parse(&status)) else {
                tracing::warn!(%id, %consumer, %kind, %status, "relay request this build cannot read; left as it is");
                continue;
            };
            out.push(RelayRequest {
                id,
                consumer,
                kind,
                status,
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

    /// Claims `r` for `epoch`; with `epoch > 0` also on condition the
    /// partition's fence is `epoch` (raised by the caller: see `fence`).
    pub(super) async fn request_cas(&self, r: &RelayRequest, epoch: i64) -> Result<bool, StoreError> {
        let t = self.t("relay_requests");
        let (fence, fence_value) = fence_condition((epoch > 0).then_some(epoch));
        let key = [Some(CqlValue::Text(r.consumer.clone())), Some(CqlValue::Uuid(r.id))];
        let res = match (r.status, r.claimed_epoch) {
            (RequestStatus::Pending, _) => {
                let cql = format!("UPDATE {t} SET status = 'running', claimed_epoch = ? WHERE consumer = ? AND id = ? IF status = 'pending'{fence}");
                let v: Vec<_> = [Some(CqlValue::BigInt(epoch))].into_iter().chain(key).chain(fence_value).collect();
                self.session.query_unpaged(cql, v).await
            }
            (RequestStatus::Running, Some(old)) if old <= epoch => {
                let cql = format!("UPDATE {t} SET claimed_epoch = ? WHERE consumer = ? AND id = ? IF status = 'running' AND claimed_epoch = ?{fence}");
                let v: Vec<_> = [Some(CqlValue::BigInt(epoch))]
                    .into_iter()
                    .chain(key)
                    .chain([Some(CqlValue::BigInt(old))])
                    .chain(fence_value)
                    .collect();
                self.session.query_unpaged(cql, v).await
            }
            _ => return Ok(false),
        };
        match res {
            Ok(res) => Ok(lwt_answer(res, "status")?.0),
            // Claimed iff it runs under our epoch now: a claim that landed
            // but answered "unknown" would otherwise look like this holder's
            // own request and never be carried out in this term.
            Err(e) if outcome_unknown(&e) => Ok(self
                .request_row(&r.consumer, r.id)
                .await?
                .is_some_and(|(status, claimed)| status == "running" && claimed == Some(epoch))),
            Err(e) => Err(exec_err("claim relay request", e)),
        }
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
        let (fence, fence_value) = fence_condition((epoch > 0).then_some(epoch));
        let cql = format!(
            "UPDATE {} SET status = ?, result = ?, finished_at = ? WHERE consumer = ? AND id = ? IF status = 'running' AND claimed_epoch = ?{fence}",
            self.t("relay_requests")
        );
        let v: Vec<Option<CqlValue>> = [
            Some(CqlValue::Text(status.as_str().to_string())),
            Some(CqlValue::Text(result.to_string())),
            Some(CqlValue::Timestamp(CqlTimestamp(Utc::now().timestamp_millis()))),
            Some(CqlValue::Text(consumer.to_string())),
            Some(CqlValue::Uuid(id)),
            Some(CqlValue::BigInt(epoch)),
        ]
        .into_iter()
        .chain(fence_value)
        .collect();
        match self.session.query_unpaged(cql, v).await {
            Ok(res) => Ok(lwt_answer(res, "status")?.0),
            Err(e) if outcome_unknown(&e) => {
                done_after_unknown(self.request_row(consumer, id).await?, id, epoch, status)
            }
            Err(e) => Err(exec_err("finish relay request", e)),
        }
    }
}

/// What an outcome write whose answer was lost did, from the row a SERIAL
/// read found after it (which also finished its Paxos round, if any):
/// recorded iff the row carries `status` under `epoch`; still running under
/// `epoch` means it did not land, which is no refusal (false would tell the
/// relay the new leader carries the request out, and it would be carried
/// out again at this epoch): an error, so the caller tries again or keeps
/// the outcome to record later; anything else is a refusal.
fn done_after_unknown(
    row: Option<(String, Option<i64>)>,
    id: Uuid,
    epoch: i64,
    status: RequestStatus,
) -> Result<bool, StoreError> {
    match row {
        Some((now, Some(e))) if e == epoch && now == status.as_str() => Ok(true),
        Some((now, Some(e))) if e == epoch && now == RequestStatus::Running.as_str() => {
            Err(StoreError::Unavailable(format!(
                "the outcome of relay request {id} was not recorded (the write's answer was lost and it did not land)"
            )))
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review finding: a lost outcome write that did not land (the row still
    /// running under this epoch) answered false, "no longer claimed": the
    /// relay dropped the outcome and a later term at the same epoch carried
    /// the request out again (a second rewind).
    #[test]
    fn a_lost_outcome_write_that_did_not_land_is_an_error_not_a_refusal() {
        let (id, done) = (Uuid::now_v7(), RequestStatus::Done);
        let row = |s: &str, e: Option<i64>| Some((s.to_string(), e));
        assert!(matches!(done_after_unknown(row("running", Some(3)), id, 3, done), Err(StoreError::Unavailable(_))));
        assert!(done_after_unknown(row("done", Some(3)), id, 3, done).unwrap(), "landed");
        // Taken over (a later epoch) or finished otherwise: a refusal.
        assert!(!done_after_unknown(row("running", Some(4)), id, 3, done).unwrap());
        assert!(!done_after_unknown(row("failed", Some(3)), id, 3, done).unwrap());
        assert!(!done_after_unknown(row("pending", None), id, 3, done).unwrap());
        assert!(!done_after_unknown(None, id, 3, done).unwrap());
    }
}
