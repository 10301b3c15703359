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

use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

use crate::config::{Config, RelayConfig};
use crate::envelope::StoredEvent;
use crate::metrics::Metrics;
use crate::relay::breaker::BreakerState;
pub use crate::relay::deliver::RelayStatus;
use crate::relay::deliver::{DeadLetterSink, Deliverer, Retried};
use crate::relay::publisher::{KafkaPublisher, PublishError};
use crate::relay::topics::topic_names;
use crate::shutdown::Shutdown;
use crate::store::{DynStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("relay configuration error: {0}")]
    Config(String),
}

type Settled = (StoredEvent, Instant, Result<(), PublishError>);

pub struct Relay {
    store: DynStore,
    deliverer: Arc<Deliverer>,
    cfg: RelayConfig,
    topics: Vec<String>,
    metrics: Metrics,
    head: i64,
    last_head_check: Option<Instant>,
}

impl Relay {
    pub fn new(config: &Config, store: DynStore, metrics: Metrics) -> Result<Relay, RelayError> {
        let (status, _) = watch::channel(RelayStatus::default());
        Relay::with_status(config, store, metrics, status)
    }

    /// Shares a status channel (the CdcStreamProcessor keeps one across restarts).
    pub fn with_status(
        config: &Config,
        store: DynStore,
        metrics: Metrics,
        status: watch::Sender<RelayStatus>,
    ) -> Result<Relay, RelayError> {
        let sink: Arc<dyn DeadLetterSink> = Arc::new(store.clone());
        let deliverer =
            Deliverer::new(config, sink, metrics.clone(), status).map_err(|e| RelayError::Config(e.message))?;
        Ok(Relay {
            store,
            deliverer: Arc::new(deliverer),
            cfg: config.relay.clone(),
            topics: topic_names(config.kafka.per_event_type(), &config.kafka.topic_prefix),
            metrics,
            head: 0,
            last_head_check: None,
        })
    }

    /// Routes dead letters elsewhere (the DlqActor).
    pub fn with_sink(self, sink: Arc<dyn DeadLetterSink>) -> Self {
        self.deliverer.set_sink(sink);
        self
    }

    pub fn status(&self) -> watch::Receiver<RelayStatus> {
        self.deliverer.status().subscribe()
    }

    pub fn publisher(&self) -> Arc<KafkaPublisher> {
        self.deliverer.publisher()
    }

    fn update(&self, f: impl FnOnce(&mut RelayStatus)) {
        self.deliverer.update(f)
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
        // Position of the last event read into `buffer`; the next read starts after it.
        let mut read_pos = checkpoint;
        // The next feed page, read while the current one is being published.
        let mut prefetch: Option<tokio::task::JoinHandle<Result<Vec<StoredEvent>, StoreError>>> = None;
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
            let limit = if self.deliverer.breaker_state() == BreakerState::Closed { self.cfg.max_in_flight } else { 1 };
            while !idle && inflight.len() < limit {
                if buffer.len() < self.cfg.batch_size / 2 && prefetch.is_none() && limit > 1 {
                    let (store, from, n) = (self.store.clone(), read_pos, self.cfg.batch_size);
                    prefetch = Some(tokio::spawn(async move { store.read_feed(from, n).await }));
                }
                if buffer.is_empty() {
                    let page = match prefetch.take() {
                        Some(h) => h
                            .await
                            .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("feed read task failed: {e}")))),
                        None => self.store.read_feed(read_pos, self.cfg.batch_size).await,
                    };
                    if page.is_ok() {
                        // Only a change wakes status readers (pages come every few ms under load).
                        self.deliverer.status().send_if_modified(|s| {
                            let changed = !std::mem::replace(&mut s.store_ok, true);
                            if changed {
                                s.updated_at = chrono::Utc::now();
                            }
                            changed
                        });
                    }
                    match page {
                        Ok(v) if v.is_empty() => {
                            idle = true;
                            self.deliverer.flush_status();
                            break;
                        }
                        Ok(v) => {
                            read_pos = v.last().map(|e| e.position).unwrap_or(read_pos);
                            buffer.extend(v)
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "relay cannot read the store feed; retrying");
                            self.update(|s| {
                                s.store_ok = false;
                                s.last_error = Some(e.to_string());
                            });
                            if inflight.is_empty() {
                                // Nothing in flight would wake the select below: wait, then read again.
                                if !shutdown.sleep(self.deliverer.backoff().delay(3)).await {
                                    break 'main;
                                }
                                continue;
                            }
                            break;
                        }
                    }
                }
                let Some(ev) = buffer.pop_front() else { break };
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
                            self.deliverer.delivered(&ev.envelope, started);
                            confirmed = ev.position;
                        }
                        Err(err) => {
                            // Let everything after it settle; later events are re-sent
                            // after this one (same ce_id), never skipped.
                            while inflight.next().await.is_some() {}
                            buffer.clear();
                            if let Some(h) = prefetch.take() {
                                h.abort();
                            }
                            match self.deliverer.retry(&ev.envelope, Some(ev.position), err, &mut shutdown).await {
                                Retried::Delivered | Retried::DeadLettered => confirmed = ev.position,
                                Retried::Shutdown => break 'main,
                            }
                            read_pos = confirmed;
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
        let deadline = Duration::from_millis(self.cfg.retry.max_backoff_ms.max(1000))
            + Duration::from_millis(self.deliverer.publisher().config().message_timeout_ms);
        let drain = async {
            while let Some((ev, started, res)) = inflight.next().await {
                match res {
                    Ok(_) => {
                        self.deliverer.delivered(&ev.envelope, started);
                        confirmed = ev.position;
                    }
                    Err(_) => break,
                }
            }
        };
        if tokio::time::timeout(deadline, drain).await.is_err() {
            tracing::warn!(
                "relay shutdown: in-flight deliveries did not settle in time; they will be re-sent on restart"
            );
        }
        if confirmed > checkpoint {
            self.persist(&name, confirmed).await;
        }
        let _ = self.deliverer.publisher().flush(Duration::from_secs(5)).await;
        tracing::info!(checkpoint = confirmed, "relay stopped");
        self.update(|s| s.running = false);
        Ok(())
    }

    async fn ensure_topics(&mut self, shutdown: &mut Shutdown) {
        let mut attempt = 0;
        loop {
            match self.deliverer.publisher().ensure_topics(&self.topics, Duration::from_secs(10)).await {
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
                    tracing::warn!(error = %e, brokers = %self.deliverer.publisher().config().brokers, attempt, "Kafka unreachable while creating topics; relay degraded, retrying");
                    self.update(|s| {
                        s.broker_ok = false;
                        s.last_error = Some(e.to_string());
                    });
                    if !shutdown.sleep(self.deliverer.backoff().delay(attempt.min(10))).await {
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
                    if !shutdown.sleep(self.deliverer.backoff().delay(attempt.min(10))).await {
                        return None;
                    }
                }
            }
        }
    }

    async fn submit(&self, ev: StoredEvent) -> futures::future::BoxFuture<'static, Settled> {
        let started = Instant::now();
        let fut = self.deliverer.submit(&ev.envelope).await;
        async move {
            let r = fut.await;
            (ev, started, r)
        }
        .boxed()
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
        if due {
            self.deliverer.status().send_if_modified(|s| {
                let changed = s.head != head || s.lag != lag;
                s.head = head;
                s.lag = lag;
                changed
            });
        }
    }
}
