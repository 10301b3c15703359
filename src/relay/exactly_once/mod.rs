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
//!   past it) and the rest commits. A suspect whose aggregate that part
//!   parked at an earlier event is held, never parked: a park never moves
//!   forward past an event not published.
//! - Fenced (another producer with our id initialised): stop at once, never
//!   re-initialise blindly; the supervisor re-checks the lease first.
//! - Batches close at `relay.transaction_max_events` or
//!   `relay.transaction_max_ms`, or as soon as the feed has nothing more
//!   ready, so latency stays low at low load and batches grow under load.
//! - The store's checkpoint is still written after each commit (fenced), for
//!   /health, the lag metrics and the tools that read it, and at the start
//!   of a term when it trails the progress resumed from (its write after
//!   the last commit was lost).
//! - The progress read at the start fails only when it stands still for
//!   `PROGRESS_STALL`; one that keeps moving is never cut off.
//! - A store that refuses to record a park ends the term after a bounded
//!   retry (nothing was committed past the event); the runner starts a new
//!   term after re-checking the lease.
//! - An operator's replay names itself in the progress records it commits,
//!   so a term that starts after a crash between that commit and the
//!   store's part of the replay skips what committed (`requests`).
//!
//! Files: this one starts a term; `batching` (the loop: gather, admit, park),
//! `publish` (commit a batch, split around permanent failures, solo resend),
//! `transaction` (one Kafka transaction + progress record), `requests`
//! (operator requests between batches).

mod batching;
mod publish;
mod requests;
mod transaction;

use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use crate::relay::breaker::CircuitBreaker;
use crate::relay::encode::Encoder;
use crate::relay::error::PublishError;
use crate::relay::pipeline::{unless_lease_lost, Exit, Relay, RelayError, TermFeed};
use crate::relay::producer::{Completion, Delivery, KafkaProducer, TxnErrorKind};
use crate::relay::progress;
use crate::relay::retry::Backoff;
use crate::relay::runner::retry_in_term;
use crate::relay::warm::WarmProducer;
use crate::relay::window::AggKey;
use crate::shutdown::Shutdown;

/// How one transaction attempt ended.
pub(super) enum Outcome {
    Committed,
    /// Records refused for good (index in the batch -> error); the transaction was aborted.
    Permanent(Vec<(usize, PublishError)>),
    /// Aborted for a reason that may heal (broker down, timeout).
    Transient(String),
    Fenced(String),
    Fatal(String),
}

/// How long the read of the progress topic at a term's start may stand
/// still (no position moved) before the attempt fails and is retried.
const PROGRESS_STALL: Duration = Duration::from_secs(30);

pub(super) struct Txn {
    pub(super) relay: Relay,
    pub(super) producer: KafkaProducer,
    pub(super) completions: mpsc::UnboundedReceiver<Completion>,
    pub(super) encoder: Encoder,
    pub(super) breaker: CircuitBreaker,
    pub(super) backoff: Backoff,
    /// Parked aggregates -> the feed position they are parked from (events
    /// before it, read again after a rewind, are published).
    pub(super) parked: HashMap<AggKey, i64>,
    /// Feed position covered by the last committed transaction (or park records).
    pub(super) position: i64,
    /// Last feed position taken from the reader.
    pub(super) last_read: i64,
    pub(super) next_token: usize,
    pub(super) value: Vec<u8>,
    pub(super) epoch: i64,
    /// The term's shutdown signal, for waits deep inside a batch.
    pub(super) stop: Shutdown,
    /// The operator request, and the part of it (aggregate or dead letters),
    /// whose events are being replayed now: both go into every progress
    /// record it commits.
    pub(super) replaying: Option<(uuid::Uuid, String)>,
    /// A replayed dead letter that failed for good again (its position and
    /// error): the replay stops there, the letter stays.
    pub(super) letter_failed: Option<(i64, PublishError)>,
    /// Events (and markers) the request being carried out committed so far
    /// (its result's `events`).
    pub(super) replayed: usize,
    /// The replay the last progress record of the former term was part of.
    pub(super) resumed: Option<progress::ReplayMark>,
    /// The operator requests this term claimed, and its runner's unrecorded outcomes.
    pub(super) requests: crate::relay::operator::TermRequests,
    /// Discarded events ahead of the feed: their markers take their place.
    pub(super) discards: crate::relay::discards::Discards,
    /// `messages_sent_total` by topic (records of the batches handed to the producer).
    pub(super) sent_by_topic: crate::metrics::ByLabel<prometheus::IntCounterVec>,
}

/// The `transactional.id` of a consumer's relay: every instance of it uses
/// the same one, so a new holder's `init_transactions` fences the former.
pub fn transactional_id(cfg: &crate::config::RelayConfig) -> String {
    format!("outboxd-{}", cfg.consumer_name)
}

/// How an exactly-once term's producer delivers.
pub fn transactional(cfg: &crate::config::RelayConfig) -> Delivery {
    Delivery::Transactional { id: transactional_id(cfg), timeout_ms: cfg.transaction_timeout_ms }
}

impl Relay {
    /// Runs one exactly-once term until shutdown, lease loss or rewind, on a
    /// producer made now.
    pub async fn run_exactly_once(self, shutdown: Shutdown) -> Result<Exit, RelayError> {
        let delivery = transactional(&self.cfg);
        let warm = WarmProducer::start(&self.config.kafka, &delivery, self.status.clone(), shutdown.clone())?;
        self.run_exactly_once_warm(warm, shutdown).await
    }

    /// Runs one exactly-once term on a transactional producer made before it
    /// (a standby's: it took no producer id, so it fenced no one, until the
    /// `init_transactions` below).
    pub async fn run_exactly_once_warm(self, warm: WarmProducer, mut shutdown: Shutdown) -> Result<Exit, RelayError> {
        let started = Instant::now();
        let k = &self.config.kafka;
        let WarmProducer { producer, completions, watch: broker_watch } = warm;
        let epoch = self.fence.as_ref().map(|f| f.epoch).unwrap_or(0);
        self.status.update(|s| {
            s.delivery = "exactly-once";
            true
        });
        // A lease lost while the start retries ends the term before it
        // acts: above all before `init_transactions`, which would fence the
        // instance that holds it now.
        let Some(store_checkpoint) = unless_lease_lost(&self.fence, self.initial_checkpoint(&mut shutdown)).await
        else {
            return Ok(Exit::LeaseLost);
        };
        let Some(store_checkpoint) = store_checkpoint else { return Ok(Exit::Shutdown) };
        self.status.checkpoint(store_checkpoint);
        self.metrics.relay_checkpoint_position.set(store_checkpoint);
        match unless_lease_lost(&self.fence, self.ensure_topics(&mut shutdown)).await {
            None => return Ok(Exit::LeaseLost),
            Some(false) => return Ok(Exit::Shutdown),
            Some(true) => {}
        }
        let topics_checked = started.elapsed();
        // 1. Fence former holders; their open transaction is aborted by the broker.
        // Each attempt waits at most a third of the lease TTL, so a lease
        // lost meanwhile is seen between attempts soon. (librdkafka goes on
        // with a timed-out InitProducerId in the background: a call made
        // just before this instance's lease deadline may still fence a new
        // holder once; that holder's term then ends and a new one starts,
        // nothing lost or duplicated.)
        let attempt_timeout = match &self.fence {
            Some(_) => Duration::from_millis((self.cfg.lease_ttl_ms / 3).clamp(1_000, 30_000)),
            None => Duration::from_secs(30),
        };
        let init = async {
            let mut attempt = 0;
            loop {
                match producer.init_transactions(attempt_timeout).await {
                    Ok(()) => return None,
                    Err(e) if e.kind == TxnErrorKind::Retriable => {
                        attempt += 1;
                        tracing::warn!(error = %e, attempt, "init_transactions failed; retrying");
                        self.status.error(e.message.clone());
                        if !shutdown.sleep(Backoff::new(&self.cfg.retry).delay(attempt.min(10))).await {
                            return Some(Ok(Exit::Shutdown));
                        }
                    }
                    Err(e) if e.kind == TxnErrorKind::Fenced => return Some(Ok(Exit::LeaseLost)),
                    Err(e) => return Some(Err(RelayError::ProducerFatal(e.message))),
                }
            }
        };
        match unless_lease_lost(&self.fence, init).await {
            None => return Ok(Exit::LeaseLost),
            Some(Some(end)) => return end,
            Some(None) => {}
        }
        let transactions_initialised = started.elapsed();
        // 2. Where to resume: the last committed progress record, else the
        // store's checkpoint; the checkpoint when it is past the record (an
        // at-least-once relay ran since, or a batch of held events only
        // moved it): what lies between went out already. Every exactly-once
        // move back (a rewind) writes the checkpoint before it is done.
        // Under the lease, as the steps before: a read that keeps failing
        // (a topic deleted, not authorised) must not hold a lease that a
        // standby could use; /health says why the term does not start. A
        // read fails only when it stands still for `PROGRESS_STALL`: one
        // that keeps moving is never cut off, however long the topic.
        let read = || progress::read_last(k, &self.cfg.progress_topic, &self.cfg.consumer_name, PROGRESS_STALL);
        let what = format!("read the progress topic {}", self.cfg.progress_topic);
        let retried = retry_in_term(read, |_| false, &what, &mut shutdown, &self.status);
        let last = match unless_lease_lost(&self.fence, retried).await {
            None => return Ok(Exit::LeaseLost),
            Some(None) => return Ok(Exit::Shutdown),
            // (Every error is retried: none comes back.)
            Some(Some(Err(e))) => return Err(RelayError::ProducerFatal(e.to_string())),
            Some(Some(Ok(last))) => last,
        };
        let (position, resumed) = match last {
            Some(p) if store_checkpoint > p.position => {
                tracing::info!(
                        checkpoint = store_checkpoint,
                        progress = p.position,
                        "the store's checkpoint is past the last progress record (at-least-once delivery ran since): starting from the checkpoint"
                    );
                (store_checkpoint, p.replay)
            }
            Some(p) => (p.position, p.replay),
            None => {
                tracing::info!(
                    checkpoint = store_checkpoint,
                    "no progress record on {}: starting from the store's checkpoint",
                    self.cfg.progress_topic
                );
                (store_checkpoint, None)
            }
        };
        // The store's checkpoint catches up with the progress resumed from:
        // a commit whose checkpoint write was lost (a crash right after it,
        // a store error, an unknown-outcome commit that landed) otherwise
        // left the lag, the checkpoint gauge and /health counting published
        // events until the next commit, and a switch to at-least-once
        // published them again. Fenced, as after a commit.
        if position > store_checkpoint {
            match self.write_checkpoint(position).await {
                Ok(()) => {
                    tracing::info!(
                        checkpoint = store_checkpoint,
                        progress = position,
                        "the store's checkpoint trailed the committed progress: moved up to it"
                    );
                    self.status.checkpoint(position);
                    self.metrics.relay_checkpoint_position.set(position);
                }
                Err(crate::store::StoreError::Fenced { .. }) => {
                    tracing::warn!("store checkpoint fenced: another relay took over; stepping down");
                    return Ok(Exit::LeaseLost);
                }
                // The next commit writes it; nothing is lost meanwhile.
                Err(e) => tracing::warn!(error = %e, "cannot move the store checkpoint up to the committed progress"),
            }
        }
        let parked: HashMap<AggKey, i64> = match self.store.parked(&self.cfg.consumer_name).await {
            Ok(v) => v
                .iter()
                .map(|p| (AggKey::from(p.parked.aggregate_id.as_str()), p.parked.position.unwrap_or(i64::MIN)))
                .collect(),
            Err(e) => return Err(RelayError::Store(format!("cannot read parked aggregates: {e}"))),
        };
        let discards = self.discards().await?;
        tracing::debug!(
            topics_checked = ?topics_checked,
            transactions_initialised = ?transactions_initialised,
            progress_and_parked_read = ?started.elapsed(),
            "exactly-once relay start steps (time since the term began)"
        );
        self.metrics.dlq_parked_aggregates.set(parked.len() as i64);
        self.status.update(|s| {
            s.running = true;
            s.parked_aggregates = parked.len() as u64;
            true
        });
        tracing::info!(consumer = %self.cfg.consumer_name, transactional_id = %transactional_id(&self.cfg), position, "exactly-once relay started");
        let TermFeed { stop, handle: feed, pages, idle: _idle } = self.open_feed(position);
        let breaker =
            CircuitBreaker::new(self.cfg.breaker.clone(), Some(self.metrics.clone())).watching(producer.broker());
        let mut t = Txn {
            producer,
            completions,
            encoder: Encoder::from_config(k),
            breaker,
            backoff: Backoff::new(&self.cfg.retry),
            parked,
            position,
            last_read: position,
            next_token: 1,
            value: Vec::with_capacity(4096),
            epoch,
            stop: shutdown.clone(),
            replaying: None,
            letter_failed: None,
            replayed: 0,
            resumed,
            requests: crate::relay::operator::TermRequests::new(
                self.store.clone(),
                &self.cfg.consumer_name,
                epoch,
                self.unsaved.clone(),
            ),
            discards,
            sent_by_topic: crate::metrics::ByLabel::new(&self.metrics.messages_sent),
            relay: self,
        };
        let exit = if t.relay.requests_only {
            t.requests().await.map(|e| e.unwrap_or(Exit::Shutdown))
        } else {
            t.main(pages, &feed, &mut shutdown).await
        };
        // A park refused as fenced ends the term as the lease's loss.
        let exit = match exit {
            Err(RelayError::Fenced) => {
                tracing::warn!("parked aggregate fenced: another relay took over; stepping down");
                Ok(Exit::LeaseLost)
            }
            other => other,
        };
        stop.fire();
        drop(broker_watch);
        t.relay.status.update(|s| {
            s.running = false;
            true
        });
        exit
    }
}

pub(super) fn classify(kind: TxnErrorKind, message: String) -> Outcome {
    match kind {
        TxnErrorKind::Fenced => Outcome::Fenced(message),
        TxnErrorKind::Fatal => Outcome::Fatal(message),
        TxnErrorKind::Retriable | TxnErrorKind::Abortable => Outcome::Transient(message),
    }
}
