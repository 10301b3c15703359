//! `Deliverer`: publishes one event and waits for its fate, with retry,
//! circuit breaker and the parking policy. The Scylla CDC consumers use it:
//! scylla-cdc hands each stream's rows one at a time, in log order, and
//! moves its progress only after `deliver` returned.
//!
//! Guarantees:
//! - `deliver` returns `Delivered` only after the broker confirmed the
//!   event; `Parked` / `DeadLettered` only after the park record / dead
//!   letter is durable; `Held` for an event of an aggregate parked earlier,
//!   at or after the event it was parked at (held durably by that park
//!   record; one before it, read again after a rewind, is published again,
//!   as the position feed does). Transient failures never end a
//!   delivery: they retry behind the breaker until the broker is back (or
//!   shutdown), so the CDC progress cannot pass an unconfirmed event.
//! - Order per aggregate: one aggregate is one partition key, i.e. one CDC
//!   stream whose rows arrive one at a time; a failed event is retried
//!   before its stream moves on, so nothing later of its aggregate overtakes
//!   it (the same fence the position feed gets from its window).
//! - A record the broker refuses for good is re-sent alone (nothing else of
//!   this deliverer queued or in flight) before it is given up: a record
//!   batch refused as a whole for another stream's record does not park or
//!   dead-letter its neighbours.
//! - Safe to share between the stream consumers (`Arc<Deliverer>`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, PermanentFailurePolicy};
use crate::metrics::Metrics;
use crate::relay::breaker::{BreakerState, CircuitBreaker};
use crate::relay::encode::{Discarded, Encoder, DISCARDED_TYPE};
use crate::relay::error::PublishError;
use crate::relay::parking::{count_parked, dead_letter_of};
use crate::relay::pipeline::Item;
use crate::relay::producer::{when_room, Completion, Delivery, KafkaProducer, SendError};
use crate::relay::retry::Backoff;
use crate::relay::sink::DeadLetterSink;
use crate::relay::status::StatusTx;
use crate::relay::window::AggKey;
use crate::shutdown::Shutdown;
use crate::store::feed::RawEvent;
use crate::store::DynStore;

/// How one delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    Delivered,
    /// Its aggregate was parked before: held by that park record.
    Held,
    /// It failed for good; its aggregate is parked from it on.
    Parked,
    /// It failed for good and went to the dead-letter queue (policy `skip`).
    DeadLettered,
    Shutdown,
    /// Its park record was refused: another instance holds the relay lease
    /// (this one must stop publishing).
    Fenced,
}

type Waiters = Arc<Mutex<HashMap<usize, oneshot::Sender<Result<(i32, i64), PublishError>>>>>;

/// How sending one record ended, before anything is recorded for it.
enum Sent {
    Done(Delivered),
    /// Failed for good after `attempts`; `policy` says what a delivery records.
    ForGood {
        err: PublishError,
        policy: PermanentFailurePolicy,
        attempts: u32,
    },
}

/// What one delivery publishes: an event, or the marker of a discarded one.
#[derive(Clone, Copy)]
enum Out<'a> {
    Event(&'a RawEvent),
    Marker(&'a Discarded),
}

impl Out<'_> {
    fn event_type(&self) -> &str {
        match self {
            Out::Event(e) => &e.event_type,
            Out::Marker(_) => DISCARDED_TYPE,
        }
    }

    fn event_id(&self) -> String {
        match self {
            Out::Event(e) => e.event_id.to_string(),
            Out::Marker(d) => d.event_id.to_string(),
        }
    }

    /// The item the parking policy records when it fails for good.
    fn item(&self) -> Item {
        match self {
            Out::Event(e) => Item::Event((*e).clone()),
            Out::Marker(d) => Item::Marker { position: 0, discarded: (*d).clone() },
        }
    }
}

pub struct Deliverer {
    producer: KafkaProducer,
    waiters: Waiters,
    next: Mutex<usize>,
    encoder: Mutex<Encoder>,
    breaker: Mutex<CircuitBreaker>,
    backoff: Backoff,
    store: DynStore,
    sink: Arc<dyn DeadLetterSink>,
    consumer: String,
    policy: PermanentFailurePolicy,
    dlq_on_transient_exhaustion: bool,
    /// Parked aggregates -> the sequence their park record holds from (its
    /// events before it went out before the park: a rewind re-publishes them).
    parked: Mutex<HashMap<AggKey, i64>>,
    metrics: Metrics,
    status: StatusTx,
    /// The relay lease's epoch: park records are written under it.
    epoch: Option<i64>,
    /// The lease's state: nothing is sent once it is no longer held at
    /// `epoch` (the reader may still hand over rows from its window).
    lease: Option<tokio::sync::watch::Receiver<crate::lease::keeper::LeaseState>>,
    /// Sends hold it shared while they hand a record to the producer; a
    /// record refused for good is re-sent holding it alone, once nothing
    /// else is in flight (see `send_and_wait`).
    solo: tokio::sync::RwLock<()>,
}

impl Deliverer {
    /// A deliverer with a producer of its own (at-least-once).
    pub async fn new(
        config: &Config,
        store: DynStore,
        sink: Arc<dyn DeadLetterSink>,
        metrics: Metrics,
        status: StatusTx,
    ) -> Result<Deliverer, PublishError> {
        let (producer, completions) = KafkaProducer::new(&config.kafka, &Delivery::AtLeastOnce)?;
        Deliverer::with_producer(config, producer, completions, store, sink, metrics, status).await
    }

    /// A deliverer that publishes through a producer made before it (an
    /// at-least-once [`WarmProducer`](crate::relay::warm::WarmProducer)'s:
    /// the CDC relay's standby connects before its term) and routes that
    /// producer's delivery reports.
    pub(crate) async fn with_producer(
        config: &Config,
        producer: KafkaProducer,
        completions: mpsc::UnboundedReceiver<Completion>,
        store: DynStore,
        sink: Arc<dyn DeadLetterSink>,
        metrics: Metrics,
        status: StatusTx,
    ) -> Result<Deliverer, PublishError> {
        let waiters: Waiters = Arc::default();
        tokio::spawn(route(completions, waiters.clone()));
        let parked = store
            .parked(&config.relay.consumer_name)
            .await
            .map_err(|e| PublishError::transient("store", format!("cannot read parked aggregates: {e}")))?
            .into_iter()
            .map(|p| (AggKey::from(p.parked.aggregate_id.as_str()), held_from(p.parked.sequence)))
            .collect::<HashMap<_, _>>();
        metrics.dlq_parked_aggregates.set(parked.len() as i64);
        let breaker =
            CircuitBreaker::new(config.relay.breaker.clone(), Some(metrics.clone())).watching(producer.broker());
        Ok(Deliverer {
            producer,
            waiters,
            next: Mutex::new(1),
            encoder: Mutex::new(Encoder::from_config(&config.kafka)),
            breaker: Mutex::new(breaker),
            backoff: Backoff::new(&config.relay.retry),
            store,
            sink,
            consumer: config.relay.consumer_name.clone(),
            policy: config.relay.on_permanent_failure,
            dlq_on_transient_exhaustion: config.relay.dlq_on_transient_exhaustion,
            parked: Mutex::new(parked),
            metrics,
            status,
            epoch: None,
            lease: None,
            solo: tokio::sync::RwLock::new(()),
        })
    }

    /// Park records are written and removed only at this lease epoch (a
    /// zombie's are refused, `Delivered::Fenced`), as on the position feed.
    pub fn with_epoch(mut self, epoch: Option<i64>) -> Deliverer {
        self.epoch = epoch;
        self
    }

    /// Sends stop as soon as the lease is not held at this deliverer's epoch
    /// any more (`Delivered::Shutdown`): a term that lost it used to publish
    /// what its reader still handed over until the reader stopped, seconds
    /// after a standby took over.
    pub fn with_lease(mut self, lease: Option<tokio::sync::watch::Receiver<crate::lease::keeper::LeaseState>>) -> Self {
        self.lease = lease;
        self
    }

    pub fn epoch(&self) -> Option<i64> {
        self.epoch
    }

    fn lease_gone(&self) -> bool {
        match (&self.lease, self.epoch) {
            (Some(rx), Some(epoch)) => rx.borrow().active_epoch() != Some(epoch),
            _ => false,
        }
    }

    /// The retry schedule of this relay (`relay.retry`).
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// The consumer name (the relay lease and the park records).
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    pub fn producer(&self) -> &KafkaProducer {
        &self.producer
    }

    pub fn status(&self) -> &StatusTx {
        &self.status
    }

    /// The relay's metrics (the CDC request server counts its requests there).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn is_parked(&self, agg: &str) -> bool {
        self.parked.lock().unwrap_or_else(|e| e.into_inner()).contains_key(agg)
    }

    /// Whether the event `sequence` of `agg` is held by its park record (at
    /// or after the event it holds from; an unknown sequence is held).
    pub fn holds(&self, agg: &str, sequence: Option<i64>) -> bool {
        let parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        parked.get(agg).is_some_and(|from| sequence.is_none_or(|s| s >= *from))
    }

    fn breaker<T>(&self, f: impl FnOnce(&mut CircuitBreaker) -> T) -> T {
        f(&mut self.breaker.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Publishes `e` and waits for its fate (see the module doc).
    pub async fn deliver(&self, e: &RawEvent, shutdown: &mut Shutdown) -> Delivered {
        if self.holds(&e.aggregate_key, Some(e.sequence)) {
            return Delivered::Held;
        }
        self.publish(Out::Event(e), shutdown).await
    }

    /// Like `deliver`, for an event of a parked aggregate that an operator
    /// replays: its park record is not a reason to hold it. A permanent
    /// failure parks the aggregate again, at this event.
    pub async fn deliver_replayed(&self, e: &RawEvent, shutdown: &mut Shutdown) -> Delivered {
        self.publish(Out::Event(e), shutdown).await
    }

    /// Publishes the marker of an event an operator discarded, in that
    /// event's place (same key, `ce_id` and `ce_sequence`), with the same
    /// retry, breaker and policy as an event.
    pub async fn deliver_marker(&self, d: &Discarded, shutdown: &mut Shutdown) -> Delivered {
        self.publish(Out::Marker(d), shutdown).await
    }

    /// A replayed dead letter's event: a failure for good is returned, the
    /// letter's error and failure count updated, whatever the policy says
    /// (parking its aggregate would hold events long published behind an old
    /// one; a new letter would duplicate it).
    pub async fn deliver_letter(&self, e: &RawEvent, shutdown: &mut Shutdown) -> Result<Delivered, PublishError> {
        match self.send_retrying(Out::Event(e), shutdown).await {
            Sent::Done(d) => Ok(d),
            Sent::ForGood { err, attempts, .. } => {
                if let Some(again) = dead_letter_of(&Item::Event(e.clone()), &err, attempts) {
                    if let Err(x) = self.sink.dead_letter(again).await {
                        tracing::warn!(error = %x, event_id = %e.event_id, "cannot update the dead letter's error; it stays as it was");
                    }
                }
                Err(err)
            }
        }
    }

    async fn publish(&self, out: Out<'_>, shutdown: &mut Shutdown) -> Delivered {
        match self.send_retrying(out, shutdown).await {
            Sent::Done(d) => d,
            Sent::ForGood { err, policy, attempts } => self.give_up(&out.item(), err, policy, attempts, shutdown).await,
        }
    }

    /// Sends `out` with retry and breaker until it is confirmed, stopped, or
    /// failed for good (then the caller decides what is recorded).
    ///
    /// A record refused for good (`MessageSizeTooLarge`, ...) may only share
    /// a record batch the broker refused as a whole with the bad one (two
    /// streams' records for one partition): after its first such refusal
    /// every attempt is sent alone, and it is given up only after a refusal
    /// seen alone, `max_attempts` refusals in all (transient failures do not
    /// count), as the position feed's `solo` resend does.
    async fn send_retrying(&self, out: Out<'_>, shutdown: &mut Shutdown) -> Sent {
        let mut attempts: u32 = 0;
        let mut refused: u32 = 0;
        // Counted in `retry_failure_total` already (once per event).
        let mut counted = false;
        loop {
            if self.lease_gone() {
                // Nothing more is sent; the reader stops as on shutdown (the
                // term ends and this instance stands by, a request stays
                // claimed for the next leader) rather than failing.
                return Sent::Done(Delivered::Shutdown);
            }
            // Wait while the breaker is open (it watches the broker: a
            // broker seen down and answering again is probed at once).
            loop {
                let now = Instant::now();
                if self.breaker(|b| b.allows(now)) {
                    break;
                }
                let wait = self.breaker(|b| b.open_wait(now));
                if !shutdown.sleep(wait).await {
                    return Sent::Done(Delivered::Shutdown);
                }
            }
            if attempts > 0 {
                self.metrics.retry_attempts.with_label_values(&["publish"]).inc();
            }
            let alone = refused > 0;
            let sent = Instant::now();
            let res = tokio::select! {
                r = self.send_and_wait(out, alone) => r,
                _ = shutdown.recv() => return Sent::Done(Delivered::Shutdown),
            };
            match res {
                Ok(_) => {
                    let idle = self.waiters.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
                    self.breaker(|b| b.record_success_idle(Instant::now(), idle));
                    self.status.breaker(self.breaker(|b| b.state(Instant::now())));
                    if attempts > 0 {
                        self.metrics.retry_success.with_label_values(&["publish"]).inc();
                    }
                    self.metrics.cdc_events_processed.with_label_values(&[out.event_type()]).inc();
                    if let Out::Event(e) = out {
                        let e2e =
                            (chrono::Utc::now() - e.timestamp).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
                        self.metrics.event_end_to_end_latency.observe(e2e);
                    }
                    self.status.delivered(1);
                    return Sent::Done(Delivered::Delivered);
                }
                // Not handed over: the lease went while it waited its turn.
                Err(_) if self.lease_gone() => return Sent::Done(Delivered::Shutdown),
                Err(err) => {
                    attempts += 1;
                    self.metrics.cdc_events_failed.with_label_values(&[out.event_type(), &err.kind]).inc();
                    self.status.error(err.message.clone());
                    let max = self.backoff.max_attempts;
                    if err.transient {
                        self.breaker(|b| b.record_failure_of(Instant::now(), Some(sent)));
                        self.status.breaker(self.breaker(|b| b.state(Instant::now())));
                        if attempts == max {
                            counted = true;
                            self.metrics.retry_failure.with_label_values(&["publish"]).inc();
                            tracing::warn!(event_id = %out.event_id(), error = %err, "event still failing after {attempts} attempts with a transient error; retrying behind the breaker");
                        }
                        // A discard marker has no dead letter to become:
                        // it retries behind the breaker whatever the setting.
                        if attempts >= max && self.dlq_on_transient_exhaustion && !matches!(out, Out::Marker(_)) {
                            return Sent::ForGood { err, policy: PermanentFailurePolicy::Skip, attempts };
                        }
                    } else {
                        refused += 1;
                        // Every attempt after the first refusal is alone: a
                        // second refusal is one seen alone.
                        if refused >= max.max(2) {
                            if !counted {
                                self.metrics.retry_failure.with_label_values(&["publish"]).inc();
                            }
                            return Sent::ForGood { err, policy: self.policy, attempts };
                        }
                    }
                    if !shutdown.sleep(self.backoff.delay(attempts)).await {
                        return Sent::Done(Delivered::Shutdown);
                    }
                }
            }
        }
    }

    /// Hands `out` to the producer and waits for its delivery report;
    /// `alone`: once no other record of this deliverer is queued or in
    /// flight, and with none handed over until its report came.
    async fn send_and_wait(&self, out: Out<'_>, alone: bool) -> Result<(i32, i64), PublishError> {
        let token = {
            let mut n = self.next.lock().unwrap_or_else(|p| p.into_inner());
            *n += 1;
            *n
        };
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap_or_else(|p| p.into_inner()).insert(token, tx);
        let mut waiter = Waiter { waiters: &self.waiters, token, handed_over: false };
        let (topic, headers, value, key, at) = {
            let mut enc = self.encoder.lock().unwrap_or_else(|p| p.into_inner());
            match out {
                Out::Event(e) => {
                    let mut value = Vec::with_capacity(e.payload.get().len() + 400);
                    enc.value(e, &mut value);
                    let topic = enc.topic(&e.aggregate_type, &e.event_type);
                    (topic, enc.headers(e), value, &e.aggregate_key, e.timestamp)
                }
                Out::Marker(d) => {
                    let (value, headers) = enc.discarded(d);
                    (enc.topic(&d.aggregate_type, &d.event_type), headers, value, &d.aggregate_key, d.discarded_at)
                }
            }
        };
        // Shared while handing over (others may send meanwhile), or alone
        // until the report came.
        let (mut shared, mut exclusive) = (None, None);
        if alone {
            exclusive = Some(self.solo.write().await);
            // Whatever others handed over before is delivered or failed first
            // (librdkafka bounds that by `message.timeout.ms`).
            self.producer.wait_idle(std::time::Duration::MAX).await;
        } else {
            shared = Some(self.solo.read().await);
        }
        let pause = std::time::Duration::from_millis(5);
        // The lease is checked again at the hand-over itself: the breaker's
        // wait, the solo lock and a full queue all come after the loop's check.
        when_room(pause, || match self.lease_gone() {
            true => Err(SendError::Failed(PublishError::transient("lease_lost", "the relay lease is no longer held"))),
            false => self.producer.send(&topic, key, &value, headers.clone(), at.timestamp_millis(), token),
        })
        .await?;
        // Handed over: its delivery report removes the waiter.
        waiter.handed_over = true;
        drop(shared.take());
        self.metrics.messages_sent.with_label_values(&[&*topic]).inc();
        let report =
            rx.await.unwrap_or_else(|_| Err(PublishError::transient("canceled", "the delivery report was lost")));
        drop(exclusive.take());
        report
    }

    /// Marks an aggregate unparked (after a replay through this deliverer).
    pub fn unparked(&self, agg: &str) {
        if self.parked.lock().unwrap_or_else(|p| p.into_inner()).remove(agg).is_some() {
            count_parked(&self.metrics, &self.status, false);
        }
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker(|b| b.state(Instant::now()))
    }
}

#[path = "deliver_route.rs"]
mod route;
use route::{route, Waiter};

#[path = "deliver_give_up.rs"]
mod give_up;

#[cfg(test)]
#[path = "deliver_tests.rs"]
mod tests;

/// The first sequence a park record holds (all of them when it names none).
pub(super) fn held_from(sequence: Option<i64>) -> i64 {
    sequence.unwrap_or(i64::MIN)
}
