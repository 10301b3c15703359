//! `Deliverer`: publishing one event with retry, circuit breaker and DLQ.
//!
//! Shared by both feeds: the position-based feed of the embedded store
//! (`pipeline::Relay`) and the Scylla CDC consumers (`relay::cdc`), so the
//! failure policy exists once. Safe to share between tasks (`Arc<Deliverer>`).
//!
//! Guarantee: `retry` returns `Delivered` only after the broker confirmed the
//! event and `DeadLettered` only after the dead letter is durably stored and
//! the error was permanent (or the explicit seed flag is on). Transient
//! failures never end in the DLQ by default: they pause behind the breaker.

use async_trait::async_trait;
use chrono::Utc;
use futures::future::BoxFuture;
use futures::FutureExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::Config;
use crate::domain::upcast::current_version;
use crate::envelope::EventEnvelope;
use crate::metrics::Metrics;
use crate::relay::breaker::{BreakerState, CircuitBreaker};
use crate::relay::publisher::{KafkaPublisher, PublishError};
use crate::relay::retry::Backoff;
use crate::relay::topics::topic_of;
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

/// How a retried event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retried {
    Delivered,
    DeadLettered,
    Shutdown,
}

pub struct Deliverer {
    /// Behind an `Arc`: `submit` takes it per event without copying the config.
    publisher: RwLock<Arc<KafkaPublisher>>,
    breaker: Mutex<CircuitBreaker>,
    backoff: Backoff,
    sink: RwLock<Arc<dyn DeadLetterSink>>,
    metrics: Metrics,
    status: watch::Sender<RelayStatus>,
    default_currency: String,
    dlq_on_transient_exhaustion: bool,
    /// Per-event-type metric handles (label lookups are hashed and locked).
    by_type: Mutex<HashMap<String, TypeMetrics>>,
    /// Confirmed deliveries not yet folded into the published status.
    unpublished: Mutex<(u64, Instant)>,
}

#[derive(Clone)]
struct TypeMetrics {
    processed: prometheus::IntCounter,
    duration: prometheus::Histogram,
    sent: prometheus::IntCounter,
}

/// How often the delivered count is folded into `RelayStatus` under load.
const STATUS_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

impl Deliverer {
    pub fn new(
        config: &Config,
        sink: Arc<dyn DeadLetterSink>,
        metrics: Metrics,
        status: watch::Sender<RelayStatus>,
    ) -> Result<Deliverer, PublishError> {
        Ok(Deliverer {
            publisher: RwLock::new(Arc::new(KafkaPublisher::new(&config.kafka)?)),
            breaker: Mutex::new(CircuitBreaker::new(config.relay.breaker.clone(), Some(metrics.clone()))),
            backoff: Backoff::new(&config.relay.retry),
            sink: RwLock::new(sink),
            metrics,
            status,
            default_currency: config.service.default_currency.clone(),
            dlq_on_transient_exhaustion: config.relay.dlq_on_transient_exhaustion,
            by_type: Mutex::new(HashMap::new()),
            unpublished: Mutex::new((0, Instant::now())),
        })
    }

    pub fn set_sink(&self, sink: Arc<dyn DeadLetterSink>) {
        if let Ok(mut s) = self.sink.write() {
            *s = sink;
        }
    }

    pub fn publisher(&self) -> Arc<KafkaPublisher> {
        self.publisher.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    pub fn status(&self) -> &watch::Sender<RelayStatus> {
        &self.status
    }

    pub fn update(&self, f: impl FnOnce(&mut RelayStatus)) {
        self.status.send_modify(|s| {
            f(s);
            s.updated_at = Utc::now();
        });
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.lock().unwrap_or_else(|p| p.into_inner()).state(Instant::now())
    }

    fn with_breaker<T>(&self, f: impl FnOnce(&mut CircuitBreaker) -> T) -> T {
        f(&mut self.breaker.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn type_metrics(&self, env: &EventEnvelope, topic: impl FnOnce() -> String) -> TypeMetrics {
        let mut map = self.by_type.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = map.get(&env.event_type) {
            return m.clone();
        }
        let et = env.event_type.as_str();
        let m = TypeMetrics {
            processed: self.metrics.cdc_events_processed.with_label_values(&[et]),
            duration: self.metrics.cdc_processing_duration.with_label_values(&[et]),
            sent: self.metrics.messages_sent.with_label_values(&[&topic()]),
        };
        map.insert(env.event_type.clone(), m.clone());
        m
    }

    /// Hands an event to the producer; the future resolves with the broker's verdict.
    pub async fn submit(&self, env: &EventEnvelope) -> BoxFuture<'static, Result<(), PublishError>> {
        let upcast;
        let env = if env.schema_version == current_version(&env.event_type) {
            env
        } else {
            match env.clone().upcast(&self.default_currency) {
                Ok(e) => {
                    upcast = e;
                    &upcast
                }
                Err(e) => {
                    let err = PublishError::permanent("undecodable", format!("event cannot be upcast: {e}"));
                    return async move { Err(err) }.boxed();
                }
            }
        };
        let publisher = self.publisher();
        self.type_metrics(env, || topic_of(publisher.config().per_event_type(), &publisher.config().topic_prefix, env))
            .sent
            .inc();
        match publisher.send(env).await {
            Ok(p) => p.map(|r| r.map(|_| ())).boxed(),
            Err(e) => async move { Err(e) }.boxed(),
        }
    }

    /// Records a confirmed delivery.
    pub fn delivered(&self, env: &EventEnvelope, started: Instant) {
        let now = Instant::now();
        let state = self.with_breaker(|b| {
            b.record_success(now);
            b.state(now)
        });
        let m = self.type_metrics(env, || {
            let p = self.publisher();
            topic_of(p.config().per_event_type(), &p.config().topic_prefix, env)
        });
        m.processed.inc();
        m.duration.observe(started.elapsed().as_secs_f64());
        let e2e = (Utc::now() - env.timestamp).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
        self.metrics.event_end_to_end_latency.observe(e2e);
        // Fold deliveries into the published status at most every STATUS_EVERY,
        // and at once after a quiet period or a state change.
        let flush = {
            let mut u = self.unpublished.lock().unwrap_or_else(|p| p.into_inner());
            u.0 += 1;
            let published = self.status.borrow();
            let due = now.duration_since(u.1) >= STATUS_EVERY || state != published.breaker || !published.broker_ok;
            drop(published);
            if due {
                let n = u.0;
                *u = (0, now);
                Some(n)
            } else {
                None
            }
        };
        if let Some(n) = flush {
            self.update(|s| {
                s.delivered += n;
                s.broker_ok = true;
                s.breaker = state;
            });
        }
    }

    /// Publishes deliveries counted but not yet in the status (call when idle).
    pub fn flush_status(&self) {
        let n = {
            let mut u = self.unpublished.lock().unwrap_or_else(|p| p.into_inner());
            let n = u.0;
            *u = (0, Instant::now());
            n
        };
        let state = self.breaker_state();
        self.status.send_if_modified(|s| {
            let changed = n > 0 || s.breaker != state;
            s.delivered += n;
            s.breaker = state;
            if changed {
                s.updated_at = Utc::now();
            }
            changed
        });
    }

    fn failed(&self, env: &EventEnvelope, err: &PublishError) {
        self.metrics.cdc_events_failed.with_label_values(&[&env.event_type, &err.kind]).inc();
        if err.transient {
            self.with_breaker(|b| b.record_failure(Instant::now()));
            let fatal = self.publisher().fatal_error();
            if let Some(f) = fatal {
                tracing::error!(error = %f, "Kafka producer hit a fatal error; recreating it");
                let cfg = self.publisher().config().clone();
                if let (Ok(p), Ok(mut slot)) = (KafkaPublisher::new(&cfg), self.publisher.write()) {
                    *slot = Arc::new(p);
                }
            }
        }
        let state = self.breaker_state();
        let (transient, msg) = (err.transient, err.message.clone());
        self.update(|s| {
            s.breaker = state;
            if transient {
                s.broker_ok = false;
            }
            s.last_error = Some(msg);
        });
    }

    /// Publishes one event and waits for the verdict, retrying as needed (CDC path).
    pub async fn deliver(&self, env: &EventEnvelope, position: Option<i64>, shutdown: &mut Shutdown) -> Retried {
        loop {
            if self.with_breaker(|b| b.allows(Instant::now())) {
                break;
            }
            let wait = self.with_breaker(|b| b.remaining_open(Instant::now()));
            if !shutdown.sleep(wait.max(std::time::Duration::from_millis(10))).await {
                return Retried::Shutdown;
            }
        }
        let started = Instant::now();
        match self.send_and_wait(env, shutdown).await {
            None => Retried::Shutdown,
            Some(Ok(())) => {
                self.delivered(env, started);
                Retried::Delivered
            }
            Some(Err(e)) => self.retry(env, position, e, shutdown).await,
        }
    }

    /// Submits one event and waits for the broker's verdict; None on shutdown.
    async fn send_and_wait(&self, env: &EventEnvelope, shutdown: &mut Shutdown) -> Option<Result<(), PublishError>> {
        let fut = self.submit(env).await;
        tokio::select! {
            r = fut => Some(r),
            _ = shutdown.recv() => None,
        }
    }

    /// Retries one event alone until it is delivered, dead-lettered or shutdown.
    pub async fn retry(
        &self,
        env: &EventEnvelope,
        position: Option<i64>,
        first: PublishError,
        shutdown: &mut Shutdown,
    ) -> Retried {
        let mut err = first;
        let mut attempt: u32 = 1;
        let first_failed = Utc::now();
        self.failed(env, &err);
        loop {
            let max = self.backoff.max_attempts;
            let exhausted = attempt >= max;
            if attempt == max {
                self.metrics.retry_failure.with_label_values(&["publish"]).inc();
            }
            if exhausted && (!err.transient || self.dlq_on_transient_exhaustion) {
                return self.dead_letter(env, position, &err, attempt, first_failed, shutdown).await;
            }
            if attempt == max {
                tracing::warn!(?position, event_id = %env.event_id, error = %err,
                    "event still failing after {attempt} attempts with a transient error; relay paused until the broker recovers");
            }
            let now = Instant::now();
            let wait = self.with_breaker(|b| {
                if b.state(now) == BreakerState::Open {
                    b.remaining_open(now)
                } else {
                    self.backoff.delay(attempt)
                }
            });
            if !shutdown.sleep(wait).await {
                return Retried::Shutdown;
            }
            if !self.with_breaker(|b| b.allows(Instant::now())) {
                continue;
            }
            attempt += 1;
            self.metrics.retry_attempts.with_label_values(&["publish"]).inc();
            let started = Instant::now();
            let Some(res) = self.send_and_wait(env, shutdown).await else { return Retried::Shutdown };
            match res {
                Ok(()) => {
                    self.metrics.retry_success.with_label_values(&["publish"]).inc();
                    self.delivered(env, started);
                    tracing::info!(?position, attempt, "event delivered after retrying");
                    return Retried::Delivered;
                }
                Err(e) => {
                    err = e;
                    self.failed(env, &err);
                }
            }
        }
    }

    async fn dead_letter(
        &self,
        env: &EventEnvelope,
        position: Option<i64>,
        err: &PublishError,
        attempts: u32,
        first_failed: chrono::DateTime<Utc>,
        shutdown: &mut Shutdown,
    ) -> Retried {
        let now = Utc::now();
        let letter = DeadLetter {
            id: Uuid::now_v7(),
            position,
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
            let sink = self.sink.read().unwrap_or_else(|p| p.into_inner()).clone();
            match sink.dead_letter(letter.clone()).await {
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
        tracing::error!(?position, event_id = %env.event_id, event_type = %env.event_type, error = %err,
            "event can never be published as it is; moved to dead_letter_queue");
        self.metrics.dlq_messages.inc();
        self.metrics.dlq_messages_by_event_type.with_label_values(&[&env.event_type]).inc();
        self.metrics.dlq_depth.inc();
        self.update(|s| s.dead_lettered += 1);
        Retried::DeadLettered
    }
}
