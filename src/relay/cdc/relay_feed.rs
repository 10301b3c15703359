//! The relay's CDC feed: the CDC log of `event_store` -> the reconciling
//! sink -> the `Deliverer` (the one delivery call), plus the reconciler task.
//!
//! Guarantees: everything of `CdcFeed` (progress in the relay's lease
//! partition, catch-up, graceful stop) and of `ReconcilingSink` (unknown-
//! outcome appends published in order, within the bound); `RelayStatus.running`
//! is true exactly while the feed runs; `RelayStatus.reconciliation` (the
//! input of the reconciliation verdict) is refreshed every second while it
//! runs, with the delivered count; operator requests are served every second (`requests`; a rewind
//! is handed to the feed's runner); the
//! reconciler, that reporter and the request server stop with the feed.

use std::sync::Arc;
use std::time::Duration;

use super::reader::{CdcFeed, FeedSpec};
use super::reconciler::{run_reconciler, ReadThrough, ReconcilingSink};
use super::requests::{serve_requests, CdcRequestParts, CdcRequests, Rewinder};
use super::saver::LeaseCheckpointSaver;
use super::{CdcError, EnvelopeSink, LEGACY_RELAY_CHECKPOINT_TABLE};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::relay::deliver::Deliverer;
use crate::relay::operator::Unsaved;
use crate::relay::status::Reconciliation;
use crate::relay::StatusTx;
use crate::shutdown::{Shutdown, Trigger};
use crate::store::cql::reconcile::ReconcileTable;
use crate::store::cql::CqlStore;
use crate::store::DynStore;

/// Runs the relay on the CDC log until `shutdown` (Ok) or a failure.
/// `epoch`: the relay lease's epoch, fencing its progress writes;
/// `unsaved`: request outcomes the store did not take, kept across terms.
pub async fn run_relay_feed(
    cql: Arc<CqlStore>,
    cfg: &Config,
    deliverer: Arc<Deliverer>,
    metrics: &Metrics,
    epoch: Option<i64>,
    unsaved: Unsaved,
    shutdown: Shutdown,
) -> Result<(), CdcError> {
    let cdc = &cfg.store.cql.cdc;
    let spec =
        FeedSpec { consumer: &cfg.relay.consumer_name, epoch, legacy_table: Some(LEGACY_RELAY_CHECKPOINT_TABLE) };
    let (rewinds, rewind_rx) = super::rewind::channel();
    let feed = CdcFeed::open(cql.session(), cql.keyspace(), cdc, spec)
        .await?
        .count_restarts(metrics.cdc_reader_restarts.with_label_values(&[&cfg.relay.consumer_name]));
    let table = ReconcileTable::open(cql.session(), cql.keyspace()).await?;
    let sink = ReconcilingSink::new(
        deliverer.clone(),
        cql.clone() as DynStore,
        table,
        cdc.reconcile_bound(),
        cdc.reconcile_remember_aggregates,
        Some(metrics.cdc_unreconciled_appends.clone()),
        read_through(feed.saver().clone(), cdc.clock_skew_allowance_ms),
    );
    if !sink.load_pending(&mut shutdown.clone()).await {
        return Ok(());
    }
    let stop_reconciler = Trigger::new();
    let reconciler = tokio::spawn(run_reconciler(
        sink.clone(),
        Duration::from_millis(cdc.reconcile_refresh_ms),
        stop_reconciler.subscribe(),
    ));
    let reporter =
        tokio::spawn(report_reconciliation(sink.clone(), deliverer.status().clone(), stop_reconciler.subscribe()));
    let requests = CdcRequests::new(CdcRequestParts {
        sink: sink.clone(),
        deliverer: deliverer.clone(),
        store: cql.clone() as DynStore,
        consumer: cfg.relay.consumer_name.clone(),
        epoch: epoch.unwrap_or(0),
        rewind: Rewinder { saver: feed.saver().clone(), log_ttl: cdc.log_ttl(), runner: Some(rewinds) },
        unsaved,
    });
    let requests = tokio::spawn(serve_requests(requests, Duration::from_secs(1), stop_reconciler.subscribe()));
    deliverer.status().cdc_feed_running(true, None);
    let res = feed.run(sink, Some(rewind_rx), shutdown).await;
    deliverer.status().cdc_feed_running(false, res.as_ref().err().map(|e| e.to_string()));
    stop_reconciler.fire();
    let _ = reconciler.await;
    let _ = reporter.await;
    let _ = requests.await;
    // The next run (or the next holder) reports its own.
    deliverer.status().update(|s| s.reconciliation.take().is_some());
    res
}

/// Every CDC row stamped before this (ms) has been published: the feed's
/// oldest per-stream progress once every stream of the generation reported
/// (its floor before), less the clock skew allowance (the rows' timestamps
/// come from the database nodes, `resolved_at` from the writer).
fn read_through(saver: Arc<LeaseCheckpointSaver>, skew_ms: u64) -> ReadThrough {
    Arc::new(move || saver.read_through_ms().map(|p| p.saturating_sub(skew_ms as i64)))
}

/// The reconciliation state as the relay status shows it.
pub fn reconciliation((pending, oldest): (usize, Option<Duration>), bound: Duration) -> Reconciliation {
    Reconciliation {
        pending,
        oldest_pending_ms: oldest.map(|d| d.as_millis() as u64),
        bound_ms: bound.as_millis() as u64,
    }
}

/// Every second until `stop`: the pending reconciliations into
/// `RelayStatus.reconciliation`.
async fn report_reconciliation<S: EnvelopeSink>(sink: Arc<ReconcilingSink<S>>, status: StatusTx, mut stop: Shutdown) {
    loop {
        // Deliveries counted since the last fold (`StatusTx::delivered`
        // publishes at most every 50 ms): the last ones of a burst too.
        status.flush();
        let now = reconciliation(sink.pending(), sink.bound());
        status.update(|s| {
            let changed = s.reconciliation.as_ref() != Some(&now);
            s.reconciliation = Some(now);
            changed
        });
        if !stop.sleep(Duration::from_secs(1)).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciliation_of_the_status() {
        let r = reconciliation((0, None), Duration::from_secs(95));
        assert_eq!(r, Reconciliation { pending: 0, oldest_pending_ms: None, bound_ms: 95_000 });
        let r = reconciliation((3, Some(Duration::from_millis(4_500))), Duration::from_secs(95));
        assert_eq!(r, Reconciliation { pending: 3, oldest_pending_ms: Some(4_500), bound_ms: 95_000 });
    }
}
