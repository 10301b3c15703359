//! One running relay term ([`Run`]): the loop that waits on completions,
//! the feed, retry/breaker/solo timers, operator requests, shutdown and
//! lease loss, and what it does on each.
//!
//! Guarantees: every wait has a live branch after every error path (a dead
//! feed reader is restarted, a fatal producer ends the term with an error,
//! a lost lease purges the producer at once); at most one event per
//! aggregate is at the producer (the [`Window`] fence), so a retried event
//! is never overtaken by a later one of its aggregate; a permanent failure
//! is confirmed by a solo resend before its aggregate is parked or skipped.

use futures::FutureExt;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use crate::metrics::ByLabel;
use crate::relay::breaker::{BreakerState, CircuitBreaker};
use crate::relay::encode::Encoder;
use crate::relay::error::PublishError;
use crate::relay::feed::FeedHandle;
use crate::relay::pipeline::{lease_lost, Exit, Item, Relay, RelayError};
use crate::relay::producer::{Completion, KafkaProducer, SendError};
use crate::relay::retry::Backoff;
use crate::relay::window::{AggKey, Fenced, Pushed, Slot, Window};
use crate::shutdown::Shutdown;
use crate::store::feed::FeedRow;

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
    /// Suspects whose last attempt was a solo resend not answered by a
    /// transient failure: only those may be given up.
    pub(super) resent_alone: BTreeSet<Slot>,
    pub(super) solo: Option<Slot>,
    pub(super) solo_not_before: Instant,
    /// Persisted checkpoint.
    pub(super) checkpoint: i64,
    /// The last checkpoint write of this term (none yet: the first
    /// progress is written at once).
    pub(super) last_persist: Option<Instant>,
    /// Side-lane replays in progress: (request, aggregate) -> slots still open
    /// (aggregate "" for dead-letter replays).
    pub(super) replays: HashMap<(uuid::Uuid, AggKey), BTreeSet<Slot>>,
    /// Requests in progress -> what is left and what was done.
    pub(super) request_parts: HashMap<uuid::Uuid, super::requests::Progress>,
    /// The operator requests this term claimed, and its runner's unrecorded outcomes.
    pub(super) requests: super::operator::TermRequests,
    /// Discarded events ahead of the feed: their markers take their place.
    pub(super) discards: super::discards::Discards,
    /// Dead letters being replayed: slot -> dead letter id.
    pub(super) letter_slots: HashMap<Slot, uuid::Uuid>,
    /// Skipped slots whose dead-letter write failed: slot -> the letter id its retry reuses.
    pub(super) unwritten_letters: HashMap<Slot, uuid::Uuid>,
    pub(super) value: Vec<u8>,
    /// When each in-flight slot was handed to the producer.
    pub(super) sent_at: foldhash::HashMap<Slot, Instant>,
    /// Slots already counted in `retry_failure_total` (transient failures
    /// reached `max_attempts`): a later give-up does not count them again.
    pub(super) over_max: BTreeSet<Slot>,
    pub(super) feed: FeedHandle,
    /// Cached metric handles (by topic, by event type) for the per-event path.
    pub(super) sent_by_topic: ByLabel<prometheus::IntCounterVec>,
    pub(super) processed_by_type: ByLabel<prometheus::IntCounterVec>,
    pub(super) duration_by_type: ByLabel<prometheus::HistogramVec>,
    pub(super) exit: Option<Exit>,
    /// The rewind request this term ends for, and the checkpoint it moves
    /// back from: recorded done only once the checkpoint was written.
    pub(super) rewind: Option<(uuid::Uuid, i64)>,
    /// Replayed aggregates whose park record is still to be removed: (request, aggregate).
    pub(super) unpark_later: Vec<(uuid::Uuid, AggKey)>,
}

impl Run {
    pub(super) async fn main(
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
            // The timers first, on every turn: under a steady stream of
            // reports and pages (a backlog draining) the biased select below
            // would never reach their branches, and a retry past its backoff
            // or an operator's request would wait for the drain to end.
            self.due_retries();
            if requests.tick().now_or_never().is_some() {
                if let Some(end) = self.requests_turn(&mut completions).await {
                    return end;
                }
                // A request may end the term (a rewind, a refused write):
                // nothing more is sent or persisted in it.
                if let Some(exit) = self.exit.take() {
                    return self.finish(exit, &mut completions).await;
                }
            }
            self.pump().await;
            self.persist(false).await;
            if let Some(exit) = self.exit.take() {
                return self.finish(exit, &mut completions).await;
            }
            let next_retry = self.retries.first().map(|(t, _)| *t);
            let breaker_wait = self.breaker_wait();
            // No solo resend while the breaker is open (its wait is the
            // breaker's): a past `solo_not_before` would wake the loop at once, every turn.
            let solo_wait = (!self.suspects.is_empty()
                && self.solo.is_none()
                && self.window.in_flight() == 0
                && breaker_wait.is_none())
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
                    // One clock reading for the batch: the reports drained
                    // with this one arrived by now or while the batch was
                    // handled, so their latencies are off by that much at most.
                    let at = Clock::now();
                    self.on_completion(c, at).await;
                    // Drain what else arrived without waiting.
                    while let Ok(c) = completions.try_recv() {
                        self.on_completion(c, at).await;
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
                    if let Some(end) = self.requests_turn(&mut completions).await {
                        return end;
                    }
                }
            }
        }
    }

    /// Every `poll_interval`: the status published, operator requests
    /// polled, a producer's fatal error noticed; `Some` ends the term.
    async fn requests_turn(
        &mut self,
        completions: &mut mpsc::UnboundedReceiver<Completion>,
    ) -> Option<Result<Exit, RelayError>> {
        self.relay.status.flush();
        self.retry_unparks().await;
        if self.exit.is_some() {
            return None;
        }
        self.poll_requests().await;
        if self.relay.requests_only && self.request_parts.is_empty() && self.window.is_empty() {
            // A rewind ends the term through `finish`, which moves the checkpoint back.
            let exit = self.exit.take().unwrap_or(Exit::Shutdown);
            return Some(self.finish(exit, completions).await);
        }
        if let Some(f) = self.producer.fatal_error() {
            self.producer.purge();
            return Some(Err(RelayError::ProducerFatal(f)));
        }
        None
    }

    /// Another instance holds the relay lease (a fenced write): what is
    /// not sent yet is dropped and the term ends as `LeaseLost`.
    pub(super) fn step_down(&mut self) {
        self.producer.purge();
        self.exit = Some(Exit::LeaseLost);
    }

    /// When to ask an open breaker again (it watches the broker: a broker
    /// seen down and answering again is probed at the next turn).
    fn breaker_wait(&mut self) -> Option<Instant> {
        let now = Instant::now();
        (self.breaker.state(now) == BreakerState::Open).then(|| now + self.breaker.open_wait(now))
    }

    /// Whether this term may still hand events to the producer: unfenced,
    /// or its lease still active (a loss noticed at the loop's wait ends it).
    fn lease_held(&self) -> bool {
        self.relay.fence.as_ref().is_none_or(|f| f.held())
    }

    /// Sends what may go now (nothing once the lease went).
    async fn pump(&mut self) {
        if !self.lease_held() {
            return;
        }
        let now = Instant::now();
        let state = self.breaker.state(now);
        self.relay.status.breaker(state);
        if !self.suspects.is_empty() {
            // A resend alone is a send too: none while the breaker is open.
            if state != BreakerState::Open {
                self.solo_step().await;
            }
            return;
        }
        let limit = match state {
            BreakerState::Closed => usize::MAX,
            BreakerState::HalfOpen => usize::from(self.window.in_flight() == 0),
            BreakerState::Open => 0,
        };
        let mut sent = 0;
        // A refused (fenced) park ends the term: nothing more is sent.
        while sent < limit && self.exit.is_none() && self.lease_held() {
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
        let topic = item.send_with(&mut self.encoder, &mut self.value, &self.producer, slot)?;
        self.sent_at.insert(slot, Instant::now());
        self.sent_by_topic.get(&topic).inc();
        Ok(())
    }

    async fn on_completion(&mut self, c: Completion, at: Clock) {
        if self.window.state(c.token) != Some(crate::relay::window::State::InFlight) {
            return; // a report of an earlier term or of a purged message
        }
        let solo = self.solo == Some(c.token);
        if solo {
            self.solo = None;
        }
        match c.result {
            Ok((partition, offset)) => {
                self.breaker.record_success_idle(at.mono, self.window.len() <= 1);
                self.suspects.remove(&c.token);
                self.resent_alone.remove(&c.token);
                // Delivered after at least one failed attempt.
                if self.window.attempts(c.token) > 0 {
                    self.relay.metrics.retry_success.with_label_values(&["publish"]).inc();
                }
                if let Some(item) = self.window.confirm(c.token) {
                    // Where the broker says it put each event: the soak tests
                    // turn this on to explain a record they miss.
                    if let Item::Event(e) = &item {
                        if tracing::enabled!(target: "outboxd::relay::delivered", tracing::Level::TRACE) {
                            let topic = self.encoder.topic(&e.aggregate_type, &e.event_type);
                            tracing::trace!(target: "outboxd::relay::delivered", position = e.position, %topic, partition, offset, "delivered");
                        }
                    }
                    self.confirmed(c.token, item, at).await;
                }
            }
            Err(e) => self.failed(c.token, e).await,
        }
    }

    /// A delivery of `slot` failed.
    pub(super) async fn failed(&mut self, slot: Slot, e: PublishError) {
        let sent = self.sent_at.remove(&slot);
        self.window.fail(slot);
        let attempts = self.window.attempts(slot);
        if let Some(Item::Event(ev)) = self.window.get(slot) {
            self.relay.metrics.cdc_events_failed.with_label_values(&[&ev.event_type, &e.kind]).inc();
            if e.kind == crate::relay::producer::UNVERIFIED {
                // Named so a consumer can explain the copy this may add.
                tracing::warn!(position = ev.position, error = %e, "unverified delivery");
            }
        }
        self.relay.status.error(e.message.clone());
        if e.transient {
            self.breaker.record_failure_of(Instant::now(), sent);
            self.relay.status.breaker(self.breaker.state(Instant::now()));
            self.suspects.remove(&slot);
            // A solo resend that failed transiently showed nothing about the
            // record: a later refusal needs another one before a give-up.
            self.resent_alone.remove(&slot);
            let max = self.backoff.max_attempts;
            if attempts == max && self.over_max.insert(slot) {
                self.relay.metrics.retry_failure.with_label_values(&["publish"]).inc();
                tracing::warn!(slot, error = %e, "event still failing after {attempts} attempts with a transient error; retrying behind the breaker until the broker recovers");
            }
            // A discard marker has no dead letter to become: skipping it
            // would leave a sequence gap on the topic with no trace, so it
            // retries behind the breaker whatever the setting.
            let marker = matches!(self.window.get(slot), Some(Item::Marker { .. }));
            if attempts >= max && self.relay.cfg.dlq_on_transient_exhaustion && !marker {
                self.give_up(slot, e).await;
                if !self.suspects.contains_key(&slot) {
                    self.over_max.remove(&slot);
                }
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
    /// suspect alone; once it has been sent alone and failed `max_attempts`
    /// times in all (transient failures before count too) it is parked (or
    /// skipped). A failure handing it to the producer goes through
    /// [`Run::failed`] like any other: a transient one is retried after its
    /// backoff, never given up here.
    async fn solo_step(&mut self) {
        while self.solo.is_none() && self.window.in_flight() == 0 && self.lease_held() {
            let Some((&slot, err)) = self.suspects.iter().next() else { return };
            let err = err.clone();
            let unreadable = matches!(self.window.get(slot), Some(Item::Unreadable(_)));
            let exhausted = exhausted(&self.window, &self.resent_alone, slot, self.backoff.max_attempts);
            if unreadable || exhausted {
                if Instant::now() < self.solo_not_before {
                    return;
                }
                self.suspects.remove(&slot);
                self.resent_alone.remove(&slot);
                self.give_up(slot, err).await;
                // Counted once, when given up for good (a park or dead
                // letter not written yet makes it a suspect again).
                if !self.suspects.contains_key(&slot) && !self.over_max.remove(&slot) {
                    self.relay.metrics.retry_failure.with_label_values(&["publish"]).inc();
                }
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
            let newly = self.resent_alone.insert(slot);
            let sent = self.send(slot);
            if !matches!(sent, Err(SendError::QueueFull)) {
                self.relay.metrics.retry_attempts.with_label_values(&["publish"]).inc();
            }
            match sent {
                Ok(()) => {
                    self.solo = Some(slot);
                    self.solo_not_before = Instant::now() + self.backoff.delay(self.window.attempts(slot) + 1);
                }
                Err(SendError::QueueFull) => {
                    // Nothing was attempted: the resend happens again shortly.
                    solo_refused(&mut self.window, &mut self.resent_alone, slot, newly);
                    self.solo_not_before = Instant::now() + self.backoff.delay(1);
                    return;
                }
                Err(SendError::Failed(e)) => {
                    self.solo_not_before = Instant::now() + self.backoff.delay(self.window.attempts(slot) + 1);
                    self.failed(slot, e).await;
                }
            }
        }
    }

    /// `slot` was delivered; `at` is when its report was taken (for the
    /// send -> confirmed and end-to-end latencies).
    pub(super) async fn confirmed(&mut self, slot: Slot, item: Item, at: Clock) {
        let sent = self.sent_at.remove(&slot);
        self.over_max.remove(&slot);
        if let Item::Event(e) = &item {
            self.processed_by_type.get(&e.event_type).inc();
            if let Some(t) = sent {
                self.duration_by_type.get(&e.event_type).observe(at.mono.saturating_duration_since(t).as_secs_f64());
            }
            let e2e = (at.wall - e.timestamp).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
            self.relay.metrics.event_end_to_end_latency.observe(e2e);
        }
        self.relay.status.delivered(1);
        self.replay_progress(slot).await;
    }

    fn on_page(&mut self, page: Vec<FeedRow>) {
        let mut held = 0;
        for row in page {
            let item = self.discards.replace(row);
            if let Item::Unreadable(u) = &item {
                tracing::error!(position = u.position, aggregate = %u.aggregate_key, error = %u.error, "unreadable row in the event store; its aggregate will be parked when its turn comes");
            }
            if self.window.push(item) == Pushed::Held {
                held += 1;
            }
        }
        if held > 0 {
            tracing::debug!(held, "events of parked aggregates held");
        }
    }
}

/// Whether suspect `slot` may be given up: it failed `max` times in all
/// and its last attempt was a solo resend (`resent_alone`).
fn exhausted<T: Fenced>(window: &Window<T>, resent_alone: &BTreeSet<Slot>, slot: Slot, max: u32) -> bool {
    window.attempts(slot) >= max && resent_alone.contains(&slot)
}

/// A solo resend of `slot` (taken, in flight) that the producer's queue
/// refused: nothing was attempted, so the slot goes back to failed (still a
/// suspect for the solo path, its attempts unchanged) without the
/// resent-alone mark this attempt set (`newly`); a give-up still needs a
/// solo resend that failed.
fn solo_refused<T: Fenced>(window: &mut Window<T>, resent_alone: &mut BTreeSet<Slot>, slot: Slot, newly: bool) {
    window.unsend(slot);
    if newly {
        resent_alone.remove(&slot);
    }
}

/// One reading of both clocks, shared by the delivery reports handled together.
#[derive(Clone, Copy)]
pub(super) struct Clock {
    pub(super) mono: Instant,
    pub(super) wall: chrono::DateTime<chrono::Utc>,
}

impl Clock {
    pub(super) fn now() -> Clock {
        Clock { mono: Instant::now(), wall: chrono::Utc::now() }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
