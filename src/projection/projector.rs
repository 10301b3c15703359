//! The projector loop (feed -> read models).
//!
//! Same shape as the relay's feed loop: read a page after the checkpoint,
//! apply it, move the checkpoint; when the feed is empty wait for the
//! store's append notification or the poll interval; stop on `Shutdown`.
//! Store failures are retried with backoff and never lose the position.

use chrono::Utc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

use super::page::apply_page;
use super::parking::ProjectionParking;
use super::{DynReadModels, CONSUMER};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::feed::FeedRow;
use crate::store::{DynStore, StoreError};

#[derive(Debug, Clone)]
pub struct ProjectorOptions {
    /// Events applied per transaction.
    pub batch_size: usize,
    /// Feed poll interval when no append notification arrives (other
    /// processes' appends, or backends without notifications).
    pub poll_interval: Duration,
    /// Currency assumed for v1 events written without one.
    pub default_currency: String,
    /// Checkpoint name (tests may run a second projection under another name
    /// only against a separate database: the tables are shared).
    pub consumer: String,
}

impl Default for ProjectorOptions {
    fn default() -> Self {
        ProjectorOptions {
            batch_size: 500,
            poll_interval: Duration::from_millis(200),
            default_currency: "EUR".into(),
            consumer: CONSUMER.into(),
        }
    }
}

impl ProjectorOptions {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        ProjectorOptions {
            poll_interval: Duration::from_millis(cfg.relay.poll_interval_ms.max(10)),
            default_currency: cfg.service.default_currency.clone(),
            ..ProjectorOptions::default()
        }
    }
}

/// What the projector publishes about itself (for /health and the actors).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProjectionStatus {
    pub running: bool,
    /// Feed position the read models include.
    pub checkpoint: i64,
    /// Highest committed feed position last seen.
    pub head: i64,
    /// `head - checkpoint` (events; 0 on CQL, where no head is known).
    pub lag: i64,
    /// CQL: the age of the last applied event, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<i64>,
    /// Events applied since start.
    pub applied: u64,
    /// Events seen again (sequence <= row version) and ignored.
    pub duplicates: u64,
    /// Events that could not be applied: their aggregates are parked.
    pub skipped: u64,
    /// Aggregates whose read-model rows are parked (see `projection::parking`).
    pub parked_aggregates: u64,
    pub store_ok: bool,
    pub last_error: Option<String>,
    pub updated_at: chrono::DateTime<Utc>,
    /// Another instance holds the `projections` lease (its holder): this
    /// one waits for it, as intended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standby: Option<String>,
}

impl Default for ProjectionStatus {
    fn default() -> Self {
        ProjectionStatus {
            running: false,
            checkpoint: 0,
            head: 0,
            lag: 0,
            lag_ms: None,
            applied: 0,
            duplicates: 0,
            skipped: 0,
            parked_aggregates: 0,
            store_ok: true,
            last_error: None,
            updated_at: Utc::now(),
            standby: None,
        }
    }
}

/// Keeps the read models up to date with the feed.
pub struct Projector {
    store: DynStore,
    models: DynReadModels,
    metrics: Metrics,
    opts: ProjectorOptions,
    status: watch::Sender<ProjectionStatus>,
    checkpoint: Option<i64>,
    head: i64,
    last_head_check: Option<Instant>,
    /// When the gauges were last read from the store (`set_gauges`).
    gauges_at: Option<Instant>,
    wake: Option<watch::Receiver<i64>>,
    parking: ProjectionParking,
}

impl Projector {
    pub fn new(store: DynStore, models: DynReadModels, metrics: Metrics, opts: ProjectorOptions) -> Projector {
        let (status, _) = watch::channel(ProjectionStatus::default());
        Projector::with_status(store, models, metrics, opts, status)
    }

    /// Shares a status channel (a supervising actor keeps one across restarts).
    pub fn with_status(
        store: DynStore,
        models: DynReadModels,
        metrics: Metrics,
        opts: ProjectorOptions,
        status: watch::Sender<ProjectionStatus>,
    ) -> Projector {
        let wake = store.subscribe();
        Projector {
            store,
            models,
            metrics,
            parking: ProjectionParking::new(&opts.consumer),
            opts,
            status,
            checkpoint: None,
            head: 0,
            last_head_check: None,
            gauges_at: None,
            wake,
        }
    }

    pub fn status(&self) -> watch::Receiver<ProjectionStatus> {
        self.status.subscribe()
    }

    fn update(&self, f: impl FnOnce(&mut ProjectionStatus)) {
        self.status.send_modify(|s| {
            f(s);
            s.updated_at = Utc::now();
        });
    }

    /// Applies at most one batch; returns the number of events read (0 when
    /// the read models are up to date with the feed).
    pub async fn step(&mut self) -> Result<usize, StoreError> {
        let from = match self.checkpoint {
            Some(c) => c,
            None => {
                // Re-read with the checkpoint: whoever moved it may have parked or unparked.
                self.parking.invalidate();
                let c = self.models.projection_checkpoint(&self.opts.consumer).await?;
                self.checkpoint = Some(c);
                self.refresh(c, true, false).await;
                c
            }
        };
        if let Some(w) = self.wake.as_mut() {
            w.borrow_and_update();
        }
        self.parking.load(&self.store).await?;
        // What is parked, from the first load on (not only after a batch:
        // parks found at start, or cleared by a rebuild, count at once).
        let parked = self.parking.count() as u64;
        self.status.send_if_modified(|s| std::mem::replace(&mut s.parked_aggregates, parked) != parked);
        let rows = self.store.read_feed(from, self.opts.batch_size.max(1)).await?;
        if rows.is_empty() {
            // Idle: no batch of ours fails a compare-and-set, so a checkpoint
            // moved by someone else (a rebuild that reset the read models
            // and stopped short of this one) would go unseen until the next
            // append, the read models partial meanwhile: compare it.
            let stored = self.models.projection_checkpoint(&self.opts.consumer).await?;
            if stored != from {
                tracing::info!(consumer = %self.opts.consumer, from, stored, "projection checkpoint moved by another projector (a rebuild?); re-reading it");
                self.checkpoint = None;
                return Box::pin(self.step()).await;
            }
            self.refresh(from, false, true).await;
            return Ok(0);
        }
        let n = rows.len();
        let to = rows.last().map(FeedRow::position).unwrap_or(from);
        let sorted = self.parking.sort(rows);
        let mut out = apply_page(
            &self.store,
            &*self.models,
            &self.opts.consumer,
            from,
            to,
            sorted.events,
            &self.opts.default_currency,
            &mut self.parking,
        )
        .await?;
        out.held += sorted.held;
        let parked = self.parking.count() as u64;
        if !out.committed {
            tracing::info!(consumer = %self.opts.consumer, from, "projection checkpoint moved by another projector (a rebuild?); re-reading it");
            self.checkpoint = None;
            return Ok(n);
        }
        self.checkpoint = Some(to);
        self.update(|s| {
            s.applied += out.applied;
            s.duplicates += out.duplicates;
            s.skipped += out.skipped;
            s.parked_aggregates = parked;
            s.store_ok = true;
        });
        self.refresh(to, false, false).await;
        Ok(n)
    }

    /// Applies batches until the feed is empty.
    pub async fn catch_up(&mut self) -> Result<(), StoreError> {
        while self.step().await? > 0 {}
        Ok(())
    }

    /// Updates head, lag, metrics and status after the checkpoint moved.
    async fn refresh(&mut self, checkpoint: i64, force: bool, caught_up: bool) {
        let notified = self.wake.as_ref().map(|w| *w.borrow()).unwrap_or(0);
        if caught_up {
            // The feed had nothing after `checkpoint` when it was just read.
            self.head = checkpoint.max(notified);
        } else if force || self.last_head_check.is_none_or(|t| t.elapsed() >= Duration::from_millis(250)) {
            if let Ok(h) = self.store.head_position().await {
                self.head = h;
                self.last_head_check = Some(Instant::now());
            }
        }
        self.head = self.head.max(notified).max(checkpoint);
        let (head, lag) = (self.head, self.head - checkpoint);
        self.set_gauges(checkpoint, lag).await;
        self.status.send_if_modified(|s| {
            let changed = s.checkpoint != checkpoint || s.head != head || s.lag != lag;
            s.checkpoint = checkpoint;
            s.head = head;
            s.lag = lag;
            if changed {
                s.updated_at = Utc::now();
            }
            changed
        });
    }

    /// `projection_lag_events` and `projection_checkpoint_position` from the
    /// store's backlog of the projection (`EventStore::backlog`: head -
    /// persisted checkpoint + events held behind parks), the reading the
    /// health actor writes to the same gauges on every check (on every
    /// instance, a standby too): one definition, so the gauges never jump
    /// between two. With no aggregate parked that is `head - checkpoint`
    /// (no read); else read at most every 250 ms (the health check writes
    /// it too); a failed read leaves them as they are.
    async fn set_gauges(&mut self, checkpoint: i64, lag: i64) {
        if self.parking.count() == 0 {
            // Nothing held: the backlog is `head - checkpoint`, known here
            // (no store read per batch on the common path).
            self.metrics.set_projection_backlog(Some(lag), Some(checkpoint));
            self.gauges_at = None;
            return;
        }
        let due = self.gauges_at.is_none_or(|t| t.elapsed() >= Duration::from_millis(250));
        if !due {
            return;
        }
        if let Ok(b) = self.store.backlog(&self.opts.consumer).await {
            self.metrics.set_projection_backlog(b.events, b.checkpoint);
            self.gauges_at = Some(Instant::now());
        }
    }

    /// Runs until `shutdown`. A batch being committed when the signal comes
    /// finishes first (it is one transaction either way).
    pub async fn run(mut self, mut shutdown: Shutdown) {
        self.update(|s| s.running = true);
        tracing::info!(consumer = %self.opts.consumer, "projector started");
        let mut failures: u32 = 0;
        loop {
            if shutdown.is_shutdown() {
                break;
            }
            match self.step().await {
                Ok(n) => {
                    failures = 0;
                    // Also a former run's failure (the status outlives runs,
                    // terms and restarts; an idle store has no batch to clear it).
                    self.status.send_if_modified(|s| {
                        let was_failing = !s.store_ok;
                        if was_failing {
                            s.store_ok = true;
                            s.updated_at = Utc::now();
                        }
                        was_failing
                    });
                    if n > 0 {
                        continue;
                    }
                    let mut lost = false;
                    let wake = &mut self.wake;
                    tokio::select! {
                        biased;
                        _ = shutdown.recv() => break,
                        ok = async { match wake.as_mut() { Some(w) => w.changed().await.is_ok(), None => std::future::pending().await } } => lost = !ok,
                        _ = tokio::time::sleep(self.opts.poll_interval) => {}
                    }
                    if lost {
                        self.wake = None;
                    }
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, attempt = failures, "projector cannot read or write the store; retrying");
                    self.update(|s| {
                        s.store_ok = false;
                        s.last_error = Some(e.to_string());
                    });
                    self.checkpoint = None;
                    let delay =
                        Duration::from_millis(100u64.saturating_mul(1 << failures.min(6))).min(Duration::from_secs(5));
                    if !shutdown.sleep(delay).await {
                        break;
                    }
                }
            }
        }
        self.update(|s| s.running = false);
        tracing::info!(consumer = %self.opts.consumer, checkpoint = self.checkpoint.unwrap_or(0), "projector stopped");
    }
}
