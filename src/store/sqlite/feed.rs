//! Reading outbox rows for the feed, row by row.
//!
//! Guarantee: every column is read as a raw SQLite value and checked here;
//! a row that is not a readable event becomes `FeedRow::Unreadable` with
//! its position, aggregate id, sequence and event id as stored (so the relay
//! parks the right aggregate), and never fails the page it is on. The
//! payload text is kept byte for byte (checked to be JSON once); text or
//! BLOB bytes that are not UTF-8 make the row unreadable, never replaced.

use rusqlite::types::ValueRef;
use rusqlite::Row;
use std::borrow::Cow;
use uuid::Uuid;

use super::parse_ts;
use crate::envelope::TraceContext;
use crate::store::feed::{aggregate_key, raw_json, uuid_key, FeedRow, RawEvent, Unreadable};

/// The columns `feed_row` expects, in order.
pub(super) const FEED_COLS: &str = "position, event_id, aggregate_type, aggregate_id, sequence_number, event_type, event_version, payload, causation_id, correlation_id, timestamp, trace_parent, trace_state";

/// Column `name` as text (None if null), borrowed: no copy. Bytes that are
/// not UTF-8 (a foreign writer's BLOB or TEXT) make the row unreadable,
/// never replaced by U+FFFD: what is published is what is stored.
fn text_ref<'a>(v: ValueRef<'a>, name: &str) -> Result<Option<Cow<'a, str>>, String> {
    match v {
        ValueRef::Text(t) | ValueRef::Blob(t) => std::str::from_utf8(t)
            .map(|s| Some(Cow::Borrowed(s)))
            .map_err(|e| format!("column {name} is not UTF-8 text: {e}")),
        ValueRef::Integer(i) => Ok(Some(Cow::Owned(i.to_string()))),
        ValueRef::Real(f) => Ok(Some(Cow::Owned(f.to_string()))),
        ValueRef::Null => Ok(None),
    }
}

fn text(v: ValueRef<'_>, name: &str) -> Result<Option<String>, String> {
    text_ref(v, name).map(|t| t.map(Cow::into_owned))
}

/// A column of an unreadable row, as reported (lossy: for the operator only).
fn shown(v: ValueRef<'_>) -> Option<String> {
    match v {
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
        v => text(v, "").ok().flatten(),
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
    match decode(r, position) {
        Ok(e) => FeedRow::Event(e),
        Err(error) => FeedRow::Unreadable(Unreadable {
            position,
            aggregate_key: aggregate_key(&shown(col(3)).unwrap_or_default()),
            sequence: int(col(4)),
            event_id: shown(col(1)),
            event_type: shown(col(5)),
            aggregate_type: shown(col(2)),
            error,
        }),
    }
}

fn decode(r: &Row<'_>, position: i64) -> Result<RawEvent, String> {
    let col = |i: usize| r.get_ref(i).unwrap_or(ValueRef::Null);
    let req_ref = |i: usize, name: &str| text_ref(col(i), name)?.ok_or_else(|| format!("column {name} is null"));
    let req_text = |i: usize, name: &str| req_ref(i, name).map(Cow::into_owned);
    let uuid = |i: usize, name: &str| -> Result<Uuid, String> {
        let s = req_ref(i, name)?;
        Uuid::parse_str(s.trim()).map_err(|e| format!("column {name} is not a UUID ({s:?}): {e}"))
    };
    let req_int = |i: usize, name: &str| int(col(i)).ok_or_else(|| format!("column {name} is not an integer"));
    let aggregate_id = uuid(3, "aggregate_id")?;
    let causation_id = match text_ref(col(8), "causation_id")? {
        None => None,
        Some(s) => {
            Some(Uuid::parse_str(s.trim()).map_err(|e| format!("column causation_id is not a UUID ({s:?}): {e}"))?)
        }
    };
    let trace = match text(col(11), "trace_parent")? {
        None => None,
        Some(tp) => Some(
            TraceContext::parse(&tp, text(col(12), "trace_state")?.as_deref())
                .map_err(|e| format!("column trace_parent: {e}"))?,
        ),
    };
    let timestamp = parse_ts(&req_ref(10, "timestamp")?).map_err(|e| e.to_string())?;
    Ok(RawEvent {
        position,
        event_id: uuid(1, "event_id")?,
        aggregate_type: req_text(2, "aggregate_type")?,
        aggregate_key: uuid_key(&aggregate_id),
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
