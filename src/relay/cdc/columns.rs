//! CDC rows of `event_store` -> envelopes.
//!
//! Guarantee: only inserts of event rows become envelopes; a static-only row
//! (the compare-and-set of `version`), deletes, updates and pre/post-images
//! are `Ok(None)`; a row that should be an event but lacks a column, has a
//! null or mistyped one, or a payload that is not JSON is a [`CdcError`]
//! naming the row, never a guessed value.

use chrono::{DateTime, Utc};
use scylla::value::CqlValue;
use scylla_cdc::consumer::{CDCRow, OperationType};
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

use super::CdcError;
use crate::envelope::EventEnvelope;

/// Column values of one CDC row of `event_store`, by base-table column name:
/// `None` = the row has no such column, `Some(None)` = the value is null.
pub trait CdcColumns {
    fn column(&self, name: &str) -> Option<Option<&CqlValue>>;
}

impl CdcColumns for CDCRow<'_> {
    fn column(&self, name: &str) -> Option<Option<&CqlValue>> {
        // get_value panics on unknown columns, hence the check.
        self.column_exists(name).then(|| self.get_value(name).as_ref())
    }
}

impl CdcColumns for BTreeMap<String, Option<CqlValue>> {
    fn column(&self, name: &str) -> Option<Option<&CqlValue>> {
        self.get(name).map(Option::as_ref)
    }
}

impl CdcColumns for HashMap<String, Option<CqlValue>> {
    fn column(&self, name: &str) -> Option<Option<&CqlValue>> {
        self.get(name).map(Option::as_ref)
    }
}

/// Every column an event row has (`version` is static and not needed).
const EVENT_COLUMNS: [&str; 10] = [
    "aggregate_id",
    "sequence_number",
    "event_id",
    "aggregate_type",
    "event_type",
    "event_version",
    "payload",
    "causation_id",
    "correlation_id",
    "timestamp",
];

struct Cols<'a, C: CdcColumns + ?Sized> {
    cols: &'a C,
    row: String,
}

impl<'a, C: CdcColumns + ?Sized> Cols<'a, C> {
    fn opt(&self, column: &'static str) -> Result<Option<&'a CqlValue>, CdcError> {
        self.cols.column(column).ok_or(CdcError::MissingColumn(column))
    }

    fn req(&self, column: &'static str) -> Result<&'a CqlValue, CdcError> {
        self.opt(column)?.ok_or_else(|| CdcError::NullColumn { row: self.row.clone(), column })
    }

    fn wrong(&self, column: &'static str, expected: &'static str, v: &CqlValue) -> CdcError {
        CdcError::WrongType { row: self.row.clone(), column, expected, found: format!("{v:?}") }
    }

    fn uuid(&self, column: &'static str, v: &CqlValue) -> Result<Uuid, CdcError> {
        match v {
            CqlValue::Uuid(u) => Ok(*u),
            CqlValue::Timeuuid(u) => Ok(Uuid::from(*u)),
            other => Err(self.wrong(column, "uuid", other)),
        }
    }

    fn text(&self, column: &'static str) -> Result<String, CdcError> {
        match self.req(column)? {
            CqlValue::Text(s) | CqlValue::Ascii(s) => Ok(s.clone()),
            other => Err(self.wrong(column, "text", other)),
        }
    }
}

/// Builds the envelope of one event-row insert from its column values.
/// `Ok(None)` for a row without an event (the static-only row that sets
/// `version`, which has no `sequence_number`); an error when a column of a
/// row with a sequence is missing, null (`event_id` included) or of the
/// wrong type, or the payload is not JSON.
pub fn envelope_from_columns<C: CdcColumns + ?Sized>(cols: &C) -> Result<Option<EventEnvelope>, CdcError> {
    for c in EVENT_COLUMNS {
        if cols.column(c).is_none() {
            return Err(CdcError::MissingColumn(c));
        }
    }
    let mut c = Cols { cols, row: "event_store".into() };
    let aggregate_id = c.uuid("aggregate_id", c.req("aggregate_id")?)?;
    c.row = format!("{aggregate_id}");
    let sequence = match c.opt("sequence_number")? {
        None => return Ok(None), // static row: the compare-and-set of `version`
        Some(CqlValue::BigInt(n)) => *n,
        Some(other) => return Err(c.wrong("sequence_number", "bigint", other)),
    };
    c.row = format!("{aggregate_id}#{sequence}");
    // An event row without its id is damaged (every append writes one):
    // an error naming it, never a silent skip of the event.
    let event_id = c.uuid("event_id", c.req("event_id")?)?;
    let schema_version = match c.req("event_version")? {
        CqlValue::Int(n) => *n,
        other => return Err(c.wrong("event_version", "int", other)),
    };
    let payload_text = c.text("payload")?;
    let payload = serde_json::from_str(&payload_text)
        .map_err(|e| CdcError::Payload { row: c.row.clone(), error: e.to_string() })?;
    let causation_id = match c.opt("causation_id")? {
        None => None,
        Some(v) => Some(c.uuid("causation_id", v)?),
    };
    let correlation_id = c.uuid("correlation_id", c.req("correlation_id")?)?;
    let timestamp: DateTime<Utc> = match c.req("timestamp")? {
        CqlValue::Timestamp(t) => DateTime::from_timestamp_millis(t.0)
            .ok_or_else(|| c.wrong("timestamp", "timestamp in range", &CqlValue::BigInt(t.0)))?,
        other => return Err(c.wrong("timestamp", "timestamp", other)),
    };
    Ok(Some(EventEnvelope {
        event_id,
        aggregate_type: c.text("aggregate_type")?,
        aggregate_id,
        sequence,
        event_type: c.text("event_type")?,
        schema_version,
        payload,
        causation_id,
        correlation_id,
        timestamp,
        trace: trace_of(&c)?,
    }))
}

/// The W3C trace context columns, when the table has them and they are set.
fn trace_of<C: CdcColumns + ?Sized>(c: &Cols<'_, C>) -> Result<Option<crate::envelope::TraceContext>, CdcError> {
    let tp = match c.cols.column("trace_parent") {
        Some(Some(CqlValue::Text(s))) | Some(Some(CqlValue::Ascii(s))) => s.clone(),
        _ => return Ok(None),
    };
    let ts = match c.cols.column("trace_state") {
        Some(Some(CqlValue::Text(s))) | Some(Some(CqlValue::Ascii(s))) => Some(s.clone()),
        _ => None,
    };
    crate::envelope::TraceContext::parse(&tp, ts.as_deref())
        .map(Some)
        .map_err(|e| CdcError::Payload { row: c.row.clone(), error: e.message })
}

/// The envelope of a CDC row of `event_store`, or `Ok(None)` for rows that
/// are not inserts of an event (static-only `version` updates, deletes,
/// pre/post-images, updates).
pub fn envelope_from_cdc_row(row: &CDCRow<'_>) -> Result<Option<EventEnvelope>, CdcError> {
    if row.operation != OperationType::RowInsert {
        return Ok(None);
    }
    envelope_from_columns(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use scylla::frame::response::result::NativeType;

    fn envelope() -> EventEnvelope {
        EventEnvelope {
            event_id: Uuid::now_v7(),
            aggregate_type: "order".into(),
            aggregate_id: Uuid::now_v7(),
            sequence: 3,
            event_type: "OrderCancelled".into(),
            schema_version: 2,
            payload: serde_json::json!({ "reason": "changed mind", "n": [1, 2] }),
            causation_id: Some(Uuid::now_v7()),
            correlation_id: Uuid::now_v7(),
            timestamp: crate::envelope::now_millis(),
            trace: None,
        }
    }

    use crate::relay::cdc::testkit::{cdc_row, event_row_columns as columns_of, static_row_columns, timeuuid_at};

    fn map_of(cols: Vec<(&'static str, NativeType, Option<CqlValue>)>) -> BTreeMap<String, Option<CqlValue>> {
        cols.into_iter().map(|(n, _, v)| (n.to_string(), v)).collect()
    }

    #[test]
    fn valid_row_builds_the_envelope() {
        let e = envelope();
        assert_eq!(envelope_from_columns(&map_of(columns_of(&e))).unwrap(), Some(e.clone()));
        let mut no_causation = e.clone();
        no_causation.causation_id = None;
        assert_eq!(envelope_from_columns(&map_of(columns_of(&no_causation))).unwrap(), Some(no_causation));
    }

    #[test]
    fn static_only_row_is_skipped() {
        let e = envelope();
        let mut m: BTreeMap<String, Option<CqlValue>> = map_of(columns_of(&e)).into_keys().map(|k| (k, None)).collect();
        m.insert("aggregate_id".into(), Some(CqlValue::Uuid(e.aggregate_id)));
        m.insert("version".into(), Some(CqlValue::BigInt(3)));
        assert_eq!(envelope_from_columns(&m).unwrap(), None);
    }

    #[test]
    fn missing_null_or_bad_columns_are_errors() {
        let e = envelope();
        let mut m = map_of(columns_of(&e));
        m.remove("payload");
        assert!(matches!(envelope_from_columns(&m), Err(CdcError::MissingColumn("payload"))));

        let mut m = map_of(columns_of(&e));
        m.insert("correlation_id".into(), None);
        let err = envelope_from_columns(&m).unwrap_err();
        assert!(matches!(err, CdcError::NullColumn { column: "correlation_id", .. }), "{err:?}");
        assert!(err.to_string().contains(&format!("{}#3", e.aggregate_id)), "{err}");

        let mut m = map_of(columns_of(&e));
        m.insert("payload".into(), Some(CqlValue::Text("{not json".into())));
        assert!(matches!(envelope_from_columns(&m), Err(CdcError::Payload { .. })));

        // An event row (it has a sequence) without its id is damaged: an
        // error naming it, so it is parked in its turn, never skipped.
        let mut m = map_of(columns_of(&e));
        m.insert("event_id".into(), None);
        let err = envelope_from_columns(&m).unwrap_err();
        assert!(matches!(err, CdcError::NullColumn { column: "event_id", .. }), "{err:?}");
        assert!(err.to_string().contains(&format!("{}#3", e.aggregate_id)), "{err}");
        let mut cols = columns_of(&e);
        cols[3].2 = None;
        let err = with_cdc_row(OperationType::RowInsert, cols, |r| envelope_from_cdc_row(r).unwrap_err());
        assert!(matches!(err, CdcError::NullColumn { column: "event_id", .. }), "{err:?}");

        let mut m = map_of(columns_of(&e));
        m.insert("event_version".into(), Some(CqlValue::Text("2".into())));
        assert!(matches!(envelope_from_columns(&m), Err(CdcError::WrongType { column: "event_version", .. })));
    }

    /// A real `CDCRow` as scylla-cdc builds it from a log-table row.
    fn with_cdc_row<T>(
        op: OperationType,
        cols: Vec<(&'static str, NativeType, Option<CqlValue>)>,
        f: impl FnOnce(&CDCRow<'_>) -> T,
    ) -> T {
        cdc_row(op, &[1, 2, 3], timeuuid_at(1_700_000_000_000, 1), 1, true, cols, f)
    }

    #[test]
    fn cdc_rows_insert_is_converted_others_skipped() {
        let e = envelope();
        let got = with_cdc_row(OperationType::RowInsert, columns_of(&e), |r| envelope_from_cdc_row(r).unwrap());
        assert_eq!(got, Some(e.clone()));
        // The compare-and-set of `version`: an update of the static row.
        let static_cols = static_row_columns(e.aggregate_id, 3);
        assert_eq!(
            with_cdc_row(OperationType::RowUpdate, static_cols.clone(), |r| envelope_from_cdc_row(r).unwrap()),
            None
        );
        assert_eq!(with_cdc_row(OperationType::RowInsert, static_cols, |r| envelope_from_cdc_row(r).unwrap()), None);
        for op in [
            OperationType::RowDelete,
            OperationType::PartitionDelete,
            OperationType::PreImage,
            OperationType::PostImage,
            OperationType::RowUpdate,
        ] {
            assert_eq!(with_cdc_row(op, columns_of(&e), |r| envelope_from_cdc_row(r).unwrap()), None);
        }
        // A table without the event columns is an error, not a panic.
        let err = with_cdc_row(
            OperationType::RowInsert,
            vec![("aggregate_id", NativeType::Uuid, Some(CqlValue::Uuid(e.aggregate_id)))],
            |r| envelope_from_cdc_row(r).unwrap_err(),
        );
        assert!(matches!(err, CdcError::MissingColumn(_)), "{err:?}");
    }
}
