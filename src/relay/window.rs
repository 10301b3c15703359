//! The relay's in-flight window: every event read from the feed and not yet
//! done, with a per-aggregate fence and the checkpoint watermark. Pure: no
//! I/O, no clock; the pipeline drives it.
//!
//! Guarantees (unit-tested below):
//! - Fence: at most one event per aggregate is handed out (`take_ready`) at
//!   a time; the next event of that aggregate becomes ready only once the
//!   previous one is confirmed (or its aggregate is parked / the event is
//!   skipped). So whatever the producer does with a failed or timed-out
//!   event, no later event of the same aggregate can overtake it: the first
//!   arrival of each event on the topic is in sequence order.
//! - Watermark: `watermark()` is the highest position p such that every
//!   event with position <= p that was pushed is done (confirmed, skipped, or
//!   held behind a durable park record). It never decreases.
//! - Parked aggregates: events of a parked aggregate from its park position
//!   on are held (dropped from the window, counted) as they arrive; earlier
//!   ones (read again after a rewind) flow; `unpark` re-opens the aggregate
//!   with the events to replay first, on a side lane that does not hold the
//!   watermark back (they are below it and still covered by the park record
//!   until the replay completes).
//! - Bounded: `has_room` is false once `capacity` main-lane events are open.
//!
//! Its maps hash with foldhash (per-process random seed): SipHash was a
//! visible part of the per-event cost.

use foldhash::{HashMap, HashMapExt};
use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

/// Aggregate key: the aggregate id as text (canonical UUID, or the raw column
/// of a row that could not be read).
pub type AggKey = Arc<str>;

/// A slot of the window; also the producer's delivery token.
pub type Slot = usize;

/// What the window needs to know about an event.
pub trait Fenced {
    fn position(&self) -> i64;
    fn aggregate(&self) -> &AggKey;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Behind another event of its aggregate.
    Queued,
    /// May be handed to the producer.
    Ready,
    /// At the producer; its fate is unknown.
    InFlight,
    /// The producer reported a failure; waits for the caller to retry, park or skip it.
    Failed,
}

#[derive(Debug)]
struct Entry<T> {
    item: T,
    state: State,
    /// Replay of an unparked aggregate: not counted in the watermark.
    side: bool,
    /// Failed deliveries of this event so far.
    attempts: u32,
}

/// One aggregate's open slots in order. The head is kept inline: most
/// aggregates have one event open at a time, and their lane then costs no
/// allocation.
#[derive(Debug)]
struct Lane {
    head: Slot,
    rest: VecDeque<Slot>,
}

impl Lane {
    fn new(head: Slot) -> Lane {
        Lane { head, rest: VecDeque::new() }
    }

    fn push(&mut self, slot: Slot) {
        self.rest.push_back(slot);
    }

    /// Removes `slot`; false when the lane is left empty.
    fn remove(&mut self, slot: Slot) -> bool {
        if self.head != slot {
            self.rest.retain(|s| *s != slot);
            return true;
        }
        match self.rest.pop_front() {
            Some(next) => {
                self.head = next;
                true
            }
            None => false,
        }
    }

    fn into_slots(self) -> impl Iterator<Item = Slot> {
        std::iter::once(self.head).chain(self.rest)
    }
}

/// What `push` did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Its aggregate is parked: the event is held (already counted done).
    Held,
    /// Waiting behind an earlier event of its aggregate.
    Queued(Slot),
    /// Ready to be sent.
    Ready(Slot),
}

#[derive(Debug)]
pub struct Window<T: Fenced> {
    capacity: usize,
    next_slot: Slot,
    entries: HashMap<Slot, Entry<T>>,
    /// Per aggregate, its open slots in order (the head is the only one that may be sent).
    lanes: HashMap<AggKey, Lane>,
    /// Heads that may be sent, oldest position first.
    ready: BTreeSet<(i64, Slot)>,
    /// Main-lane open positions (side-lane replays excluded).
    open_positions: BTreeSet<i64>,
    /// Parked aggregates -> the feed position they are parked from: their
    /// events from there on are held, earlier ones (a rewind reads them
    /// again) flow.
    parked: HashMap<AggKey, i64>,
    last_pushed: i64,
    in_flight: usize,
}

impl<T: Fenced> Window<T> {
    /// A window resuming after `checkpoint` that holds at most `capacity` main-lane events.
    pub fn new(checkpoint: i64, capacity: usize) -> Window<T> {
        Window {
            capacity: capacity.max(1),
            next_slot: 1,
            entries: HashMap::new(),
            lanes: HashMap::new(),
            ready: BTreeSet::new(),
            open_positions: BTreeSet::new(),
            parked: HashMap::new(),
            last_pushed: checkpoint,
            in_flight: 0,
        }
    }

    /// True while more feed events may be pushed.
    pub fn has_room(&self) -> bool {
        self.open_positions.len() < self.capacity
    }

    /// Events open in the main lane (read, not done).
    pub fn open(&self) -> usize {
        self.open_positions.len()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Events open (main and side lane).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Nothing open at all (main or side lane).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn last_pushed(&self) -> i64 {
        self.last_pushed
    }

    pub fn is_parked(&self, agg: &str) -> bool {
        self.parked.contains_key(agg)
    }

    pub fn parked(&self) -> impl Iterator<Item = &AggKey> {
        self.parked.keys()
    }

    /// Marks aggregates parked from a feed position on (loaded from the
    /// store at start; `i64::MIN` when the record has no position).
    pub fn set_parked(&mut self, aggs: impl IntoIterator<Item = (AggKey, i64)>) {
        self.parked.extend(aggs);
    }

    /// Adds the next feed event (positions must increase).
    pub fn push(&mut self, item: T) -> Pushed {
        let pos = item.position();
        debug_assert!(pos > self.last_pushed, "feed positions increase: {pos} after {}", self.last_pushed);
        self.last_pushed = self.last_pushed.max(pos);
        if self.parked.get(item.aggregate()).is_some_and(|from| pos >= *from) {
            return Pushed::Held;
        }
        self.open_positions.insert(pos);
        self.insert(item, false)
    }

    fn insert(&mut self, item: T, side: bool) -> Pushed {
        let slot = self.next_slot;
        self.next_slot += 1;
        let pos = item.position();
        let state = match self.lanes.entry(item.aggregate().clone()) {
            MapEntry::Vacant(v) => {
                v.insert(Lane::new(slot));
                State::Ready
            }
            MapEntry::Occupied(mut o) => {
                o.get_mut().push(slot);
                State::Queued
            }
        };
        if state == State::Ready {
            self.ready.insert((pos, slot));
        }
        self.entries.insert(slot, Entry { item, state, side, attempts: 0 });
        if state == State::Ready {
            Pushed::Ready(slot)
        } else {
            Pushed::Queued(slot)
        }
    }

    /// The oldest ready event, now in flight.
    pub fn take_ready(&mut self) -> Option<(Slot, &T)> {
        let (_, slot) = self.ready.pop_first()?;
        let e = self.entries.get_mut(&slot).expect("ready slots are open");
        e.state = State::InFlight;
        self.in_flight += 1;
        Some((slot, &e.item))
    }

    /// Takes this ready slot (a solo resend), now in flight.
    pub fn take(&mut self, slot: Slot) -> Option<&T> {
        let e = self.entries.get_mut(&slot)?;
        if e.state != State::Ready {
            return None;
        }
        self.ready.remove(&(e.item.position(), slot));
        e.state = State::InFlight;
        self.in_flight += 1;
        Some(&e.item)
    }

    /// Puts an event taken with `take_ready` back (the producer's queue was full).
    pub fn requeue(&mut self, slot: Slot) -> bool {
        match self.entries.get_mut(&slot) {
            Some(e) if e.state == State::InFlight => {
                e.state = State::Ready;
                self.in_flight -= 1;
                self.ready.insert((e.item.position(), slot));
                true
            }
            _ => false,
        }
    }

    /// The failed slots that are the heads of their lanes.
    pub fn is_failed(&self, slot: Slot) -> bool {
        self.state(slot) == Some(State::Failed)
    }

    pub fn get(&self, slot: Slot) -> Option<&T> {
        self.entries.get(&slot).map(|e| &e.item)
    }

    pub fn state(&self, slot: Slot) -> Option<State> {
        self.entries.get(&slot).map(|e| e.state)
    }

    pub fn attempts(&self, slot: Slot) -> u32 {
        self.entries.get(&slot).map(|e| e.attempts).unwrap_or(0)
    }

    /// The broker confirmed `slot`: it is done; the next event of its aggregate becomes ready.
    /// Returns the event, or None for an unknown slot (a stale report).
    pub fn confirm(&mut self, slot: Slot) -> Option<T> {
        if self.entries.get(&slot)?.state != State::InFlight {
            return None;
        }
        self.in_flight -= 1;
        Some(self.remove_head(slot))
    }

    /// The delivery of `slot` failed: it stays the head of its aggregate (nothing behind it moves).
    pub fn fail(&mut self, slot: Slot) -> bool {
        match self.entries.get_mut(&slot) {
            Some(e) if e.state == State::InFlight => {
                e.state = State::Failed;
                e.attempts += 1;
                self.in_flight -= 1;
                true
            }
            _ => false,
        }
    }

    /// A failed slot taken again whose send the producer's queue refused:
    /// back to failed as it was (nothing was attempted, its attempts stay),
    /// so only the solo path sends it again, never a batch.
    pub fn unsend(&mut self, slot: Slot) -> bool {
        match self.entries.get_mut(&slot) {
            Some(e) if e.state == State::InFlight => {
                e.state = State::Failed;
                self.in_flight -= 1;
                true
            }
            _ => false,
        }
    }

    /// Failed slots, oldest position first.
    pub fn failed(&self) -> Vec<Slot> {
        let mut v: Vec<(i64, Slot)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.state == State::Failed)
            .map(|(s, e)| (e.item.position(), *s))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, s)| s).collect()
    }

    /// A failed event may be sent again.
    pub fn retry(&mut self, slot: Slot) -> bool {
        match self.entries.get_mut(&slot) {
            Some(e) if e.state == State::Failed => {
                e.state = State::Ready;
                self.ready.insert((e.item.position(), slot));
                true
            }
            _ => false,
        }
    }

    /// Drops the failed head `slot` as done (policy "skip": it went to the DLQ);
    /// the next event of its aggregate becomes ready.
    pub fn skip(&mut self, slot: Slot) -> Option<T> {
        if self.entries.get(&slot)?.state != State::Failed {
            return None;
        }
        Some(self.remove_head(slot))
    }

    fn remove_head(&mut self, slot: Slot) -> T {
        let e = self.entries.remove(&slot).expect("checked by the caller");
        if !e.side {
            self.open_positions.remove(&e.item.position());
        }
        if let MapEntry::Occupied(mut lane) = self.lanes.entry(e.item.aggregate().clone()) {
            debug_assert_eq!(lane.get().head, slot, "only a lane's head can be done");
            if !lane.get_mut().remove(slot) {
                lane.remove();
                return e.item;
            }
            let next = lane.get().head;
            let n = self.entries.get_mut(&next).expect("lane slots are open");
            if n.state == State::Queued {
                n.state = State::Ready;
                self.ready.insert((n.item.position(), next));
            }
        }
        e.item
    }

    /// Parks `agg` from position `at` on: its open events at or after `at`
    /// (none may be in flight) are held and returned, its later events will be
    /// held as they arrive; earlier ones still flow. The caller must have made
    /// the park durable first.
    pub fn park(&mut self, agg: &AggKey, at: i64) -> Vec<T> {
        self.parked.insert(agg.clone(), at);
        let Some(lane) = self.lanes.remove(agg) else { return Vec::new() };
        let mut keep: Option<Lane> = None;
        let mut drop = Vec::new();
        for slot in lane.into_slots() {
            let side = self.entries.get(&slot).is_some_and(|e| e.side);
            let pos = self.entries.get(&slot).map(|e| e.item.position()).unwrap_or(i64::MAX);
            // Side-lane replays are all at or after the park point of a re-park.
            if side || pos >= at {
                drop.push(slot);
            } else {
                match keep.as_mut() {
                    Some(k) => k.push(slot),
                    None => keep = Some(Lane::new(slot)),
                }
            }
        }
        if let Some(k) = keep {
            self.lanes.insert(agg.clone(), k);
        }
        let mut held = Vec::with_capacity(drop.len());
        for slot in drop {
            let e = self.entries.remove(&slot).expect("lane slots are open");
            debug_assert_ne!(e.state, State::InFlight, "park only after the head's delivery failed");
            if e.state == State::InFlight {
                self.in_flight -= 1;
            }
            self.ready.remove(&(e.item.position(), slot));
            if !e.side {
                self.open_positions.remove(&e.item.position());
            }
            held.push(e.item);
        }
        held
    }

    /// Re-opens a parked aggregate: `replay` (its held events, in sequence
    /// order) go first on the side lane; its later feed events queue behind them.
    pub fn unpark(&mut self, agg: &AggKey, replay: Vec<T>) -> Vec<Slot> {
        self.parked.remove(agg);
        self.inject(agg, replay)
    }

    /// Adds events to re-publish on the side lane (behind `agg`'s open events,
    /// ahead of its later feed events), without touching its parked state.
    pub fn inject(&mut self, agg: &AggKey, replay: Vec<T>) -> Vec<Slot> {
        debug_assert!(replay.iter().all(|i| i.aggregate() == agg));
        replay
            .into_iter()
            .map(|item| match self.insert(item, true) {
                Pushed::Ready(s) | Pushed::Queued(s) => s,
                Pushed::Held => unreachable!("insert never holds"),
            })
            .collect()
    }

    /// Highest position up to which everything pushed is done.
    pub fn watermark(&self) -> i64 {
        match self.open_positions.first() {
            Some(p) => p - 1,
            None => self.last_pushed,
        }
    }
}

#[cfg(test)]
#[path = "window_tests.rs"]
mod tests;
