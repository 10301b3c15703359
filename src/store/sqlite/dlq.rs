//! The dead-letter queue table of the SQLite store: its statements, each on
//! a given connection (the caller runs writes on the writer thread and reads
//! on a pooled reader, like every other statement).
//!
//! Guarantee: one row per event (`event_id` is UNIQUE): a second failure of
//! the same event bumps `failure_count` and `last_failed_at` instead of
//! adding a row; a letter written again (its `id` is the row's, or the last
//! one added: a retry after a commit whose outcome was unknown) changes
//! nothing. Listing is ordered by `created_at`, then feed position.

use rusqlite::{params, Connection};
use uuid::Uuid;

use super::{codec, parse_ts, parse_uuid, ts, unavailable};
use crate::store::{DeadLetter, StoreError};

const LETTER_COLS: &str = "id, position, event_id, aggregate_id, event_type, payload, error_message, failure_count, first_failed_at, last_failed_at, created_at";

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

/// Records `l`, or adds its failures to the existing row of the same event
/// unless `l` is that row's first letter or the last one added to it.
pub(super) fn insert(c: &Connection, l: &DeadLetter) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO dead_letter_queue ({LETTER_COLS}, last_letter_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?1)
         ON CONFLICT (event_id) DO UPDATE SET
            failure_count = dead_letter_queue.failure_count + excluded.failure_count,
            error_message = excluded.error_message,
            last_failed_at = excluded.last_failed_at,
            last_letter_id = excluded.last_letter_id
         WHERE excluded.id != dead_letter_queue.id AND excluded.id IS NOT dead_letter_queue.last_letter_id"
    );
    let values = params![
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
    ];
    c.prepare_cached(&sql).and_then(|mut st| st.execute(values)).map(|_| ()).map_err(unavailable)
}

/// The oldest `limit` dead letters.
pub(super) fn list(c: &Connection, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
    let limit = limit.clamp(1, 100_000) as i64;
    let sql = format!("SELECT {LETTER_COLS} FROM dead_letter_queue ORDER BY created_at, position LIMIT ?1");
    let mut stmt = c.prepare_cached(&sql).map_err(unavailable)?;
    let mut rows = stmt.query([limit]).map_err(unavailable)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(unavailable)? {
        out.push(row_to_letter(r)?);
    }
    Ok(out)
}

/// The letters with these ids (by primary key), in the order given; the
/// same id twice is one letter.
pub(super) fn get(c: &Connection, ids: &[Uuid]) -> Result<Vec<DeadLetter>, StoreError> {
    let sql = format!("SELECT {LETTER_COLS} FROM dead_letter_queue WHERE id = ?1");
    let mut stmt = c.prepare_cached(&sql).map_err(unavailable)?;
    let mut out: Vec<DeadLetter> = Vec::new();
    for id in ids {
        if out.iter().any(|l| l.id == *id) {
            continue;
        }
        let mut rows = stmt.query([id.to_string()]).map_err(unavailable)?;
        if let Some(r) = rows.next().map_err(unavailable)? {
            out.push(row_to_letter(r)?);
        }
    }
    Ok(out)
}

/// Removes one dead letter; false when there was none with `id`.
pub(super) fn remove(c: &Connection, id: Uuid) -> Result<bool, StoreError> {
    c.execute("DELETE FROM dead_letter_queue WHERE id = ?1", [id.to_string()]).map(|n| n > 0).map_err(unavailable)
}

pub(super) fn count(c: &Connection) -> Result<u64, StoreError> {
    c.query_row("SELECT COUNT(*) FROM dead_letter_queue", [], |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
        .map_err(unavailable)
}
