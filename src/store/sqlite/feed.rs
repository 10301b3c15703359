//! Reading outbox rows for the feed, row by row.
//!
//! Guarantee: every column is read as a raw SQLite value and checked here;
//! a row that is not a readable event becomes `FeedRow::Unreadable` with
//! its position, aggregate id, sequence and event id as stored (so the relay
//! parks the right aggregate), and never fails the page it is on. The
//! payload text is kept byte for byte (checked to be JSON once).

use rusqlite::types::ValueRef;
use rusqlite::Row;
use uuid::Uuid;

use super::parse_ts;
use crate::envelope::TraceContext;
use crate::store::feed::{aggregate_key, raw_json, FeedRow, RawEvent, Unreadable};

/// The columns `feed_row` expects, in order.
pub(super) const FEED_COLS: &str = "position, event_id, aggregate_type, aggregate_id, sequence_number, event_type, event_version, payload, causation_id, correlation_id, timestamp, trace_parent, trace_state";

fn text(v: ValueRef<'_>) -> Option<String> {
    match v {
        ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
        ValueRef::Null => None,
    }
}

fn int(v: ValueRef<'_>) -> Option<i64> {
    match v {
        ValueRef::Integer(i) => Some(i),
        _ => None,
    }
}

/// Decodes one row selected with [`FEED_COLS`].
pub(super) fn feed_row(r: &Row<'_>) -> FeedRow {
    let col = |i: usize| r.get_ref(i).unwrap_or(ValueRef::Null);
    let position = int(col(0)).unwrap_or(0);
    let agg_text = text(col(3)).unwrap_or_default();
    match decode(r, position) {
        Ok(e) => FeedRow::Event(e),
        Err(error) => FeedRow::Unreadable(Unreadable {
            position,
            aggregate_key: aggregate_key(&agg_text),
            sequence: int(col(4)),
            event_id: text(col(1)),
            event_type: text(col(5)),
            error,
        }),
    }
}

fn decode(r: &Row<'_>, position: i64) -> Result<RawEvent, String> {
    let col = |i: usize| r.get_ref(i).unwrap_or(ValueRef::Null);
    let req_text = |i: usize, name: &str| text(col(i)).ok_or_else(|| format!("column {name} is null"));
    let uuid = |i: usize, name: &str| -> Result<Uuid, String> {
        let s = req_text(i, name)?;
        Uuid::parse_str(s.trim()).map_err(|e| format!("column {name} is not a UUID ({s:?}): {e}"))
    };
    let req_int = |i: usize, name: &str| int(col(i)).ok_or_else(|| format!("column {name} is not an integer"));
    let aggregate_id = uuid(3, "aggregate_id")?;
    let causation_id = match text(col(8)) {
        None => None,
        Some(s) => {
            Some(Uuid::parse_str(s.trim()).map_err(|e| format!("column causation_id is not a UUID ({s:?}): {e}"))?)
        }
    };
    let trace = match text(col(11)) {
        None => None,
        Some(tp) => {
            Some(TraceContext::parse(&tp, text(col(12)).as_deref()).map_err(|e| format!("column trace_parent: {e}"))?)
        }
    };
    let timestamp = parse_ts(&req_text(10, "timestamp")?).map_err(|e| e.to_string())?;
    Ok(RawEvent {
        position,
        event_id: uuid(1, "event_id")?,
        aggregate_type: req_text(2, "aggregate_type")?,
        aggregate_key: aggregate_id.to_string().into(),
        aggregate_id,
        sequence: req_int(4, "sequence_number")?,
        event_type: req_text(5, "event_type")?,
        schema_version: i32::try_from(req_int(6, "event_version")?)
            .map_err(|_| "column event_version is out of range".to_string())?,
        payload: raw_json(req_text(7, "payload")?)?,
        causation_id,
        correlation_id: uuid(9, "correlation_id")?,
        timestamp,
        trace,
    })
}
