//! Reconciliation of appends whose compare-and-set outcome was unknown:
//! what to publish, in which order (pure decisions; `cdc_reconciler` acts).
//!
//! Why: an LWT whose outcome was unknown may be committed later by another
//! Paxos round, and Scylla then writes its CDC rows with the original
//! ballot's time, possibly into windows the reader has already passed
//! (behind the safety interval). The CQL store records every such append it
//! resolves as applied (`append_reconciliation`: aggregate, sequence, event
//! id, resolved_at) before the append returns Ok, and every one whose
//! outcome stays unknown before its `OutcomeUnknown` returns (it may land
//! later). The relay then:
//!
//! Guarantees:
//! - Order per aggregate at first arrival: before publishing event `s` of
//!   aggregate A, every pending `(A, k < s)` not yet published is published
//!   first (loaded from the event table), in sequence order. The same holds
//!   for a gap behind the last event of A this relay published (a late row
//!   nobody recorded, e.g. its writer died before resolving): `last+1 .. s-1`
//!   are filled from the event table first.
//! - Confirmation: publishing `(A, k)` (through the CDC row, a fill, or the
//!   reconciler) while its pending row is known confirms that row, which is
//!   then deleted; only such a row is ever deleted (a delete that failed is
//!   retried at the next refresh).
//! - No loss behind the first published event: this process remembers the
//!   first and last sequence it published per aggregate (every one between
//!   went out: gaps are filled). A pending row first seen inside that range
//!   was published (confirmed, deleted); one below it (the row was
//!   recorded, or the pending set loaded, only after a later event went out)
//!   never was here: the reconciler publishes it at its next round, out of
//!   order but not lost (a copy if an earlier run had published it).
//! - Bounded time: a pending row older than the bound (safety interval +
//!   window + margin) is published by the reconciler and deleted, once the
//!   reader has published every row stamped before the append was resolved
//!   (so the aggregate's earlier events, committed before it, went first).
//!   The event that holds the sequence is what goes out, even another
//!   append's (the row of an append that never landed may have replaced
//!   that append's row: a copy rather than a loss). One whose event is not
//!   stored (yet) is kept and checked every round (an unresolved append's
//!   row expires after 7 days), but does not count as overdue
//!   ([`ReconcileState::oldest_resolved_at_ms`]).
//! - No re-send inside one process: an event at or below the last sequence
//!   this relay published for its aggregate (a window read again after a
//!   reader restart or a catch-up switch) is skipped, except a pending one
//!   below the range it passed (above: published late, once).
//!   An operator's rewind clears that memory ([`ReconcileState::forget_published`]).
//!   A dead letter an operator replays (out of the feed's order) confirms
//!   its pending row but moves that range only when it lies in it or right
//!   after it ([`ReconcileState::replayed`]): the aggregate's next event
//!   does not fill back to an old letter, nor are the feed's events below a
//!   letter ahead of it skipped.
//! - Bounded memory: the "last published" map keeps at most `capacity`
//!   aggregates (two generations of `capacity / 2`, the older dropped
//!   whole); forgetting an aggregate only disables the gap check and the
//!   re-send skip for it (a possible duplicate, never a loss).

use std::collections::{BTreeMap, HashMap, HashSet};
use uuid::Uuid;

pub use crate::store::cql::reconcile::PendingAppend;

/// What to do with event `s` of an aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Already published by this process: do not send it again.
    Skip,
    /// Behind the last published sequence yet pending (never seen
    /// published): publish it alone, late.
    Late,
    /// Publish these sequences first (ascending, from the event table), then the event.
    Deliver { fill: Vec<i64> },
}

/// Per aggregate, bounded: the first sequence this process published and
/// the last. Every sequence between them went out (a gap behind the last is
/// filled before the next), so a pending row in that range was published.
#[derive(Debug, Clone, Default)]
struct Recent {
    current: HashMap<Uuid, (i64, i64)>,
    previous: HashMap<Uuid, (i64, i64)>,
    capacity: usize,
}

impl Recent {
    /// The last published sequence.
    fn get(&self, a: &Uuid) -> Option<i64> {
        self.range(a).map(|(_, last)| last)
    }

    fn range(&self, a: &Uuid) -> Option<(i64, i64)> {
        self.current.get(a).or_else(|| self.previous.get(a)).copied()
    }

    /// Whether `seq` of `a` is in the range this process passed.
    fn passed(&self, a: &Uuid, seq: i64) -> bool {
        self.range(a).is_some_and(|(first, last)| first <= seq && seq <= last)
    }

    fn set(&mut self, a: Uuid, seq: i64) {
        // A late publish below the range does not extend it, and a jump past
        // `last + 1` (a publish without the gap fill: pending rows only)
        // starts a new one: what lies between may not have gone out.
        let range = match self.range(&a) {
            Some((first, last)) if seq <= last + 1 => (first, last.max(seq)),
            Some((first, last)) if seq < first => (first, last),
            _ => (seq, seq),
        };
        if !self.current.contains_key(&a) && self.current.len() >= self.capacity / 2 {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(a, range);
    }

    fn len(&self) -> usize {
        let extra = self.previous.keys().filter(|k| !self.current.contains_key(*k)).count();
        self.current.len() + extra
    }
}

/// Pending unknown-outcome appends and what this relay published.
#[derive(Debug, Clone)]
pub struct ReconcileState {
    pending: BTreeMap<Uuid, BTreeMap<i64, PendingAppend>>,
    recent: Recent,
    /// Rows published while pending: kept until a refresh no longer lists
    /// them (a list read before their delete must not make them pending).
    unconfirmed: HashSet<(Uuid, i64)>,
    /// Pending rows whose event the reconciler found missing from
    /// `event_store`: an append whose outcome stayed unknown and that has not
    /// landed (it may, until another append takes its sequence). Still
    /// checked every round, but not "unreconciled past the bound".
    not_stored: HashSet<(Uuid, i64)>,
}

impl ReconcileState {
    /// `capacity`: most aggregates whose last published sequence is kept.
    pub fn new(capacity: usize) -> ReconcileState {
        ReconcileState {
            pending: BTreeMap::new(),
            recent: Recent { capacity: capacity.max(2), ..Recent::default() },
            unconfirmed: HashSet::new(),
            not_stored: HashSet::new(),
        }
    }

    /// The table's rows replace the pending set (rows deleted elsewhere go).
    /// Returns those this process published already (while they were
    /// pending, their delete failed or raced this list; or in the range it
    /// passed): delete them, publish nothing.
    pub fn refresh(&mut self, rows: impl IntoIterator<Item = PendingAppend>) -> Vec<PendingAppend> {
        self.pending.clear();
        let mut confirmable = Vec::new();
        for r in rows {
            let key = (r.aggregate_id, r.sequence);
            if self.unconfirmed.contains(&key) || self.recent.passed(&r.aggregate_id, r.sequence) {
                confirmable.push(r);
            } else {
                self.pending.entry(r.aggregate_id).or_default().insert(r.sequence, r);
            }
        }
        self.unconfirmed.retain(|k| confirmable.iter().any(|r| (r.aggregate_id, r.sequence) == *k));
        let pending = &self.pending;
        self.not_stored.retain(|(a, s)| pending.get(a).is_some_and(|rows| rows.contains_key(s)));
        confirmable
    }

    /// The plan for event `sequence` of `aggregate`.
    pub fn plan(&self, aggregate: Uuid, sequence: i64) -> Plan {
        let last = self.recent.get(&aggregate);
        if last.is_some_and(|l| sequence <= l) {
            let pending = self.pending.get(&aggregate).is_some_and(|p| p.contains_key(&sequence));
            let late = pending && !self.recent.passed(&aggregate, sequence);
            return if late { Plan::Late } else { Plan::Skip };
        }
        let mut fill: Vec<i64> = self
            .pending
            .get(&aggregate)
            .map(|p| p.range(..sequence).map(|(k, _)| *k).filter(|k| last.is_none_or(|l| *k > l)).collect())
            .unwrap_or_default();
        if let Some(l) = last {
            fill.extend(l + 1..sequence);
        }
        fill.sort_unstable();
        fill.dedup();
        Plan::Deliver { fill }
    }

    /// `(aggregate, sequence)` was published. Returns its pending row, if
    /// any: the caller deletes it from the table (confirmed).
    pub fn published(&mut self, aggregate: Uuid, sequence: i64) -> Option<PendingAppend> {
        self.recent.set(aggregate, sequence);
        self.take_pending(aggregate, sequence)
    }

    /// `(aggregate, sequence)` was published again outside the feed's order
    /// (an operator's replay of a dead letter, which may be far behind or
    /// ahead of what this process published of the aggregate). Its pending
    /// row, if any, is returned (confirmed), as by [`Self::published`]; the
    /// range this process passed moves only when the letter lies in it or
    /// right after it. Else the next event of the aggregate would fill
    /// everything between the letter and it from the event table (an old
    /// letter: a burst of copies), or the feed's events below a letter ahead
    /// of it would be skipped as already published.
    pub fn replayed(&mut self, aggregate: Uuid, sequence: i64) -> Option<PendingAppend> {
        if self.recent.get(&aggregate).is_some_and(|last| sequence <= last + 1) {
            return self.published(aggregate, sequence);
        }
        self.take_pending(aggregate, sequence)
    }

    /// The pending row of a published `(aggregate, sequence)`, taken out
    /// (kept as unconfirmed until the caller deletes it from the table).
    fn take_pending(&mut self, aggregate: Uuid, sequence: i64) -> Option<PendingAppend> {
        self.not_stored.remove(&(aggregate, sequence));
        let rows = self.pending.get_mut(&aggregate)?;
        let row = rows.remove(&sequence);
        if rows.is_empty() {
            self.pending.remove(&aggregate);
        }
        if row.is_some() {
            self.unconfirmed.insert((aggregate, sequence));
        }
        row
    }

    /// Pending rows resolved more than `bound_ms` before `now_ms`, not
    /// published, and behind `read_through_ms` (every CDC row stamped before
    /// it has been published; `None`: nothing is known yet), in (aggregate,
    /// sequence) order: the reconciler publishes them.
    ///
    /// The reader's progress matters as much as the clock: event `s - 1` of
    /// the aggregate was committed before `s` was resolved, so once the
    /// reader has published every row up to `s`'s `resolved_at`, `s - 1` went
    /// out first. On the clock alone a catching-up reader (behind by hours)
    /// would see `s` published before it reaches `s - 1`, and then skip
    /// `s - 1` as already behind the last published sequence: a loss.
    ///
    /// A row below its aggregate's last published sequence is due at once
    /// (a later event went out already: waiting changes nothing).
    pub fn overdue(&self, now_ms: i64, bound_ms: i64, read_through_ms: Option<i64>) -> Vec<PendingAppend> {
        self.rows()
            .filter(|p| {
                // Below what this process passed: never published here.
                let behind = self.recent.get(&p.aggregate_id).is_some_and(|l| p.sequence <= l);
                let due = now_ms.saturating_sub(p.resolved_at_ms) > bound_ms
                    && read_through_ms.is_some_and(|read| read > p.resolved_at_ms);
                behind || due
            })
            .collect()
    }

    /// Drops a pending row (deleted from the table).
    pub fn forget(&mut self, aggregate: Uuid, sequence: i64) {
        self.not_stored.remove(&(aggregate, sequence));
        if let Some(rows) = self.pending.get_mut(&aggregate) {
            rows.remove(&sequence);
            if rows.is_empty() {
                self.pending.remove(&aggregate);
            }
        }
    }

    fn rows(&self) -> impl Iterator<Item = PendingAppend> + '_ {
        self.pending.values().flat_map(|m| m.values().copied())
    }

    /// Number of pending rows (`cdc_unreconciled_appends`).
    pub fn pending_len(&self) -> usize {
        self.pending.values().map(BTreeMap::len).sum()
    }

    /// When the oldest pending row was resolved (ms), if any; rows whose
    /// event is not stored (yet) do not count: nothing can be published.
    pub fn oldest_resolved_at_ms(&self) -> Option<i64> {
        self.rows().filter(|p| !self.not_stored.contains(&(p.aggregate_id, p.sequence))).map(|p| p.resolved_at_ms).min()
    }

    /// Whether the reconciler found no event for this pending row.
    pub fn is_not_stored(&self, aggregate: Uuid, sequence: i64) -> bool {
        self.not_stored.contains(&(aggregate, sequence))
    }

    /// The reconciler found no event at `(aggregate, sequence)` of a pending
    /// row. True the first time (since it was last listed as stored).
    pub fn mark_not_stored(&mut self, aggregate: Uuid, sequence: i64) -> bool {
        let pending = self.pending.get(&aggregate).is_some_and(|rows| rows.contains_key(&sequence));
        pending && self.not_stored.insert((aggregate, sequence))
    }

    /// Forgets what this process published (an operator's rewind: the
    /// events after the rewind time must go out again, not be skipped).
    pub fn forget_published(&mut self) {
        self.recent = Recent { capacity: self.recent.capacity, ..Recent::default() };
    }

    /// Aggregates whose last published sequence is remembered.
    pub fn remembered(&self) -> usize {
        self.recent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn pending(a: u128, seq: i64, at: i64) -> PendingAppend {
        PendingAppend {
            aggregate_id: agg(a),
            sequence: seq,
            event_id: Uuid::from_u128(a * 1_000 + seq as u128),
            resolved_at_ms: at,
        }
    }

    #[test]
    fn a_pending_earlier_event_is_published_first_then_confirmed() {
        let mut s = ReconcileState::new(100);
        s.refresh([pending(1, 3, 0)]);
        // Event 4 of A arrives while (A, 3) is pending: 3 first.
        assert_eq!(s.plan(agg(1), 4), Plan::Deliver { fill: vec![3] });
        assert_eq!(s.published(agg(1), 3), Some(pending(1, 3, 0)), "confirmed: delete the row");
        assert_eq!(s.published(agg(1), 4), None);
        assert_eq!(s.pending_len(), 0);
        // Other aggregates are not affected.
        assert_eq!(s.plan(agg(2), 9), Plan::Deliver { fill: vec![] });
    }

    #[test]
    fn a_pending_event_whose_cdc_row_arrives_is_just_confirmed() {
        let mut s = ReconcileState::new(100);
        s.refresh([pending(1, 3, 0), pending(1, 4, 0)]);
        assert_eq!(s.plan(agg(1), 3), Plan::Deliver { fill: vec![] });
        assert!(s.published(agg(1), 3).is_some());
        assert_eq!(s.plan(agg(1), 4), Plan::Deliver { fill: vec![] });
        assert!(s.published(agg(1), 4).is_some());
        assert_eq!(s.pending_len(), 0);
    }

    #[test]
    fn gaps_behind_the_last_published_event_are_filled_in_order() {
        let mut s = ReconcileState::new(100);
        s.published(agg(1), 2);
        assert_eq!(s.plan(agg(1), 3), Plan::Deliver { fill: vec![] });
        // 3 and 4 never showed up in the log (late rows in passed windows).
        assert_eq!(s.plan(agg(1), 5), Plan::Deliver { fill: vec![3, 4] });
        // Pending rows and the gap together, without repeats.
        s.refresh([pending(1, 4, 0)]);
        assert_eq!(s.plan(agg(1), 6), Plan::Deliver { fill: vec![3, 4, 5] });
    }

    #[test]
    fn a_rewind_forgets_what_was_published() {
        let mut s = ReconcileState::new(8);
        s.published(agg(1), 5);
        assert_eq!(s.plan(agg(1), 4), Plan::Skip);
        s.forget_published();
        assert_eq!(s.remembered(), 0);
        assert_ne!(s.plan(agg(1), 4), Plan::Skip, "published again after a rewind");
    }

    /// Review finding: a replayed dead letter went through `published`. An
    /// old letter (A#3) of an aggregate this process had not published
    /// started its range at 3, so A#51 from the feed filled 4..50 from the
    /// event table (47 copies); a letter ahead of the feed (A#20 while the
    /// feed is at A#10, after a rewind) made A#11..19 "already published".
    #[test]
    fn a_replayed_dead_letter_outside_the_feeds_order_neither_fills_nor_skips() {
        let mut s = ReconcileState::new(100);
        s.refresh([pending(1, 3, 0)]);
        assert_eq!(s.replayed(agg(1), 3), Some(pending(1, 3, 0)), "its pending row is confirmed");
        assert_eq!(s.plan(agg(1), 51), Plan::Deliver { fill: vec![] }, "no fill of 4..50");
        s.published(agg(2), 10);
        assert_eq!(s.replayed(agg(2), 20), None);
        assert_eq!(s.plan(agg(2), 11), Plan::Deliver { fill: vec![] }, "the feed's next event goes out");
        // In the range, or right after it: as published.
        s.published(agg(2), 11);
        s.replayed(agg(2), 12);
        assert_eq!(s.plan(agg(2), 12), Plan::Skip);
        assert_eq!(s.plan(agg(2), 5), Plan::Skip);
        assert_eq!(s.replayed(agg(2), 5), None);
        assert_eq!(s.plan(agg(2), 13), Plan::Deliver { fill: vec![] });
    }

    #[test]
    fn events_this_process_already_published_are_skipped() {
        let mut s = ReconcileState::new(100);
        s.published(agg(1), 5);
        assert_eq!(s.plan(agg(1), 5), Plan::Skip);
        assert_eq!(s.plan(agg(1), 1), Plan::Skip);
        // A row in the range this process passed (5 only here): published,
        // deleted at the refresh that finds it.
        assert_eq!(s.refresh([pending(1, 5, 0)]), vec![pending(1, 5, 0)]);
        assert_eq!(s.pending_len(), 0);
        // A row published while pending, its delete failed or raced by a
        // list read before it: deleted at a refresh, never published again.
        s.refresh([pending(1, 6, 0)]);
        assert_eq!(s.published(agg(1), 6), Some(pending(1, 6, 0)));
        assert_eq!(s.refresh([pending(1, 6, 0)]), vec![pending(1, 6, 0)]);
        assert_eq!(s.pending_len(), 0);
        assert!(s.overdue(1_000_000, 10, Some(1_000_000)).is_empty());
        assert!(s.refresh([]).is_empty());
    }

    /// Review finding: the range grew over a jump (pending A#1 filled
    /// before A#4, with A#2 and A#3 not published here), and A#3 recorded
    /// afterwards was deleted as published. A jump starts a new range.
    #[test]
    fn a_jump_past_the_last_published_sequence_starts_a_new_range() {
        let mut s = ReconcileState::new(100);
        s.refresh([pending(1, 1, 0)]);
        assert_eq!(s.plan(agg(1), 4), Plan::Deliver { fill: vec![1] });
        s.published(agg(1), 1);
        s.published(agg(1), 4);
        assert!(s.refresh([pending(1, 3, 0)]).is_empty(), "A#3 never went out here");
        assert_eq!(s.plan(agg(1), 3), Plan::Late);
        // Contiguous publishes still grow it.
        s.published(agg(1), 5);
        assert_eq!(s.refresh([pending(1, 5, 0)]), vec![pending(1, 5, 0)]);
    }

    /// Review finding: the pending set is loaded by a refresh; a row first
    /// seen below the last published sequence (recorded, or loaded, after a
    /// later event went out: a restart publishes A#6 before the first
    /// refresh finds A#5) was deleted as published: A#5 was lost. It is
    /// published late instead.
    #[test]
    fn a_pending_row_first_seen_behind_the_last_published_one_is_published_late() {
        let mut s = ReconcileState::new(100);
        assert_eq!(s.plan(agg(1), 6), Plan::Deliver { fill: vec![] });
        s.published(agg(1), 6);
        assert!(s.refresh([pending(1, 5, 1_000)]).is_empty(), "never published: not deleted");
        assert_eq!(s.overdue(1_001, 120_000, None), vec![pending(1, 5, 1_000)], "due at once");
        assert_eq!(s.plan(agg(1), 5), Plan::Late);
        assert_eq!(s.published(agg(1), 5), Some(pending(1, 5, 1_000)));
        assert_eq!(s.plan(agg(1), 5), Plan::Skip, "once published, its row read again is skipped");
        // A list read before its delete (a refresh racing the publish) does
        // not make it pending again: deleted, not published twice.
        assert_eq!(s.refresh([pending(1, 5, 1_000)]), vec![pending(1, 5, 1_000)]);
        assert_eq!(s.pending_len(), 0);
        // 4 was not published either: the range stays 6..=6.
        s.refresh([pending(1, 4, 1_000)]);
        assert_eq!(s.plan(agg(1), 4), Plan::Late);
    }

    #[test]
    fn only_rows_older_than_the_bound_are_overdue() {
        let mut s = ReconcileState::new(100);
        s.refresh([pending(2, 1, 5_000), pending(1, 7, 1_000), pending(1, 6, 1_000)]);
        let read = Some(i64::MAX);
        assert_eq!(s.overdue(10_000, 120_000, read), vec![]);
        assert_eq!(s.overdue(121_001, 120_000, read), vec![pending(1, 6, 1_000), pending(1, 7, 1_000)]);
        assert_eq!(s.overdue(200_000, 120_000, read).len(), 3);
        assert_eq!((s.pending_len(), s.oldest_resolved_at_ms()), (3, Some(1_000)));
        s.forget(agg(1), 6);
        assert_eq!(s.pending_len(), 2);
    }

    /// Review finding: A#4 was appended normally, A#5's outcome was unknown
    /// and its row is pending. A reader catching up (hours behind) has not
    /// reached A#4's row when the clock bound of A#5 expires: A#5 must wait,
    /// or A#4 would arrive later, be skipped as behind A#5, and be lost.
    #[test]
    fn an_overdue_row_waits_until_the_reader_has_passed_it() {
        let mut s = ReconcileState::new(100);
        s.refresh([pending(1, 5, 10_000)]);
        let now = 10_000 + 3_600_000;
        assert_eq!(s.overdue(now, 120_000, None), vec![], "no progress known yet");
        assert_eq!(s.overdue(now, 120_000, Some(9_000)), vec![], "the reader is behind A#5's resolution");
        assert_eq!(s.overdue(now, 120_000, Some(10_000)), vec![]);
        // The reader reaches A#4 (stamped before A#5 was resolved) and publishes it.
        assert_eq!(s.plan(agg(1), 4), Plan::Deliver { fill: vec![] });
        s.published(agg(1), 4);
        assert_eq!(s.overdue(now, 120_000, Some(10_001)), vec![pending(1, 5, 10_000)]);
        assert_eq!(s.plan(agg(1), 5), Plan::Deliver { fill: vec![] }, "A#5 after A#4");
    }

    #[test]
    fn the_published_map_is_bounded() {
        let mut s = ReconcileState::new(10);
        for a in 0..1_000 {
            s.published(agg(a), 1);
        }
        assert!(s.remembered() <= 10, "{}", s.remembered());
        assert_eq!(s.plan(agg(999), 1), Plan::Skip, "recent aggregates are remembered");
        assert_eq!(s.plan(agg(0), 2), Plan::Deliver { fill: vec![] }, "forgotten: no gap check, no loss");
        // Updating a remembered aggregate keeps the highest sequence.
        s.published(agg(999), 5);
        s.published(agg(999), 3);
        assert_eq!(s.plan(agg(999), 5), Plan::Skip);
    }
}
