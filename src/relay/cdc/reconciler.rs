//! The reconciling sink: wraps the relay's one delivery call and keeps
//! per-aggregate order across late CDC rows of unknown-outcome appends
//! (decisions in `cdc_reconcile`, rows in `cdc_reconcile_table`).
//!
//! Guarantees:
//! - Every event, filled or reconciled ones included, goes through the inner
//!   sink's `handle` (the relay's single delivery call: retry, breaker, DLQ,
//!   parking and exactly-once live there), or its `undecodable` for a row
//!   that cannot be decoded, one at a time per aggregate: a
//!   consumer and the reconciler task never publish events of one aggregate
//!   concurrently (striped locks by aggregate id).
//! - Before event `s` of aggregate A: the pending `(A, k < s)` and the gap
//!   behind A's last published event are published first, from the event
//!   table, in sequence order ([`Plan`]).
//! - The pending rows are loaded before the feed reads its first row
//!   ([`ReconcilingSink::load_pending`]); one first seen behind a later
//!   published event of its aggregate is published late, never deleted
//!   unpublished.
//! - A pending row is deleted only after its event was published; one older
//!   than the bound, and behind the reader's published progress (the
//!   [`ReadThrough`] probe), is published by [`run_reconciler`] (refresh every
//!   few seconds) and then deleted. `cdc_unreconciled_appends` shows the
//!   pending rows.
//! - An undecodable row keeps the same order: the events before it are
//!   published first, then it goes to the inner sink's `undecodable` (the
//!   parking policy). A row of the event table that cannot be decoded never
//!   fails a fill: it is handed to the parking policy in its turn too.
//! - Store reads that fail transiently are retried with backoff until they
//!   work or shutdown; shutdown returns `CdcError::Shutdown` (nothing confirmed).

use async_trait::async_trait;
use chrono::Utc;
use prometheus::IntGauge;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

use super::consumer::{RowPosition, UndecodableRow};
use super::reconcile::{PendingAppend, Plan, ReconcileState};
use super::stored::Stored;
use super::{CdcError, EnvelopeSink};
use crate::envelope::EventEnvelope;
use crate::shutdown::Shutdown;
use crate::store::cql::reconcile::ReconcileTable;
use crate::store::{DynStore, StoreError};

const STRIPES: usize = 1024;

/// Up to when (ms) every CDC row has been published, if known: the feed's
/// oldest per-stream progress once every stream of the generation has
/// reported (its floor before, `LeaseCheckpointSaver::read_through_ms`),
/// less the clock skew allowance.
pub type ReadThrough = Arc<dyn Fn() -> Option<i64> + Send + Sync>;

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Handed to the inner sink (after `filled` earlier events): published,
    /// or, when `event_store` cannot decode it either, parked or dead-lettered.
    Delivered { filled: usize },
    /// Already published by this process: not sent again.
    Skipped,
    /// A pending row whose event is not in the event table (kept, logged
    /// once): an append whose outcome stayed unknown and has not landed.
    Missing,
}

pub struct ReconcilingSink<S: EnvelopeSink> {
    inner: Arc<S>,
    store: DynStore,
    table: ReconcileTable,
    state: Mutex<ReconcileState>,
    stripes: Vec<tokio::sync::Mutex<()>>,
    bound: Duration,
    gauge: Option<IntGauge>,
    read_through: ReadThrough,
}

/// A sink ends with its term (or its feed's run): an instance that no
/// longer relays does not keep exporting the pending rows it last saw (the
/// next holder counts them).
impl<S: EnvelopeSink> Drop for ReconcilingSink<S> {
    fn drop(&mut self) {
        if let Some(g) = &self.gauge {
            g.set(0);
        }
    }
}

impl<S: EnvelopeSink> ReconcilingSink<S> {
    /// `bound`: age after which a pending row is published by the
    /// reconciler (once `read_through` has passed it); `capacity`: aggregates
    /// whose last published sequence is kept.
    pub fn new(
        inner: Arc<S>,
        store: DynStore,
        table: ReconcileTable,
        bound: Duration,
        capacity: usize,
        gauge: Option<IntGauge>,
        read_through: ReadThrough,
    ) -> Arc<Self> {
        Arc::new(ReconcilingSink {
            inner,
            store,
            table,
            state: Mutex::new(ReconcileState::new(capacity)),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            bound,
            gauge,
            read_through,
        })
    }

    /// Pending rows and the age of the oldest (for `reconcile_health`).
    pub fn pending(&self) -> (usize, Option<Duration>) {
        let s = self.state.lock().unwrap();
        let age =
            s.oldest_resolved_at_ms().map(|t| Duration::from_millis((Utc::now().timestamp_millis() - t).max(0) as u64));
        (s.pending_len(), age)
    }

    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// Forgets which events this process published (an operator's rewind,
    /// while no reader runs): they are sent again when read again.
    pub fn forget_published(&self) {
        self.state.lock().unwrap().forget_published();
    }

    fn set_gauge(&self) {
        if let Some(g) = &self.gauge {
            g.set(self.state.lock().unwrap().pending_len() as i64);
        }
    }

    /// What `event_store` holds for `aggregate` after sequence `after`, row
    /// by row: a row that cannot be decoded is returned as such, never fails
    /// the events around it (a fill before or after it still works). A read
    /// that fails transiently is retried until it works (or shutdown). Every
    /// sequence of `fill` must be in it: one missing (a read that did not
    /// see it yet, at a low consistency) is read again, and after 5 such
    /// reads the delivery fails (the reader reads the window again) rather
    /// than publish past it: the sequences between the first and the last
    /// an aggregate published count as published.
    async fn load_stored(
        &self,
        aggregate: Uuid,
        after: i64,
        fill: &[i64],
        shutdown: &mut Shutdown,
    ) -> Result<Vec<Stored>, CdcError> {
        let key = crate::store::feed::uuid_key(&aggregate);
        let mut delay = Duration::from_millis(100);
        let mut short_reads = 0;
        loop {
            match self.store.aggregate_rows(&key, None, Some(after + 1), None).await {
                Ok(rows) => {
                    let stored: Vec<Stored> = rows.into_iter().filter_map(|r| Stored::of(aggregate, r)).collect();
                    let missing: Vec<i64> =
                        fill.iter().copied().filter(|k| !stored.iter().any(|s| s.key().1 == *k)).collect();
                    if missing.is_empty() {
                        return Ok(stored);
                    }
                    short_reads += 1;
                    if short_reads >= 5 {
                        return Err(CdcError::Store(StoreError::Unavailable(format!(
                            "events {missing:?} of {aggregate} are not in event_store yet, a later one is: not publishing past them"
                        ))));
                    }
                    tracing::warn!(%aggregate, ?missing, short_reads, "reconciliation: earlier events not read yet; reading again");
                }
                Err(StoreError::Unavailable(e)) => {
                    tracing::warn!(%aggregate, error = %e, "reconciliation: cannot load events; retrying");
                }
                Err(e) => return Err(CdcError::Store(e)),
            }
            if !shutdown.sleep(delay).await {
                return Err(CdcError::Shutdown);
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Hands one stored event to the inner sink (an undecodable one to its
    /// `undecodable`: parked or dead-lettered) and marks it passed.
    async fn pass_stored(&self, stored: Stored, shutdown: &mut Shutdown) -> Result<(), CdcError> {
        let (aggregate, sequence) = stored.key();
        match stored {
            Stored::Event(e) => self.inner.handle(e, shutdown).await?,
            Stored::Undecodable(row) => {
                if row.position.is_none() {
                    tracing::warn!(%aggregate, sequence, error = %row.error, "an event to publish from event_store cannot be decoded; handing it to the parking policy");
                }
                self.inner.undecodable(row, shutdown).await?
            }
        }
        self.mark_published(aggregate, sequence).await;
        Ok(())
    }

    /// The plan for `(aggregate, sequence)` in its turn: `None` when it was
    /// already passed (its pending row, if any, is confirmed), else the
    /// earlier sequences to publish first.
    async fn fill_plan(&self, aggregate: Uuid, sequence: i64) -> Option<Vec<i64>> {
        let plan = self.state.lock().unwrap().plan(aggregate, sequence);
        match plan {
            Plan::Skip => {
                self.mark_published(aggregate, sequence).await;
                None
            }
            Plan::Late => {
                tracing::warn!(%aggregate, sequence, "an unknown-outcome append found pending below the events of its aggregate this relay published: publishing it late (a copy if an earlier run published it)");
                Some(Vec::new())
            }
            Plan::Deliver { fill } => Some(fill),
        }
    }

    /// Publishes `fill` (earlier sequences of `aggregate`, ascending) from
    /// `event_store`, in order; returns what the table holds for `sequence`
    /// itself when `want` (and it was loaded).
    async fn fill(
        &self,
        aggregate: Uuid,
        sequence: i64,
        fill: &[i64],
        want: bool,
        shutdown: &mut Shutdown,
    ) -> Result<Option<Stored>, CdcError> {
        if fill.is_empty() && !want {
            return Ok(None);
        }
        let from = fill.first().copied().unwrap_or(sequence).min(sequence) - 1;
        let mut target = None;
        for stored in self.load_stored(aggregate, from, fill, shutdown).await? {
            let s = stored.key().1;
            if fill.contains(&s) {
                tracing::info!(%aggregate, sequence = s, before = sequence, "publishing an event whose CDC row was not seen (unknown-outcome append or late row) before a later one");
                self.pass_stored(stored, shutdown).await?;
            } else if s == sequence && want {
                target = Some(stored);
            }
        }
        Ok(target)
    }

    /// Records that `(aggregate, sequence)` was published (here, or by a
    /// replay): the reader skips it when its row comes again, and its
    /// pending reconciliation row is confirmed.
    pub async fn mark_published(&self, aggregate: Uuid, sequence: i64) {
        let row = self.state.lock().unwrap().published(aggregate, sequence);
        self.confirmed(row, aggregate, sequence).await;
    }

    /// Records that a dead letter's event `(aggregate, sequence)` was
    /// published again by an operator's replay, outside the feed's order
    /// ([`ReconcileState::replayed`]): its pending row is confirmed.
    pub async fn mark_replayed(&self, aggregate: Uuid, sequence: i64) {
        let row = self.state.lock().unwrap().replayed(aggregate, sequence);
        self.confirmed(row, aggregate, sequence).await;
    }

    /// Deletes the reconciliation row of a published event, if it had one.
    async fn confirmed(&self, row: Option<PendingAppend>, aggregate: Uuid, sequence: i64) {
        if row.is_some() {
            match self.table.confirm(aggregate, sequence).await {
                Ok(()) => tracing::info!(%aggregate, sequence, "unknown-outcome append confirmed published"),
                // The next refresh deletes it (it is remembered as published).
                Err(e) => {
                    tracing::warn!(%aggregate, sequence, error = %e, "cannot delete a confirmed reconciliation row; retrying at the next refresh")
                }
            }
            self.set_gauge();
        }
    }

    /// Holds `aggregate`'s turn: no event of it (nor of the aggregates
    /// sharing its stripe) is published by the reader or the reconciler
    /// until the guard is dropped. An operator's replay runs under it.
    pub async fn exclusive(&self, aggregate: Uuid) -> tokio::sync::MutexGuard<'_, ()> {
        self.stripes[(aggregate.as_u128() % STRIPES as u128) as usize].lock().await
    }

    /// Publishes event `sequence` of `aggregate` (`env`, with the log row it
    /// came from if any, or loaded from the event table when `None`) after
    /// what must go before it.
    pub async fn deliver_through(
        &self,
        aggregate: Uuid,
        sequence: i64,
        env: Option<EventEnvelope>,
        at: Option<&RowPosition>,
        shutdown: &mut Shutdown,
    ) -> Result<Handled, CdcError> {
        let _one = self.exclusive(aggregate).await;
        let Some(fill) = self.fill_plan(aggregate, sequence).await else { return Ok(Handled::Skipped) };
        let loaded = self.fill(aggregate, sequence, &fill, env.is_none(), shutdown).await?;
        // Whatever event holds the sequence is published, even when it is
        // not the one the pending row names (an append that never landed:
        // its row may have replaced the row of the append that did).
        let env = match (env, loaded) {
            (Some(env), _) | (None, Some(Stored::Event(env))) => env,
            (None, Some(bad @ Stored::Undecodable(_))) => {
                self.pass_stored(bad, shutdown).await?;
                return Ok(Handled::Delivered { filled: fill.len() });
            }
            (None, None) => {
                if self.state.lock().unwrap().mark_not_stored(aggregate, sequence) {
                    tracing::warn!(%aggregate, sequence,
                        "reconciliation row names an event that is not in event_store: an append whose outcome stayed unknown and has not landed (it may, until another append takes this sequence or the row expires), or a read below quorum; keeping the row and checking it every round");
                }
                return Ok(Handled::Missing);
            }
        };
        match at {
            Some(at) => self.inner.handle_row(env, at, shutdown).await?,
            None => self.inner.handle(env, shutdown).await?,
        }
        self.mark_published(aggregate, sequence).await;
        Ok(Handled::Delivered { filled: fill.len() })
    }

    /// Reloads the pending rows and deletes those already published.
    pub async fn refresh(&self) -> Result<usize, StoreError> {
        let rows = self.table.list().await?;
        let confirmable = self.state.lock().unwrap().refresh(rows);
        for p in confirmable {
            self.table.confirm(p.aggregate_id, p.sequence).await?;
        }
        self.set_gauge();
        Ok(self.state.lock().unwrap().pending_len())
    }

    /// The first [`Self::refresh`], retried with backoff until it works:
    /// the feed reads no row before the pending set is loaded (an event
    /// published before would pass its aggregate's pending earlier one).
    /// False on shutdown.
    pub async fn load_pending(&self, shutdown: &mut Shutdown) -> bool {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.refresh().await {
                Ok(_) => return true,
                Err(e) => {
                    tracing::warn!(error = %e, "reconciliation: cannot load append_reconciliation before reading the CDC log; retrying");
                    if !shutdown.sleep(delay).await {
                        return false;
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Publishes every pending row older than the bound that the reader
    /// has passed. Returns how many.
    pub async fn reconcile_overdue(&self, shutdown: &mut Shutdown) -> Result<usize, CdcError> {
        let read_through = (self.read_through)();
        let overdue: Vec<PendingAppend> = self.state.lock().unwrap().overdue(
            Utc::now().timestamp_millis(),
            self.bound.as_millis() as i64,
            read_through,
        );
        let mut done = 0;
        for p in overdue {
            if !self.state.lock().unwrap().is_not_stored(p.aggregate_id, p.sequence) {
                tracing::warn!(aggregate = %p.aggregate_id, sequence = p.sequence, event_id = %p.event_id, "unknown-outcome append not seen in the CDC log within the bound; publishing it from event_store");
            }
            // One that cannot go out yet (an earlier event not readable)
            // does not hold up the others of the round.
            match self.deliver_through(p.aggregate_id, p.sequence, None, None, shutdown).await {
                Ok(Handled::Delivered { .. }) => done += 1,
                Ok(_) => {}
                Err(CdcError::Shutdown) => return Err(CdcError::Shutdown),
                Err(CdcError::Store(e)) => {
                    tracing::warn!(aggregate = %p.aggregate_id, sequence = p.sequence, error = %e, "reconciliation: cannot publish this one yet; the next round tries again")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

#[async_trait]
impl<S: EnvelopeSink> EnvelopeSink for ReconcilingSink<S> {
    async fn handle(&self, env: EventEnvelope, shutdown: &mut Shutdown) -> Result<(), CdcError> {
        self.deliver_through(env.aggregate_id, env.sequence, Some(env), None, shutdown).await.map(|_| ())
    }

    async fn handle_row(&self, env: EventEnvelope, at: &RowPosition, shutdown: &mut Shutdown) -> Result<(), CdcError> {
        self.deliver_through(env.aggregate_id, env.sequence, Some(env), Some(at), shutdown).await.map(|_| ())
    }

    /// In its aggregate's turn (never between a replay's load and its
    /// unpark); once handled (parked or dead-lettered) its sequence counts
    /// as passed, so the next event of the aggregate does not try to fill it
    /// from `event_store` (where it cannot be decoded either).
    ///
    /// Like an event, it comes after what must go before it: the pending
    /// and missing earlier events of its aggregate are published first
    /// (else a later replay, which starts at the bad row, never would).
    async fn undecodable(&self, row: UndecodableRow, shutdown: &mut Shutdown) -> Result<(), CdcError> {
        let Some(aggregate) = row.aggregate_id else { return self.inner.undecodable(row, shutdown).await };
        let _one = self.exclusive(aggregate).await;
        let Some(sequence) = row.sequence else { return self.inner.undecodable(row, shutdown).await };
        let Some(fill) = self.fill_plan(aggregate, sequence).await else { return Ok(()) };
        self.fill(aggregate, sequence, &fill, false, shutdown).await?;
        self.pass_stored(Stored::Undecodable(row), shutdown).await
    }
}

/// Every `every`: reload the pending rows, publish the overdue ones. Runs
/// until shutdown; a failed round is logged and retried at the next tick.
pub async fn run_reconciler<S: EnvelopeSink>(sink: Arc<ReconcilingSink<S>>, every: Duration, mut shutdown: Shutdown) {
    while shutdown.sleep(every).await {
        if let Err(e) = sink.refresh().await {
            tracing::warn!(error = %e, "reconciliation: cannot read append_reconciliation; retrying");
            continue;
        }
        match sink.reconcile_overdue(&mut shutdown).await {
            Ok(_) | Err(CdcError::Shutdown) => {}
            Err(e) => tracing::warn!(error = %e, "reconciliation: publishing an overdue append failed; retrying"),
        }
    }
}

#[cfg(test)]
#[path = "reconciler_tests.rs"]
mod tests;
