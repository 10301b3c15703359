//! Scylla CDC feed (scylla-cdc): CDC rows of `event_store` -> envelopes -> `Deliverer`.
//!
//! The CQL backend has no global commit order, so its outbox feed is the
//! Scylla CDC log of `event_store` (`event_store_scylla_cdc_log`, created by
//! `CqlStore::migrate` on ScyllaDB). This module is a thin adapter: it turns
//! each CDC row that inserts an event into an [`EventEnvelope`] and hands it
//! to the shared [`Deliverer`] (retry, circuit breaker, DLQ live there, once).
//!
//! Guarantees:
//! - At-least-once, never past an unconfirmed event. scylla-cdc reads the log
//!   window by window; a stream group's in-memory checkpoint moves to the end
//!   of a window only after `consume_cdc` returned `Ok` for every row of it,
//!   and the `TableBackedCheckpointSaver` persists (every
//!   `checkpoint_interval_ms`) only that value. `consume_cdc` returns `Ok`
//!   only once the event is `Delivered` (broker confirmed, acks=all) or
//!   `DeadLettered` (durably stored as permanent failure). While the broker is
//!   down, `Deliverer::deliver` keeps retrying behind the breaker, so
//!   `consume_cdc` blocks and the checkpoint cannot move past the event. On
//!   shutdown `consume_cdc` returns an error, the reader stops without saving
//!   progress past it, and a restart (`should_load_progress(true)`) re-reads
//!   from the last saved window start: at most the tail since then is sent
//!   again, with the same `ce_id`.
//! - Order per aggregate: one aggregate is one partition, i.e. one CDC stream
//!   (per generation); each stream group has one consumer that delivers its
//!   rows one at a time in log order (`cdc$time`, `cdc$batch_seq_no`), and
//!   scylla-cdc finishes a generation before starting the next. Throughput per
//!   stream group is therefore one broker round trip per event.
//! - Only inserts of event rows are published: static-only updates of
//!   `version` (the compare-and-set of each append), deletes, pre/post-images
//!   are skipped.
//!
//! Latency floor: a row becomes readable `safety_interval_ms` after it was
//! written; once caught up, each stream group queries
//! `[last window end, now - safety_interval)` and then sleeps
//! `sleep_interval_ms`. So an event reaches Kafka about
//! `safety_interval + sleep_interval` (+ query and broker time) after its
//! append, up to `window_size_ms` more while the reader is catching up (a
//! window never spans more than `window_size_ms`).
//!
//! Where reading starts: scylla-cdc resumes each stream from its saved
//! checkpoint but never before the start timestamp we give it, which is
//! `max(now - 24 h, cdc:origin - 1 min)`. 24 h is Scylla's default CDC log
//! TTL (older rows are gone anyway); `cdc:origin` is the time of the first
//! `migrate` (row in `checkpoints`), before which `event_store` held nothing.
//! A relay that starts for the first time therefore publishes every event
//! still in the log, not only the ones written after it started.
//!
//! Limitation: a CDC row of `event_store` that cannot be turned into an
//! envelope (e.g. a payload that is not JSON, written by hand) stops the
//! reader with [`CdcError`] naming the row, instead of being skipped silently.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use scylla::client::session::Session;
use scylla::value::CqlValue;
use scylla_cdc::checkpoints::TableBackedCheckpointSaver;
use scylla_cdc::consumer::{CDCRow, Consumer, ConsumerFactory, OperationType};
use scylla_cdc::log_reader::{CDCLogReader, CDCLogReaderBuilder};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::config::CdcConfig;
use crate::envelope::EventEnvelope;
use crate::relay::deliver::{Deliverer, Retried};
use crate::shutdown::Shutdown;
use crate::store::cql::{cdc_log_exists, CDC_ORIGIN_CHECKPOINT};
use crate::store::StoreError;

/// The base table whose CDC log is the feed.
pub const EVENT_TABLE: &str = "event_store";
/// scylla-cdc's progress table (in the store's keyspace).
pub const CDC_CHECKPOINT_TABLE: &str = "cdc_checkpoints";
/// Scylla's default CDC log TTL: rows older than this are gone.
pub const CDC_LOG_TTL: Duration = Duration::from_secs(24 * 3600);
/// Clock-skew margin before `cdc:origin`.
const ORIGIN_MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CdcError {
    /// The server has no CDC log for the event table (Apache Cassandra, or
    /// ScyllaDB with CDC off).
    #[error("CDC feed needs ScyllaDB with cdc enabled on {keyspace}.event_store (no {keyspace}.event_store_scylla_cdc_log table; Apache Cassandra has no Scylla CDC, on ScyllaDB run `outboxd schema`)")]
    Unavailable { keyspace: String },
    /// The CDC row's table has no such column (not an outboxd event table?).
    #[error("CDC row of event_store has no column {0:?}; is this the outboxd event_store table?")]
    MissingColumn(&'static str),
    /// A column an event row always has is null.
    #[error("CDC row {row}: column {column} is null")]
    NullColumn { row: String, column: &'static str },
    #[error("CDC row {row}: column {column} should be {expected}, found {found}")]
    WrongType { row: String, column: &'static str, expected: &'static str, found: String },
    #[error("CDC row {row}: payload is not JSON: {error}")]
    Payload { row: String, error: String },
    #[error("CDC reader: {0}")]
    Store(#[from] StoreError),
    /// scylla-cdc failed (building the reader, reading the log, checkpoints).
    #[error("scylla-cdc reader failed: {0}")]
    Reader(String),
    /// Shutdown interrupted a delivery; progress was not saved past it.
    #[error("CDC consumer stopped by shutdown before the event was confirmed")]
    Shutdown,
}

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
/// `version`); an error when a column is missing, null or of the wrong type,
/// or the payload is not JSON.
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
    let event_id = match c.opt("event_id")? {
        None => return Ok(None), // a partial update of an event row, not an insert
        Some(v) => c.uuid("event_id", v)?,
    };
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
    }))
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

/// One scylla-cdc consumer (one per stream group): delivers each event and
/// returns only when it is confirmed or dead-lettered.
pub struct OutboxConsumer {
    deliverer: Arc<Deliverer>,
    shutdown: Shutdown,
}

impl OutboxConsumer {
    pub fn new(deliverer: Arc<Deliverer>, shutdown: Shutdown) -> Self {
        OutboxConsumer { deliverer, shutdown }
    }
}

/// The row filtering and error policy every consumer of `event_store`'s CDC
/// log shares: `None` for rows that are not event inserts, an error (which
/// stops the reader) for an undecodable row or after shutdown.
fn event_of_row(row: &CDCRow<'_>, shutdown: &Shutdown) -> Result<Option<EventEnvelope>, CdcError> {
    let env = match envelope_from_cdc_row(row) {
        Ok(Some(env)) => env,
        Ok(None) => return Ok(None),
        Err(e) => {
            tracing::error!(error = %e, "undecodable CDC row of event_store; stopping the CDC reader");
            return Err(e);
        }
    };
    if shutdown.is_shutdown() {
        return Err(CdcError::Shutdown);
    }
    Ok(Some(env))
}

#[async_trait]
impl Consumer for OutboxConsumer {
    async fn consume_cdc(&mut self, row: CDCRow<'_>) -> anyhow::Result<()> {
        let Some(env) = event_of_row(&row, &self.shutdown)? else { return Ok(()) };
        match self.deliverer.deliver(&env, None, &mut self.shutdown).await {
            Retried::Delivered | Retried::DeadLettered => Ok(()),
            Retried::Shutdown => Err(CdcError::Shutdown.into()),
        }
    }
}

pub struct OutboxConsumerFactory {
    deliverer: Arc<Deliverer>,
    shutdown: Shutdown,
}

impl OutboxConsumerFactory {
    pub fn new(deliverer: Arc<Deliverer>, shutdown: Shutdown) -> Self {
        OutboxConsumerFactory { deliverer, shutdown }
    }
}

#[async_trait]
impl ConsumerFactory for OutboxConsumerFactory {
    async fn new_consumer(&self) -> Box<dyn Consumer> {
        Box::new(OutboxConsumer::new(self.deliverer.clone(), self.shutdown.clone()))
    }
}

/// Where a second CDC consumer (the read-model projection on CQL) sends each
/// event. `handle` returns `Ok` only once the event is durably handled (the
/// reader's checkpoint may then move past it); `Err(CdcError::Shutdown)` on
/// shutdown, any other error stops the reader.
#[async_trait]
pub trait EnvelopeSink: Send + Sync + 'static {
    async fn handle(&self, env: EventEnvelope, shutdown: &mut Shutdown) -> Result<(), CdcError>;
}

/// scylla-cdc consumer that hands each event row to an [`EnvelopeSink`]
/// (same row filtering and error policy as [`OutboxConsumer`]).
pub struct SinkConsumer<S: EnvelopeSink> {
    sink: Arc<S>,
    shutdown: Shutdown,
}

#[async_trait]
impl<S: EnvelopeSink> Consumer for SinkConsumer<S> {
    async fn consume_cdc(&mut self, row: CDCRow<'_>) -> anyhow::Result<()> {
        let Some(env) = event_of_row(&row, &self.shutdown)? else { return Ok(()) };
        self.sink.handle(env, &mut self.shutdown).await.map_err(Into::into)
    }
}

pub struct SinkConsumerFactory<S: EnvelopeSink> {
    sink: Arc<S>,
    shutdown: Shutdown,
}

impl<S: EnvelopeSink> SinkConsumerFactory<S> {
    pub fn new(sink: Arc<S>, shutdown: Shutdown) -> Self {
        SinkConsumerFactory { sink, shutdown }
    }
}

#[async_trait]
impl<S: EnvelopeSink> ConsumerFactory for SinkConsumerFactory<S> {
    async fn new_consumer(&self) -> Box<dyn Consumer> {
        Box::new(SinkConsumer { sink: self.sink.clone(), shutdown: self.shutdown.clone() })
    }
}

/// Resolves when the reader ends: `Ok` after `CDCLogReader::stop` or
/// shutdown, `Err` when scylla-cdc failed (the relay should restart it).
pub type CdcReaderHandle = JoinHandle<Result<(), CdcError>>;

fn is_shutdown(e: &anyhow::Error) -> bool {
    e.chain().any(|c| matches!(c.downcast_ref::<CdcError>(), Some(CdcError::Shutdown)))
}

/// Where a reader starts when a stream has no saved progress (see module doc).
async fn start_timestamp(session: &Session, keyspace: &str) -> Duration {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let floor = now.saturating_sub(CDC_LOG_TTL);
    let origin = session
        .query_unpaged(
            format!("SELECT position FROM {keyspace}.checkpoints WHERE consumer = ?"),
            (CDC_ORIGIN_CHECKPOINT,),
        )
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.into_rows_result().map_err(|e| e.to_string()))
        .and_then(|r| r.maybe_first_row::<(Option<i64>,)>().map_err(|e| e.to_string()));
    match origin {
        Ok(Some((Some(ms),))) if ms > 0 => floor.max(Duration::from_millis(ms as u64).saturating_sub(ORIGIN_MARGIN)),
        Ok(_) => floor,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the CDC origin; reading the CDC log from {} h back", CDC_LOG_TTL.as_secs() / 3600);
            floor
        }
    }
}

/// Starts reading the CDC log of `<keyspace>.event_store` and delivering
/// every event through `deliverer`, resuming from scylla-cdc's saved progress
/// (`<keyspace>.cdc_checkpoints`, saved every `checkpoint_interval_ms`).
///
/// Stop it with `CDCLogReader::stop` (finishes the current window, saves
/// progress) or by firing `shutdown` (deliveries in flight are abandoned
/// unconfirmed and the reader is cancelled; progress stays at the last saved
/// window start). Await the handle in both cases.
pub async fn start_cdc_reader(
    session: Arc<Session>,
    keyspace: &str,
    cfg: &CdcConfig,
    deliverer: Arc<Deliverer>,
    shutdown: Shutdown,
) -> Result<(CDCLogReader, CdcReaderHandle), CdcError> {
    let factory = Arc::new(OutboxConsumerFactory::new(deliverer.clone(), shutdown.clone()));
    let (reader, remote) = build_reader(session, keyspace, cfg, CDC_CHECKPOINT_TABLE, factory).await?;
    deliverer.update(|s| s.running = true);
    let handle = spawn_reader(remote, shutdown, "CDC reader", move |res| {
        deliverer.update(|s| {
            s.running = false;
            if let Err(e) = res {
                s.last_error = Some(e.to_string());
            }
        })
    });
    Ok((reader, handle))
}

/// Like [`start_cdc_reader`], but every event goes to `sink` and progress is
/// kept in `<keyspace>.<checkpoint_table>`, so this reader is independent of
/// the relay's (used by the read-model projection on CQL).
pub async fn start_cdc_sink_reader<S: EnvelopeSink>(
    session: Arc<Session>,
    keyspace: &str,
    cfg: &CdcConfig,
    checkpoint_table: &str,
    sink: Arc<S>,
    shutdown: Shutdown,
) -> Result<(CDCLogReader, CdcReaderHandle), CdcError> {
    let factory = Arc::new(SinkConsumerFactory::new(sink, shutdown.clone()));
    let (reader, remote) = build_reader(session, keyspace, cfg, checkpoint_table, factory).await?;
    let handle = spawn_reader(remote, shutdown, "CDC projection reader", |_| {});
    Ok((reader, handle))
}

type RemoteReader = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

async fn build_reader(
    session: Arc<Session>,
    keyspace: &str,
    cfg: &CdcConfig,
    checkpoint_table: &str,
    factory: Arc<dyn ConsumerFactory>,
) -> Result<(CDCLogReader, RemoteReader), CdcError> {
    let keyspace = keyspace.to_ascii_lowercase();
    if !cdc_log_exists(&session, &keyspace).await? {
        return Err(CdcError::Unavailable { keyspace });
    }
    let saver = TableBackedCheckpointSaver::new_with_default_ttl(session.clone(), &keyspace, checkpoint_table)
        .await
        .map_err(|e| CdcError::Reader(format!("checkpoint table {keyspace}.{checkpoint_table}: {e:#}")))?;
    let start = start_timestamp(&session, &keyspace).await;
    let ms = |v: u64| Duration::from_millis(v.max(1));
    let (reader, remote) = CDCLogReaderBuilder::new()
        .session(session)
        .keyspace(&keyspace)
        .table_name(EVENT_TABLE)
        .start_timestamp(start)
        .window_size(ms(cfg.window_size_ms))
        .safety_interval(ms(cfg.safety_interval_ms))
        .sleep_interval(ms(cfg.sleep_interval_ms))
        .consumer_factory(factory)
        .checkpoint_saver(Arc::new(saver))
        .should_load_progress(true)
        .should_save_progress(true)
        .pause_between_saves(ms(cfg.checkpoint_interval_ms))
        .build()
        .await
        .map_err(|e| CdcError::Reader(format!("cannot start reading {keyspace}.{EVENT_TABLE}: {e:#}")))?;
    tracing::info!(%keyspace, checkpoint_table, start_ms = start.as_millis() as u64, "CDC reader started on {keyspace}.{EVENT_TABLE}");
    Ok((reader, Box::pin(remote)))
}

fn spawn_reader(
    remote: RemoteReader,
    shutdown: Shutdown,
    what: &'static str,
    on_end: impl FnOnce(&Result<(), CdcError>) + Send + 'static,
) -> CdcReaderHandle {
    let mut shutdown = shutdown;
    tokio::spawn(async move {
        let res = tokio::select! {
            r = remote => match r {
                Ok(()) => Ok(()),
                Err(e) if is_shutdown(&e) => Ok(()),
                Err(e) => Err(CdcError::Reader(format!("{e:#}"))),
            },
            // Dropping `remote` cancels the reader and its stream tasks.
            _ = shutdown.recv() => Ok(()),
        };
        on_end(&res);
        match &res {
            Ok(()) => tracing::info!("{what} stopped"),
            Err(e) => tracing::error!(error = %e, "{what} failed"),
        }
        res
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use scylla::frame::response::result::{ColumnSpec, ColumnType, NativeType, TableSpec};
    use scylla::response::query_result::ColumnSpecs;
    use scylla::value::{CqlTimestamp, CqlTimeuuid, Row};
    use scylla_cdc::consumer::CDCRowSchema;

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
        }
    }

    /// The base-table columns of the CDC row that inserts `e`.
    fn columns_of(e: &EventEnvelope) -> Vec<(&'static str, NativeType, Option<CqlValue>)> {
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
            (
                "timestamp",
                NativeType::Timestamp,
                Some(CqlValue::Timestamp(CqlTimestamp(e.timestamp.timestamp_millis()))),
            ),
        ]
    }

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
            Some(CqlValue::Blob(vec![1, 2, 3])),
            Some(CqlValue::Timeuuid(CqlTimeuuid::from(Uuid::from_u128(0x1234_5678_9abc_11ef_8000_0000_0000_0001)))),
            Some(CqlValue::Int(1)),
            Some(CqlValue::Boolean(true)),
            Some(CqlValue::TinyInt(op as i8)),
            None,
        ];
        for (name, typ, v) in cols {
            specs.push(ColumnSpec::borrowed(name, ColumnType::Native(typ), table()));
            values.push(v);
        }
        let schema = CDCRowSchema::new(ColumnSpecs::new(&specs));
        let row = CDCRow::from_row(Row { columns: values }, &schema);
        f(&row)
    }

    #[test]
    fn cdc_rows_insert_is_converted_others_skipped() {
        let e = envelope();
        let got = with_cdc_row(OperationType::RowInsert, columns_of(&e), |r| envelope_from_cdc_row(r).unwrap());
        assert_eq!(got, Some(e.clone()));
        // The compare-and-set of `version`: an update of the static row.
        let mut static_cols: Vec<_> = columns_of(&e).into_iter().map(|(n, t, _)| (n, t, None)).collect();
        static_cols[0].2 = Some(CqlValue::Uuid(e.aggregate_id));
        static_cols[2].2 = Some(CqlValue::BigInt(3));
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

    /// Against Apache Cassandra (`CASSANDRA_URI`): no Scylla CDC log, a clear error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reader_on_cassandra_reports_cdc_unavailable() {
        use crate::store::EventStore;
        let Some(uri) = std::env::var("CASSANDRA_URI").ok().filter(|s| !s.is_empty()) else {
            eprintln!("SKIPPED: set CASSANDRA_URI to check the CDC reader's error on Apache Cassandra");
            return;
        };
        let keyspace = format!("c_{}", Uuid::now_v7().simple());
        let cfg = crate::config::CqlConfig { uri, keyspace: keyspace.clone(), ..Default::default() };
        let store = crate::store::cql::CqlStore::connect(&cfg).await.unwrap();
        store.migrate().await.unwrap();
        assert!(!store.is_scylla() && !store.cdc_enabled());
        let sink: Arc<dyn crate::relay::deliver::DeadLetterSink> = Arc::new(store.clone() as crate::store::DynStore);
        let (status, _) = tokio::sync::watch::channel(Default::default());
        let deliverer = Arc::new(
            Deliverer::new(&crate::config::Config::default(), sink, crate::metrics::Metrics::new(), status).unwrap(),
        );
        let trigger = crate::shutdown::Trigger::new();
        let err = start_cdc_reader(store.session(), &keyspace, &cfg.cdc, deliverer, trigger.subscribe())
            .await
            .err()
            .expect("Cassandra has no CDC log");
        assert!(matches!(err, CdcError::Unavailable { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&format!("CDC feed needs ScyllaDB with cdc enabled on {keyspace}.event_store")),
            "{err}"
        );
    }

    #[test]
    fn unavailable_error_names_the_table() {
        let e = CdcError::Unavailable { keyspace: "outbox".into() };
        assert!(e.to_string().starts_with("CDC feed needs ScyllaDB with cdc enabled on outbox.event_store"), "{e}");
        assert!(is_shutdown(&anyhow::Error::from(CdcError::Shutdown).context("stream reader")));
        assert!(!is_shutdown(&anyhow::anyhow!("boom")));
    }
}
