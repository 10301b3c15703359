//! The dead-letter queue table of the SQLite store.
//!
//! Guarantee: one row per event (`event_id` is UNIQUE): a second failure of
//! the same event bumps `failure_count` and `last_failed_at` instead of
//! adding a row; writes go through the writer thread like appends.

use rusqlite::params;
use uuid::Uuid;

use super::{codec, parse_ts, parse_uuid, ts, unavailable, SqliteStore};
use crate::store::{DeadLetter, StoreError};

fn row_to_letter(r: &rusqlite::Row<'_>) -> Result<DeadLetter, StoreError> {
    let g = |i: usize| -> Result<String, StoreError> { r.get::<_, String>(i).map_err(codec) };
    Ok(DeadLetter {
        id: parse_uuid(&g(0)?)?,
        position: r.get(1).map_err(codec)?,
        event_id: parse_uuid(&g(2)?)?,
        aggregate_id: parse_uuid(&g(3)?)?,
        event_type: g(4)?,
        payload: g(5)?,
        error_message: g(6)?,
        failure_count: r.get(7).map_err(codec)?,
        first_failed_at: parse_ts(&g(8)?)?,
        last_failed_at: parse_ts(&g(9)?)?,
        created_at: parse_ts(&g(10)?)?,
    })
}

impl SqliteStore {
    pub(super) async fn insert_letter(&self, l: DeadLetter) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO dead_letter_queue (id, position, event_id, aggregate_id, event_type, payload, error_message, failure_count, first_failed_at, last_failed_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (event_id) DO UPDATE SET
                    failure_count = dead_letter_queue.failure_count + excluded.failure_count,
                    error_message = excluded.error_message,
                    last_failed_at = excluded.last_failed_at",
                params![
                    l.id.to_string(),
                    l.position,
                    l.event_id.to_string(),
                    l.aggregate_id.to_string(),
                    l.event_type,
                    l.payload,
                    l.error_message,
                    l.failure_count,
                    ts(&l.first_failed_at),
                    ts(&l.last_failed_at),
                    ts(&l.created_at)
                ],
            )
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }

    pub(super) async fn list_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let limit = limit.clamp(1, 100_000) as i64;
        self.read(move |c| {
            let mut stmt = c
                .prepare(
                    "SELECT id, position, event_id, aggregate_id, event_type, payload, error_message, failure_count, first_failed_at, last_failed_at, created_at
                     FROM dead_letter_queue ORDER BY created_at, position LIMIT ?1",
                )
                .map_err(unavailable)?;
            let mut rows = stmt.query([limit]).map_err(unavailable)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(unavailable)? {
                out.push(row_to_letter(r)?);
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn remove_letter(&self, id: Uuid) -> Result<bool, StoreError> {
        self.write(move |c| {
            c.execute("DELETE FROM dead_letter_queue WHERE id = ?1", [id.to_string()])
                .map(|n| n > 0)
                .map_err(unavailable)
        })
        .await
    }

    pub(super) async fn count_letters(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            c.query_row("SELECT COUNT(*) FROM dead_letter_queue", [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(unavailable)
        })
        .await
    }
}
