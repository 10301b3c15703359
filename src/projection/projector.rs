//! The projector loop (feed -> read models) and the rebuild from event 0.
//!
//! Same shape as the relay's feed loop: read a page after the checkpoint,
//! apply it, move the checkpoint; when the feed is empty wait for the
//! store's append notification or the poll interval; stop on `Shutdown`.
//! Store failures are retried with backoff and never lose the position.

use chrono::Utc;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use uuid::Uuid;

use super::model::{apply_event, Applied, Row};
use super::parking::{EventKey, ProjectionParking};
use super::{CommitBatch, DynReadModels, ReadModelStore, StoredRow, CONSUMER};
use crate::domain::{Aggregate, Customer, Order};
use crate::envelope::StoredEvent;
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
    /// `head - checkpoint`.
    pub lag: i64,
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
}

impl Default for ProjectionStatus {
    fn default() -> Self {
        ProjectionStatus {
            running: false,
            checkpoint: 0,
            head: 0,
            lag: 0,
            applied: 0,
            duplicates: 0,
            skipped: 0,
            parked_aggregates: 0,
            store_ok: true,
            last_error: None,
            updated_at: Utc::now(),
        }
    }
}

/// Counts of one applied batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BatchOutcome {
    /// False when another projector moved the checkpoint first (nothing written).
    pub committed: bool,
    pub applied: u64,
    pub duplicates: u64,
    /// Events that could not be applied (their aggregates were parked).
    pub skipped: u64,
    /// Events of parked aggregates, not applied.
    pub held: u64,
}

/// Decodes a stored row; a row of an older state shape (or unreadable) is
/// re-derived from its events up to its version instead.
async fn decode_row<A: Aggregate>(
    store: &DynStore,
    id: Uuid,
    stored: StoredRow,
    currency: &str,
) -> Result<Option<Row<A>>, StoreError> {
    if stored.state_schema == A::STATE_SCHEMA {
        if let Ok(state) = serde_json::from_str::<A>(&stored.state) {
            return Ok(Some(Row {
                id,
                state,
                version: stored.version,
                last_position: stored.last_position,
                created_at: stored.created_at,
                updated_at: stored.updated_at,
            }));
        }
    }
    tracing::warn!(%id, state_schema = stored.state_schema, "read-model row has an older or unreadable state; re-deriving it from its events");
    let mut row: Option<Row<A>> = None;
    for env in store.load(id).await? {
        if env.sequence > stored.version {
            break;
        }
        apply_event(&mut row, StoredEvent { position: stored.last_position, envelope: env }, currency);
    }
    Ok(row.map(|mut r| {
        r.version = stored.version;
        r.last_position = stored.last_position;
        r.created_at = stored.created_at;
        r.updated_at = stored.updated_at;
        r
    }))
}

/// Applies one feed page (read after `from`, ending at `to`) and commits rows
/// and checkpoint; an event that cannot be applied parks its aggregate first.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn apply_page(
    store: &DynStore,
    models: &dyn ReadModelStore,
    consumer: &str,
    from: i64,
    to: i64,
    page: Vec<StoredEvent>,
    currency: &str,
    parking: &mut ProjectionParking,
) -> Result<BatchOutcome, StoreError> {
    let (mut order_ids, mut customer_ids) = (Vec::new(), Vec::new());
    let mut seen = HashSet::new();
    for e in &page {
        let env = &e.envelope;
        if seen.insert(env.aggregate_id) {
            match env.aggregate_type.as_str() {
                Order::TYPE => order_ids.push(env.aggregate_id),
                Customer::TYPE => customer_ids.push(env.aggregate_id),
                _ => {}
            }
        }
    }
    let stored = models.load_rows(order_ids.clone(), customer_ids.clone()).await?;
    let mut orders: HashMap<Uuid, Option<Row<Order>>> = HashMap::with_capacity(order_ids.len());
    for id in order_ids {
        let row = match stored.orders.get(&id) {
            Some(s) => decode_row::<Order>(store, id, s.clone(), currency).await?,
            None => None,
        };
        orders.insert(id, row);
    }
    let mut customers: HashMap<Uuid, Option<Row<Customer>>> = HashMap::with_capacity(customer_ids.len());
    for id in customer_ids {
        let row = match stored.customers.get(&id) {
            Some(s) => decode_row::<Customer>(store, id, s.clone(), currency).await?,
            None => None,
        };
        customers.insert(id, row);
    }

    let mut out = BatchOutcome::default();
    let (mut dirty_orders, mut dirty_customers) = (HashSet::new(), HashSet::new());
    for ev in page {
        let id = ev.envelope.aggregate_id;
        if parking.is_parked(&id.to_string()) {
            out.held += 1;
            continue;
        }
        let key = EventKey::of(&ev);
        let applied = match ev.envelope.aggregate_type.as_str() {
            Order::TYPE => {
                let row = orders.entry(id).or_default();
                let r = apply_event(row, ev, currency);
                if row.is_some() && r != Applied::Duplicate {
                    dirty_orders.insert(id);
                }
                r
            }
            Customer::TYPE => {
                let row = customers.entry(id).or_default();
                let r = apply_event(row, ev, currency);
                if row.is_some() && r != Applied::Duplicate {
                    dirty_customers.insert(id);
                }
                r
            }
            // An aggregate type without a read model: nothing to do.
            _ => Applied::Duplicate,
        };
        match applied {
            Applied::Applied => out.applied += 1,
            Applied::Duplicate => out.duplicates += 1,
            Applied::Skipped(error) => {
                // Durable before the checkpoint moves past it (commit below).
                parking.park_event(store, &key, &error).await?;
                out.skipped += 1;
            }
        }
    }
    let batch = CommitBatch {
        consumer: consumer.to_string(),
        from,
        to,
        orders: dirty_orders.into_iter().filter_map(|id| orders.remove(&id).flatten()).collect(),
        customers: dirty_customers.into_iter().filter_map(|id| customers.remove(&id).flatten()).collect(),
    };
    out.committed = models.commit_batch(batch).await?;
    Ok(out)
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
        let parking = ProjectionParking::new(&opts.consumer);
        Projector { store, models, metrics, opts, status, checkpoint: None, head: 0, last_head_check: None, wake, parking }
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
        let rows = self.store.read_feed(from, self.opts.batch_size.max(1)).await?;
        if rows.is_empty() {
            self.refresh(from, false, true).await;
            return Ok(0);
        }
        let n = rows.len();
        let to = rows.last().map(|e| e.position()).unwrap_or(from);
        let sorted = self.parking.sort(&self.store, rows).await?;
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
        self.metrics.projection_checkpoint_position.set(checkpoint);
        self.metrics.projection_lag_events.set(lag);
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
                    if failures > 0 {
                        failures = 0;
                        self.update(|s| s.store_ok = true);
                    }
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
/// whole feed from event 0 (a progress bar on stderr when `progress`).
///
/// Safe while a projector runs (both compare-and-set the checkpoint; the
/// rows end the same), but faster with the daemon stopped.
pub async fn rebuild(
    store: DynStore,
    models: DynReadModels,
    default_currency: &str,
    progress: bool,
) -> Result<RebuildReport, StoreError> {
    let started = Instant::now();
    models.reset(CONSUMER).await?;
    let mut parking = ProjectionParking::new(CONSUMER);
    parking.clear(&store).await?;
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
    loop {
        let page = match next.take() {
            Some(h) => h.await.map_err(|e| StoreError::Unavailable(format!("feed read task failed: {e}")))??,
            None => store.read_feed(checkpoint, REBUILD_BATCH).await?,
        };
        let Some(to) = page.last().map(FeedRow::position) else { break };
        let n = page.len() as u64;
        // Read the next page while this one is applied.
        let s = store.clone();
        next = Some(tokio::spawn(async move { s.read_feed(to, REBUILD_BATCH).await }));
        let sorted = parking.sort(&store, page).await?;
        let out = apply_page(&store, &*models, CONSUMER, checkpoint, to, sorted.events, default_currency, &mut parking).await?;
        if out.committed {
            checkpoint = to;
            events += n;
        } else {
            // A running projector got there first; continue from its checkpoint.
            if let Some(h) = next.take() {
                h.abort();
            }
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
