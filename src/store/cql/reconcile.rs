//! `append_reconciliation`: appends whose compare-and-set outcome was
//! unknown and which the CQL store then resolved as applied, or which it
//! could not resolve (they may land later).
//!
//! Guarantees:
//! - The store writes the rows of an append (one per event) before that
//!   append returns (Ok, or `OutcomeUnknown`), so every event whose CDC row
//!   may land in a window the reader has passed is on record while the
//!   caller still waits.
//! - The relay deletes a row only after the event at its sequence was
//!   published (confirmed): its own, or the one of another append that
//!   took the sequence (the row may have replaced that append's row).
//! - Plain single-partition writes (one aggregate = one partition), no LWT;
//!   the rows of an append whose outcome stayed unknown expire after
//!   [`UNRESOLVED_TTL`] (7 days), the others only when deleted.

use chrono::{DateTime, Utc};
use futures::StreamExt;
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use std::sync::Arc;
use uuid::Uuid;

use super::prepare_on;
use crate::store::StoreError;

pub const RECONCILIATION_TABLE: &str = "append_reconciliation";

/// How long the row of an append whose outcome stayed unknown is kept: it
/// lands, if ever, when the aggregate's next conditional write (or SERIAL
/// read) completes its accepted proposal, in practice the client's retry.
pub const UNRESOLVED_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// One row of `append_reconciliation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingAppend {
    pub aggregate_id: Uuid,
    pub sequence: i64,
    pub event_id: Uuid,
    /// When the store resolved the append (ms since the epoch).
    pub resolved_at_ms: i64,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

/// The `append_reconciliation` table of one keyspace.
pub struct ReconcileTable {
    session: Arc<Session>,
    table: String,
    insert: PreparedStatement,
    delete: PreparedStatement,
    list: PreparedStatement,
}

impl ReconcileTable {
    pub async fn open(session: Arc<Session>, keyspace: &str) -> Result<ReconcileTable, StoreError> {
        let table = format!("{keyspace}.{RECONCILIATION_TABLE}");
        let prepare = |cql: String| prepare_on(&session, cql, &table);
        let insert = prepare(format!(
            "INSERT INTO {table} (aggregate_id, sequence_number, event_id, resolved_at) VALUES (?, ?, ?, ?) USING TTL ?"
        ))
        .await?;
        let mut delete = prepare(format!("DELETE FROM {table} WHERE aggregate_id = ? AND sequence_number = ?")).await?;
        delete.set_is_idempotent(true);
        let mut list =
            prepare(format!("SELECT aggregate_id, sequence_number, event_id, resolved_at FROM {table}")).await?;
        list.set_is_idempotent(true);
        list.set_page_size(1_000);
        Ok(ReconcileTable { session, table, insert, delete, list })
    }

    /// Records the events `(sequence, event_id)` of one append of `aggregate`.
    pub async fn record(
        &self,
        aggregate: Uuid,
        events: &[(i64, Uuid)],
        resolved_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write(aggregate, events, resolved_at, 0).await
    }

    /// Records the events of an append whose outcome stayed unknown: rows
    /// that expire after [`UNRESOLVED_TTL`] (one that never lands, say a
    /// create its client gave up on, is not kept and read for ever).
    pub async fn record_unresolved(
        &self,
        aggregate: Uuid,
        events: &[(i64, Uuid)],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write(aggregate, events, at, UNRESOLVED_TTL.as_secs() as i32).await
    }

    /// The rows, with a TTL in seconds (0: none).
    async fn write(
        &self,
        aggregate: Uuid,
        events: &[(i64, Uuid)],
        resolved_at: DateTime<Utc>,
        ttl: i32,
    ) -> Result<(), StoreError> {
        let mut batch = Batch::new(BatchType::Unlogged);
        // The record must land even under a tight configured request
        // timeout: an append that was applied waits for it.
        batch.set_request_timeout(Some(std::time::Duration::from_secs(10)));
        for _ in events {
            batch.append_statement(self.insert.clone());
        }
        let values: Vec<_> = events.iter().map(|(seq, id)| (aggregate, *seq, *id, resolved_at, ttl)).collect();
        self.session
            .batch(&batch, values)
            .await
            .map_err(|e| unavailable(&format!("record unknown-outcome append of {aggregate} in {}", self.table), e))?;
        Ok(())
    }

    /// Every pending row (the table is small: rows live until published).
    pub async fn list(&self) -> Result<Vec<PendingAppend>, StoreError> {
        let pager = self
            .session
            .execute_iter(self.list.clone(), ())
            .await
            .map_err(|e| unavailable(&format!("list {}", self.table), e))?;
        let mut rows = pager
            .rows_stream::<(Uuid, i64, Option<Uuid>, Option<DateTime<Utc>>)>()
            .map_err(|e| StoreError::Codec(e.to_string()))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().await {
            let (aggregate_id, sequence, event_id, resolved_at) =
                r.map_err(|e| unavailable(&format!("list {}", self.table), e))?;
            out.push(PendingAppend {
                aggregate_id,
                sequence,
                event_id: event_id.unwrap_or_default(),
                resolved_at_ms: resolved_at.map_or(0, |t| t.timestamp_millis()),
            });
        }
        Ok(out)
    }

    /// The event was published: its row goes.
    pub async fn confirm(&self, aggregate: Uuid, sequence: i64) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(&self.delete, (aggregate, sequence))
            .await
            .map_err(|e| unavailable(&format!("confirm {aggregate}#{sequence} in {}", self.table), e))?;
        Ok(())
    }
}
