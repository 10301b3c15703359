//! The relay loop: read the feed after the checkpoint, publish in order with
//! many deliveries in flight, and persist the checkpoint only past events the
//! broker confirmed.
//!
//! Failure handling, in order of preference:
//! 1. A delivery fails: stop submitting, let the in-flight ones settle, then
//!    retry the first failed event alone with exponential backoff.
//! 2. Transient failures count against the circuit breaker. While it is open
//!    the relay sends nothing and waits; half-open probes go one at a time.
//!    The checkpoint does not move and nothing is dead-lettered
//!    (unless `dlq_on_transient_exhaustion` is explicitly enabled).
//! 3. A permanent failure (the event can never be published as it is) goes to
//!    the dead-letter sink after `max_attempts`; then the relay moves on.
//! 4. The store is unavailable: nothing is read, the checkpoint stays, the
//!    relay retries with backoff.
//!
//! Guarantee: `checkpoint <= highest position such that every event up to it
//! was confirmed by Kafka or durably dead-lettered`.

use async_trait::async_trait;
use chrono::Utc;
use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::{Config, RelayConfig};
use crate::envelope::StoredEvent;
use crate::metrics::Metrics;
use crate::relay::breaker::{BreakerState, CircuitBreaker};
use crate::relay::publisher::{KafkaPublisher, PublishError};
use crate::relay::retry::Backoff;
use crate::relay::topics::{all_topics, topic_of};
use crate::shutdown::Shutdown;
use crate::store::{DeadLetter, DynStore, StoreError};

/// Where events that can never be published go. The store by default; the
/// actor layer routes it through the DlqActor.
#[async_trait]
pub trait DeadLetterSink: Send + Sync {
    async fn dead_letter(&self, letter: DeadLetter) -> Result<(), StoreError>;
}

#[async_trait]
impl DeadLetterSink for DynStore {
    async fn dead_letter(&self, letter: DeadLetter) -> Result<(), StoreError> {
        self.dlq_insert(letter).await
    }
}

/// What the relay publishes about itself (read by /health and the actors).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RelayStatus {
    pub running: bool,
    pub checkpoint: i64,
    pub head: i64,
    pub lag: i64,
    pub breaker: BreakerState,
    pub broker_ok: bool,
    pub store_ok: bool,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub last_error: Option<String>,
    pub updated_at: chrono::DateTime<Utc>,
}

impl Default for RelayStatus {
    fn default() -> Self {
        RelayStatus {
            running: false,
            checkpoint: 0,
            head: 0,
            lag: 0,
            breaker: BreakerState::Closed,
            broker_ok: true,
            store_ok: true,
            delivered: 0,
            dead_lettered: 0,
            last_error: None,
            updated_at: Utc::now(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("relay configuration error: {0}")]
    Config(String),
}

type Settled = (StoredEvent, Instant, Result<(i32, i64), PublishError>);

enum Retried {
    Delivered,
    DeadLettered,
    Shutdown,
}

pub struct Relay {
    store: DynStore,
    sink: Arc<dyn DeadLetterSink>,
    publisher: KafkaPublisher,
    cfg: RelayConfig,
    topics: Vec<String>,
    default_currency: String,
    metrics: Metrics,
    breaker: CircuitBreaker,
    backoff: Backoff,
    status: watch::Sender<RelayStatus>,
    head: i64,
    last_head_check: Option<Instant>,
}

impl Relay {
    pub fn new(config: &Config, store: DynStore, metrics: Metrics) -> Result<Relay, RelayError> {
        let publisher = KafkaPublisher::new(&config.kafka).map_err(|e| RelayError::Config(e.message))?;
        let (status, _) = watch::channel(RelayStatus::default());
        Ok(Relay {
            sink: Arc::new(store.clone()),
            store,
            publisher,
            cfg: config.relay.clone(),
            topics: all_topics(config).into_iter().map(|(t, _)| t).collect(),
            default_currency: config.service.default_currency.clone(),
            breaker: CircuitBreaker::new(config.relay.breaker.clone(), Some(metrics.clone())),
            backoff: Backoff::new(&config.relay.retry),
            metrics,
            status,
            head: 0,
            last_head_check: None,
        })
    }

    /// Routes dead letters elsewhere (the DlqActor).
    pub fn with_sink(mut self, sink: Arc<dyn DeadLetterSink>) -> Self {
        self.sink = sink;
        self
    }

    /// Shares the status channel (the CdcStreamProcessor keeps one across restarts).
    pub fn with_status(mut self, status: watch::Sender<RelayStatus>) -> Self {
        self.status = status;
        self
    }

    pub fn status(&self) -> watch::Receiver<RelayStatus> {
        self.status.subscribe()
    }

    pub fn publisher(&self) -> &KafkaPublisher {
        &self.publisher
    }

    fn update(&self, f: impl FnOnce(&mut RelayStatus)) {
        self.status.send_modify(|s| {
            f(s);
            s.updated_at = Utc::now();
        });
    }

    /// Runs until `shutdown`; then flushes in-flight deliveries and persists
    /// the checkpoint.
    pub async fn run(mut self, mut shutdown: Shutdown) -> Result<(), RelayError> {
        let name = self.cfg.consumer_name.clone();
        self.update(|s| s.running = true);
        self.ensure_topics(&mut shutdown).await;
        let Some(mut checkpoint) = self.initial_checkpoint(&name, &mut shutdown).await else {
            self.update(|s| s.running = false);
            return Ok(());
        };
        let mut confirmed = checkpoint;
        let mut next_read = checkpoint;
        self.metrics.relay_checkpoint_position.set(checkpoint);
        self.update(|s| s.checkpoint = checkpoint);
        let mut buffer: VecDeque<StoredEvent> = VecDeque::new();
        let mut inflight: FuturesOrdered<futures::future::BoxFuture<'static, Settled>> = FuturesOrdered::new();
        let mut wake = self.store.subscribe();
        let mut idle = false;
        let mut last_persist = Instant::now();
        let poll = Duration::from_millis(self.cfg.poll_interval_ms);
        tracing::info!(consumer = %name, checkpoint, "relay started");

        'main: loop {
            if shutdown.is_shutdown() {
                break;
            }
            // Fill: submit events in feed order while there is capacity.
            let limit = if self.breaker.state(Instant::now()) == BreakerState::Closed { self.cfg.max_in_flight } else { 1 };
            while !idle && inflight.len() < limit {
                if buffer.is_empty() {
                    match self.store.read_feed(next_read, self.cfg.batch_size).await {
                        Ok(v) if v.is_empty() => {
                            idle = true;
                            self.update(|s| s.store_ok = true);
                            break;
                        }
                        Ok(v) => {
                            self.update(|s| s.store_ok = true);
                            buffer.extend(v)
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "relay cannot read the store feed; retrying");
                            self.update(|s| {
                                s.store_ok = false;
                                s.last_error = Some(e.to_string());
                            });
                            if inflight.is_empty() && !shutdown.sleep(self.backoff.delay(3)).await {
                                break 'main;
                            }
                            break;
                        }
                    }
                }
                let Some(ev) = buffer.pop_front() else { break };
                next_read = ev.position;
                let fut = self.submit(ev).await;
                inflight.push_back(fut);
            }
            self.refresh_lag(confirmed).await;

            tokio::select! {
                biased;
                _ = shutdown.recv() => break,
                Some((ev, started, res)) = inflight.next(), if !inflight.is_empty() => {
                    match res {
                        Ok(_) => {
                            self.delivered(&ev, started);
                            confirmed = ev.position;
                        }
                        Err(err) => {
                            // Let everything after it settle; later events are re-sent
                            // after this one (same ce_id), never skipped.
                            while inflight.next().await.is_some() {}
                            buffer.clear();
                            match self.retry_event(&ev, err, &mut shutdown).await {
                                Retried::Delivered | Retried::DeadLettered => confirmed = ev.position,
                                Retried::Shutdown => break 'main,
                            }
                            next_read = confirmed;
                            idle = false;
                        }
                    }
                    if confirmed > checkpoint && (inflight.is_empty() || last_persist.elapsed() >= Duration::from_millis(200)) {
                        if self.persist(&name, confirmed).await {
                            checkpoint = confirmed;
                        }
                        last_persist = Instant::now();
                    }
                }
                _ = async { match wake.as_mut() { Some(w) => { let _ = w.changed().await; } None => std::future::pending().await } }, if idle => idle = false,
                _ = tokio::time::sleep(poll), if idle => idle = false,
            }
        }

        // Shutdown: stop reading, let in-flight deliveries finish (in order,
        // stopping at the first failure), persist the checkpoint.
        let deadline = Duration::from_millis(self.cfg.retry.max_backoff_ms.max(1000)) + Duration::from_millis(self.publisher.config().message_timeout_ms);
        let drain = async {
            while let Some((ev, started, res)) = inflight.next().await {
                match res {
                    Ok(_) => {
                        self.delivered(&ev, started);
                        confirmed = ev.position;
                    }
                    Err(_) => break,
                }
            }
        };
        if tokio::time::timeout(deadline, drain).await.is_err() {
            tracing::warn!("relay shutdown: in-flight deliveries did not settle in time; they will be re-sent on restart");
        }
        if confirmed > checkpoint {
            self.persist(&name, confirmed).await;
        }
        let _ = self.publisher.flush(Duration::from_secs(5)).await;
        tracing::info!(checkpoint = confirmed, "relay stopped");
        self.update(|s| s.running = false);
        Ok(())
    }

    async fn ensure_topics(&mut self, shutdown: &mut Shutdown) {
        let mut attempt = 0;
        loop {
            match self.publisher.ensure_topics(&self.topics, Duration::from_secs(10)).await {
                Ok(()) => {
                    self.update(|s| s.broker_ok = true);
                    return;
                }
                Err(e) if !e.transient => {
                    // A refused topic name etc.: publishing would fail the same way; report and go on.
                    tracing::error!(error = %e, "cannot create topics; publishing will report the same error");
                    self.update(|s| s.last_error = Some(e.to_string()));
                    return;
                }
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(error = %e, brokers = %self.publisher.config().brokers, attempt, "Kafka unreachable while creating topics; relay degraded, retrying");
                    self.update(|s| {
                        s.broker_ok = false;
                        s.last_error = Some(e.to_string());
                    });
                    if !shutdown.sleep(self.backoff.delay(attempt.min(10))).await {
                        return;
                    }
                }
            }
        }
    }

    async fn initial_checkpoint(&mut self, name: &str, shutdown: &mut Shutdown) -> Option<i64> {
        let mut attempt = 0;
        loop {
            match self.store.get_checkpoint(name).await {
                Ok(c) => return Some(c.unwrap_or(0)),
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(error = %e, "cannot read relay checkpoint; retrying");
                    self.update(|s| {
                        s.store_ok = false;
                        s.last_error = Some(e.to_string());
                    });
                    if !shutdown.sleep(self.backoff.delay(attempt.min(10))).await {
                        return None;
                    }
                }
            }
        }
    }

    async fn submit(&self, ev: StoredEvent) -> futures::future::BoxFuture<'static, Settled> {
        let started = Instant::now();
        let env = match ev.envelope.clone().upcast(&self.default_currency) {
            Ok(e) => e,
            Err(e) => {
                let err = PublishError::permanent("undecodable", format!("event cannot be upcast: {e}"));
                return async move { (ev, started, Err(err)) }.boxed();
            }
        };
        self.metrics.messages_sent.with_label_values(&[&topic_of(self.publisher.config(), &env)]).inc();
        match self.publisher.send(&env).await {
            Ok(p) => async move { (ev, started, p.await) }.boxed(),
            Err(e) => async move { (ev, started, Err(e)) }.boxed(),
        }
    }

    fn delivered(&mut self, ev: &StoredEvent, started: Instant) {
        let now = Instant::now();
        self.breaker.record_success(now);
        let et = &ev.envelope.event_type;
        self.metrics.cdc_events_processed.with_label_values(&[et]).inc();
        self.metrics.cdc_processing_duration.with_label_values(&[et]).observe(started.elapsed().as_secs_f64());
        let e2e = (Utc::now() - ev.envelope.timestamp).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
        self.metrics.event_end_to_end_latency.observe(e2e);
        let state = self.breaker.state(now);
        self.update(|s| {
            s.delivered += 1;
            s.broker_ok = true;
            s.breaker = state;
        });
    }

    async fn persist(&self, name: &str, position: i64) -> bool {
        match self.store.set_checkpoint(name, position).await {
            Ok(()) => {
                self.metrics.relay_checkpoint_position.set(position);
                self.update(|s| s.checkpoint = position);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, position, "cannot persist relay checkpoint; will retry");
                self.update(|s| s.store_ok = false);
                false
            }
        }
    }

    async fn refresh_lag(&mut self, confirmed: i64) {
        let due = self.last_head_check.is_none_or(|t| t.elapsed() >= Duration::from_millis(250));
        if due {
            if let Ok(h) = self.store.head_position().await {
                self.head = h;
            }
            self.last_head_check = Some(Instant::now());
        }
        let lag = (self.head - confirmed).max(0);
        self.metrics.relay_lag_events.set(lag);
        let head = self.head;
        self.update(|s| {
            s.head = head;
            s.lag = lag;
        });
    }

    fn failed(&mut self, ev: &StoredEvent, err: &PublishError) {
        let now = Instant::now();
        self.metrics.cdc_events_failed.with_label_values(&[&ev.envelope.event_type, &err.kind]).inc();
        if err.transient {
            self.breaker.record_failure(now);
            if let Some(f) = self.publisher.fatal_error() {
                tracing::error!(error = %f, "Kafka producer hit a fatal error; recreating it");
                if let Ok(p) = KafkaPublisher::new(self.publisher.config()) {
                    self.publisher = p;
                }
            }
        }
        let state = self.breaker.state(now);
        let transient = err.transient;
        let msg = err.message.clone();
        self.update(|s| {
            s.breaker = state;
            if transient {
                s.broker_ok = false;
            }
            s.last_error = Some(msg);
        });
    }

    /// Retries one event alone until it is delivered, dead-lettered or shutdown.
    async fn retry_event(&mut self, ev: &StoredEvent, first: PublishError, shutdown: &mut Shutdown) -> Retried {
        let mut err = first;
        let mut attempt: u32 = 1;
        let first_failed = Utc::now();
        self.failed(ev, &err);
        loop {
            let exhausted = attempt >= self.backoff.max_attempts;
            if exhausted && attempt == self.backoff.max_attempts {
                self.metrics.retry_failure.with_label_values(&["publish"]).inc();
            }
            if exhausted && (!err.transient || self.cfg.dlq_on_transient_exhaustion) {
                return self.dead_letter(ev, &err, attempt, first_failed, shutdown).await;
            }
            if exhausted && attempt == self.backoff.max_attempts {
                tracing::warn!(position = ev.position, event_id = %ev.envelope.event_id, error = %err,
                    "event still failing after {attempt} attempts with a transient error; relay paused until the broker recovers");
            }
            let now = Instant::now();
            let wait = if self.breaker.state(now) == BreakerState::Open {
                self.breaker.remaining_open(now)
            } else {
                self.backoff.delay(attempt)
            };
            if !shutdown.sleep(wait).await {
                return Retried::Shutdown;
            }
            if !self.breaker.allows(Instant::now()) {
                continue;
            }
            attempt += 1;
            self.metrics.retry_attempts.with_label_values(&["publish"]).inc();
            let started = Instant::now();
            let settled = self.submit(ev.clone()).await;
            let res = tokio::select! {
                r = settled => r.2,
                _ = shutdown.recv() => return Retried::Shutdown,
            };
            match res {
                Ok(_) => {
                    self.metrics.retry_success.with_label_values(&["publish"]).inc();
                    self.delivered(ev, started);
                    tracing::info!(position = ev.position, attempt, "event delivered after retrying");
                    return Retried::Delivered;
                }
                Err(e) => {
                    err = e;
                    self.failed(ev, &err);
                }
            }
        }
    }

    async fn dead_letter(&mut self, ev: &StoredEvent, err: &PublishError, attempts: u32, first_failed: chrono::DateTime<Utc>, shutdown: &mut Shutdown) -> Retried {
        let env = &ev.envelope;
        let now = Utc::now();
        let letter = DeadLetter {
            id: Uuid::now_v7(),
            position: Some(ev.position),
            event_id: env.event_id,
            aggregate_id: env.aggregate_id,
            event_type: env.event_type.clone(),
            payload: serde_json::to_string(env).unwrap_or_default(),
            error_message: format!("{} ({})", err.message, err.kind),
            failure_count: attempts as i32,
            first_failed_at: first_failed,
            last_failed_at: now,
            created_at: now,
        };
        let mut tries = 0;
        loop {
            match self.sink.dead_letter(letter.clone()).await {
                Ok(()) => break,
                Err(e) => {
                    // The event must not be skipped unless it is durably in the DLQ.
                    tries += 1;
                    tracing::warn!(error = %e, "cannot write dead letter; retrying");
                    if !shutdown.sleep(self.backoff.delay(tries.min(10))).await {
                        return Retried::Shutdown;
                    }
                }
            }
        }
        tracing::error!(position = ev.position, event_id = %env.event_id, event_type = %env.event_type, error = %err,
            "event can never be published as it is; moved to dead_letter_queue");
        self.metrics.dlq_messages.inc();
        self.metrics.dlq_messages_by_event_type.with_label_values(&[&env.event_type]).inc();
        self.metrics.dlq_depth.inc();
        self.update(|s| s.dead_lettered += 1);
        Retried::DeadLettered
    }
}
