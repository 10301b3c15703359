//! Scylla CDC feed (scylla-cdc 0.7): CDC rows of `event_store` -> envelopes
//! -> ONE delivery call per event (the relay's `Deliverer` behind the
//! reconciling sink, or the read-model projection on CQL).
//!
//! The CQL backend has no global commit order, so its outbox feed is the
//! Scylla CDC log of `event_store` (`event_store_scylla_cdc_log`, created by
//! `outboxd schema` with explicit CDC options and the configured log TTL).
//!
//! Files: [`columns`] (row -> envelope), [`batch`] (a CDC batch buffered
//! until `cdc$end_of_batch`), [`consumer`] (the one consumer type),
//! [`progress`] + [`saver`] (the checkpoint saver: progress in the lease
//! partition, never backwards, fenced), [`floor`] (where a stream without
//! progress resumes), [`start`] (start point, catch-up
//! plan), [`runner`] (runs scylla-cdc), [`reader`] (a consumer's feed),
//! [`relay_feed`] (the relay's feed: reconciling sink over the `Deliverer`),
//! [`reconcile`] + [`reconciler`] + `stored` (unknown-outcome appends), [`requests`]
//! and [`rewind`] (operator requests), [`health`]
//! (TTL guard, reconciliation verdict), [`watermark`] (exactly-once skip).
//!
//! Guarantees (docs/OPERATIONS.md, "Scylla CDC feed"):
//! - At-least-once, never past an unconfirmed event: scylla-cdc moves a
//!   stream group's progress to the end of a window only after `consume_cdc`
//!   returned `Ok` for every row of it, and `consume_cdc` returns only once
//!   the sink handled the row's event durably. The saver writes that
//!   progress every `checkpoint_interval_ms` and never moves it backwards
//!   (but for an operator's rewind, [`rewind`]), so a crash re-sends at most
//!   the last checkpoint interval plus the window in flight (same `ce_id`),
//!   and a start never replays back to its lower bound.
//! - Order per aggregate: one aggregate is one partition, i.e. one CDC stream
//!   (per generation); each stream group has one consumer that hands its
//!   rows over one at a time in log order, each append's rows in sequence
//!   order, and scylla-cdc finishes a generation before starting the next.
//!   Late rows of unknown-outcome appends are published before later events
//!   of their aggregate by the reconciling sink.
//! - Only inserts of event rows are published: the static-only `version`
//!   update of each append, deletes and updates are skipped.
//! - Where reading starts: the saved progress, never past the generation's
//!   floor (a stream group without rows resumes there); without any, `cdc:origin`
//!   (first `outboxd schema`) minus the clock-skew allowance, so events
//!   appended before the first relay start are published; never before the
//!   CDC log TTL floor (those rows are gone).
//!
//! Latency floor: a row becomes readable `safety_interval_ms` (30 s) after
//! it was written; once caught up each stream group queries
//! `[last window end, now - safety_interval)` and then sleeps
//! `sleep_interval_ms`. Behind by more than `catch_up_threshold_ms` at a
//! (re)start, the reader first catches up with large windows and short sleeps.

pub mod batch;
pub mod columns;
pub mod consumer;
pub mod floor;
pub mod generations;
pub mod health;
pub mod leftover;
pub mod progress;
pub mod reader;
pub mod reconcile;
pub mod reconciler;
pub mod relay_feed;
pub mod requests;
pub mod rewind;
pub mod runner;
pub mod saver;
pub mod start;
mod stored;
#[cfg(test)]
pub(crate) mod testkit;
pub mod watchdog;
pub mod watermark;

use crate::store::StoreError;

pub use columns::{envelope_from_cdc_row, envelope_from_columns, CdcColumns};
pub use consumer::{EnvelopeSink, RowPosition, SinkConsumer, SinkConsumerFactory, UndecodableRow};
pub use reader::{runner_settings, CdcFeed, FeedSpec};
pub use relay_feed::run_relay_feed;

/// The base table whose CDC log is the feed.
pub const EVENT_TABLE: &str = "event_store";
/// The table scylla-cdc's own saver kept the relay's progress in before
/// (read once, when the relay's lease partition holds no progress yet).
pub const LEGACY_RELAY_CHECKPOINT_TABLE: &str = "cdc_checkpoints";

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
    /// The Kafka producer could not be created (configuration).
    #[error("Kafka producer: {0}")]
    Producer(String),
    /// scylla-cdc failed (building the reader, reading the log, checkpoints).
    #[error("scylla-cdc reader failed: {0}")]
    Reader(String),
    /// Shutdown interrupted a delivery; progress was not saved past it.
    #[error("CDC consumer stopped by shutdown before the event was confirmed")]
    Shutdown,
    /// Another instance took the consumer's lease over: this one must not
    /// publish or save progress any more.
    #[error("CDC progress of {consumer} is fenced: another instance holds its lease")]
    Fenced { consumer: String },
}
