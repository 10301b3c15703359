//! CQL parking (`parked_aggregates`, partition per relay consumer) and the
//! `discarded_events` audit table.
//!
//! Guarantees: a park row is one per aggregate and consumer, written like
//! SQLite's upsert (a new row, or the failed event of an existing one, its
//! first `parked_at` kept); every write to it is a lightweight transaction,
//! as its delete is: plain and conditional writes to the same cells are
//! ordered by different clocks (a Paxos ballot against a write timestamp),
//! so a park written just after an unpark could otherwise be hidden by it.
//! The held count comes from `event_store` itself (rows from the parked
//! sequence on): a query per park, so what only needs which aggregates are
//! parked reads the park rows alone (`parked_position_rows`, `is_parked`).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use scylla::value::{CqlTimestamp, CqlValue};

use super::fence::{big, check_fence, fence_condition, opt_text, text};
use super::rows::lwt_answer_of;
use super::{codec, exec_err, CqlStore};
use crate::store::feed::FeedRow;
use crate::store::parking::{DiscardRecord, Parked, ParkedInfo};
use crate::store::StoreError;

/// Conditional writes before a park gives up (each loses only to a
/// concurrent unpark or park of the same row).
const PARK_ROUNDS: usize = 8;

/// `aggregate_id` is None on the partition's static-only row (its fence,
/// see `fence`, with no park row).
type ParkRow = (
    String,
    Option<String>,
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
        self.park_row_if(p, None).await
    }

    /// Writes park row `p`: a new row (`parked_at = null`), or the failed
    /// event of the existing one (its first `parked_at` kept), each round
    /// choosing by what the last refused write answered; with `fence`, only
    /// while the partition's fence is at that epoch (`Fenced` otherwise, see
    /// `fence`). An unknown outcome is an error the caller retries: both
    /// writes are idempotent.
    pub(super) async fn park_row_if(&self, p: &Parked, fence: Option<i64>) -> Result<(), StoreError> {
        let t = self.t("parked_aggregates");
        let (fence_cond, fence_value) = fence_condition(fence);
        let mut exists = false;
        for _ in 0..PARK_ROUNDS {
            let (cql, mut v) = if exists {
                (
                    format!("UPDATE {t} SET position = ?, sequence_number = ?, event_id = ?, event_type = ?, error = ? WHERE consumer = ? AND aggregate_id = ? IF parked_at != null{fence_cond}"),
                    vec![big(p.position), big(p.sequence), opt_text(&p.event_id), opt_text(&p.event_type), text(&p.error)],
                )
            } else {
                let at = Some(CqlValue::Timestamp(CqlTimestamp(p.parked_at.timestamp_millis())));
                (
                    format!("UPDATE {t} SET aggregate_type = ?, position = ?, sequence_number = ?, event_id = ?, event_type = ?, error = ?, parked_at = ? WHERE consumer = ? AND aggregate_id = ? IF parked_at = null{fence_cond}"),
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
            v.extend([text(&p.consumer), text(&p.aggregate_id)]);
            v.extend(fence_value.clone());
            let res = self.session.query_unpaged(cql, v).await.map_err(|e| exec_err("write parked aggregate", e))?;
            let (applied, now) = lwt_answer_of(res, &["parked_at", "fence_epoch"])?;
            if applied {
                return Ok(());
            }
            check_fence(&p.consumer, fence, now[1].clone())?;
            exists = now[0].is_some();
        }
        Err(StoreError::Unavailable(format!(
            "park {}: its row was deleted and re-created under {PARK_ROUNDS} conditional writes",
            p.aggregate_id
        )))
    }

    pub(super) async fn parked_rows(&self, consumer: &str) -> Result<Vec<ParkedInfo>, StoreError> {
        Ok(self.parked_rows_held(consumer).await?.into_iter().map(|(p, _)| p).collect())
    }

    /// Which aggregates `consumer` has parked and at which feed position, in
    /// `parked_rows`' order (oldest park first): one read of the park rows,
    /// no held counts (those cost a query on `event_store` per park).
    pub(super) async fn parked_position_rows(&self, consumer: &str) -> Result<Vec<(String, Option<i64>)>, StoreError> {
        Ok(self.park_rows(consumer).await?.into_iter().map(|p| (p.aggregate_id, p.position)).collect())
    }

    /// Whether `consumer` has parked `aggregate_id`: one single-row read.
    pub(crate) async fn is_parked(&self, consumer: &str, aggregate_id: &str) -> Result<bool, StoreError> {
        let cql =
            format!("SELECT aggregate_id FROM {} WHERE consumer = ? AND aggregate_id = ?", self.t("parked_aggregates"));
        let res = self
            .session
            .query_unpaged(cql, (consumer, aggregate_id))
            .await
            .map_err(|e| exec_err("read parked aggregate", e))?;
        let rows = res.into_rows_result().map_err(codec)?;
        for r in rows.rows::<(Option<String>,)>().map_err(codec)? {
            if r.map_err(codec)?.0.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The sequence each park row of `consumer` holds from (None: all of
    /// them), by aggregate id; one read of the partition.
    pub(crate) async fn park_sequences(
        &self,
        consumer: &str,
    ) -> Result<std::collections::HashMap<String, Option<i64>>, StoreError> {
        Ok(self.park_rows(consumer).await?.into_iter().map(|p| (p.aggregate_id, p.sequence)).collect())
    }

    /// [`Self::parked_rows`], each with the commit time of its oldest held event.
    pub(super) async fn parked_rows_held(
        &self,
        consumer: &str,
    ) -> Result<Vec<(ParkedInfo, Option<DateTime<Utc>>)>, StoreError> {
        let mut out = Vec::new();
        for parked in self.park_rows(consumer).await? {
            let (held, oldest) = self.held(&parked.aggregate_id, parked.sequence.unwrap_or(0)).await?;
            out.push((ParkedInfo { parked, held_events: held }, oldest));
        }
        Ok(out)
    }

    /// The park rows of `consumer`, oldest park first (a row without its
    /// time taken as parked now); one read of the partition.
    async fn park_rows(&self, consumer: &str) -> Result<Vec<Parked>, StoreError> {
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
            // The partition's static-only row (its fence) is no park.
            let Some(aggregate_id) = aggregate_id else { continue };
            out.push(Parked {
                consumer,
                aggregate_id,
                aggregate_type,
                position,
                sequence,
                event_id,
                event_type,
                error: error.unwrap_or_default(),
                parked_at: parked_at.unwrap_or_else(Utc::now),
            });
        }
        out.sort_by_key(|p| p.parked_at);
        Ok(out)
    }

    /// How many events of `aggregate_id` from `from_sequence` on are held,
    /// and the commit time of the oldest of them (the backlog's age: the
    /// time it was parked is later, by as long as the relay was behind).
    async fn held(&self, aggregate_id: &str, from_sequence: i64) -> Result<(u64, Option<DateTime<Utc>>), StoreError> {
        let Ok(id) = Uuid::parse_str(aggregate_id) else { return Ok((0, None)) };
        let cql = format!(
            "SELECT COUNT(*), MIN(timestamp) FROM {} WHERE aggregate_id = ? AND sequence_number >= ?",
            self.t("event_store")
        );
        let res =
            self.session.query_unpaged(cql, (id, from_sequence)).await.map_err(|e| exec_err("count held events", e))?;
        let (n, oldest) =
            res.into_rows_result().map_err(codec)?.first_row::<(i64, Option<DateTime<Utc>>)>().map_err(codec)?;
        Ok((n.max(0) as u64, oldest))
    }

    pub(super) async fn unpark_row(&self, consumer: &str, aggregate_id: &str) -> Result<bool, StoreError> {
        self.unpark_row_if(consumer, aggregate_id, None).await
    }

    /// Deletes `consumer`'s park row of `aggregate_id`; false when there was
    /// none. With `fence`, only while the partition's fence is at that epoch.
    pub(super) async fn unpark_row_if(
        &self,
        consumer: &str,
        aggregate_id: &str,
        fence: Option<i64>,
    ) -> Result<bool, StoreError> {
        let (fence_cond, fence_value) = fence_condition(fence);
        let cql = format!(
            "DELETE FROM {} WHERE consumer = ? AND aggregate_id = ? IF parked_at != null{fence_cond}",
            self.t("parked_aggregates")
        );
        let v: Vec<_> = [text(consumer), text(aggregate_id)].into_iter().chain(fence_value).collect();
        let res = self.session.query_unpaged(cql, v).await.map_err(|e| exec_err("delete parked aggregate", e))?;
        let (applied, now) = lwt_answer_of(res, &["fence_epoch"])?;
        if !applied {
            check_fence(consumer, fence, now[0].clone())?;
        }
        Ok(applied)
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
        if !self.consumer_discard_rows(&d.consumer, Some(&d.event_id)).await?.is_empty() {
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
        let cql = format!("SELECT {DISCARD_COLUMNS} FROM {}", self.t("discarded_events"));
        let res = self.session.query_unpaged(cql, ()).await.map_err(|e| exec_err("list discards", e))?;
        let mut out = discard_records(res)?;
        out.truncate(limit.clamp(1, 100_000));
        Ok(out)
    }

    /// Every audit row of `consumer` (one partition), of `event_id` alone
    /// when given, newest first.
    pub(super) async fn consumer_discard_rows(
        &self,
        consumer: &str,
        event_id: Option<&str>,
    ) -> Result<Vec<DiscardRecord>, StoreError> {
        let t = self.t("discarded_events");
        // The event id is a clustering column after `discarded_at`: filtered
        // by the server within the consumer's one partition.
        let res = match event_id {
            None => {
                self.session
                    .query_unpaged(format!("SELECT {DISCARD_COLUMNS} FROM {t} WHERE consumer = ?"), (consumer,))
                    .await
            }
            Some(e) => {
                let cql =
                    format!("SELECT {DISCARD_COLUMNS} FROM {t} WHERE consumer = ? AND event_id = ? ALLOW FILTERING");
                self.session.query_unpaged(cql, (consumer, e)).await
            }
        };
        discard_records(res.map_err(|e| exec_err("read discard audit rows", e))?)
    }
}

const DISCARD_COLUMNS: &str =
    "consumer, discarded_at, event_id, aggregate_id, aggregate_type, sequence_number, position, event_type, payload, error, reason";

/// The rows of a [`DISCARD_COLUMNS`] query, newest first.
fn discard_records(res: scylla::response::query_result::QueryResult) -> Result<Vec<DiscardRecord>, StoreError> {
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
    Ok(out)
}
