//! Fencing the CQL relay's park rows and requests by lease epoch in the
//! write itself: each of their partitions (one per consumer) carries a
//! static `fence_epoch`, the newest term that wrote there. A term raises it
//! before it reads the park rows or requests (`ParkingStore::fence_term`),
//! and every fenced write (`parking`, `requests`) is a lightweight
//! transaction conditioned on `fence_epoch = <its epoch>` (`fence_condition`,
//! a refusal read by `check_fence`).
//!
//! Guarantee: a relay whose lease moved on cannot change what the next term
//! holds, even when its lease check passed just before a stall and its write
//! lands after the next term began (the lease lives in another partition, so
//! a check and a write were two steps): the next term raised the fence
//! first, so the late write's condition fails. The fence never goes down.

use scylla::value::CqlValue;

use super::rows::{as_bigint, lwt_answer_of};
use super::{codec, exec_err, CqlStore};
use crate::store::parking::Parked;
use crate::store::StoreError;

/// Rounds of raising a fence before it gives up (each lost only to a
/// concurrent raise).
const ROUNDS: usize = 6;

pub(super) fn text(s: &str) -> Option<CqlValue> {
    Some(CqlValue::Text(s.to_string()))
}

pub(super) fn opt_text(s: &Option<String>) -> Option<CqlValue> {
    s.as_ref().map(|s| CqlValue::Text(s.clone()))
}

pub(super) fn big(n: Option<i64>) -> Option<CqlValue> {
    n.map(CqlValue::BigInt)
}

fn fenced(consumer: &str, epoch: i64, current: Option<i64>) -> StoreError {
    StoreError::Fenced { name: consumer.to_string(), epoch, current }
}

impl CqlStore {
    /// Raises `table`'s fence for `consumer` to `epoch` (idempotent; an
    /// unknown outcome is an error to retry); `Fenced` when a newer term
    /// raised it past `epoch`.
    pub(super) async fn raise_fence(&self, table: &str, consumer: &str, epoch: i64) -> Result<(), StoreError> {
        let t = self.t(table);
        let mut current: Option<i64> = None;
        for _ in 0..ROUNDS {
            let res = match current {
                None => {
                    let cql = format!("UPDATE {t} SET fence_epoch = ? WHERE consumer = ? IF fence_epoch = null");
                    self.session.query_unpaged(cql, (epoch, consumer)).await
                }
                Some(c) => {
                    let cql = format!("UPDATE {t} SET fence_epoch = ? WHERE consumer = ? IF fence_epoch = ?");
                    self.session.query_unpaged(cql, (epoch, consumer, c)).await
                }
            }
            .map_err(|e| exec_err(&format!("raise the fence of {table}"), e))?;
            let (applied, mut now) = lwt_answer_of(res, &["fence_epoch"])?;
            if applied {
                return Ok(());
            }
            current = as_bigint(now.pop().flatten())?;
            match current {
                Some(c) if c > epoch => return Err(fenced(consumer, epoch, current)),
                Some(c) if c == epoch => return Ok(()),
                _ => {}
            }
        }
        Err(StoreError::Unavailable(format!(
            "raising the fence of {table} for {consumer}: it kept changing under {ROUNDS} conditional writes"
        )))
    }

    /// The highest fence `consumer`'s terms raised (0: none): a lease
    /// created anew must start above it (`LeaseStore::lease_epoch_floor`).
    pub(super) async fn fence_floor(&self, consumer: &str) -> Result<i64, StoreError> {
        let mut floor = 0;
        for table in ["parked_aggregates", "relay_requests"] {
            let st = self.serial_read(format!("SELECT fence_epoch FROM {} WHERE consumer = ? LIMIT 1", self.t(table)));
            let res = self
                .session
                .query_unpaged(st, (consumer,))
                .await
                .map_err(|e| exec_err(&format!("read the fence of {table}"), e))?;
            let row = res.into_rows_result().map_err(codec)?.maybe_first_row::<(Option<i64>,)>().map_err(codec)?;
            floor = floor.max(row.and_then(|(e,)| e).unwrap_or(0));
        }
        Ok(floor)
    }

    /// Writes park row `p` on condition the fence is `epoch` (raised first).
    pub(super) async fn park_row_fenced(&self, p: &Parked, epoch: i64) -> Result<(), StoreError> {
        self.raise_fence("parked_aggregates", &p.consumer, epoch).await?;
        self.park_row_if(p, Some(epoch)).await
    }

    /// Deletes `consumer`'s park row of `aggregate_id` on condition the
    /// fence is `epoch` (raised first); false when there was none.
    pub(super) async fn unpark_row_fenced(
        &self,
        consumer: &str,
        aggregate_id: &str,
        epoch: i64,
    ) -> Result<bool, StoreError> {
        self.raise_fence("parked_aggregates", consumer, epoch).await?;
        self.unpark_row_if(consumer, aggregate_id, Some(epoch)).await
    }
}

/// The fence part of a write's condition: with `Some(epoch)` the
/// partition's fence must be `epoch` (its value bound last).
pub(super) fn fence_condition(fence: Option<i64>) -> (&'static str, Option<Option<CqlValue>>) {
    match fence {
        Some(epoch) => (" AND fence_epoch = ?", Some(big(Some(epoch)))),
        None => ("", None),
    }
}

/// A refused conditional write under `fence`: `Fenced` when the fence it
/// answered (`answered`) is not that epoch; otherwise the refusal was the
/// row's (the caller decides).
pub(super) fn check_fence(consumer: &str, fence: Option<i64>, answered: Option<CqlValue>) -> Result<(), StoreError> {
    let Some(epoch) = fence else { return Ok(()) };
    let current = as_bigint(answered)?;
    if current != Some(epoch) {
        return Err(fenced(consumer, epoch, current));
    }
    Ok(())
}

#[cfg(test)]
#[path = "fence_tests.rs"]
mod tests;
