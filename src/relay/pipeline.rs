//! The at-least-once relay loop over a position feed (the SQLite store):
//! read after the checkpoint, publish with many events in flight, move the
//! checkpoint only past confirmed (or durably parked) events.
//!
//! Guarantees:
//! - Every stored event reaches its topic unless its aggregate is parked
//!   (then it is held, durably, until an operator replays or discards).
//! - Per-aggregate order at first arrival, through outages of any length:
//!   the [`Window`] fence keeps at most one event per aggregate at the
//!   producer, so a timed-out event can never be overtaken by a later event
//!   of its aggregate; other aggregates keep the pipeline full.
//! - Transient failures (broker down, timeouts) retry the failed event after
//!   backoff and count against the breaker; while it is open nothing is
//!   sent; half-open probes go one at a time. Nothing is dead-lettered for
//!   a transient failure (unless `relay.dlq_on_transient_exhaustion`).
//! - A permanent failure (too large, invalid record, an unreadable row) is
//!   confirmed by resending the event alone (a record batch refused as a
//!   whole does not poison its neighbours), then handled by
//!   `relay.on_permanent_failure`: `park-aggregate` (default: the aggregate
//!   is held from that event on, durably, everything else flows) or `skip`
//!   (the event goes to the dead-letter queue and its aggregate moves on).
//! - With a lease (`Fence`), every checkpoint write is conditional on the
//!   epoch; a refused write or a lost lease purges the producer and ends the
//!   term at once (a standby has taken over).
//! - The loop never stalls: every wait has a live branch (completions, the
//!   feed, retry and breaker timers, requests, shutdown, lease loss).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

use crate::config::{Config, RelayConfig};
use crate::lease::keeper::LeaseState;
use crate::metrics::Metrics;
use crate::relay::breaker::CircuitBreaker;
use crate::relay::encode::{Discarded, Encoder};
use crate::relay::error::PublishError;
use crate::relay::feed::{FeedHandle, FeedReader};
use crate::relay::producer::{Delivery, KafkaProducer, SendError};
use crate::relay::retry::Backoff;
use crate::relay::run::Run;
use crate::relay::sink::DeadLetterSink;
use crate::relay::status::StatusTx;
use crate::relay::topics::all_topics;
use crate::relay::warm::WarmProducer;
use crate::relay::window::{AggKey, Fenced, Window};
use crate::shutdown::Shutdown;
use crate::store::feed::{FeedRow, RawEvent, Unreadable};
use crate::store::{DynStore, StoreError};

/// What the window carries: a stored event, the marker of a discarded one,
/// or a row that cannot be read (parked when its turn comes).
#[derive(Debug, Clone)]
pub enum Item {
    Event(RawEvent),
    Marker { position: i64, discarded: Discarded },
    Unreadable(Unreadable),
}

impl Fenced for Item {
    fn position(&self) -> i64 {
        match self {
            Item::Event(e) => e.position,
            Item::Marker { position, .. } => *position,
            Item::Unreadable(u) => u.position,
        }
    }
    fn aggregate(&self) -> &AggKey {
        match self {
            Item::Event(e) => &e.aggregate_key,
            Item::Marker { discarded, .. } => &discarded.aggregate_key,
            Item::Unreadable(u) => &u.aggregate_key,
        }
    }
}

impl Item {
    /// Encodes the item and hands it to `producer` under `token`; the topic
    /// it went to. The one encoding both delivery modes use.
    pub(super) fn send_with(
        &self,
        encoder: &mut Encoder,
        buf: &mut Vec<u8>,
        producer: &KafkaProducer,
        token: usize,
    ) -> Result<Arc<str>, SendError> {
        match self {
            Item::Event(e) => {
                encoder.value(e, buf);
                let topic = encoder.topic(&e.aggregate_type, &e.event_type);
                let headers = encoder.headers(e);
                producer.send(&topic, &e.aggregate_key, buf, headers, e.timestamp.timestamp_millis(), token)?;
                Ok(topic)
            }
            Item::Marker { discarded: d, .. } => {
                let (value, headers) = encoder.discarded(d);
                let topic = encoder.topic(&d.aggregate_type, &d.event_type);
                producer.send(&topic, &d.aggregate_key, &value, headers, d.discarded_at.timestamp_millis(), token)?;
                Ok(topic)
            }
            Item::Unreadable(u) => Err(SendError::Failed(PublishError::permanent("unreadable", u.error.clone()))),
        }
    }
}

/// One term's feed: see [`Relay::open_feed`].
pub(super) struct TermFeed {
    pub stop: crate::shutdown::Trigger,
    pub handle: FeedHandle,
    pub pages: mpsc::Receiver<Vec<FeedRow>>,
    pub idle: mpsc::Sender<Vec<FeedRow>>,
}

/// The lease this relay term runs under.
#[derive(Debug, Clone)]
pub struct Fence {
    pub epoch: i64,
    /// The keeper's view; the term ends as soon as it is not `Active { epoch }`.
    pub lease: watch::Receiver<LeaseState>,
}

impl Fence {
    /// Whether the keeper still says this term's epoch is active: looked at
    /// before anything is handed to the producer (the loop's wait notices a
    /// loss only after the pump ran).
    pub fn held(&self) -> bool {
        self.lease.borrow().active_epoch() == Some(self.epoch)
    }
}

/// Why a relay term ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Shutdown: in-flight deliveries settled (within the deadline), checkpoint persisted.
    Shutdown,
    /// The lease is gone: the producer was purged, nothing more was written.
    LeaseLost,
    /// An operator rewound the checkpoint to this position: start a new term from it.
    Rewound(i64),
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("relay configuration error: {0}")]
    Config(String),
    #[error("Kafka producer failed and must be recreated: {0}")]
    ProducerFatal(String),
    /// The store refused something the term cannot go on without; a new
    /// term starts (after backoff, re-checking the lease) from the checkpoint.
    #[error("store unavailable to the relay: {0}")]
    Store(String),
    /// An operator request cannot be carried out as asked (not parked, no
    /// such dead letters, a rewind out of range): it fails with this.
    #[error("{0}")]
    Refused(String),
    /// The lease keeper stopped (it never does unless it failed): this
    /// instance cannot tell whether it holds the lease, so it must not publish.
    #[error("the lease keeper stopped: this instance can no longer tell whether it holds the relay lease")]
    LeaseKeeperGone,
    /// A fenced store write was refused deep inside a term (an
    /// exactly-once park): another instance holds the lease. The term ends
    /// as [`Exit::LeaseLost`], never reported as a failure.
    #[error("a fenced store write was refused: another instance holds the relay lease")]
    Fenced,
}

/// One relay term: from the persisted checkpoint until shutdown, lease loss or rewind.
pub struct Relay {
    pub(super) store: DynStore,
    pub(super) cfg: RelayConfig,
    pub(super) config: Arc<Config>,
    pub(super) metrics: Metrics,
    pub(super) status: StatusTx,
    pub(super) fence: Option<Fence>,
    pub(super) sink: Arc<dyn DeadLetterSink>,
    pub(super) pause: crate::lease::pause::PauseHook,
    /// Carry out the pending operator requests, then stop (no feed reading):
    /// the CLI when no relay runs.
    pub(super) requests_only: bool,
    /// Request outcomes not recorded yet, shared by the terms of one runner.
    pub(super) unsaved: crate::relay::operator::Unsaved,
}

impl Relay {
    pub fn new(config: Arc<Config>, store: DynStore, metrics: Metrics, status: StatusTx) -> Relay {
        let sink: Arc<dyn DeadLetterSink> = Arc::new(store.clone());
        Relay {
            store,
            cfg: config.relay.clone(),
            config,
            metrics,
            status,
            fence: None,
            sink,
            pause: Default::default(),
            requests_only: false,
            unsaved: Default::default(),
        }
    }

    /// Carries out the pending operator requests, then stops; reads no feed.
    pub fn requests_only(mut self) -> Relay {
        self.requests_only = true;
        self
    }

    /// Test hook: lets the admin API freeze this relay's loop (fault injection only).
    pub fn with_pause(mut self, pause: crate::lease::pause::PauseHook) -> Relay {
        self.pause = pause;
        self
    }

    /// Shares `unsaved` (request outcomes not recorded yet) with this term.
    pub fn with_unsaved(mut self, unsaved: crate::relay::operator::Unsaved) -> Relay {
        self.unsaved = unsaved;
        self
    }

    /// A relay with its own status channel, unfenced (one instance: library
    /// use, tests, benchmarks).
    pub fn standalone(
        config: &Config,
        store: DynStore,
        metrics: Metrics,
    ) -> (Relay, watch::Receiver<crate::relay::RelayStatus>) {
        let (tx, rx) = watch::channel(crate::relay::RelayStatus::default());
        (Relay::new(Arc::new(config.clone()), store, metrics, StatusTx::new(tx)), rx)
    }

    /// Routes dead letters (policy `skip`) elsewhere (the DlqActor).
    pub fn with_sink(mut self, sink: Arc<dyn DeadLetterSink>) -> Relay {
        self.sink = sink;
        self
    }

    /// Runs under a lease: checkpoint writes are fenced by `fence.epoch`.
    pub fn with_fence(mut self, fence: Fence) -> Relay {
        self.fence = Some(fence);
        self
    }

    /// The feed of one term (both delivery modes): a reader from `after`
    /// with its stop trigger, or, for a relay that only serves operator
    /// requests, a channel that stays silent while `idle` lives.
    pub(super) fn open_feed(&self, after: i64) -> TermFeed {
        let reader = FeedReader {
            store: self.store.clone(),
            after,
            page_size: self.cfg.batch_size,
            poll_interval: Duration::from_millis(self.cfg.poll_interval_ms),
            backoff: Backoff::new(&self.cfg.retry),
            status: self.status.clone(),
            errors: self.metrics.relay_feed_errors.clone(),
        };
        let stop = crate::shutdown::Trigger::new();
        let handle = FeedHandle::new(reader, stop.subscribe());
        let (idle, idle_rx) = mpsc::channel(1);
        let pages = if self.requests_only { idle_rx } else { handle.respawn(after) };
        TermFeed { stop, handle, pages, idle }
    }

    /// Writes the checkpoint, conditional on the lease epoch when fenced.
    pub(super) async fn write_checkpoint(&self, position: i64) -> Result<(), StoreError> {
        let name = &self.cfg.consumer_name;
        match &self.fence {
            Some(f) => self.store.set_checkpoint_fenced(name, f.epoch, position).await,
            None => self.store.set_checkpoint(name, position).await,
        }
    }

    /// The operators' discards, whose markers the feed (or a replay) must
    /// publish in their events' place (`relay::discards`); without them the
    /// term does not start, as without the parked list.
    pub(super) async fn discards(&self) -> Result<crate::relay::discards::Discards, RelayError> {
        crate::relay::discards::Discards::load(&*self.store, self.name())
            .await
            .map_err(|e| RelayError::Store(format!("cannot read discarded events: {e}")))
    }

    /// Records a parked aggregate, conditional on the lease epoch when fenced.
    pub(super) async fn park_record(&self, p: &crate::store::parking::Parked) -> Result<(), StoreError> {
        crate::relay::parking::park_at(&self.store, p, self.fence.as_ref().map(|f| f.epoch)).await
    }

    pub(super) fn name(&self) -> &str {
        &self.cfg.consumer_name
    }

    /// Runs one term until shutdown, lease loss or rewind, on a producer made now.
    pub async fn run(self, shutdown: Shutdown) -> Result<Exit, RelayError> {
        let warm =
            WarmProducer::start(&self.config.kafka, &Delivery::AtLeastOnce, self.status.clone(), shutdown.clone())?;
        self.run_warm(warm, shutdown).await
    }

    /// Runs one term on a producer made before it (a standby's, connected
    /// while it waited for the lease).
    pub async fn run_warm(self, warm: WarmProducer, mut shutdown: Shutdown) -> Result<Exit, RelayError> {
        let started = Instant::now();
        let WarmProducer { producer, completions, watch: broker_watch } = warm;
        let Some(checkpoint) = unless_lease_lost(&self.fence, self.initial_checkpoint(&mut shutdown)).await else {
            return Ok(Exit::LeaseLost);
        };
        let Some(checkpoint) = checkpoint else { return Ok(Exit::Shutdown) };
        self.status.checkpoint(checkpoint);
        self.metrics.relay_checkpoint_position.set(checkpoint);
        let checkpoint_read = started.elapsed();
        match unless_lease_lost(&self.fence, self.ensure_topics(&mut shutdown)).await {
            None => return Ok(Exit::LeaseLost),
            Some(false) => return Ok(Exit::Shutdown),
            Some(true) => {}
        }
        let topics_checked = started.elapsed();
        // Without the parked list the window would publish a parked
        // aggregate's held events: the term does not start (a new one does,
        // after backoff), as in exactly-once mode.
        let parked = self
            .store
            .parked(self.name())
            .await
            .map_err(|e| RelayError::Store(format!("cannot read parked aggregates: {e}")))?;
        tracing::debug!(
            checkpoint_read = ?checkpoint_read,
            topics_checked = ?topics_checked,
            parked_read = ?started.elapsed(),
            "relay start steps (time since the term began)"
        );
        let discards = self.discards().await?;
        let mut window = Window::new(checkpoint, self.cfg.max_in_flight);
        window.set_parked(
            parked
                .iter()
                .map(|p| (AggKey::from(p.parked.aggregate_id.as_str()), p.parked.position.unwrap_or(i64::MIN))),
        );
        self.metrics.dlq_parked_aggregates.set(parked.len() as i64);
        self.status.update(|s| {
            s.running = true;
            s.parked_aggregates = parked.len() as u64;
            true
        });
        let TermFeed { stop: feed_stop, handle: feed, pages, idle: idle_tx } = self.open_feed(checkpoint);
        tracing::info!(consumer = %self.name(), checkpoint, parked = parked.len(), fenced = self.fence.is_some(), "relay started");
        let breaker =
            CircuitBreaker::new(self.cfg.breaker.clone(), Some(self.metrics.clone())).watching(producer.broker());
        let mut run = Run {
            producer,
            encoder: Encoder::from_config(&self.config.kafka),
            window,
            breaker,
            backoff: Backoff::new(&self.cfg.retry),
            retries: BTreeSet::new(),
            suspects: BTreeMap::new(),
            resent_alone: BTreeSet::new(),
            solo: None,
            solo_not_before: Instant::now(),
            checkpoint,
            last_persist: None,
            replays: HashMap::new(),
            request_parts: HashMap::new(),
            requests: crate::relay::operator::TermRequests::new(
                self.store.clone(),
                self.name(),
                self.fence.as_ref().map_or(0, |f| f.epoch),
                self.unsaved.clone(),
            ),
            discards,
            letter_slots: HashMap::new(),
            unwritten_letters: HashMap::new(),
            value: Vec::with_capacity(4096),
            sent_at: foldhash::HashMap::default(),
            over_max: BTreeSet::new(),
            feed,
            sent_by_topic: crate::metrics::ByLabel::new(&self.metrics.messages_sent),
            processed_by_type: crate::metrics::ByLabel::new(&self.metrics.cdc_events_processed),
            duration_by_type: crate::metrics::ByLabel::new(&self.metrics.cdc_processing_duration),
            exit: None,
            rewind: None,
            unpark_later: Vec::new(),
            relay: self,
        };
        let exit = run.main(completions, pages, &mut shutdown).await;
        drop(idle_tx);
        feed_stop.fire();
        drop(broker_watch);
        run.relay.status.update(|s| {
            s.running = false;
            true
        });
        exit
    }

    pub(super) async fn initial_checkpoint(&self, shutdown: &mut Shutdown) -> Option<i64> {
        let mut attempt = 0;
        loop {
            match self.store.get_checkpoint(self.name()).await {
                Ok(c) => return Some(c.unwrap_or(0)),
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "cannot read the relay checkpoint; retrying");
                    self.status.feed_failed(format!("cannot read the relay checkpoint: {e}"));
                    if !shutdown.sleep(Backoff::new(&self.cfg.retry).delay(attempt.min(16))).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Creates missing topics; retries while the broker is unreachable (the
    /// broker watch, started before, reports that state). False on shutdown.
    pub(super) async fn ensure_topics(&self, shutdown: &mut Shutdown) -> bool {
        let k = &self.config.kafka;
        let topics: Vec<String> = all_topics(k.per_event_type(), &k.topic_prefix).into_iter().map(|(t, _)| t).collect();
        let exactly_once = self.cfg.delivery == crate::config::DeliveryMode::ExactlyOnce;
        let mut attempt: u32 = 0;
        loop {
            let timeout = Duration::from_secs(10);
            let create = async {
                match crate::relay::admin::ensure_topics(k, &topics, timeout).await {
                    // The progress topic is compacted with one partition (the last record counts).
                    Ok(()) if exactly_once => {
                        let topic = &self.cfg.progress_topic;
                        // One this call created is compacted as asked (and a broker
                        // may describe it before its config is visible): only an
                        // existing one is checked.
                        let made = crate::relay::admin::ensure_progress_topic(k, topic, timeout).await;
                        if made == Ok(false) {
                            match crate::relay::admin::progress_topic_problem(k, topic, timeout).await {
                                Ok(Some(problem)) => tracing::warn!("{problem}"),
                                Ok(None) => {}
                                Err(e) => tracing::debug!(error = %e, "cannot describe the progress topic"),
                            }
                        }
                        made.map(|_| ())
                    }
                    other => other,
                }
            };
            // A shutdown does not wait for the admin call (up to its timeout).
            let created = tokio::select! {
                c = create => c,
                _ = shutdown.recv() => return false,
            };
            match created {
                Ok(()) => return true,
                Err(e) if !e.transient => {
                    tracing::error!(error = %e, "cannot create topics; publishing will report the same error");
                    self.status.error(e.to_string());
                    return true;
                }
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(error = %e, brokers = %self.config.kafka.brokers, attempt, "Kafka unreachable while creating topics; relay degraded, retrying");
                    self.status.error(e.to_string());
                    if !shutdown.sleep(Backoff::new(&self.cfg.retry).delay(attempt.min(10))).await {
                        return false;
                    }
                }
            }
        }
    }
}

/// `step`, unless the lease of `fence` is lost first (None): a term's start
/// (checkpoint read, topics, `init_transactions`) retries for as long as the
/// store or the broker is away, and a lease lost meanwhile must end it before
/// it acts (an `init_transactions` would fence the new holder).
pub(super) async fn unless_lease_lost<T>(
    fence: &Option<Fence>,
    step: impl std::future::Future<Output = T>,
) -> Option<T> {
    let mut fence = fence.clone();
    tokio::select! {
        biased;
        _ = lease_lost(&mut fence) => None,
        t = step => Some(t),
    }
}

/// Resolves when the lease of `fence` is no longer held at its epoch (never without a fence).
pub(super) async fn lease_lost(fence: &mut Option<Fence>) {
    match fence {
        Some(f) => {
            let epoch = f.epoch;
            // An error means the keeper is gone: treat as lost.
            let _ = f.lease.wait_for(|s| s.active_epoch() != Some(epoch)).await;
        }
        None => std::future::pending().await,
    }
}
