//! SQLite parking: `parked_aggregates` (one row per parked aggregate and
//! relay consumer) and the `discarded_events` audit table.
//!
//! Guarantees: a park write is one statement (upsert), durable when it
//! returns (it goes through the writer thread like every write); the held
//! count is computed from `event_store` itself, so it can never disagree
//! with what a replay would publish.

use rusqlite::{params, Connection, OptionalExtension};

use super::feed::FEED_COLS;
use super::{parse_ts, read_failure, ts, unavailable, write_failure};
use crate::store::feed::FeedRow;
use crate::store::parking::{DiscardRecord, Parked, ParkedInfo};
use crate::store::{Backlog, StoreError};

pub(crate) fn park(c: &Connection, p: &Parked) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO parked_aggregates (consumer, aggregate_id, aggregate_type, position, sequence_number, event_id, event_type, error, parked_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (consumer, aggregate_id) DO UPDATE SET
            aggregate_type = COALESCE(excluded.aggregate_type, parked_aggregates.aggregate_type),
            position = excluded.position, sequence_number = excluded.sequence_number, event_id = excluded.event_id,
            event_type = excluded.event_type, error = excluded.error",
        params![p.consumer, p.aggregate_id, p.aggregate_type, p.position, p.sequence, p.event_id, p.event_type, p.error, ts(&p.parked_at)],
    )
    .map(|_| ())
    .map_err(|e| write_failure(c, e))
}

/// The parked aggregates of `consumer` and their positions: no held count
/// (a count per park is an index probe each, read before every projector
/// page while anything is parked).
pub(super) fn parked_positions(c: &Connection, consumer: &str) -> Result<Vec<(String, Option<i64>)>, StoreError> {
    let mut st = c
        .prepare_cached("SELECT aggregate_id, position FROM parked_aggregates WHERE consumer = ?1")
        .map_err(unavailable)?;
    let rows =
        st.query_map([consumer], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?))).map_err(unavailable)?;
    rows.map(|r| r.map_err(read_failure)).collect()
}

pub(super) fn parked(c: &Connection, consumer: &str) -> Result<Vec<ParkedInfo>, StoreError> {
    let mut st = c
        .prepare_cached(
            "SELECT p.consumer, p.aggregate_id, p.aggregate_type, p.position, p.sequence_number, p.event_id, p.event_type, p.error, p.parked_at,
                    (SELECT COUNT(*) FROM event_store e WHERE e.aggregate_id = p.aggregate_id AND e.position >= COALESCE(p.position, 0))
             FROM parked_aggregates p WHERE p.consumer = ?1 ORDER BY p.parked_at, p.aggregate_id",
        )
        .map_err(unavailable)?;
    let rows = st
        .query_map([consumer], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, String>(8)?,
                r.get::<_, i64>(9)?,
            ))
        })
        .map_err(unavailable)?;
    let mut out = Vec::new();
    for row in rows {
        let (consumer, aggregate_id, aggregate_type, position, sequence, event_id, event_type, error, parked_at, held) =
            row.map_err(read_failure)?;
        out.push(ParkedInfo {
            parked: Parked {
                consumer,
                aggregate_id,
                aggregate_type,
                position,
                sequence,
                event_id,
                event_type,
                error,
                parked_at: parse_ts(&parked_at)?,
            },
            held_events: held.max(0) as u64,
        });
    }
    Ok(out)
}

pub(super) fn unpark(c: &Connection, consumer: &str, aggregate_id: &str) -> Result<bool, StoreError> {
    c.execute(
        "DELETE FROM parked_aggregates WHERE consumer = ?1 AND aggregate_id = ?2",
        params![consumer, aggregate_id],
    )
    .map(|n| n > 0)
    .map_err(|e| write_failure(c, e))
}

/// One aggregate's rows from `from_position` (inclusive) up to `up_to` (inclusive), in position order.
pub(super) fn aggregate_rows(
    c: &Connection,
    aggregate_id: &str,
    from_position: Option<i64>,
    from_sequence: Option<i64>,
    up_to: Option<i64>,
) -> Result<Vec<FeedRow>, StoreError> {
    let sql = format!(
        "SELECT {FEED_COLS} FROM event_store WHERE aggregate_id = ?1 AND position >= ?2 AND sequence_number >= ?3 AND position <= ?4 ORDER BY position"
    );
    let mut st = c.prepare_cached(&sql).map_err(unavailable)?;
    let mut rows = st
        .query(params![aggregate_id, from_position.unwrap_or(0), from_sequence.unwrap_or(0), up_to.unwrap_or(i64::MAX)])
        .map_err(unavailable)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(unavailable)? {
        out.push(super::feed::feed_row(r));
    }
    Ok(out)
}

pub(super) fn record_discard(c: &Connection, d: &DiscardRecord) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO discarded_events (consumer, event_id, aggregate_id, aggregate_type, sequence_number, position, event_type, payload, error, reason, discarded_at)
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11
         WHERE NOT EXISTS (SELECT 1 FROM discarded_events WHERE consumer = ?1 AND event_id = ?2)",
        params![d.consumer, d.event_id, d.aggregate_id, d.aggregate_type, d.sequence, d.position, d.event_type, d.payload, d.error, d.reason, ts(&d.discarded_at)],
    )
    .map(|_| ())
    .map_err(|e| write_failure(c, e))
}

const DISCARD_COLUMNS: &str = "consumer, event_id, aggregate_id, aggregate_type, sequence_number, position, event_type, payload, error, reason, discarded_at";

pub(super) fn discards(c: &Connection, limit: usize) -> Result<Vec<DiscardRecord>, StoreError> {
    let sql = format!("SELECT {DISCARD_COLUMNS} FROM discarded_events ORDER BY discarded_at DESC LIMIT ?1");
    discard_rows(c, &sql, params![limit.clamp(1, 100_000) as i64])
}

/// Every audit row of `consumer` (of `event_id` alone when given), newest first.
pub(super) fn discards_of(
    c: &Connection,
    consumer: &str,
    event_id: Option<&str>,
) -> Result<Vec<DiscardRecord>, StoreError> {
    let sql = format!(
        "SELECT {DISCARD_COLUMNS} FROM discarded_events WHERE consumer = ?1 AND (?2 IS NULL OR event_id = ?2)
         ORDER BY discarded_at DESC, id DESC"
    );
    discard_rows(c, &sql, params![consumer, event_id])
}

fn discard_rows(c: &Connection, sql: &str, p: impl rusqlite::Params) -> Result<Vec<DiscardRecord>, StoreError> {
    let mut st = c.prepare(sql).map_err(unavailable)?;
    let rows = st
        .query_map(p, |r| {
            Ok((
                DiscardRecord {
                    consumer: r.get(0)?,
                    event_id: r.get(1)?,
                    aggregate_id: r.get(2)?,
                    aggregate_type: r.get(3)?,
                    sequence: r.get(4)?,
                    position: r.get(5)?,
                    event_type: r.get(6)?,
                    payload: r.get(7)?,
                    error: r.get(8)?,
                    reason: r.get(9)?,
                    discarded_at: chrono::Utc::now(),
                },
                r.get::<_, String>(10)?,
            ))
        })
        .map_err(unavailable)?;
    let mut out = Vec::new();
    for row in rows {
        let (mut d, at) = row.map_err(read_failure)?;
        d.discarded_at = parse_ts(&at)?;
        out.push(d);
    }
    Ok(out)
}

/// How far `consumer` is behind: events after its checkpoint plus the held
/// events of its parked aggregates at or before it, and the oldest commit time among them.
pub(super) fn backlog(c: &Connection, consumer: &str) -> Result<Backlog, StoreError> {
    let cp: i64 = c
        .query_row("SELECT position FROM checkpoints WHERE consumer = ?1", [consumer], |r| r.get(0))
        .optional()
        .map_err(read_failure)?
        .unwrap_or(0);
    let head: i64 =
        c.query_row("SELECT COALESCE(MAX(position), 0) FROM event_store", [], |r| r.get(0)).map_err(read_failure)?;
    let (held, held_oldest): (i64, Option<String>) = c
        .query_row(
            "SELECT COUNT(*), MIN(e.timestamp) FROM parked_aggregates p JOIN event_store e
               ON e.aggregate_id = p.aggregate_id AND e.position >= COALESCE(p.position, 0)
             WHERE p.consumer = ?1 AND e.position <= ?2",
            params![consumer, cp],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(read_failure)?;
    let next: Option<String> = c
        .query_row("SELECT timestamp FROM event_store WHERE position > ?1 ORDER BY position LIMIT 1", [cp], |r| {
            r.get(0)
        })
        .optional()
        .map_err(read_failure)?;
    let oldest = [next, held_oldest].into_iter().flatten().filter_map(|t| parse_ts(&t).ok()).min();
    // A consumer that never wrote a checkpoint starts at 0: reported as the
    // relay and projector report it (`checkpoint: 0`, not null).
    Ok(Backlog { checkpoint: Some(cp), head: Some(head), events: Some((head - cp).max(0) + held), oldest })
}
