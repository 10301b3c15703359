//! One Kafka transaction: the records of a batch and a progress record,
//! committed together, or aborted together.
//!
//! Guarantees: the progress record is the last record of the transaction,
//! so a committed progress position always covers exactly what committed;
//! every delivery report is in before the commit, and a transaction holding
//! a record reported delivered without an offset is aborted, not committed;
//! a failure is classified (transient, permanent with the failing records,
//! fenced, fatal) so the caller never re-initialises a fenced producer; an
//! abort that does not complete ends the term (fatal) instead of leaving
//! every later transaction refused; the store checkpoint follows a commit
//! (fenced), never precedes it.

use std::time::{Duration, Instant};

use super::{classify, Outcome, Txn};
use crate::relay::error::PublishError;
use crate::relay::pipeline::{Exit, Item, RelayError};
use crate::relay::producer::{when_room, Completion, TxnErrorKind, UNVERIFIED};
use crate::relay::progress::{Progress, ReplayMark};
use crate::relay::window::Fenced;
use crate::store::StoreError;

/// How long a send waits for room in a full producer queue before trying again.
const ROOM_PAUSE: Duration = Duration::from_millis(2);

impl Txn {
    /// One transaction: the records of `batch` and a progress record at `position`.
    pub(super) async fn transaction(&mut self, batch: &[Item], position: i64) -> Outcome {
        if let Err(e) = self.producer.begin_transaction().await {
            return classify(e.kind, e.message);
        }
        let base = self.next_token;
        let mut sent = 0usize;
        for (i, item) in batch.iter().enumerate() {
            let token = base + i;
            let (encoder, value, producer) = (&mut self.encoder, &mut self.value, &self.producer);
            let queued = when_room(ROOM_PAUSE, || item.send_with(encoder, value, producer, token).map(|_| ())).await;
            if let Err(e) = queued {
                self.next_token = base + batch.len() + 1;
                if let Some(o) = self.abort(Duration::from_secs(30)).await {
                    return o;
                }
                if e.transient {
                    if let Some(refused) = self.refused_before(base, sent).await {
                        return refused;
                    }
                    return Outcome::Transient(e.message);
                }
                return Outcome::Permanent(vec![(i, e)]);
            }
            sent += 1;
        }
        // In a replay, the record also says how far that replay has committed;
        // outside one, it carries the former term's mark on until that replay
        // is resumed or found finished (the last record is what counts).
        let replay = match self.replaying.as_ref() {
            Some((request, part)) => Some(ReplayMark {
                request: *request,
                through: batch.iter().map(|i| i.position()).max().unwrap_or(0),
                part: Some(part.clone()),
            }),
            None => self.resumed.clone(),
        };
        let progress = Progress { position, epoch: self.epoch, committed_at: chrono::Utc::now(), cdc: None, replay };
        let key = self.relay.cfg.consumer_name.clone();
        let progress_token = base + sent;
        let bytes = progress.to_bytes();
        // A full queue waits as the batch's records do (the last event can
        // take the last free slot; aborting then threw the transaction away).
        let topic = &self.relay.cfg.progress_topic;
        let at = progress.committed_at.timestamp_millis();
        let progress_sent = when_room(ROOM_PAUSE, || {
            self.producer.send(topic, &key, &bytes, rdkafka::message::OwnedHeaders::new(), at, progress_token)
        })
        .await;
        self.next_token = progress_token + 1;
        if let Err(e) = progress_sent {
            if let Some(o) = self.abort(Duration::from_secs(30)).await {
                return o;
            }
            if let Some(refused) = self.refused_before(base, sent).await {
                return refused;
            }
            return Outcome::Transient(format!("cannot send the progress record: {e:?}"));
        }
        // Test hook: a pause here freezes the relay mid-transaction (zombie tests).
        self.relay.pause.hold().await;
        let timeout = Duration::from_millis(self.relay.cfg.transaction_timeout_ms);
        // Every report before the commit, which cannot be taken back: a record
        // reported delivered without an offset may not be on the topic
        // (`producer::confirmed`); then the transaction is carried out again.
        let reports = self.reports(base, progress_token, timeout).await;
        if let Some(e) = reports.iter().find_map(|c| c.result.as_ref().err().filter(|e| e.kind == UNVERIFIED)) {
            tracing::warn!(error = %e, "a record of the transaction is unverified; aborting it to send it again");
            let message = e.message.clone();
            if let Some(o) = self.abort(timeout).await {
                return o;
            }
            return Outcome::Transient(message);
        }
        match self.producer.commit_transaction(timeout).await {
            Ok(()) => {
                // Every delivery report of a committed transaction is a success: forget them.
                while self.completions.try_recv().is_ok() {}
                Outcome::Committed
            }
            Err(e) => {
                let failed = self.failures(reports, base, batch.len());
                if matches!(e.kind, TxnErrorKind::Abortable | TxnErrorKind::Retriable) {
                    if let Some(o) = self.abort(timeout).await {
                        return o;
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

    /// Aborts the open transaction: `None` when it was aborted. An abort that
    /// does not complete (the broker unreachable past `timeout`, another
    /// call in progress) leaves librdkafka expecting that same call again
    /// and refusing the next `begin_transaction` for ever, so it is fatal:
    /// the term ends, a new producer's `init_transactions` settles the
    /// transaction (after the lease is re-checked).
    async fn abort(&mut self, timeout: Duration) -> Option<Outcome> {
        match self.producer.abort_transaction(timeout).await {
            Ok(()) => {
                self.relay.metrics.relay_transactions.with_label_values(&["aborted"]).inc();
                None
            }
            Err(a) if a.kind == TxnErrorKind::Fenced => Some(classify(a.kind, a.message)),
            Err(a) => Some(Outcome::Fatal(format!("the transaction could not be aborted: {}", a.message))),
        }
    }

    /// After an aborted transaction whose send failed: the records of the
    /// `sent` handed over before it that the broker refused for good, as
    /// `Permanent`. A refusal (a record over the topic's limit) puts the
    /// transaction in an abortable state, and the next send then fails
    /// with an error that looks transient (`__STATE`): taken as such, the
    /// whole batch was retried for ever, losing the same race each time.
    /// Every record's report comes once the abort purged the rest.
    async fn refused_before(&mut self, base: usize, sent: usize) -> Option<Outcome> {
        if sent == 0 {
            return None;
        }
        let reports = self.reports(base, base + sent - 1, Duration::from_secs(5)).await;
        let refused: Vec<(usize, PublishError)> =
            self.failures(reports, base, sent).into_iter().filter(|(_, e)| !e.transient).collect();
        (!refused.is_empty()).then_some(Outcome::Permanent(refused))
    }

    /// The delivery reports of tokens `base..=last` (those of earlier
    /// transactions are dropped), waiting at most `timeout` for them.
    async fn reports(&mut self, base: usize, last: usize, timeout: Duration) -> Vec<Completion> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while out.len() < last + 1 - base {
            match tokio::time::timeout_at(deadline, self.completions.recv()).await {
                Ok(Some(c)) if c.token >= base && c.token <= last => out.push(c),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        out
    }

    /// Failed records of the transaction that started at `base` (index ->
    /// error), from `early` reports and those still queued.
    fn failures(&mut self, early: Vec<Completion>, base: usize, n: usize) -> Vec<(usize, PublishError)> {
        let mut out = Vec::new();
        let queued = std::iter::from_fn(|| self.completions.try_recv().ok());
        for c in early.into_iter().chain(queued) {
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

    /// What follows a committed transaction (or a batch with nothing to
    /// commit): metrics, status, the store checkpoint. `Some(LeaseLost)`
    /// when the store refused the checkpoint as fenced: another instance
    /// holds the lease, and this term steps down.
    pub(super) async fn committed(
        &mut self,
        batch: &[Item],
        position: i64,
        started: Instant,
    ) -> Result<Option<Exit>, RelayError> {
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
        match self.relay.write_checkpoint(self.position).await {
            Ok(()) => {
                self.relay.status.checkpoint(self.position);
                self.relay.metrics.relay_checkpoint_position.set(self.position);
            }
            // Kafka refuses a fenced producer at its next transaction; the
            // store says so already: step down now (it went on committing).
            Err(StoreError::Fenced { .. }) => {
                tracing::warn!("store checkpoint fenced: another relay took over; stepping down");
                self.producer.purge();
                return Ok(Some(Exit::LeaseLost));
            }
            Err(e) => tracing::warn!(error = %e, "cannot write the store checkpoint (progress is safe in Kafka)"),
        }
        Ok(None)
    }
}
