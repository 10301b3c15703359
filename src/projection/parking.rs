//! Parked read models: an event the projector cannot apply (an unreadable
//! row, a payload this build cannot decode) parks its aggregate's read-model
//! rows instead of stopping the projection or skipping the event.
//!
//! Guarantees:
//! - The park record (`parked_aggregates`, consumer = the projection's
//!   consumer name) is written in the batch's `commit_batch`, with the
//!   checkpoint move past the event. SQLite: one transaction, so never by a
//!   batch whose compare-and-set loses: a projector (an older build, say)
//!   that cannot apply an event a rebuild beside it applies leaves no park
//!   behind. CQL: written before the checkpoint's compare-and-set, so a
//!   batch that loses it can leave its parks (CQL has no rebuild command);
//!   the aggregate's rows stay at the last version applied before it, and
//!   none of its later events is applied (a row never reflects a state with
//!   an event missing). Its events before the park position are applied
//!   (held only from there on), whether they share the page with the event
//!   or are read again after a commit that failed.
//! - Every other aggregate keeps being projected.
//! - Visible: `outboxd projections status`, /health (`projections`
//!   component Degraded while anything is parked); a rebuild starts over
//!   (its reset drops the parks of the projection with the rows and the
//!   checkpoint, in one transaction), and a projector
//!   running meanwhile re-reads the park records before each page while it
//!   holds any, so it never holds an aggregate the rebuild released; a page
//!   that held events on a park removed between that read and its commit
//!   does not commit (SQLite: checked in its transaction) and is read again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::envelope::StoredEvent;
use crate::store::feed::FeedRow;
use crate::store::parking::Parked;
use crate::store::{DynStore, StoreError};

/// The projection's parked aggregates, each with the feed position its
/// hold starts at (`i64::MIN`: a record without one holds every event).
#[derive(Debug, Default)]
pub struct ProjectionParking {
    consumer: String,
    parked: HashMap<Arc<str>, i64>,
    loaded: bool,
    /// Parks of the page being applied, not written yet: they go into its
    /// `CommitBatch` (`take_pending`).
    pending: Vec<Parked>,
    /// The aggregates whose park records were read from the store by the
    /// last `load`.
    stored: HashSet<Arc<str>>,
    /// Those of them the page being applied held events of: its commit
    /// passes only if their records are still there (`take_relied`).
    relied: HashSet<Arc<str>>,
}

/// What identifies an event for a park record.
#[derive(Debug, Clone)]
pub struct EventKey {
    pub aggregate_id: uuid::Uuid,
    pub position: i64,
    pub sequence: i64,
    pub event_id: uuid::Uuid,
    pub event_type: String,
}

impl EventKey {
    pub fn of(ev: &StoredEvent) -> EventKey {
        let e = &ev.envelope;
        EventKey {
            aggregate_id: e.aggregate_id,
            position: ev.position,
            sequence: e.sequence,
            event_id: e.event_id,
            event_type: e.event_type.clone(),
        }
    }
}

/// What a page of feed rows holds for the projector.
#[derive(Debug, Default)]
pub struct Sorted {
    /// Events to apply, in feed order.
    pub events: Vec<StoredEvent>,
    /// Rows of parked aggregates, not applied.
    pub held: u64,
}

impl ProjectionParking {
    pub fn new(consumer: &str) -> ProjectionParking {
        ProjectionParking {
            consumer: consumer.to_string(),
            parked: HashMap::new(),
            loaded: false,
            pending: Vec::new(),
            stored: HashSet::new(),
            relied: HashSet::new(),
        }
    }

    pub fn count(&self) -> usize {
        self.parked.len()
    }

    /// Whether the event of `agg` at feed `position` is held: the
    /// aggregate is parked at that position or before it.
    pub fn holds(&self, agg: &str, position: i64) -> bool {
        self.parked.get(agg).is_some_and(|from| position >= *from)
    }

    /// [`Self::holds`], remembering an aggregate held on the strength of a
    /// stored park record for the page's commit ([`Self::take_relied`]).
    pub fn hold(&mut self, agg: &str, position: i64) -> bool {
        if !self.holds(agg, position) {
            return false;
        }
        if let Some(k) = self.stored.get(agg) {
            self.relied.insert(k.clone());
        }
        true
    }

    /// The aggregates the page held events of because of a stored park
    /// record: a rebuild's reset (or an operator) may remove one between
    /// this page's `load` and its commit, which must then not pass (the
    /// held events would be skipped for good with no park left).
    pub fn take_relied(&mut self) -> Vec<String> {
        self.relied.drain().map(|a| a.to_string()).collect()
    }

    /// Loads the parked set: once per projector run while nothing is
    /// parked, and before every page while something is. A rebuild (or an
    /// operator) may have removed a park record meanwhile: holding that
    /// aggregate's events on a stale set would skip them for good, even when
    /// the rebuild ends at the very checkpoint this projector holds (its
    /// compare-and-set then passes). With nothing parked, nothing is held,
    /// so the common path reads nothing.
    /// Parks of a page whose commit never came (an error) are dropped with
    /// the set they were in: the page is read again and parks again.
    pub async fn load(&mut self, store: &DynStore) -> Result<(), StoreError> {
        if !self.loaded || !self.parked.is_empty() {
            self.pending.clear();
            self.relied.clear();
            self.parked = store
                .parked_positions(&self.consumer)
                .await?
                .into_iter()
                .map(|(agg, position)| (Arc::from(agg.as_str()), position.unwrap_or(i64::MIN)))
                .collect();
            self.stored = self.parked.keys().cloned().collect();
            self.loaded = true;
        }
        Ok(())
    }

    /// The next `load` reads the park records again (the checkpoint was
    /// moved by someone else: a rebuild may have cleared or written parks).
    pub fn invalidate(&mut self) {
        self.loaded = false;
    }

    /// The parks of the page being applied, for its `CommitBatch` (written
    /// only if its compare-and-set passes; if it loses, the caller
    /// `invalidate`s and the set is read again from the store).
    pub fn take_pending(&mut self) -> Vec<Parked> {
        std::mem::take(&mut self.pending)
    }

    /// Splits a feed page: held rows, unreadable rows (their aggregates are
    /// parked here, the record written with the page's commit), events to
    /// apply.
    pub fn sort(&mut self, rows: Vec<FeedRow>) -> Sorted {
        let mut out = Sorted::default();
        for row in rows {
            if self.hold(row.aggregate_key(), row.position()) {
                out.held += 1;
                continue;
            }
            match row {
                FeedRow::Event(e) => match e.to_envelope() {
                    Ok(envelope) => out.events.push(StoredEvent { position: e.position, envelope }),
                    Err(err) => {
                        let p = record(
                            &self.consumer,
                            &e.aggregate_key,
                            Some(e.position),
                            Some(e.sequence),
                            Some(e.event_id.to_string()),
                            Some(e.event_type.clone()),
                            err.to_string(),
                        );
                        self.park(p);
                        out.held += 1;
                    }
                },
                FeedRow::Unreadable(u) => {
                    let p = record(
                        &self.consumer,
                        &u.aggregate_key,
                        Some(u.position),
                        u.sequence,
                        u.event_id.clone(),
                        u.event_type.clone(),
                        u.error.clone(),
                    );
                    self.park(p);
                    out.held += 1;
                }
            }
        }
        out
    }

    /// Parks the aggregate of an event that cannot be applied (`error`).
    pub fn park_event(&mut self, ev: &EventKey, error: &str) {
        let p = record(
            &self.consumer,
            &ev.aggregate_id.to_string(),
            Some(ev.position),
            Some(ev.sequence),
            Some(ev.event_id.to_string()),
            Some(ev.event_type.clone()),
            error.to_string(),
        );
        self.park(p)
    }

    /// Parks `ev`'s aggregate at the earlier event that stopped it (`ev`'s
    /// position: the events from there on are held).
    pub(crate) fn park_earlier(&mut self, ev: &EventKey, e: crate::projection::page::Earlier) {
        let p = record(
            &self.consumer,
            &ev.aggregate_id.to_string(),
            Some(ev.position),
            Some(e.sequence),
            e.event_id.map(|id| id.to_string()),
            e.event_type,
            e.error,
        );
        self.park(p)
    }

    /// Holds the aggregate from `p`'s position on, and keeps `p` for the
    /// page's commit (`take_pending`).
    fn park(&mut self, p: Parked) {
        tracing::error!(aggregate = %p.aggregate_id, position = ?p.position, sequence = ?p.sequence, error = %p.error,
            "projection: event cannot be applied; the aggregate's read-model rows are parked at the version before it");
        let from = p.position.unwrap_or(i64::MIN);
        self.parked.entry(Arc::from(p.aggregate_id.as_str())).and_modify(|f| *f = (*f).min(from)).or_insert(from);
        self.pending.push(p);
    }
}

/// The park record of the projection's consumer for one event (both
/// backends' projections build theirs here).
pub(crate) fn record(
    consumer: &str,
    agg: &str,
    position: Option<i64>,
    sequence: Option<i64>,
    event_id: Option<String>,
    event_type: Option<String>,
    error: String,
) -> Parked {
    Parked {
        consumer: consumer.to_string(),
        aggregate_id: agg.to_string(),
        aggregate_type: None,
        position,
        sequence,
        event_id,
        event_type,
        error,
        parked_at: chrono::Utc::now(),
    }
}
