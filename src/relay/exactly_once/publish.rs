//! Committing a batch in order: retry the whole batch after a transient
//! abort (behind the breaker), and split around a permanent failure.
//!
//! Guarantees: events commit in feed order; a batch aborted for a transient
//! reason is retried as a whole (read_committed consumers saw nothing of
//! it); on a permanent failure the part before the first suspect commits,
//! the suspect (unless that part parked its aggregate at an earlier event:
//! then it is held, the park stays there) is resent alone up to
//! `max_attempts` and then parked (a
//! transient failure of a resend retries behind the breaker; only a
//! refusal parks), and the
//! rest continues without later events of the parked aggregate (a replayed
//! dead letter is not parked: the replay stops at it, its letter stays).
//! The retry counters count records as the at-least-once path does: each
//! one sent again after its transaction aborted, or resent alone
//! (`retry_attempts_total`), committed after that (`retry_success_total`),
//! still failing after `max_attempts` (`retry_failure_total`).

use std::time::Instant;

use super::{Outcome, Txn};
use crate::relay::breaker::BreakerState;
use crate::relay::error::PublishError;
use crate::relay::pipeline::{Exit, Item, RelayError};
use crate::relay::progress::LETTERS;
use crate::relay::window::Fenced;
use crate::shutdown::Shutdown;

impl Txn {
    /// Commits `batch` (in order) with progress `position`, splitting around permanent failures.
    pub(super) async fn publish(
        &mut self,
        batch: Vec<Item>,
        position: i64,
        shutdown: &mut Shutdown,
    ) -> Result<Option<Exit>, RelayError> {
        self.publish_after(batch, position, shutdown, false, false).await
    }

    /// `publish`; `refused`: a record was refused earlier in this call.
    /// After a refusal, transient aborts in a row are bounded as the solo
    /// path's are (`SoloCount::stuck`): the producer itself may be stuck
    /// waiting for an epoch bump its abort never gives, and only a new
    /// term's producer starts clean. Without the bound the prefix before a
    /// refused record was retried for ever.
    async fn publish_after(
        &mut self,
        mut batch: Vec<Item>,
        position: i64,
        shutdown: &mut Shutdown,
        mut refused: bool,
        mut counted: bool,
    ) -> Result<Option<Exit>, RelayError> {
        let mut attempts: u32 = 0;
        // Whether the batch's records are sent again (a transaction that
        // held them aborted): a prefix before a refused record, or a batch
        // after a transient abort. The retry counters count them per record.
        let mut again = refused;
        loop {
            if let Some(exit) = self.wait_for_breaker(shutdown).await {
                return Ok(Some(exit));
            }
            if batch.is_empty() {
                // Only held events: nothing to commit; the store checkpoint still moves.
                return self.committed(&[], position, Instant::now()).await;
            }
            let started = Instant::now();
            if again {
                self.count_retry(Retry::Attempt, batch.len());
            }
            match self.transaction(&batch, position).await {
                Outcome::Committed => {
                    // Not after `Failure` was counted for the same records
                    // (one outcome per retried record, as at-least-once),
                    // in this call or in the batch they were split from.
                    if again && !counted {
                        self.count_retry(Retry::Success, batch.len());
                    }
                    return self.committed(&batch, position, started).await;
                }
                Outcome::Fenced(m) => {
                    tracing::warn!(error = %m, "producer fenced: another relay took over; stepping down");
                    return Ok(Some(Exit::LeaseLost));
                }
                Outcome::Fatal(m) => return Err(RelayError::ProducerFatal(m)),
                Outcome::Transient(m) => {
                    attempts += 1;
                    again = true;
                    self.aborted(&m);
                    if attempts == self.backoff.max_attempts.max(1) && !counted {
                        // Still failing after max_attempts (once, as at least once).
                        self.count_retry(Retry::Failure, batch.len());
                        counted = true;
                    }
                    if refused && attempts >= self.backoff.max_attempts.max(1) {
                        return Err(RelayError::ProducerFatal(format!(
                            "transactions keep aborting after a refused record ({m}); recreating the producer"
                        )));
                    }
                    tracing::warn!(error = %m, attempts, events = batch.len(), "transaction aborted; retrying the batch in order");
                    if let Some(exit) = self.idle(self.backoff.delay(attempts), shutdown).await {
                        return Ok(Some(exit));
                    }
                }
                Outcome::Permanent(mut failed) => {
                    refused = true;
                    failed.sort_by_key(|(i, _)| *i);
                    let (k, err) = failed.swap_remove(0);
                    // Commit what precedes the first suspect, then try it alone.
                    let suspect = batch[k].clone();
                    let rest: Vec<Item> = batch.split_off(k + 1);
                    batch.truncate(k);
                    if !batch.is_empty() {
                        // Never behind the committed progress (a replayed
                        // event's position is in the past), and in a replay
                        // never an item's own: a dead letter's position can
                        // be ahead of this feed (a rewind, another
                        // consumer's letter), and a progress there would
                        // skip feed events never published.
                        let before = self.progress_at(suspect.position() - 1);
                        let prefix = std::mem::take(&mut batch);
                        if let Some(exit) =
                            Box::pin(self.publish_after(prefix, before, shutdown, true, counted)).await?
                        {
                            return Ok(Some(exit));
                        }
                        if self.letter_failed.is_some() {
                            // A letter of the prefix failed for good: the replay ends there.
                            return Ok(None);
                        }
                    }
                    // Committing the prefix may have parked the suspect's
                    // aggregate at an earlier event (refused on its own):
                    // the suspect is then held, never resent or parked (its
                    // park would move the earlier one forward, past an event
                    // never published).
                    let letters = self.replaying.as_ref().is_some_and(|(_, part)| part == LETTERS);
                    if letters || !self.holds(suspect.aggregate(), suspect.position()) {
                        if let Some(exit) = self.solo(suspect.clone(), err, shutdown, counted).await? {
                            return Ok(Some(exit));
                        }
                    }
                    if self.letter_failed.is_some() {
                        // A dead-letter replay ends at its failed letter: what
                        // committed stays a prefix (the replay mark says so).
                        return Ok(None);
                    }
                    // The rest, without the events of a parked aggregate from its
                    // park position on (earlier ones, read again after a rewind, go).
                    // Dead letters are not feed traffic: each goes whatever
                    // the parks (every chosen letter is removed once the
                    // replay committed; one dropped here was lost).
                    batch = rest.into_iter().filter(|i| letters || !self.holds(i.aggregate(), i.position())).collect();
                    attempts = 0;
                    // The rest was in the aborted transaction too: sent again.
                    again = true;
                }
            }
        }
    }

    /// Resends a suspect alone (at least once) until it commits, or fails
    /// for good once `max_attempts` are used (then parks it; see
    /// [`SoloCount`]: a transient failure retries behind the breaker, as the
    /// batch does, never parks). The progress it commits never goes behind
    /// the committed one.
    async fn solo(
        &mut self,
        item: Item,
        mut err: PublishError,
        shutdown: &mut Shutdown,
        counted: bool,
    ) -> Result<Option<Exit>, RelayError> {
        // Its outcome is counted once: not again when its batch's failure
        // was (`counted`).
        let mut count = SoloCount::new();
        let position = self.progress_at(item.position());
        loop {
            if count.exhausted(self.backoff.max_attempts) {
                if !counted {
                    self.count_retry(Retry::Failure, 1);
                }
                if self.replaying.as_ref().is_some_and(|(_, part)| part == LETTERS) {
                    // Not parked: its aggregate's later events went out long ago.
                    self.letter_failed = Some((item.position(), err));
                    return Ok(None);
                }
                self.park(&item, &err).await?;
                return Ok(None);
            }
            if let Some(exit) = self.idle(self.backoff.delay(count.attempts), shutdown).await {
                return Ok(Some(exit));
            }
            if let Some(exit) = self.wait_for_breaker(shutdown).await {
                return Ok(Some(exit));
            }
            let started = Instant::now();
            // Each resend alone is a retry, as on the at-least-once path.
            self.count_retry(Retry::Attempt, 1);
            match self.transaction(std::slice::from_ref(&item), position).await {
                Outcome::Committed => {
                    if !counted {
                        self.count_retry(Retry::Success, 1);
                    }
                    return self.committed(std::slice::from_ref(&item), position, started).await;
                }
                Outcome::Permanent(mut f) => {
                    err = f.swap_remove(0).1;
                    count.failed(true);
                }
                Outcome::Transient(m) => {
                    tracing::warn!(error = %m, "transaction of a single event aborted; retrying behind the breaker");
                    self.aborted(&m);
                    count.failed(false);
                    if count.stuck(self.backoff.max_attempts) {
                        if !counted {
                            self.count_retry(Retry::Failure, 1);
                        }
                        // One event alone keeps aborting: the producer itself
                        // may be stuck (after a refused record librdkafka
                        // can wait for an epoch bump its abort never gives:
                        // "skipped sequence numbers"). A new term's producer
                        // starts clean; the runner backs off between terms.
                        return Err(RelayError::ProducerFatal(format!(
                            "a single event's transaction keeps aborting ({m}); recreating the producer"
                        )));
                    }
                }
                Outcome::Fenced(_) => return Ok(Some(Exit::LeaseLost)),
                Outcome::Fatal(m) => return Err(RelayError::ProducerFatal(m)),
            }
        }
    }

    /// The progress a transaction of the feed through `position` commits:
    /// never behind the committed one; in a replay the committed one as it
    /// is (a dead letter's position can be ahead of this feed).
    fn progress_at(&self, position: i64) -> i64 {
        if self.replaying.is_some() {
            self.position
        } else {
            position.max(self.position)
        }
    }

    /// `n` records in `retry_{attempts,success,failure}_total{operation="publish"}`.
    fn count_retry(&self, what: Retry, n: usize) {
        let m = &self.relay.metrics;
        let family = match what {
            Retry::Attempt => &m.retry_attempts,
            Retry::Success => &m.retry_success,
            Retry::Failure => &m.retry_failure,
        };
        family.with_label_values(&["publish"]).inc_by(n as u64);
    }

    /// A transaction aborted for a transient reason: the breaker counts
    /// it, and /health shows the breaker and the reason.
    fn aborted(&mut self, reason: &str) {
        self.breaker.record_failure(Instant::now());
        self.relay.status.breaker(self.breaker.state(Instant::now()));
        self.relay.status.error(reason.to_string());
    }

    /// Waits while the breaker is open (it watches the broker: a broker
    /// seen down and answering again is probed at once).
    async fn wait_for_breaker(&mut self, shutdown: &mut Shutdown) -> Option<Exit> {
        loop {
            let now = Instant::now();
            if self.breaker.state(now) != BreakerState::Open {
                if shutdown.is_shutdown() {
                    return Some(Exit::Shutdown);
                }
                // Nothing is handed to the producer once the lease went
                // (a loss during the wait, or before it).
                return self.relay.fence.as_ref().is_some_and(|f| !f.held()).then_some(Exit::LeaseLost);
            }
            let wait = self.breaker.open_wait(now);
            if let Some(exit) = self.idle(wait, shutdown).await {
                return Some(exit);
            }
        }
    }

    /// Waits `d`, unless shutdown or the lease's loss comes first (then
    /// the exit): a term behind an open breaker or a backoff (the broker
    /// away for longer than the lease TTL) must still see a takeover.
    async fn idle(&self, d: std::time::Duration, shutdown: &mut Shutdown) -> Option<Exit> {
        match crate::relay::pipeline::unless_lease_lost(&self.relay.fence, shutdown.sleep(d)).await {
            None => Some(Exit::LeaseLost),
            Some(false) => Some(Exit::Shutdown),
            Some(true) => None,
        }
    }
}

/// Which retry counter a record goes to: sent again, committed after
/// being sent again, still failing after `relay.retry.max_attempts`.
#[derive(Debug, Clone, Copy)]
enum Retry {
    Attempt,
    Success,
    Failure,
}

/// The attempts of a solo resend (the batch's permanent failure is the
/// first). It is exhausted only when its last failure was permanent and
/// `max_attempts` (at least 2: it is always resent alone once) are used,
/// transient ones included, as on the at-least-once path: a broker outage
/// during the resends retries (behind the breaker), it never parks a
/// suspect whose last word was not a refusal.
/// Transient failures in a row, `max_attempts` of them, say the producer
/// is stuck ([`SoloCount::stuck`]): the term ends to make a new one.
#[derive(Debug, Clone, Copy)]
struct SoloCount {
    attempts: u32,
    last_permanent: bool,
    transient_in_a_row: u32,
}

impl SoloCount {
    fn new() -> SoloCount {
        SoloCount { attempts: 1, last_permanent: true, transient_in_a_row: 0 }
    }

    fn failed(&mut self, permanent: bool) {
        self.attempts += 1;
        self.last_permanent = permanent;
        self.transient_in_a_row = if permanent { 0 } else { self.transient_in_a_row + 1 };
    }

    fn exhausted(&self, max_attempts: u32) -> bool {
        self.last_permanent && self.attempts >= max_attempts.max(2)
    }

    fn stuck(&self, max_attempts: u32) -> bool {
        self.transient_in_a_row >= max_attempts.max(2)
    }
}

#[cfg(test)]
mod tests {
    use super::SoloCount;

    /// Review finding: transient failures of the solo resends counted
    /// toward parking, so a broker outage during them parked a suspect
    /// (refused once) after `max_attempts`, on an outage, not a refusal.
    #[test]
    fn only_a_refusal_exhausts_a_solo_resend() {
        let mut c = SoloCount::new();
        assert!(!c.exhausted(3), "resent alone at least once");
        c.failed(true);
        assert!(!c.exhausted(3));
        for _ in 0..2 {
            c.failed(false);
            assert!(!c.exhausted(3), "an outage retries");
            assert!(!c.stuck(3));
        }
        c.failed(false);
        assert!(!c.exhausted(3) && c.stuck(3), "three in a row: the producer is made again, nothing parked");
        c.failed(true);
        assert!(c.exhausted(3) && !c.stuck(3), "refused again, attempts used: parked");
        let mut c = SoloCount::new();
        c.failed(true);
        assert!(c.exhausted(1), "max 1 still resends alone once");
    }
}
