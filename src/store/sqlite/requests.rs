//! SQLite relay requests (`relay_requests`): operator requests the active
//! relay carries out.
//!
//! Guarantees: a row this build cannot read is skipped by `open` (logged),
//! never blocking the requests after it; `claim` is one conditional UPDATE (pending, or running under
//! an epoch up to ours -> running under ours) fenced by the lease, so a
//! request is carried out by one lease holder at a time (and by one of its
//! terms: they run one after another).

use rusqlite::{params, Connection};
use uuid::Uuid;

use super::{codec, parse_ts, parse_uuid, ts, unavailable};
use crate::store::requests::{RelayRequest, RequestStatus};
use crate::store::StoreError;

const COLS: &str = "id, consumer, kind, status, requested_by, created_at, claimed_epoch, result, finished_at";

fn row(r: &rusqlite::Row<'_>) -> Result<RelayRequest, StoreError> {
    let g = |i: usize| -> Result<String, StoreError> { r.get::<_, String>(i).map_err(codec) };
    let status = g(3)?;
    let result: Option<String> = r.get(7).map_err(codec)?;
    let finished: Option<String> = r.get(8).map_err(codec)?;
    Ok(RelayRequest {
        id: parse_uuid(&g(0)?)?,
        consumer: g(1)?,
        kind: serde_json::from_str(&g(2)?).map_err(|e| codec(format!("request kind: {e}")))?,
        status: RequestStatus::parse(&status).ok_or_else(|| codec(format!("request status {status:?}")))?,
        requested_by: g(4)?,
        created_at: parse_ts(&g(5)?)?,
        claimed_epoch: r.get(6).map_err(codec)?,
        result: result.map(|s| serde_json::from_str(&s).unwrap_or(serde_json::Value::String(s))),
        finished_at: finished.as_deref().map(parse_ts).transpose()?,
    })
}

pub(super) fn submit(c: &Connection, r: &RelayRequest) -> Result<(), StoreError> {
    let kind = serde_json::to_string(&r.kind).map_err(codec)?;
    c.execute(
        &format!("INSERT INTO relay_requests ({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
        params![
            r.id.to_string(),
            r.consumer,
            kind,
            r.status.as_str(),
            r.requested_by,
            ts(&r.created_at),
            r.claimed_epoch,
            r.result.as_ref().map(|v| v.to_string()),
            r.finished_at.as_ref().map(ts)
        ],
    )
    .map(|_| ())
    .map_err(unavailable)
}

pub(super) fn get(c: &Connection, id: Uuid) -> Result<Option<RelayRequest>, StoreError> {
    let mut st = c.prepare_cached(&format!("SELECT {COLS} FROM relay_requests WHERE id = ?1")).map_err(unavailable)?;
    let mut rows = st.query([id.to_string()]).map_err(unavailable)?;
    match rows.next().map_err(unavailable)? {
        Some(r) => Ok(Some(row(r)?)),
        None => Ok(None),
    }
}

pub(super) fn open(c: &Connection, consumer: &str, epoch: i64) -> Result<Vec<RelayRequest>, StoreError> {
    let mut st = c
        .prepare_cached(&format!(
            "SELECT {COLS} FROM relay_requests WHERE consumer = ?1 AND (status = 'pending' OR (status = 'running' AND COALESCE(claimed_epoch, -1) <= ?2)) ORDER BY created_at, id"
        ))
        .map_err(unavailable)?;
    let mut rows = st.query(params![consumer, epoch]).map_err(unavailable)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(unavailable)? {
        match row(r) {
            Ok(req) => out.push(req),
            // One row this build cannot read (a kind from a newer build) is
            // left for a build that can; it never blocks the others.
            Err(StoreError::Codec(e)) => {
                let id: Option<String> = r.get(0).ok();
                tracing::warn!(id = ?id, %consumer, error = %e, "relay request this build cannot read; left as it is");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The request's lease is at `?2` (or the caller is unfenced: epoch 0).
const LEASE_AT_EPOCH: &str =
    "(?2 = 0 OR NOT EXISTS (SELECT 1 FROM relay_leases l WHERE l.name = relay_requests.consumer AND l.epoch <> ?2))";

pub(super) fn claim(c: &Connection, id: Uuid, epoch: i64) -> Result<bool, StoreError> {
    c.execute(
        &format!(
            "UPDATE relay_requests SET status = 'running', claimed_epoch = ?2
             WHERE id = ?1 AND (status = 'pending' OR (status = 'running' AND COALESCE(claimed_epoch, -1) <= ?2))
             AND {LEASE_AT_EPOCH}"
        ),
        params![id.to_string(), epoch],
    )
    .map(|n| n == 1)
    .map_err(unavailable)
}

pub(super) fn finish(
    c: &Connection,
    id: Uuid,
    epoch: i64,
    status: RequestStatus,
    result: &serde_json::Value,
) -> Result<bool, StoreError> {
    c.execute(
        &format!(
            "UPDATE relay_requests SET status = ?3, result = ?4, finished_at = ?5
             WHERE id = ?1 AND status = 'running' AND COALESCE(claimed_epoch, 0) = ?2 AND {LEASE_AT_EPOCH}"
        ),
        params![id.to_string(), epoch, status.as_str(), result.to_string(), ts(&chrono::Utc::now())],
    )
    .map(|n| n == 1)
    .map_err(unavailable)
}
