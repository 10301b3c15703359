//! SQLite leases and the fenced checkpoint (`relay_leases`, `checkpoints`).
//!
//! Guarantees:
//! - Each operation is one `BEGIN IMMEDIATE` transaction: the compare and
//!   the write happen under SQLite's write lock, so two processes can never
//!   both win a lease, and a checkpoint moves only while the caller's epoch
//!   is the lease's.
//! - These run on their own connection with a short busy timeout, never
//!   through the group-commit writer queue: a renewal does not wait behind
//!   a burst of appends, and a store that stays locked makes the renewal
//!   fail fast (the holder then steps down at its deadline).

use chrono::Utc;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{parse_ts, ts, unavailable};
use crate::store::lease::{Lease, LeaseCas, LeaseInfo};
use crate::store::StoreError;

pub(super) fn get(c: &Connection, name: &str) -> Result<Option<Lease>, StoreError> {
    c.query_row("SELECT name, holder, epoch, counter, ttl_ms FROM relay_leases WHERE name = ?1", [name], |r| {
        Ok(Lease { name: r.get(0)?, holder: r.get(1)?, epoch: r.get(2)?, counter: r.get(3)?, ttl_ms: r.get(4)? })
    })
    .optional()
    .map_err(unavailable)
}

pub(super) fn cas(c: &mut Connection, cas: &LeaseCas) -> Result<bool, StoreError> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)?;
    let current: Option<(i64, i64)> = tx
        .query_row("SELECT epoch, counter FROM relay_leases WHERE name = ?1", [&cas.new.name], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .map_err(unavailable)?;
    if current != cas.expected {
        return Ok(false);
    }
    let n = &cas.new;
    tx.execute(
        "INSERT INTO relay_leases (name, holder, epoch, counter, ttl_ms, renewed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, epoch = excluded.epoch, counter = excluded.counter,
            ttl_ms = excluded.ttl_ms, renewed_at = excluded.renewed_at",
        params![n.name, n.holder, n.epoch, n.counter, n.ttl_ms, ts(&Utc::now())],
    )
    .map_err(unavailable)?;
    tx.commit().map_err(unavailable)?;
    Ok(true)
}

pub(super) fn list(c: &Connection) -> Result<Vec<LeaseInfo>, StoreError> {
    let mut st = c
        .prepare(
            "SELECT l.name, l.holder, l.epoch, l.counter, l.ttl_ms, l.renewed_at, c.position
             FROM relay_leases l LEFT JOIN checkpoints c ON c.consumer = l.name ORDER BY l.name",
        )
        .map_err(unavailable)?;
    let rows = st
        .query_map([], |r| {
            Ok((
                Lease { name: r.get(0)?, holder: r.get(1)?, epoch: r.get(2)?, counter: r.get(3)?, ttl_ms: r.get(4)? },
                r.get::<_, String>(5)?,
                r.get::<_, Option<i64>>(6)?,
            ))
        })
        .map_err(unavailable)?;
    let mut out = Vec::new();
    for row in rows {
        let (lease, renewed, position) = row.map_err(unavailable)?;
        out.push(LeaseInfo { lease, renewed_at: parse_ts(&renewed).ok(), position });
    }
    Ok(out)
}

/// Runs `f` in one write transaction that first checks lease `name` is at
/// `epoch` (`Fenced` otherwise, nothing written).
pub(super) fn fenced<T>(
    c: &mut Connection,
    name: &str,
    epoch: i64,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)?;
    let current: Option<i64> = tx
        .query_row("SELECT epoch FROM relay_leases WHERE name = ?1", [name], |r| r.get(0))
        .optional()
        .map_err(unavailable)?;
    if current != Some(epoch) {
        return Err(StoreError::Fenced { name: name.to_string(), epoch, current });
    }
    let out = f(&tx)?;
    tx.commit().map_err(unavailable)?;
    Ok(out)
}

/// Sets checkpoint `name` to `position` if lease `name` is at `epoch`.
pub(super) fn set_checkpoint_fenced(
    c: &mut Connection,
    name: &str,
    epoch: i64,
    position: i64,
) -> Result<(), StoreError> {
    fenced(c, name, epoch, |tx| upsert_checkpoint(tx, name, position))
}

/// Sets checkpoint `consumer` to `position` (created if missing).
pub(super) fn upsert_checkpoint(c: &Connection, consumer: &str, position: i64) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO checkpoints (consumer, position, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (consumer) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
        params![consumer, position, ts(&Utc::now())],
    )
    .map(|_| ())
    .map_err(unavailable)
}
