//! The exactly-once loop: wait for feed rows (or requests, shutdown, lease
//! loss), admit them into batches of at most `relay.transaction_max_events`
//! events, and park what can never be published.
//!
//! Guarantees: rows are taken in feed order and never reordered; events of
//! a parked aggregate never enter a batch; an unreadable row parks its
//! aggregate durably before any later transaction moves progress past it,
//! and only after the events before it in the batch committed (a park is
//! durable at once: a term ending between the two would otherwise leave
//! the aggregate's earlier, uncommitted events held behind a park record
//! that starts after them, published by nobody); a dead feed reader is
//! restarted from the last row taken.

use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use super::Txn;
use crate::relay::error::PublishError;
use crate::relay::feed::FeedHandle;
use crate::relay::parking::{count_parked, parked_record};
use crate::relay::pipeline::{lease_lost, Exit, Item, RelayError};
use crate::relay::window::Fenced;
use crate::shutdown::Shutdown;
use crate::store::feed::FeedRow;

/// Store refusals of a park record before the term ends.
const PARK_ATTEMPTS: u32 = 8;

/// The crash point right after a park record is written (tests).
pub const CRASH_AFTER_PARK: &str = "after_park";

impl Txn {
    pub(super) async fn main(
        &mut self,
        mut pages: mpsc::Receiver<Vec<FeedRow>>,
        feed: &FeedHandle,
        shutdown: &mut Shutdown,
    ) -> Result<Exit, RelayError> {
        let mut lost = self.relay.fence.clone();
        let mut requests = tokio::time::interval(Duration::from_millis(self.relay.cfg.poll_interval_ms.max(100)));
        requests.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let max_events = self.relay.cfg.transaction_max_events.max(1);
        let max_wait = Duration::from_millis(self.relay.cfg.transaction_max_ms.max(1));
        loop {
            // (The pause hook holds this relay only mid-transaction, before its commit.)
            let first = tokio::select! {
                biased;
                _ = shutdown.recv() => return Ok(Exit::Shutdown),
                _ = lease_lost(&mut lost) => {
                    self.producer.purge();
                    return Ok(Exit::LeaseLost);
                }
                // Before the pages: under a backlog or steady writes a page
                // is always ready, and requests waited until the feed was idle.
                _ = requests.tick() => {
                    if let Some(exit) = self.requests().await? {
                        return Ok(exit);
                    }
                    // A full interval from now: a slow round must not leave
                    // the next tick due at once, ahead of the pages.
                    requests.reset();
                    continue;
                }
                page = pages.recv() => match page {
                    Some(p) => p,
                    None => {
                        tracing::error!("relay feed reader ended unexpectedly; restarting it");
                        pages = feed.respawn(self.last_read);
                        continue;
                    }
                },
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
            // Split into transactions of at most `max_events` events, in feed order.
            let mut rows = rows.into_iter().peekable();
            while rows.peek().is_some() {
                let mut batch = Vec::with_capacity(max_events.min(1024));
                for row in rows.by_ref() {
                    if matches!(row, FeedRow::Unreadable(_))
                        && !batch.is_empty()
                        && !self.parked.contains_key(row.aggregate_key())
                    {
                        // Commit what precedes the row before parking at it.
                        let before = row.position() - 1;
                        if let Some(exit) = self.publish(std::mem::take(&mut batch), before, shutdown).await? {
                            return Ok(exit);
                        }
                    }
                    self.last_read = row.position();
                    if let Some(item) = self.admit(row).await? {
                        batch.push(item);
                    }
                    if batch.len() >= max_events {
                        break;
                    }
                }
                if let Some(exit) = self.publish(batch, self.last_read, shutdown).await? {
                    return Ok(exit);
                }
            }
        }
    }

    /// Whether the event of `agg` at `position` is held: its aggregate is
    /// parked from there or before (earlier events, read again after a
    /// rewind, are published).
    pub(super) fn holds(&self, agg: &str, position: i64) -> bool {
        self.parked.get(agg).is_some_and(|from| position >= *from)
    }

    /// A feed row into the batch, or held (parked aggregate; an unreadable row parks its aggregate now).
    async fn admit(&mut self, row: FeedRow) -> Result<Option<Item>, RelayError> {
        if self.holds(row.aggregate_key(), row.position()) {
            return Ok(None);
        }
        match self.discards.replace(row) {
            Item::Unreadable(u) => {
                let error = PublishError::permanent("unreadable", u.error.clone());
                self.park(&Item::Unreadable(u), &error).await?;
                Ok(None)
            }
            item => Ok(Some(item)),
        }
    }

    /// Durably parks the aggregate of `item` (retrying the store until it answers).
    /// An aggregate parked already at or before `item` stays parked from
    /// there: its park never moves forward past an event not published (a
    /// replay, which may park again further on, unparks it in memory first).
    pub(super) async fn park(&mut self, item: &Item, e: &PublishError) -> Result<(), RelayError> {
        if let Some(from) = self.parked.get(item.aggregate()).filter(|from| **from <= item.position()) {
            tracing::warn!(aggregate = %item.aggregate(), from, position = item.position(), error = %e.message, "event of an aggregate parked already at an earlier event: held, the park stays where it is");
            return Ok(());
        }
        let p = parked_record(&self.relay.cfg.consumer_name, item, e);
        let mut attempt = 0;
        while let Err(err) = self.relay.park_record(&p).await {
            if matches!(err, crate::store::StoreError::Fenced { .. }) {
                return Err(RelayError::Fenced);
            }
            attempt += 1;
            tracing::warn!(error = %err, aggregate = %p.aggregate_id, attempt, "cannot record the parked aggregate yet; retrying");
            self.relay.status.error(format!("cannot record a parked aggregate: {err}"));
            // Bounded: the term ends (nothing was committed past the event) and a new one starts.
            if attempt >= PARK_ATTEMPTS || !self.stop.sleep(self.backoff.delay(attempt)).await {
                return Err(RelayError::Store(format!("cannot record the parked aggregate {}: {err}", p.aggregate_id)));
            }
        }
        self.relay.pause.crash_point(CRASH_AFTER_PARK);
        if self.parked.insert(item.aggregate().clone(), item.position()).is_none() {
            count_parked(&self.relay.metrics, &self.relay.status, true);
        }
        tracing::error!(aggregate = %p.aggregate_id, position = ?p.position, error = %p.error, "event can never be published as it is; its aggregate is parked from it on");
        Ok(())
    }
}
