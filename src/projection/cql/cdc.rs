//! The CDC-fed projection of the CQL backend (ScyllaDB only): a scylla-cdc
//! reader of `event_store`'s CDC log, independent of the relay's (its own
//! progress: consumer `projections` in `relay_leases`), whose sink applies
//! each event to the read models.
//!
//! Guarantee: the reader's progress moves past an event only once its rows
//! were written (store failures are retried with backoff until they land or
//! shutdown); after a crash the unsaved tail is applied again as duplicates.
//! The parked count on the status (`/health`) is read at each term's start,
//! after each park and every `health.interval_ms` while the reader runs
//! ([`refresh_parked_every`]), so a manual unpark clears it; each count is
//! one read of the park rows, however many there are.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use super::apply::{apply_envelopes, CqlApplyOutcome};
use crate::envelope::EventEnvelope;
use crate::projection::parking::record;
use crate::projection::ProjectionStatus;
use crate::projection::CONSUMER;
use crate::relay::cdc::{CdcError, CdcFeed, EnvelopeSink, FeedSpec, UndecodableRow};
use crate::shutdown::{AbortOnDrop, Shutdown};
use crate::store::cql::CqlStore;
use crate::store::parking::ParkingStore;
use crate::store::StoreError;

/// The projection's consumer name: its partition of `relay_leases` (CDC
/// progress, and its lease).
pub const PROJECTION_CONSUMER: &str = "projections";
/// The table scylla-cdc's own saver kept the projection's progress in before.
pub const LEGACY_PROJECTION_CHECKPOINT_TABLE: &str = "cdc_projection_checkpoints";

/// The CDC projection's sink: applies each event with [`apply_envelopes`],
/// retrying store failures with backoff until it lands or shutdown.
pub struct CqlProjectionSink {
    store: Arc<CqlStore>,
    currency: String,
    status: watch::Sender<ProjectionStatus>,
}

impl CqlProjectionSink {
    pub fn new(store: Arc<CqlStore>, currency: String, status: watch::Sender<ProjectionStatus>) -> Self {
        CqlProjectionSink { store, currency, status }
    }

    /// Parks `row`'s aggregate at it (consumer `projections`).
    async fn park_unreadable(&self, aggregate: uuid::Uuid, row: &UndecodableRow) -> Result<(), StoreError> {
        let p = record(
            CONSUMER,
            &aggregate.to_string(),
            None,
            row.sequence,
            row.event_id.map(|e| e.to_string()),
            None,
            format!("the event_store row cannot be read: {}", row.error),
        );
        self.store.park(&p).await
    }
}

#[async_trait]
impl EnvelopeSink for CqlProjectionSink {
    /// The aggregate is parked at the row (its read-model row stays at the
    /// version before it; `apply_envelopes` stops at it too, through the
    /// gap fill, when a later event comes) and the reader goes on, as the
    /// SQLite projector parks an unreadable row. It stopped the reader, on
    /// every restart. Only a row without an aggregate id stops it.
    async fn undecodable(&self, row: UndecodableRow, shutdown: &mut Shutdown) -> Result<(), CdcError> {
        let Some(aggregate) = row.aggregate_id else {
            tracing::error!(error = %row.error, "CDC row of event_store without an aggregate id; stopping the projection's reader");
            return Err(row.error);
        };
        let mut attempt: u32 = 0;
        loop {
            match self.park_unreadable(aggregate, &row).await {
                Ok(()) => {
                    tracing::error!(%aggregate, sequence = ?row.sequence, error = %row.error, "projection: an event_store row cannot be read; its aggregate is parked there");
                    self.status.send_modify(|s| {
                        s.skipped += 1;
                        s.updated_at = Utc::now();
                    });
                    refresh_parked(&self.store, &self.status).await;
                    return Ok(());
                }
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, %aggregate, "CQL projection: cannot park an unreadable row yet; retrying");
                    retry_wait(attempt, shutdown).await?;
                }
            }
        }
    }

    async fn handle(&self, env: EventEnvelope, shutdown: &mut Shutdown) -> Result<(), CdcError> {
        let at = env.timestamp;
        let mut attempt: u32 = 0;
        loop {
            match apply_envelopes(&self.store, vec![env.clone()], &self.currency).await {
                Ok(o) => {
                    self.status.send_modify(|s| record_applied(s, &o, at, Utc::now()));
                    if o.skipped > 0 {
                        refresh_parked(&self.store, &self.status).await;
                    }
                    return Ok(());
                }
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, aggregate_id = %env.aggregate_id, sequence = env.sequence, "CQL projection: store write failed; retrying");
                    self.status.send_modify(|s| {
                        s.store_ok = false;
                        s.last_error = Some(e.to_string());
                        s.updated_at = Utc::now();
                    });
                    retry_wait(attempt, shutdown).await?;
                }
            }
        }
    }
}

/// Puts the number of aggregates parked for the projection on its status
/// (`/health` says `projections` Degraded while there are any, as on
/// SQLite); a count that fails leaves the last one (logged). One read of
/// the park rows (`parked_positions`), whatever their number: `parked`
/// would count each park's held events, a query per park, after every
/// skipped event.
async fn refresh_parked(store: &CqlStore, status: &watch::Sender<ProjectionStatus>) {
    match store.parked_positions(CONSUMER).await {
        Ok(parked) => {
            let n = parked.len() as u64;
            status.send_if_modified(|s| {
                let changed = s.parked_aggregates != n;
                s.parked_aggregates = n;
                changed
            });
        }
        Err(e) => tracing::warn!(error = %e, "CQL projection: cannot count its parked aggregates"),
    }
}

/// Counts the projection's parked aggregates onto `status` every `every`
/// (first after one interval), until the task is aborted: a park removed
/// by hand (its `parked_aggregates` row, see docs/OPERATIONS.md) leaves
/// `/health` within one interval while the reader runs (otherwise only at
/// the next term's start or the next park).
pub async fn refresh_parked_every(store: Arc<CqlStore>, status: watch::Sender<ProjectionStatus>, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        refresh_parked(&store, &status).await;
    }
}

/// Waits before try `attempt + 1` of a store write that failed (0.1 s,
/// doubling, at most 3.2 s); `Err` on shutdown.
async fn retry_wait(attempt: u32, shutdown: &mut Shutdown) -> Result<(), CdcError> {
    let delay = Duration::from_millis(50u64 << attempt.clamp(1, 6));
    tokio::select! {
        _ = tokio::time::sleep(delay) => Ok(()),
        _ = shutdown.recv() => Err(CdcError::Shutdown),
    }
}

/// Runs the CDC projection until `shutdown`, then stops the reader
/// gracefully (finish the window, save progress), abandoning it after 10 s
/// (`relay::cdc::CdcFeed`).
/// Errors when the server has no CDC log (Apache Cassandra) or the reader fails.
pub async fn run_cdc_projection(
    cql: Arc<CqlStore>,
    cfg: &crate::config::Config,
    status: watch::Sender<ProjectionStatus>,
    metrics: &crate::metrics::Metrics,
    shutdown: Shutdown,
) -> Result<(), CdcError> {
    if !cql.cdc_enabled() {
        return Err(CdcError::Unavailable { keyspace: cql.keyspace().to_string() });
    }
    let sink = Arc::new(CqlProjectionSink::new(cql.clone(), cfg.service.default_currency.clone(), status.clone()));
    let spec =
        FeedSpec { consumer: PROJECTION_CONSUMER, epoch: None, legacy_table: Some(LEGACY_PROJECTION_CHECKPOINT_TABLE) };
    let feed = CdcFeed::open(cql.session(), cql.keyspace(), &cfg.store.cql.cdc, spec)
        .await?
        .count_restarts(metrics.cdc_reader_restarts.with_label_values(&[PROJECTION_CONSUMER]));
    // A former term's store error is not this one's (the status outlives
    // terms and restarts); its parks are counted afresh.
    status.send_modify(|s| {
        s.running = true;
        s.store_ok = true;
        s.last_error = None;
        s.updated_at = Utc::now();
    });
    refresh_parked(&cql, &status).await;
    // Parks change beside the reader too (an operator's manual unpark, a
    // park written elsewhere): counted again every health interval, so
    // /health follows them without waiting for a skipped event or a new term.
    let every = Duration::from_millis(cfg.health.interval_ms.max(100));
    // Stopped with this term, also when the term's future is dropped.
    let _recount = AbortOnDrop::spawn(refresh_parked_every(cql.clone(), status.clone(), every));
    let res = feed.run(sink, None, shutdown).await;
    status.send_modify(|s| {
        s.running = false;
        if let Err(e) = &res {
            s.last_error = Some(e.to_string());
        }
        s.updated_at = Utc::now();
    });
    res
}

/// What applying one event (stamped `at`) tells the projection status. No
/// global head on CQL: `lag` (events) stays 0, unknown; the applied
/// event's age goes to `lag_ms` (the health rules compare `lag` with an
/// event count: an age there read as 30 000 "events" behind).
pub fn record_applied(s: &mut ProjectionStatus, o: &CqlApplyOutcome, at: DateTime<Utc>, now: DateTime<Utc>) {
    s.applied += o.applied + o.gap_filled;
    s.duplicates += o.duplicates;
    s.skipped += o.skipped;
    s.store_ok = true;
    s.last_error = None;
    s.checkpoint = s.checkpoint.max(at.timestamp_millis());
    s.lag = 0;
    s.lag_ms = Some((now - at).num_milliseconds().max(0));
    s.updated_at = now;
}
