//! Rebuilding the read models from event 0 (`outboxd projections rebuild`).
//!
//! Guarantee: the read models and the projection checkpoint are reset, then
//! every event of the feed up to the head seen at the start is applied in
//! batches through the same apply step as the projector (`page::apply_page`),
//! so a rebuild gives the same rows as a projector that never stopped. It
//! returns once its checkpoint reaches that head (events appended meanwhile
//! are left to the projector), so it ends beside a daemon under steady writes.
//! A running projector may win a batch's compare-and-set: the rebuild then
//! goes on from the projector's checkpoint with the park records re-read
//! (what the projector parked stays held), as `Projector::step` does.
//! A projector's park is written in its batch's commit, so one whose batch
//! loses to the rebuild (an older build that cannot apply an event the
//! rebuild applies) leaves no park behind; a batch such a projector wins
//! parks for good, hence: stop or upgrade an older daemon before
//! rebuilding with a newer build (docs/OPERATIONS.md, "Read models").

use std::time::Instant;

use super::page::apply_page;
use super::parking::ProjectionParking;
use super::{DynReadModels, ReadModelStore, CONSUMER};
use crate::store::feed::FeedRow;
use crate::store::{DynStore, StoreError};

/// What a rebuild did.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RebuildReport {
    /// Events read and applied by the rebuild.
    pub events: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
    /// Checkpoint at the end.
    pub checkpoint: i64,
}

impl std::fmt::Display for RebuildReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rebuilt read models from {} events in {:.2} s ({:.0} events/s), checkpoint {}",
            self.events, self.seconds, self.events_per_sec, self.checkpoint
        )
    }
}

/// Events per rebuild transaction.
const REBUILD_BATCH: usize = 2_000;

/// Clears the read models and the projection checkpoint, then re-applies the
/// feed from event 0 up to the head at the start (a progress bar on stderr
/// when `progress`); the report's checkpoint is at or past that head.
///
/// Safe while a projector of the same build runs (both compare-and-set the
/// checkpoint; the rows end the same), but faster with the daemon stopped.
pub async fn rebuild(
    store: DynStore,
    models: DynReadModels,
    default_currency: &str,
    progress: bool,
) -> Result<RebuildReport, StoreError> {
    let started = Instant::now();
    // The reset drops the parks with the rows and the checkpoint, in one
    // transaction: a projector whose compare-and-set fails on it re-reads
    // checkpoint 0 with no park from before it (it would hold those
    // aggregates' events from 0), and a rebuild interrupted before it
    // leaves every park with the rows it holds (removed first, the held
    // aggregates' rows stayed behind with nothing parked). The parked set
    // is read after the reset (the first `load`).
    models.reset(CONSUMER).await?;
    let mut parking = ProjectionParking::new(CONSUMER);
    let head = store.head_position().await?;
    let bar = if progress { indicatif::ProgressBar::new(head.max(0) as u64) } else { indicatif::ProgressBar::hidden() };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} rebuilding read models [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style);
    }
    let mut checkpoint = 0;
    let mut events = 0u64;
    let mut next: Option<tokio::task::JoinHandle<Result<Vec<FeedRow>, StoreError>>> = None;
    // Up to the head seen at the start, not until the feed is empty: beside
    // steady writes that would never end.
    while checkpoint < head {
        // Re-reads the park records while any is held (and after `invalidate`).
        parking.load(&store).await?;
        let page = match next.take() {
            Some(h) => h.await.map_err(|e| StoreError::Unavailable(format!("feed read task failed: {e}")))??,
            None => store.read_feed(checkpoint, REBUILD_BATCH).await?,
        };
        let Some(to) = page.last().map(FeedRow::position) else { break };
        let n = page.len() as u64;
        if to < head {
            // Read the next page while this one is applied.
            let s = store.clone();
            next = Some(tokio::spawn(async move { s.read_feed(to, REBUILD_BATCH).await }));
        }
        let sorted = parking.sort(page);
        let out = apply_page(&store, &*models, CONSUMER, checkpoint, to, sorted.events, default_currency, &mut parking)
            .await?;
        if out.committed {
            checkpoint = to;
            events += n;
        } else {
            // A running projector got there first: continue from its
            // checkpoint, with its parks (it may have parked an aggregate in
            // the events it committed; applying that aggregate's later events
            // would leave its row with an event missing).
            if let Some(h) = next.take() {
                h.abort();
            }
            parking.invalidate();
            checkpoint = models.projection_checkpoint(CONSUMER).await?;
        }
        if checkpoint as u64 > bar.length().unwrap_or(0) {
            bar.set_length(checkpoint as u64);
        }
        bar.set_position(checkpoint.max(0) as u64);
    }
    let seconds = started.elapsed().as_secs_f64();
    let report = RebuildReport {
        events,
        seconds,
        events_per_sec: if seconds > 0.0 { events as f64 / seconds } else { 0.0 },
        checkpoint,
    };
    bar.finish_and_clear();
    Ok(report)
}

/// Every read-model row as JSON, sorted by (table, key), for comparing two
/// databases row by row.
pub async fn dump_read_models(models: &dyn ReadModelStore) -> Result<Vec<serde_json::Value>, StoreError> {
    models.dump().await
}
