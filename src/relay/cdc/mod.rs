//! Scylla CDC feed (scylla-cdc): CDC rows of `event_store` -> envelopes -> `Deliverer`.
//!
//! The CQL backend has no global commit order, so its outbox feed is the
//! Scylla CDC log of `event_store` (`event_store_scylla_cdc_log`, created by
//! `CqlStore::migrate` on ScyllaDB). This module is a thin adapter: it turns
//! each CDC row that inserts an event into an `EventEnvelope` ([`columns`])
//! and hands it to ONE consumer type ([`consumer::SinkConsumer`]) whose sink
//! is the shared `Deliverer` for the relay (retry, circuit breaker, DLQ live
//! there, once) or the read-model projection on CQL; [`reader`] starts and
//! stops scylla-cdc.
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

pub mod columns;
pub mod consumer;
pub mod reader;

use std::time::Duration;

use crate::store::StoreError;

pub use columns::{envelope_from_cdc_row, envelope_from_columns, CdcColumns};
pub use consumer::{EnvelopeSink, SinkConsumer, SinkConsumerFactory};
pub use reader::{run_until_shutdown, start_cdc_reader, start_cdc_sink_reader, CdcReaderHandle};

/// The base table whose CDC log is the feed.
pub const EVENT_TABLE: &str = "event_store";
/// scylla-cdc's progress table (in the store's keyspace).
pub const CDC_CHECKPOINT_TABLE: &str = "cdc_checkpoints";
/// Scylla's default CDC log TTL: rows older than this are gone.
pub const CDC_LOG_TTL: Duration = Duration::from_secs(24 * 3600);
/// Clock-skew margin before `cdc:origin`.
pub(crate) const ORIGIN_MARGIN: Duration = Duration::from_secs(60);

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
