//! Fencing the CQL relay's park rows and requests by lease epoch in the
//! write itself: each of their partitions (one per consumer) carries a
//! static `fence_epoch`, the newest term that wrote there. A term raises it
//! before it reads the park rows or requests (`ParkingStore::fence_term`),
//! and every fenced write is a lightweight transaction conditioned on
//! `fence_epoch = <its epoch>`.
//!
//! Guarantee: a relay whose lease moved on cannot change what the next term
//! holds, even when its lease check passed just before a stall and its write
//! lands after the next term began (the lease lives in another partition, so
//! a check and a write were two steps): the next term raised the fence
//! first, so the late write's condition fails. The fence never goes down.

use scylla::value::{CqlTimestamp, CqlValue};

use super::rows::{as_bigint, lwt_answer_of};
use super::{exec_err, CqlStore};
use crate::store::parking::Parked;
use crate::store::StoreError;

/// Rounds of a fenced write before it gives up (each lost only to a
/// concurrent change of the same row or fence).
const ROUNDS: usize = 6;

fn text(s: &str) -> Option<CqlValue> {
    Some(CqlValue::Text(s.to_string()))
}

fn opt_text(s: &Option<String>) -> Option<CqlValue> {
    s.as_ref().map(|s| CqlValue::Text(s.clone()))
}

fn big(n: Option<i64>) -> Option<CqlValue> {
    n.map(CqlValue::BigInt)
}

fn fenced(consumer: &str, epoch: i64, current: Option<i64>) -> StoreError {
    StoreError::Fenced { name: consumer.to_string(), epoch, current }
}

fn busy(what: &str, consumer: &str) -> StoreError {
    StoreError::Unavailable(format!("{what} for {consumer}: the row kept changing under {ROUNDS} conditional writes"))
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
        Err(busy(&format!("raising the fence of {table}"), consumer))
    }

    /// Writes park row `p` (a new row, or the failed event of the existing
    /// one, its first `parked_at` kept) on condition the fence is `epoch`.
    pub(super) async fn park_row_fenced(&self, p: &Parked, epoch: i64) -> Result<(), StoreError> {
        self.raise_fence("parked_aggregates", &p.consumer, epoch).await?;
        self.park_row_if_fence(p, epoch).await
    }

    /// The write of [`Self::park_row_fenced`], on condition the fence is
    /// `epoch` (a term raised it past meanwhile: `Fenced`).
    async fn park_row_if_fence(&self, p: &Parked, epoch: i64) -> Result<(), StoreError> {
        let t = self.t("parked_aggregates");
        let mut exists = false;
        for _ in 0..ROUNDS {
            let (cql, mut v) = if exists {
                (
                    format!("UPDATE {t} SET position = ?, sequence_number = ?, event_id = ?, event_type = ?, error = ? WHERE consumer = ? AND aggregate_id = ? IF fence_epoch = ? AND parked_at != null"),
                    vec![big(p.position), big(p.sequence), opt_text(&p.event_id), opt_text(&p.event_type), text(&p.error)],
                )
            } else {
                let at = Some(CqlValue::Timestamp(CqlTimestamp(p.parked_at.timestamp_millis())));
                (
                    format!("UPDATE {t} SET aggregate_type = ?, position = ?, sequence_number = ?, event_id = ?, event_type = ?, error = ?, parked_at = ? WHERE consumer = ? AND aggregate_id = ? IF fence_epoch = ? AND parked_at = null"),
                    vec![
                        opt_text(&p.aggregate_type),
                        big(p.position),
                        big(p.sequence),
                        opt_text(&p.event_id),
                        opt_text(&p.event_type),
                        text(&p.error),
                        at,
                    ],
                )
            };
            v.extend([text(&p.consumer), text(&p.aggregate_id), big(Some(epoch))]);
            let res = self.session.query_unpaged(cql, v).await.map_err(|e| exec_err("write parked aggregate", e))?;
            let (applied, now) = lwt_answer_of(res, &["fence_epoch", "parked_at"])?;
            if applied {
                return Ok(());
            }
            let fence = as_bigint(now[0].clone())?;
            if fence != Some(epoch) {
                return Err(fenced(&p.consumer, epoch, fence));
            }
            exists = now[1].is_some();
        }
        Err(busy(&format!("park {}", p.aggregate_id), &p.consumer))
    }

    /// Deletes `consumer`'s park row of `aggregate_id` on condition the
    /// fence is `epoch`; false when there was none.
    pub(super) async fn unpark_row_fenced(
        &self,
        consumer: &str,
        aggregate_id: &str,
        epoch: i64,
    ) -> Result<bool, StoreError> {
        self.raise_fence("parked_aggregates", consumer, epoch).await?;
        self.unpark_row_if_fence(consumer, aggregate_id, epoch).await
    }

    /// The delete of [`Self::unpark_row_fenced`], on condition the fence is `epoch`.
    async fn unpark_row_if_fence(&self, consumer: &str, aggregate_id: &str, epoch: i64) -> Result<bool, StoreError> {
        let cql = format!(
            "DELETE FROM {} WHERE consumer = ? AND aggregate_id = ? IF fence_epoch = ? AND parked_at != null",
            self.t("parked_aggregates")
        );
        let res = self
            .session
            .query_unpaged(cql, (consumer, aggregate_id, epoch))
            .await
            .map_err(|e| exec_err("delete parked aggregate", e))?;
        let (applied, now) = lwt_answer_of(res, &["fence_epoch"])?;
        if applied {
            return Ok(true);
        }
        let fence = as_bigint(now[0].clone())?;
        if fence != Some(epoch) {
            return Err(fenced(consumer, epoch, fence));
        }
        Ok(false)
    }
}

#[cfg(test)]
#[path = "fence_tests.rs"]
mod tests;
