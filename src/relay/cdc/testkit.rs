//! Test-only helpers of the CDC pieces: a fresh keyspace with the outboxd
//! schema on the Cassandra of `CASSANDRA_URI` (or Scylla of `SCYLLA_URI`),
//! and the lease row the lease code will own.
//!
//! Guarantee: every call gets its own keyspace; without a server the caller
//! gets `None` and a "SKIPPED" line saying what to set.

use scylla::client::session::Session;
use std::sync::Arc;
use uuid::Uuid;

use crate::config::CqlConfig;
use crate::store::cql::CqlStore;
use crate::store::EventStore;

/// A migrated store in a fresh keyspace, or `None` (skip) without a server.
pub async fn live_store(what: &str) -> Option<Arc<CqlStore>> {
    let uri = crate::store::cql::connect::test_server_uri(what)?;
    let cfg = CqlConfig { uri, keyspace: format!("k_{}", Uuid::now_v7().simple()), ..CqlConfig::default() };
    let store = CqlStore::connect(&cfg).await.expect("connect to the CQL server");
    // DDL may time out on a loaded single-node test server; it is idempotent.
    for attempt in 1..=3 {
        match store.migrate().await {
            Ok(()) => return Some(store),
            Err(e) if attempt < 3 => eprintln!("{what}: outboxd schema failed (attempt {attempt}), retrying: {e}"),
            Err(e) => panic!("{what}: outboxd schema: {e}"),
        }
    }
    unreachable!()
}

/// Moves the lease epoch of `name` from `from` to `to` with a compare-and-set
/// (what a takeover does; the lease code owns the real one).
pub async fn set_epoch(session: &Session, keyspace: &str, name: &str, from: Option<i64>, to: i64) {
    let res = match from {
        None => {
            session
                .query_unpaged(
                    format!("UPDATE {keyspace}.relay_leases SET epoch = ? WHERE name = ? IF epoch = null"),
                    (to, name),
                )
                .await
        }
        Some(f) => {
            session
                .query_unpaged(
                    format!("UPDATE {keyspace}.relay_leases SET epoch = ? WHERE name = ? IF epoch = ?"),
                    (to, name, f),
                )
                .await
        }
    };
    let rows = res.expect("set the lease epoch").into_rows_result().expect("LWT answer");
    let (applied,) = rows.first_row::<(bool,)>().expect("[applied] first");
    assert!(applied, "lease epoch of {name} was not {from:?}");
}

/// A version-1 (time) UUID at `ms` since the epoch plus `extra_100ns` ticks,
/// like Scylla's `cdc$time`.
pub fn timeuuid_at(ms: i64, extra_100ns: u64) -> uuid::Uuid {
    let ts = (ms as u64) * 10_000 + extra_100ns + 0x01B2_1DD2_1381_4000;
    let hi = (((ts >> 48) & 0x0fff) as u16) | 0x1000;
    uuid::Uuid::from_fields(
        (ts & 0xffff_ffff) as u32,
        ((ts >> 32) & 0xffff) as u16,
        hi,
        &[0x80, 0x01, 2, 3, 4, 5, 6, 7],
    )
}

/// A base-table column of a CDC row: name, type, value.
pub type Col = (&'static str, scylla::frame::response::result::NativeType, Option<scylla::value::CqlValue>);

/// The base-table columns of the CDC row that inserts `e`.
pub fn event_row_columns(e: &crate::envelope::EventEnvelope) -> Vec<Col> {
    use scylla::frame::response::result::NativeType;
    use scylla::value::{CqlTimestamp, CqlValue};
    vec![
        ("aggregate_id", NativeType::Uuid, Some(CqlValue::Uuid(e.aggregate_id))),
        ("sequence_number", NativeType::BigInt, Some(CqlValue::BigInt(e.sequence))),
        ("version", NativeType::BigInt, None),
        ("event_id", NativeType::Uuid, Some(CqlValue::Uuid(e.event_id))),
        ("aggregate_type", NativeType::Text, Some(CqlValue::Text(e.aggregate_type.clone()))),
        ("event_type", NativeType::Text, Some(CqlValue::Text(e.event_type.clone()))),
        ("event_version", NativeType::Int, Some(CqlValue::Int(e.schema_version))),
        ("payload", NativeType::Text, Some(CqlValue::Text(e.payload.to_string()))),
        ("causation_id", NativeType::Uuid, e.causation_id.map(CqlValue::Uuid)),
        ("correlation_id", NativeType::Uuid, Some(CqlValue::Uuid(e.correlation_id))),
        ("timestamp", NativeType::Timestamp, Some(CqlValue::Timestamp(CqlTimestamp(e.timestamp.timestamp_millis())))),
    ]
}

/// The base-table columns of the static `version` update of an append.
pub fn static_row_columns(aggregate_id: uuid::Uuid, version: i64) -> Vec<Col> {
    use scylla::value::CqlValue;
    let mut cols: Vec<Col> = event_row_columns(&crate::envelope::EventEnvelope {
        event_id: uuid::Uuid::nil(),
        aggregate_type: String::new(),
        aggregate_id,
        sequence: 0,
        event_type: String::new(),
        schema_version: 0,
        payload: serde_json::Value::Null,
        causation_id: None,
        correlation_id: uuid::Uuid::nil(),
        timestamp: chrono::DateTime::UNIX_EPOCH,
        trace: None,
    })
    .into_iter()
    .map(|(n, t, _)| (n, t, None))
    .collect();
    cols[0].2 = Some(CqlValue::Uuid(aggregate_id));
    cols[2].2 = Some(CqlValue::BigInt(version));
    cols
}

/// A real scylla-cdc `CDCRow` (built as its stream reader builds one from a
/// page of the log table), handed to `f`.
pub fn cdc_row<T>(
    op: scylla_cdc::consumer::OperationType,
    stream: &[u8],
    time: uuid::Uuid,
    batch_seq_no: i32,
    end_of_batch: bool,
    cols: Vec<Col>,
    f: impl FnOnce(&scylla_cdc::consumer::CDCRow<'_>) -> T,
) -> T {
    let (schema, row) = cdc_row_parts(op, stream, time, batch_seq_no, end_of_batch, cols);
    let row = scylla_cdc::consumer::CDCRow::from_row(row, &schema);
    f(&row)
}

/// The schema and the raw row of [`cdc_row`]: `CDCRow::from_row(row, &schema)`
/// gives an owned row to hand to a consumer.
pub fn cdc_row_parts(
    op: scylla_cdc::consumer::OperationType,
    stream: &[u8],
    time: uuid::Uuid,
    batch_seq_no: i32,
    end_of_batch: bool,
    cols: Vec<Col>,
) -> (scylla_cdc::consumer::CDCRowSchema, scylla::value::Row) {
    use scylla::frame::response::result::{ColumnSpec, ColumnType, NativeType, TableSpec};
    use scylla::response::query_result::ColumnSpecs;
    use scylla::value::{CqlTimeuuid, CqlValue, Row};
    let table = || TableSpec::borrowed("ks", "event_store_scylla_cdc_log");
    let mut specs = vec![
        ColumnSpec::borrowed("cdc$stream_id", ColumnType::Native(NativeType::Blob), table()),
        ColumnSpec::borrowed("cdc$time", ColumnType::Native(NativeType::Timeuuid), table()),
        ColumnSpec::borrowed("cdc$batch_seq_no", ColumnType::Native(NativeType::Int), table()),
        ColumnSpec::borrowed("cdc$end_of_batch", ColumnType::Native(NativeType::Boolean), table()),
        ColumnSpec::borrowed("cdc$operation", ColumnType::Native(NativeType::TinyInt), table()),
        ColumnSpec::borrowed("cdc$ttl", ColumnType::Native(NativeType::BigInt), table()),
    ];
    let mut values = vec![
        Some(CqlValue::Blob(stream.to_vec())),
        Some(CqlValue::Timeuuid(CqlTimeuuid::from(time))),
        Some(CqlValue::Int(batch_seq_no)),
        end_of_batch.then_some(CqlValue::Boolean(true)),
        Some(CqlValue::TinyInt(op as i8)),
        None,
    ];
    for (name, typ, v) in cols {
        specs.push(ColumnSpec::borrowed(name, ColumnType::Native(typ), table()));
        values.push(v);
    }
    (scylla_cdc::consumer::CDCRowSchema::new(ColumnSpecs::new(&specs)), Row { columns: values })
}

pub(crate) use crate::envelope::test_events as events;
