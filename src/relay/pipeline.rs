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
use crate::relay::breaker::{BreakerState, CircuitBreaker};
use crate::relay::encode::{Discarded, Encoder};
use crate::relay::error::PublishError;
use crate::relay::feed::{self, FeedReader};
use crate::relay::producer::{Completion, Delivery, KafkaProducer, SendError};
use crate::relay::retry::Backoff;
use crate::relay::sink::DeadLetterSink;
use crate::relay::status::StatusTx;
use crate::relay::topics::all_topics;
use crate::relay::window::{AggKey, Fenced, Pushed, Slot, Window};
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

/// The lease this relay term runs under.
#[derive(Debug, Clone)]
pub struct Fence {
    pub epoch: i64,
    /// The keeper's view; the term ends as soon as it is not `Active { epoch }`.
    pub lease: watch::Receiver<LeaseState>,
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
    pub(super) pause: crate::relay::pause::PauseHook,
    /// Carry out the pending operator requests, then stop (no feed reading):
    /// the CLI when no relay runs.
    pub(super) requests_only: bool,
}

/// The mutable state of a running term.
pub(super) struct Run {
    pub(super) relay: Relay,
    pub(super) producer: KafkaProducer,
    pub(super) encoder: Encoder,
    pub(super) window: Window<Item>,
    pub(super) breaker: CircuitBreaker,
    pub(super) backoff: Backoff,
    /// Transient failures waiting for their backoff: (due, slot).
    pub(super) retries: BTreeSet<(Instant, Slot)>,
    /// Permanent failures awaiting a solo resend: slot -> last error.
    pub(super) suspects: BTreeMap<Slot, PublishError>,
    pub(super) solo: Option<Slot>,
    pub(super) solo_not_before: Instant,
    /// Persisted checkpoint.
    pub(super) checkpoint: i64,
    pub(super) last_persist: Instant,
    /// Side-lane replays in progress: (request, aggregate) -> slots still open
    /// (aggregate "" for dead-letter replays).
    pub(super) replays: HashMap<(uuid::Uuid, AggKey), BTreeSet<Slot>>,
    /// Requests in progress -> what is left and what was done.
    pub(super) request_parts: HashMap<uuid::Uuid, super::requests::Progress>,
    /// Dead letters being replayed: slot -> dead letter id.
    pub(super) letter_slots: HashMap<Slot, uuid::Uuid>,
    pub(super) value: Vec<u8>,
    /// When each in-flight slot was handed to the producer.
    pub(super) sent_at: HashMap<Slot, Instant>,
    pub(super) feed: FeedHandle,
    pub(super) sent_by_topic: HashMap<Arc<str>, prometheus::IntCounter>,
    pub(super) exit: Option<Exit>,
}

const PERSIST_EVERY: Duration = Duration::from_millis(200);

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
        }
    }

    /// Carries out the pending operator requests, then stops; reads no feed.
    pub fn requests_only(mut self) -> Relay {
        self.requests_only = true;
        self
    }

    /// Test hook: lets the admin API freeze this relay's loop (fault injection only).
    pub fn with_pause(mut self, pause: crate::relay::pause::PauseHook) -> Relay {
        self.pause = pause;
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

    fn name(&self) -> &str {
        &self.cfg.consumer_name
    }

    /// Runs one term until shutdown, lease loss or rewind.
    pub async fn run(self, mut shutdown: Shutdown) -> Result<Exit, RelayError> {
        let (producer, completions) = KafkaProducer::new(&self.config.kafka, &Delivery::AtLeastOnce)
            .map_err(|e| RelayError::Config(e.message))?;
        let broker_watch = spawn_broker_watch(producer.clone(), self.status.clone(), shutdown.clone());
        let Some(checkpoint) = self.initial_checkpoint(&mut shutdown).await else {
            broker_watch.abort();
            return Ok(Exit::Shutdown);
        };
        self.status.checkpoint(checkpoint);
        self.metrics.relay_checkpoint_position.set(checkpoint);
        if !self.ensure_topics(&producer, &mut shutdown).await {
            broker_watch.abort();
            return Ok(Exit::Shutdown);
        }
        let parked = match self.store.parked(self.name()).await {
            Ok(p) => p,
            Err(e) => {
                self.status.error(format!("cannot read parked aggregates: {e}"));
                Vec::new()
            }
        };
        let mut window = Window::new(checkpoint, self.cfg.max_in_flight);
        window.set_parked(parked.iter().map(|p| AggKey::from(p.parked.aggregate_id.as_str())));
        self.metrics.dlq_parked_aggregates.set(parked.len() as i64);
        self.status.update(|s| {
            s.running = true;
            s.parked_aggregates = parked.len() as u64;
            true
        });
        let reader = FeedReader {
            store: self.store.clone(),
            after: checkpoint,
            page_size: self.cfg.batch_size,
            poll_interval: Duration::from_millis(self.cfg.poll_interval_ms),
            backoff: Backoff::new(&self.cfg.retry),
            status: self.status.clone(),
            errors: self.metrics.relay_feed_errors.clone(),
        };
        let feed_stop = crate::shutdown::Trigger::new();
        let feed = FeedHandle::new(reader, feed_stop.subscribe());
        let (idle_tx, idle_rx) = mpsc::channel(1);
        let pages = if self.requests_only { idle_rx } else { feed.respawn(checkpoint) };
        tracing::info!(consumer = %self.name(), checkpoint, parked = parked.len(), fenced = self.fence.is_some(), "relay started");
        let mut run = Run {
            producer,
            encoder: Encoder::from_config(&self.config.kafka),
            window,
            breaker: CircuitBreaker::new(self.cfg.breaker.clone(), Some(self.metrics.clone())),
            backoff: Backoff::new(&self.cfg.retry),
            retries: BTreeSet::new(),
            suspects: BTreeMap::new(),
            solo: None,
            solo_not_before: Instant::now(),
            checkpoint,
            last_persist: Instant::now(),
            replays: HashMap::new(),
            request_parts: HashMap::new(),
            letter_slots: HashMap::new(),
            value: Vec::with_capacity(4096),
            sent_at: HashMap::new(),
            feed,
            sent_by_topic: HashMap::new(),
            exit: None,
            relay: self,
        };
        let exit = run.main(completions, pages, &mut shutdown).await;
        drop(idle_tx);
        feed_stop.fire();
        broker_watch.abort();
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

    /// Creates missing topics; retries while the broker is unreachable. False on shutdown.
    pub(super) async fn ensure_topics(&self, producer: &KafkaProducer, shutdown: &mut Shutdown) -> bool {
        let k = &self.config.kafka;
        let mut topics: Vec<String> =
            all_topics(k.per_event_type(), &k.topic_prefix).into_iter().map(|(t, _)| t).collect();
        if self.cfg.delivery == crate::config::DeliveryMode::ExactlyOnce {
            topics.push(self.cfg.progress_topic.clone());
        }
        let mut attempt: u32 = 0;
        loop {
            match crate::relay::admin::ensure_topics(&self.config.kafka, &topics, Duration::from_secs(10)).await {
                Ok(()) => return true,
                Err(e) if !e.transient => {
                    tracing::error!(error = %e, "cannot create topics; publishing will report the same error");
                    self.status.error(e.to_string());
                    return true;
                }
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(error = %e, brokers = %self.config.kafka.brokers, attempt, "Kafka unreachable while creating topics; relay degraded, retrying");
                    let _ = producer.probe(Duration::from_secs(2)).await;
                    self.status.error(e.to_string());
                    if !shutdown.sleep(Backoff::new(&self.cfg.retry).delay(attempt.min(10))).await {
                        return false;
                    }
                }
            }
        }
    }
}

/// Starts (and restarts) the feed reader.
pub(super) struct FeedHandle {
    template: FeedReader,
    stop: Shutdown,
}

impl FeedHandle {
    pub(super) fn new(template: FeedReader, stop: Shutdown) -> FeedHandle {
        FeedHandle { template, stop }
    }

    pub(super) fn respawn(&self, after: i64) -> mpsc::Receiver<Vec<FeedRow>> {
        let mut r = self.template.clone();
        r.after = after;
        feed::spawn(r, 2, self.stop.clone())
    }
}

/// Mirrors the producer's broker state into the relay status.
pub(super) fn spawn_broker_watch(
    producer: KafkaProducer,
    status: StatusTx,
    mut shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut b = producer.broker();
        loop {
            let state = b.borrow_and_update().clone();
            status.broker(&state);
            tokio::select! {
                r = b.changed() => if r.is_err() { return },
                _ = shutdown.recv() => return,
            }
        }
    })
}

impl Run {
    async fn main(
        &mut self,
        mut completions: mpsc::UnboundedReceiver<Completion>,
        mut pages: mpsc::Receiver<Vec<FeedRow>>,
        shutdown: &mut Shutdown,
    ) -> Result<Exit, RelayError> {
        let mut lost = self.relay.fence.clone();
        let mut requests = tokio::time::interval(Duration::from_millis(self.relay.cfg.poll_interval_ms.max(100)));
        requests.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.relay.pause.hold().await;
            if let Some(exit) = self.exit.take() {
                return self.finish(exit, &mut completions).await;
            }
            self.pump().await;
            self.persist(false).await;
            if let Some(exit) = self.exit.take() {
                return self.finish(exit, &mut completions).await;
            }
            let next_retry = self.retries.first().map(|(t, _)| *t);
            let breaker_wait = self.breaker_wait();
            let solo_wait = (!self.suspects.is_empty() && self.solo.is_none() && self.window.in_flight() == 0)
                .then_some(self.solo_not_before);
            let wake_at = [next_retry, breaker_wait, solo_wait].into_iter().flatten().min();
            let room = self.window.has_room() && self.suspects.is_empty();
            tokio::select! {
                biased;
                _ = shutdown.recv() => return self.finish(Exit::Shutdown, &mut completions).await,
                _ = lease_lost(&mut lost) => {
                    self.producer.purge();
                    tracing::warn!(consumer = %self.relay.name(), "relay lease lost; stopped publishing (the new leader resumes from the checkpoint)");
                    return Ok(Exit::LeaseLost);
                }
                Some(c) = completions.recv() => {
                    self.on_completion(c).await;
                    // Drain what else arrived without waiting.
                    while let Ok(c) = completions.try_recv() {
                        self.on_completion(c).await;
                    }
                }
                page = pages.recv(), if room => match page {
                    Some(p) => self.on_page(p),
                    None => {
                        // The reader task ended without being asked to (it panicked): start a new one.
                        tracing::error!("relay feed reader ended unexpectedly; restarting it");
                        pages = self.feed.respawn(self.window.last_pushed());
                    }
                },
                _ = sleep_until(wake_at), if wake_at.is_some() => self.due_retries(),
                _ = requests.tick() => {
                    self.relay.status.flush();
                    self.poll_requests().await;
                    if self.relay.requests_only && self.request_parts.is_empty() && self.window.is_empty() {
                        return self.finish(Exit::Shutdown, &mut completions).await;
                    }
                    if let Some(f) = self.producer.fatal_error() {
                        self.producer.purge();
                        return Err(RelayError::ProducerFatal(f));
                    }
                }
            }
        }
    }

    fn breaker_wait(&mut self) -> Option<Instant> {
        let now = Instant::now();
        (self.breaker.state(now) == BreakerState::Open).then(|| now + self.breaker.remaining_open(now))
    }

    /// Sends what may go now.
    async fn pump(&mut self) {
        if !self.suspects.is_empty() {
            self.solo_step().await;
            return;
        }
        let now = Instant::now();
        let state = self.breaker.state(now);
        self.relay.status.breaker(state);
        let limit = match state {
            BreakerState::Closed => usize::MAX,
            BreakerState::HalfOpen => usize::from(self.window.in_flight() == 0),
            BreakerState::Open => 0,
        };
        let mut sent = 0;
        while sent < limit {
            let Some((slot, item)) = self.window.take_ready() else { break };
            if let Item::Unreadable(u) = item {
                // Its turn came (everything before it in its aggregate is done): park it.
                let e = PublishError::permanent("unreadable", u.error.clone());
                self.window.fail(slot);
                self.give_up(slot, e).await;
                continue;
            }
            match self.send(slot) {
                Ok(()) => sent += 1,
                Err(SendError::QueueFull) => {
                    self.window.requeue(slot);
                    break;
                }
                Err(SendError::Failed(e)) => self.failed(slot, e).await,
            }
        }
    }

    /// Encodes and hands slot's item to the producer.
    pub(super) fn send(&mut self, slot: Slot) -> Result<(), SendError> {
        let Some(item) = self.window.get(slot) else { return Ok(()) };
        let (topic, key, value, headers, ts) = match item {
            Item::Event(e) => {
                self.encoder.value(e, &mut self.value);
                let topic = self.encoder.topic(&e.aggregate_type, &e.event_type);
                (topic, e.aggregate_key.clone(), None, self.encoder.headers(e), e.timestamp.timestamp_millis())
            }
            Item::Marker { discarded, .. } => {
                let (v, h) = self.encoder.discarded(discarded);
                let topic = self.encoder.topic(&discarded.aggregate_type, &discarded.event_type);
                (topic, discarded.aggregate_key.clone(), Some(v), h, discarded.discarded_at.timestamp_millis())
            }
            Item::Unreadable(_) => {
                return Err(SendError::Failed(PublishError::permanent("unreadable", "the stored row cannot be read")))
            }
        };
        let value = value.as_deref().unwrap_or(&self.value);
        self.producer.send(&topic, &key, value, headers, ts, slot)?;
        self.sent_at.insert(slot, Instant::now());
        let metrics = &self.relay.metrics;
        self.sent_by_topic
            .entry(topic.clone())
            .or_insert_with(|| metrics.messages_sent.with_label_values(&[&*topic]))
            .inc();
        Ok(())
    }

    async fn on_completion(&mut self, c: Completion) {
        if self.window.state(c.token) != Some(crate::relay::window::State::InFlight) {
            return; // a report of an earlier term or of a purged message
        }
        let solo = self.solo == Some(c.token);
        if solo {
            self.solo = None;
        }
        match c.result {
            Ok(_) => {
                self.breaker.record_success(Instant::now());
                self.suspects.remove(&c.token);
                if let Some(item) = self.window.confirm(c.token) {
                    self.confirmed(c.token, item).await;
                }
            }
            Err(e) => self.failed(c.token, e).await,
        }
    }

    /// A delivery of `slot` failed.
    pub(super) async fn failed(&mut self, slot: Slot, e: PublishError) {
        self.sent_at.remove(&slot);
        self.window.fail(slot);
        let attempts = self.window.attempts(slot);
        if let Some(Item::Event(ev)) = self.window.get(slot) {
            self.relay.metrics.cdc_events_failed.with_label_values(&[&ev.event_type, &e.kind]).inc();
        }
        self.relay.status.error(e.message.clone());
        if e.transient {
            self.breaker.record_failure(Instant::now());
            self.relay.status.breaker(self.breaker.state(Instant::now()));
            self.suspects.remove(&slot);
            let max = self.backoff.max_attempts;
            if attempts == max {
                self.relay.metrics.retry_failure.with_label_values(&["publish"]).inc();
                tracing::warn!(slot, error = %e, "event still failing after {attempts} attempts with a transient error; retrying behind the breaker until the broker recovers");
            }
            if attempts >= max && self.relay.cfg.dlq_on_transient_exhaustion {
                self.give_up(slot, e).await;
                return;
            }
            let due = Instant::now() + self.backoff.delay(attempts);
            self.retries.insert((due, slot));
        } else {
            self.suspects.insert(slot, e);
        }
    }

    /// Transient retries whose backoff is over become ready again.
    fn due_retries(&mut self) {
        let now = Instant::now();
        while let Some(&(due, slot)) = self.retries.first() {
            if due > now {
                break;
            }
            self.retries.pop_first();
            if self.window.retry(slot) {
                self.relay.metrics.retry_attempts.with_label_values(&["publish"]).inc();
            }
        }
    }

    /// Permanent failures: once nothing else is in flight, resend the oldest
    /// suspect alone; after `max_attempts` it is parked (or skipped).
    async fn solo_step(&mut self) {
        while self.solo.is_none() && self.window.in_flight() == 0 {
            let Some((&slot, err)) = self.suspects.iter().next() else { return };
            let err = err.clone();
            let unreadable = matches!(self.window.get(slot), Some(Item::Unreadable(_)));
            if unreadable || self.window.attempts(slot) >= self.backoff.max_attempts {
                if Instant::now() < self.solo_not_before {
                    return;
                }
                self.suspects.remove(&slot);
                self.relay.metrics.retry_failure.with_label_values(&["publish"]).inc();
                self.give_up(slot, err).await;
                continue;
            }
            if Instant::now() < self.solo_not_before {
                return;
            }
            self.window.retry(slot);
            if self.window.take(slot).is_none() {
                self.suspects.remove(&slot);
                continue;
            }
            self.relay.metrics.retry_attempts.with_label_values(&["publish"]).inc();
            match self.send(slot) {
                Ok(()) => {
                    self.solo = Some(slot);
                    self.solo_not_before = Instant::now() + self.backoff.delay(self.window.attempts(slot) + 1);
                }
                Err(SendError::QueueFull) => {
                    self.window.requeue(slot);
                    self.window.fail(slot);
                    return;
                }
                Err(SendError::Failed(e)) => {
                    self.window.fail(slot);
                    self.suspects.insert(slot, e);
                }
            }
        }
    }

    async fn confirmed(&mut self, slot: Slot, item: Item) {
        let sent = self.sent_at.remove(&slot);
        if let Item::Event(e) = &item {
            let m = &self.relay.metrics;
            m.cdc_events_processed.with_label_values(&[&e.event_type]).inc();
            if let Some(t) = sent {
                m.cdc_processing_duration.with_label_values(&[&e.event_type]).observe(t.elapsed().as_secs_f64());
            }
            let e2e = (chrono::Utc::now() - e.timestamp).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
            m.event_end_to_end_latency.observe(e2e);
        }
        self.relay.status.delivered(1);
        self.replay_progress(slot).await;
    }

    fn on_page(&mut self, page: Vec<FeedRow>) {
        let mut held = 0;
        for row in page {
            let item = match row {
                FeedRow::Event(e) => Item::Event(e),
                FeedRow::Unreadable(u) => {
                    tracing::error!(position = u.position, aggregate = %u.aggregate_key, error = %u.error, "unreadable row in the event store; its aggregate will be parked when its turn comes");
                    Item::Unreadable(u)
                }
            };
            if self.window.push(item) == Pushed::Held {
                held += 1;
            }
        }
        if held > 0 {
            tracing::debug!(held, "events of parked aggregates held");
        }
    }

    /// Persists the watermark (every 200 ms while busy, when idle, or when forced).
    pub(super) async fn persist(&mut self, force: bool) {
        let wm = self.window.watermark();
        if wm <= self.checkpoint {
            return;
        }
        if !force && !self.window.is_empty() && self.last_persist.elapsed() < PERSIST_EVERY {
            return;
        }
        self.last_persist = Instant::now();
        let name = self.relay.cfg.consumer_name.clone();
        let res = match &self.relay.fence {
            Some(f) => self.relay.store.set_checkpoint_fenced(&name, f.epoch, wm).await,
            None => self.relay.store.set_checkpoint(&name, wm).await,
        };
        match res {
            Ok(()) => {
                self.checkpoint = wm;
                self.relay.metrics.relay_checkpoint_position.set(wm);
                self.relay.status.checkpoint(wm);
                if self.window.is_empty() {
                    self.relay.status.flush();
                }
            }
            Err(StoreError::Fenced { .. }) => {
                tracing::warn!(consumer = %name, position = wm, "checkpoint write refused: another instance holds the relay lease; stepping down");
                self.producer.purge();
                self.exit = Some(Exit::LeaseLost);
            }
            Err(e) => {
                tracing::warn!(error = %e, position = wm, "cannot persist the relay checkpoint; will retry");
                self.relay.status.error(format!("cannot persist the checkpoint: {e}"));
            }
        }
    }

    /// Ends the term: on shutdown, lets in-flight deliveries settle (bounded) and persists.
    async fn finish(
        &mut self,
        exit: Exit,
        completions: &mut mpsc::UnboundedReceiver<Completion>,
    ) -> Result<Exit, RelayError> {
        if exit == Exit::LeaseLost {
            self.producer.purge();
            return Ok(exit);
        }
        let deadline = Duration::from_millis(self.relay.config.kafka.message_timeout_ms)
            + Duration::from_millis(self.relay.cfg.retry.max_backoff_ms.max(1000));
        let drain = async {
            while self.window.in_flight() > 0 {
                match completions.recv().await {
                    Some(c) => {
                        if self.window.state(c.token) != Some(crate::relay::window::State::InFlight) {
                            continue;
                        }
                        match c.result {
                            Ok(_) => {
                                if let Some(item) = self.window.confirm(c.token) {
                                    self.confirmed(c.token, item).await;
                                }
                            }
                            Err(_) => {
                                self.window.fail(c.token);
                            }
                        }
                    }
                    None => break,
                }
            }
        };
        if tokio::time::timeout(deadline, drain).await.is_err() {
            tracing::warn!("relay stop: in-flight deliveries did not settle in time; they are re-sent after restart");
        }
        if let Exit::Rewound(to) = exit {
            // Everything after `to` is published again by the next term (same ce_ids).
            let name = self.relay.cfg.consumer_name.clone();
            let res = match &self.relay.fence {
                Some(f) => self.relay.store.set_checkpoint_fenced(&name, f.epoch, to).await,
                None => self.relay.store.set_checkpoint(&name, to).await,
            };
            return match res {
                Ok(()) => {
                    self.relay.status.checkpoint(to);
                    self.relay.metrics.relay_checkpoint_position.set(to);
                    Ok(exit)
                }
                Err(StoreError::Fenced { .. }) => Ok(Exit::LeaseLost),
                Err(e) => {
                    tracing::error!(error = %e, to, "cannot move the checkpoint back; the rewind did not happen");
                    Ok(exit)
                }
            };
        }
        self.persist(true).await;
        if self.exit.take() == Some(Exit::LeaseLost) {
            return Ok(Exit::LeaseLost);
        }
        let _ = self.producer.flush(Duration::from_secs(2)).await;
        self.relay.status.flush();
        tracing::info!(checkpoint = self.checkpoint, "relay stopped");
        Ok(exit)
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

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
