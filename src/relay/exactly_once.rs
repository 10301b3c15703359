//! The exactly-once relay (`relay.delivery = "exactly-once"`): each batch of
//! feed events is one Kafka transaction together with a progress record
//! (see [`super::progress`]), so read_committed consumers see every event
//! exactly once, in order, even across crashes and takeovers.
//!
//! Guarantees:
//! - Start order: hold the lease, `init_transactions` (the broker aborts a
//!   former holder's open transaction and fences its producer: same
//!   `transactional.id`, derived from the consumer name), then read the
//!   progress topic read_committed to its end; only when it has no record
//!   (first start, migration from at-least-once) the store's checkpoint.
//! - A failed send aborts the transaction; the whole batch is retried in
//!   order after backoff (nothing of an aborted transaction is visible to
//!   read_committed consumers). A permanent failure inside a batch is found
//!   by committing the part before it and resending the suspect alone; it is
//!   then parked (durable in the store before any transaction moves progress
//!   past it) and the rest commits.
//! - Fenced (another producer with our id initialised): stop at once, never
//!   re-initialise blindly; the supervisor re-checks the lease first.
//! - Batches close at `relay.transaction_max_events` or
//!   `relay.transaction_max_ms`, or as soon as the feed has nothing more
//!   ready, so latency stays low at low load and batches grow under load.
//! - The store's checkpoint is still written after each commit (fenced), for
//!   /health, the lag metrics and the tools that read it.

use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use crate::relay::breaker::{BreakerState, CircuitBreaker};
use crate::relay::encode::Encoder;
use crate::relay::error::PublishError;
use crate::relay::feed::FeedReader;
use crate::relay::parking::parked_record;
use crate::relay::pipeline::{Exit, FeedHandle, Item, Relay, RelayError};
use crate::relay::producer::{Completion, Delivery, KafkaProducer, SendError, TxnErrorKind};
use crate::relay::progress::{self, Progress};
use crate::relay::requests::{plan, Plan, PlanCtx};
use crate::relay::retry::Backoff;
use crate::relay::window::{AggKey, Fenced};
use crate::shutdown::Shutdown;
use crate::store::feed::FeedRow;
use crate::store::requests::RequestStatus;
use crate::store::StoreError;

/// How one transaction attempt ended.
enum Outcome {
    Committed,
    /// Records refused for good (index in the batch -> error); the transaction was aborted.
    Permanent(Vec<(usize, PublishError)>),
    /// Aborted for a reason that may heal (broker down, timeout).
    Transient(String),
    Fenced(String),
    Fatal(String),
}

struct Txn {
    relay: Relay,
    producer: KafkaProducer,
    completions: mpsc::UnboundedReceiver<Completion>,
    encoder: Encoder,
    breaker: CircuitBreaker,
    backoff: Backoff,
    parked: HashSet<AggKey>,
    /// Feed position covered by the last committed transaction (or park records).
    position: i64,
    /// Last feed position taken from the reader.
    last_read: i64,
    next_token: usize,
    value: Vec<u8>,
    epoch: i64,
}

impl Relay {
    /// Runs one exactly-once term until shutdown, lease loss or rewind.
    pub async fn run_exactly_once(self, mut shutdown: Shutdown) -> Result<Exit, RelayError> {
        let k = &self.config.kafka;
        let id = format!("outboxd-{}", self.cfg.consumer_name);
        let delivery = Delivery::Transactional { id: id.clone(), timeout_ms: self.cfg.transaction_timeout_ms };
        let (producer, completions) = KafkaProducer::new(k, &delivery).map_err(|e| RelayError::Config(e.message))?;
        let epoch = self.fence.as_ref().map(|f| f.epoch).unwrap_or(0);
        let broker_watch = super::pipeline::spawn_broker_watch(producer.clone(), self.status.clone(), shutdown.clone());
        self.status.update(|s| {
            s.delivery = "exactly-once";
            true
        });
        let Some(store_checkpoint) = self.initial_checkpoint(&mut shutdown).await else { return Ok(Exit::Shutdown) };
        self.status.checkpoint(store_checkpoint);
        if !self.ensure_topics(&producer, &mut shutdown).await {
            return Ok(Exit::Shutdown);
        }
        // 1. Fence former holders; their open transaction is aborted by the broker.
        let mut attempt = 0;
        loop {
            match producer.init_transactions(Duration::from_secs(30)).await {
                Ok(()) => break,
                Err(e) if e.kind == TxnErrorKind::Retriable => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "init_transactions failed; retrying");
                    self.status.error(e.message.clone());
                    if !shutdown.sleep(Backoff::new(&self.cfg.retry).delay(attempt.min(10))).await {
                        return Ok(Exit::Shutdown);
                    }
                }
                Err(e) if e.kind == TxnErrorKind::Fenced => return Ok(Exit::LeaseLost),
                Err(e) => return Err(RelayError::ProducerFatal(e.message)),
            }
        }
        // 2. Where to resume: the last committed progress record, else the store's checkpoint.
        let position = loop {
            match progress::read_last(k, &self.cfg.progress_topic, &self.cfg.consumer_name, Duration::from_secs(30))
                .await
            {
                Ok(Some(p)) => break p.position,
                Ok(None) => {
                    tracing::info!(
                        checkpoint = store_checkpoint,
                        "no progress record on {}: starting from the store's checkpoint",
                        self.cfg.progress_topic
                    );
                    break store_checkpoint;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the progress topic; retrying");
                    if !shutdown.sleep(Duration::from_secs(1)).await {
                        return Ok(Exit::Shutdown);
                    }
                }
            }
        };
        let parked: HashSet<AggKey> = match self.store.parked(&self.cfg.consumer_name).await {
            Ok(v) => v.iter().map(|p| AggKey::from(p.parked.aggregate_id.as_str())).collect(),
            Err(e) => return Err(RelayError::Config(format!("cannot read parked aggregates: {e}"))),
        };
        self.metrics.dlq_parked_aggregates.set(parked.len() as i64);
        self.status.update(|s| {
            s.running = true;
            s.parked_aggregates = parked.len() as u64;
            true
        });
        tracing::info!(consumer = %self.cfg.consumer_name, transactional_id = %id, position, "exactly-once relay started");
        let reader = FeedReader {
            store: self.store.clone(),
            after: position,
            page_size: self.cfg.batch_size,
            poll_interval: Duration::from_millis(self.cfg.poll_interval_ms),
            backoff: Backoff::new(&self.cfg.retry),
            status: self.status.clone(),
            errors: self.metrics.relay_feed_errors.clone(),
        };
        let stop = crate::shutdown::Trigger::new();
        let feed = FeedHandle::new(reader, stop.subscribe());
        let (_idle_tx, idle_rx) = mpsc::channel(1);
        let pages = if self.requests_only { idle_rx } else { feed.respawn(position) };
        let mut t = Txn {
            producer,
            completions,
            encoder: Encoder::from_config(k),
            breaker: CircuitBreaker::new(self.cfg.breaker.clone(), Some(self.metrics.clone())),
            backoff: Backoff::new(&self.cfg.retry),
            parked,
            position,
            last_read: position,
            next_token: 1,
            value: Vec::with_capacity(4096),
            epoch,
            relay: self,
        };
        let exit = if t.relay.requests_only {
            t.requests().await.map(|e| e.unwrap_or(Exit::Shutdown))
        } else {
            t.main(pages, &feed, &mut shutdown).await
        };
        stop.fire();
        broker_watch.abort();
        t.relay.status.update(|s| {
            s.running = false;
            true
        });
        exit
    }
}

impl Txn {
    async fn main(
        &mut self,
        mut pages: mpsc::Receiver<Vec<FeedRow>>,
        feed: &FeedHandle,
        shutdown: &mut Shutdown,
    ) -> Result<Exit, RelayError> {
        let mut lost = self.relay.fence.clone();
        let mut requests = tokio::time::interval(Duration::from_millis(self.relay.cfg.poll_interval_ms.max(100)));
        let max_events = self.relay.cfg.transaction_max_events.max(1);
        let max_wait = Duration::from_millis(self.relay.cfg.transaction_max_ms.max(1));
        loop {
            self.relay.pause.hold().await;
            let first = tokio::select! {
                biased;
                _ = shutdown.recv() => return Ok(Exit::Shutdown),
                _ = super::pipeline::lease_lost(&mut lost) => {
                    self.producer.purge();
                    return Ok(Exit::LeaseLost);
                }
                page = pages.recv() => match page {
                    Some(p) => p,
                    None => {
                        tracing::error!("relay feed reader ended unexpectedly; restarting it");
                        pages = feed.respawn(self.last_read);
                        continue;
                    }
                },
                _ = requests.tick() => {
                    if let Some(exit) = self.requests().await? {
                        return Ok(exit);
                    }
                    continue;
                }
            };
            // Gather more while it is ready, up to the batch limits.
            let started = Instant::now();
            let mut rows = first;
            while rows.len() < max_events && started.elapsed() < max_wait {
                match pages.try_recv() {
                    Ok(more) => rows.extend(more),
                    Err(_) => break,
                }
            }
            let mut batch = Vec::with_capacity(rows.len().min(max_events));
            let mut rest = rows.into_iter();
            for row in rest.by_ref() {
                self.last_read = row.position();
                if let Some(item) = self.admit(row).await? {
                    batch.push(item);
                }
                if batch.len() >= max_events {
                    break;
                }
            }
            let leftover: Vec<FeedRow> = rest.collect();
            if let Some(exit) = self.publish(batch, self.last_read, shutdown).await? {
                return Ok(exit);
            }
            if !leftover.is_empty() {
                // Rows beyond the batch limit: a new batch right away.
                let last = leftover.last().map(FeedRow::position).unwrap_or(self.last_read);
                let mut batch = Vec::new();
                for row in leftover {
                    if let Some(item) = self.admit(row).await? {
                        batch.push(item);
                    }
                }
                self.last_read = last;
                if let Some(exit) = self.publish(batch, last, shutdown).await? {
                    return Ok(exit);
                }
            }
        }
    }

    /// A feed row into the batch, or held (parked aggregate; an unreadable row parks its aggregate now).
    async fn admit(&mut self, row: FeedRow) -> Result<Option<Item>, RelayError> {
        if self.parked.contains(row.aggregate_key()) {
            return Ok(None);
        }
        match row {
            FeedRow::Event(e) => Ok(Some(Item::Event(e))),
            FeedRow::Unreadable(u) => {
                let item = Item::Unreadable(u.clone());
                self.park(&item, &PublishError::permanent("unreadable", u.error.clone())).await?;
                Ok(None)
            }
        }
    }

    /// Durably parks the aggregate of `item` (retrying the store until it answers).
    async fn park(&mut self, item: &Item, e: &PublishError) -> Result<(), RelayError> {
        let p = parked_record(&self.relay.cfg.consumer_name, item, e);
        let mut attempt = 0;
        while let Err(err) = self.relay.store.park(&p).await {
            attempt += 1;
            tracing::warn!(error = %err, aggregate = %p.aggregate_id, "cannot record the parked aggregate yet; retrying");
            tokio::time::sleep(self.backoff.delay(attempt.min(10))).await;
        }
        if self.parked.insert(item.aggregate().clone()) {
            self.relay.metrics.dlq_parked_aggregates.inc();
            self.relay.status.update(|s| {
                s.parked_aggregates += 1;
                true
            });
        }
        tracing::error!(aggregate = %p.aggregate_id, position = ?p.position, error = %p.error, "event can never be published as it is; its aggregate is parked from it on");
        Ok(())
    }

    /// Commits `batch` (in order) with progress `position`, splitting around permanent failures.
    async fn publish(
        &mut self,
        mut batch: Vec<Item>,
        position: i64,
        shutdown: &mut Shutdown,
    ) -> Result<Option<Exit>, RelayError> {
        let mut attempts: u32 = 0;
        loop {
            self.wait_for_breaker(shutdown).await;
            if shutdown.is_shutdown() {
                return Ok(Some(Exit::Shutdown));
            }
            if batch.is_empty() {
                // Only held events: nothing to commit; the store checkpoint still moves.
                self.committed(&[], position, Instant::now()).await?;
                return Ok(None);
            }
            let end = position;
            let started = Instant::now();
            match self.transaction(&batch, end).await {
                Outcome::Committed => {
                    self.committed(&batch, end, started).await?;
                    return Ok(None);
                }
                Outcome::Fenced(m) => {
                    tracing::warn!(error = %m, "producer fenced: another relay took over; stepping down");
                    return Ok(Some(Exit::LeaseLost));
                }
                Outcome::Fatal(m) => return Err(RelayError::ProducerFatal(m)),
                Outcome::Transient(m) => {
                    attempts += 1;
                    self.breaker.record_failure(Instant::now());
                    self.relay.status.breaker(self.breaker.state(Instant::now()));
                    self.relay.status.error(m.clone());
                    tracing::warn!(error = %m, attempts, events = batch.len(), "transaction aborted; retrying the batch in order");
                    if !shutdown.sleep(self.backoff.delay(attempts)).await {
                        return Ok(Some(Exit::Shutdown));
                    }
                }
                Outcome::Permanent(mut failed) => {
                    failed.sort_by_key(|(i, _)| *i);
                    let (k, err) = failed.swap_remove(0);
                    // Commit what precedes the first suspect, then try it alone.
                    let suspect = batch[k].clone();
                    let rest: Vec<Item> = batch.split_off(k + 1);
                    batch.truncate(k);
                    if !batch.is_empty() {
                        let before = suspect.position() - 1;
                        if let Some(exit) = Box::pin(self.publish(std::mem::take(&mut batch), before, shutdown)).await?
                        {
                            return Ok(Some(exit));
                        }
                    }
                    if let Some(exit) = self.solo(suspect.clone(), err, shutdown).await? {
                        return Ok(Some(exit));
                    }
                    // The rest, without later events of a now parked aggregate.
                    batch = rest.into_iter().filter(|i| !self.parked.contains(i.aggregate())).collect();
                    attempts = 0;
                }
            }
        }
    }

    /// Resends a suspect alone until it commits or has failed `max_attempts` times (then parks it).
    async fn solo(
        &mut self,
        item: Item,
        mut err: PublishError,
        shutdown: &mut Shutdown,
    ) -> Result<Option<Exit>, RelayError> {
        let mut attempts = 1;
        loop {
            if attempts >= self.backoff.max_attempts {
                self.park(&item, &err).await?;
                return Ok(None);
            }
            if !shutdown.sleep(self.backoff.delay(attempts)).await {
                return Ok(Some(Exit::Shutdown));
            }
            attempts += 1;
            let started = Instant::now();
            match self.transaction(std::slice::from_ref(&item), item.position()).await {
                Outcome::Committed => {
                    self.committed(std::slice::from_ref(&item), item.position(), started).await?;
                    return Ok(None);
                }
                Outcome::Permanent(mut f) => err = f.swap_remove(0).1,
                Outcome::Transient(m) => tracing::warn!(error = %m, "transaction of a single event aborted; retrying"),
                Outcome::Fenced(_) => return Ok(Some(Exit::LeaseLost)),
                Outcome::Fatal(m) => return Err(RelayError::ProducerFatal(m)),
            }
        }
    }

    async fn wait_for_breaker(&mut self, shutdown: &mut Shutdown) {
        loop {
            let now = Instant::now();
            if self.breaker.state(now) != BreakerState::Open {
                return;
            }
            let wait = self.breaker.remaining_open(now).max(Duration::from_millis(10));
            if !shutdown.sleep(wait).await {
                return;
            }
        }
    }

    /// One transaction: the records of `batch` and a progress record at `position`.
    async fn transaction(&mut self, batch: &[Item], position: i64) -> Outcome {
        if let Err(e) = self.producer.begin_transaction().await {
            return classify(e.kind, e.message);
        }
        let base = self.next_token;
        let mut sent = 0usize;
        for (i, item) in batch.iter().enumerate() {
            let token = base + i;
            loop {
                match self.send(item, token) {
                    Ok(()) => break,
                    Err(SendError::QueueFull) => tokio::time::sleep(Duration::from_millis(2)).await,
                    Err(SendError::Failed(e)) => {
                        let _ = self.producer.abort_transaction(Duration::from_secs(30)).await;
                        self.next_token = base + batch.len() + 1;
                        return if e.transient {
                            Outcome::Transient(e.message)
                        } else {
                            Outcome::Permanent(vec![(i, e)])
                        };
                    }
                }
            }
            sent += 1;
        }
        let progress = Progress { position, epoch: self.epoch, committed_at: chrono::Utc::now(), cdc: None };
        let key = self.relay.cfg.consumer_name.clone();
        let progress_token = base + sent;
        let bytes = progress.to_bytes();
        let progress_sent = self.producer.send(
            &self.relay.cfg.progress_topic,
            &key,
            &bytes,
            rdkafka::message::OwnedHeaders::new(),
            progress.committed_at.timestamp_millis(),
            progress_token,
        );
        self.next_token = progress_token + 1;
        if let Err(e) = progress_sent {
            let _ = self.producer.abort_transaction(Duration::from_secs(30)).await;
            return Outcome::Transient(format!("cannot send the progress record: {e:?}"));
        }
        // Test hook: a pause here freezes the relay mid-transaction (zombie tests).
        self.relay.pause.hold().await;
        let timeout = Duration::from_millis(self.relay.cfg.transaction_timeout_ms);
        match self.producer.commit_transaction(timeout).await {
            Ok(()) => {
                self.drain(base, progress_token);
                Outcome::Committed
            }
            Err(e) => {
                let failed = self.failures(base, batch.len());
                if matches!(e.kind, TxnErrorKind::Abortable | TxnErrorKind::Retriable) {
                    if let Err(a) = self.producer.abort_transaction(timeout).await {
                        if matches!(a.kind, TxnErrorKind::Fenced | TxnErrorKind::Fatal) {
                            return classify(a.kind, a.message);
                        }
                    }
                }
                let permanent: Vec<(usize, PublishError)> = failed.into_iter().filter(|(_, e)| !e.transient).collect();
                if !permanent.is_empty() && matches!(e.kind, TxnErrorKind::Abortable | TxnErrorKind::Retriable) {
                    return Outcome::Permanent(permanent);
                }
                classify(e.kind, e.message)
            }
        }
    }

    fn send(&mut self, item: &Item, token: usize) -> Result<(), SendError> {
        match item {
            Item::Event(e) => {
                self.encoder.value(e, &mut self.value);
                let topic = self.encoder.topic(&e.aggregate_type, &e.event_type);
                let headers = self.encoder.headers(e);
                self.producer.send(
                    &topic,
                    &e.aggregate_key,
                    &self.value,
                    headers,
                    e.timestamp.timestamp_millis(),
                    token,
                )
            }
            Item::Marker { discarded, .. } => {
                let (v, h) = self.encoder.discarded(discarded);
                let topic = self.encoder.topic(&discarded.aggregate_type, &discarded.event_type);
                self.producer.send(
                    &topic,
                    &discarded.aggregate_key,
                    &v,
                    h,
                    discarded.discarded_at.timestamp_millis(),
                    token,
                )
            }
            Item::Unreadable(u) => Err(SendError::Failed(PublishError::permanent("unreadable", u.error.clone()))),
        }
    }

    /// Forgets the (all successful) delivery reports of a committed transaction.
    fn drain(&mut self, _base: usize, _last: usize) {
        while self.completions.try_recv().is_ok() {}
    }

    /// Failed records of the transaction that started at `base` (index -> error).
    fn failures(&mut self, base: usize, n: usize) -> Vec<(usize, PublishError)> {
        let mut out = Vec::new();
        while let Ok(c) = self.completions.try_recv() {
            if c.token >= base && c.token < base + n {
                if let Err(e) = c.result {
                    if e.kind != "purge_queue" && e.kind != "purge_inflight" {
                        out.push((c.token - base, e));
                    }
                }
            }
        }
        out
    }

    async fn committed(&mut self, batch: &[Item], position: i64, started: Instant) -> Result<(), RelayError> {
        let took = started.elapsed().as_secs_f64();
        self.breaker.record_success(Instant::now());
        self.relay.status.breaker(self.breaker.state(Instant::now()));
        self.relay.metrics.relay_transactions.with_label_values(&["committed"]).inc();
        let m = &self.relay.metrics;
        for item in batch {
            if let Item::Event(e) = item {
                m.cdc_events_processed.with_label_values(&[&e.event_type]).inc();
                m.cdc_processing_duration.with_label_values(&[&e.event_type]).observe(took);
                let e2e = (chrono::Utc::now() - e.timestamp).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
                m.event_end_to_end_latency.observe(e2e);
            }
        }
        self.relay.status.delivered(batch.len() as u64);
        self.position = self.position.max(position);
        let name = self.relay.cfg.consumer_name.clone();
        let res = match &self.relay.fence {
            Some(f) => self.relay.store.set_checkpoint_fenced(&name, f.epoch, self.position).await,
            None => self.relay.store.set_checkpoint(&name, self.position).await,
        };
        match res {
            Ok(()) => {
                self.relay.status.checkpoint(self.position);
                self.relay.metrics.relay_checkpoint_position.set(self.position);
            }
            // Kafka already refuses a fenced producer; the store says the same: step down.
            Err(StoreError::Fenced { .. }) => self.producer.purge(),
            Err(e) => tracing::warn!(error = %e, "cannot write the store checkpoint (progress is safe in Kafka)"),
        }
        Ok(())
    }

    /// Carries out operator requests between batches.
    async fn requests(&mut self) -> Result<Option<Exit>, RelayError> {
        self.relay.status.flush();
        let consumer = self.relay.cfg.consumer_name.clone();
        let Ok(open) = self.relay.store.requests_open(&consumer, self.epoch).await else { return Ok(None) };
        for r in open {
            if !matches!(self.relay.store.request_claim(&r, self.epoch).await, Ok(true)) {
                continue;
            }
            let ctx = PlanCtx {
                store: &*self.relay.store,
                consumer: &consumer,
                parked: self.parked.iter().cloned().collect(),
                last_pushed: self.last_read,
                checkpoint: self.position,
                positions: true,
            };
            let plans = match plan(&ctx, &r).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = self
                        .relay
                        .store
                        .request_finish(&consumer, r.id, RequestStatus::Failed, serde_json::json!({ "error": e }))
                        .await;
                    continue;
                }
            };
            let mut result = serde_json::json!({ "events": 0 });
            let mut status = RequestStatus::Done;
            for p in plans {
                match p {
                    Plan::Done(v) => result = v,
                    Plan::Rewind { position } => {
                        // Progress moves back in a transaction of its own; the next term starts there.
                        match self.transaction(&[], position).await {
                            Outcome::Committed => {
                                let _ = self
                                    .relay
                                    .store
                                    .request_finish(
                                        &consumer,
                                        r.id,
                                        RequestStatus::Done,
                                        serde_json::json!({ "rewound_from": self.position, "rewound_to": position }),
                                    )
                                    .await;
                                self.relay.metrics.relay_rewinds.inc();
                                let name = consumer.clone();
                                let _ = match &self.relay.fence {
                                    Some(f) => self.relay.store.set_checkpoint_fenced(&name, f.epoch, position).await,
                                    None => self.relay.store.set_checkpoint(&name, position).await,
                                };
                                return Ok(Some(Exit::Rewound(position)));
                            }
                            _ => {
                                status = RequestStatus::Failed;
                                result = serde_json::json!({ "error": "the progress record could not be committed" });
                            }
                        }
                    }
                    Plan::Unpark { agg, items } => {
                        self.parked.remove(&agg);
                        let mut never = Shutdown::never();
                        if let Some(exit) = self.publish(items, self.position, &mut never).await? {
                            return Ok(Some(exit));
                        }
                        if self.parked.contains(&agg) {
                            status = RequestStatus::Failed;
                            result = serde_json::json!({ "aggregate_id": agg.to_string(), "error": "an event failed again; parked again" });
                            continue;
                        }
                        match self.relay.store.unpark(&consumer, &agg).await {
                            Ok(_) => {
                                self.relay.metrics.dlq_parked_aggregates.dec();
                                self.relay.status.update(|s| {
                                    s.parked_aggregates = s.parked_aggregates.saturating_sub(1);
                                    true
                                });
                            }
                            Err(e) => {
                                tracing::error!(error = %e, aggregate = %agg, "held events were published but the park record could not be removed")
                            }
                        }
                    }
                    Plan::Letters { items } => {
                        let (events, ids): (Vec<Item>, Vec<uuid::Uuid>) = items.into_iter().unzip();
                        let mut never = Shutdown::never();
                        if let Some(exit) = self.publish(events, self.position, &mut never).await? {
                            return Ok(Some(exit));
                        }
                        for id in ids {
                            let _ = self.relay.store.dlq_remove(id).await;
                        }
                    }
                }
            }
            let _ = self.relay.store.request_finish(&consumer, r.id, status, result).await;
        }
        Ok(None)
    }
}

fn classify(kind: TxnErrorKind, message: String) -> Outcome {
    match kind {
        TxnErrorKind::Fenced => Outcome::Fenced(message),
        TxnErrorKind::Fatal => Outcome::Fatal(message),
        TxnErrorKind::Retriable | TxnErrorKind::Abortable => Outcome::Transient(message),
    }
}
