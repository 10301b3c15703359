//! Per-stream CDC progress as the relay's checkpoint saver keeps it in memory
//! (pure state; `cdc_saver` persists it).
//!
//! Guarantees:
//! - Progress never goes backwards on its own: [`ProgressState::admit`] keeps, per
//!   stream, the maximum of what was loaded from the table and what scylla-cdc
//!   reported since. scylla-cdc's stream reader starts its saver from the
//!   lower time bound it was given and saves that at once for every stream
//!   (stream_reader.rs, checkpoints.rs); such a value is below the loaded one
//!   and is refused here, so a crash right after a start no longer replays
//!   everything back to the lower bound.
//! - The generation moves forward only. When a newer generation starts,
//!   scylla-cdc has finished every stream of the older one, so their entries
//!   are dropped: the state holds one entry per stream of the current
//!   generation (bounded).
//! - [`ProgressState::oldest`] is the position every stream of the current
//!   generation has been published up to: the relay's lag and the CDC log TTL
//!   guard are computed from it. A restart's lower bound never passes the
//!   generation's [`Floor`], which the generation row holds.
//! - Every stream the reader has reported gets its row, at its first time,
//!   before any row carries progress ([`ProgressState::dirty`]): a save cut
//!   short between two chunks cannot leave such a stream without a row
//!   behind the oldest row a restart resumes from (its events would be
//!   skipped). scylla-cdc reports every stream of a generation at once when
//!   its readers start; a stream group whose reader starts saving more than
//!   a checkpoint interval after the others has no row when the others' rows
//!   carry progress: the generation's floor covers it (a restart reads a
//!   stream without a row from the floor).
//! - The one way back is an operator's rewind ([`ProgressState::rewind`]):
//!   every stream and the floor are lowered to the rewind time (none is
//!   raised), and the lowered values are handed out for writing. After a
//!   failed one the state is as before, its generation row to be written
//!   again ([`ProgressState::after_failed_rewind`]).
//! - Only values that moved since the last successful write are handed out
//!   for persisting ([`ProgressState::dirty`]), so an idle stream costs no
//!   checkpoint write and a failed write is simply retried with a newer value.

use std::collections::{HashMap, HashSet};

use super::floor::Floor;
use crate::store::cql::progress::{current_progress, generation_floor};

/// The bytes of a CDC stream id. The empty key is the row that holds the
/// last generation in the progress table.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey(pub Vec<u8>);

impl StreamKey {
    /// The key of scylla-cdc's `StreamID` (whose bytes are private; its
    /// `Display` is their lower-case hex).
    pub fn of(id: &scylla_cdc::cdc_types::StreamID) -> StreamKey {
        StreamKey(hex_decode(&id.to_string()).unwrap_or_default())
    }

    /// Lower-case hex, as Scylla and scylla-cdc print stream ids.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses the hex form of a stream id (`None` when it is not hex).
    pub fn from_hex(s: &str) -> Option<StreamKey> {
        hex_decode(s).map(StreamKey)
    }
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

pub use crate::store::cql::progress::SavedRow;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    /// Highest time known to be published up to (loaded or admitted).
    time: i64,
    /// Highest time known to be in the table (`i64::MIN`: none;
    /// [`REWRITE`]: a rewind lowered the stream below it).
    saved: i64,
    /// The first time known for the stream in this run: where it would be
    /// read from if the table had no row for it.
    first: i64,
}

/// `Entry::saved` of a stream a rewind lowered: the table holds a later
/// time, so the lowered one must be written (as progress, not as a first row).
const REWRITE: i64 = i64::MIN + 1;

/// The in-memory progress of one consumer's CDC reader.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgressState {
    generation: Option<i64>,
    /// The generation the table holds (the empty-key row).
    generation_saved: Option<i64>,
    streams: HashMap<StreamKey, Entry>,
    /// Streams whose consumer holds rows it has not finished, from this time on.
    holds: HashMap<StreamKey, i64>,
    /// Held streams scylla-cdc reported read past their hold since it was
    /// set (the held batch's window ended without its last row).
    read_past: HashSet<StreamKey>,
    /// Where a stream without a row resumes (kept in the generation row).
    floor: Floor,
}

impl ProgressState {
    /// The state a reader resumes from: the last generation (the empty-key
    /// row) and the per-stream times of that generation. Rows of older
    /// generations (finished, waiting for their TTL) are left out; without a
    /// generation row every stream row counts.
    pub fn from_rows(rows: impl IntoIterator<Item = SavedRow>) -> ProgressState {
        let rows: Vec<SavedRow> = rows.into_iter().collect();
        let (generation, current) = current_progress(&rows);
        let streams =
            current.into_iter().map(|(k, t)| (StreamKey(k.to_vec()), Entry { time: t, saved: t, first: t })).collect();
        let floor = Floor::loaded(generation.and(generation_floor(&rows)));
        ProgressState {
            generation,
            generation_saved: generation,
            streams,
            holds: HashMap::new(),
            read_past: HashSet::new(),
            floor,
        }
    }

    /// Nothing of this state is in the table yet (it was taken from
    /// elsewhere): the next flush writes all of it.
    pub fn unsaved(mut self) -> ProgressState {
        self.generation_saved = None;
        self.floor = self.floor.unsaved();
        for e in self.streams.values_mut() {
            e.saved = i64::MIN;
        }
        self
    }

    /// The current generation (ms), if known.
    pub fn generation(&self) -> Option<i64> {
        self.generation
    }

    /// The current generation and its floor when the table does not hold
    /// them yet.
    pub fn generation_dirty(&self) -> Option<(i64, Option<i64>)> {
        let g = self.generation?;
        (self.generation_saved != Some(g) || self.floor.dirty()).then_some((g, self.floor.get()))
    }

    /// The table now holds `generation` with `floor`.
    pub fn mark_generation_saved(&mut self, generation: i64, floor: Option<i64>) {
        self.generation_saved = Some(self.generation_saved.map_or(generation, |g| g.max(generation)));
        if self.generation == Some(generation) {
            self.floor.mark_saved(floor);
        }
    }

    /// A reader run starts from `lower` (ms); see [`Floor::run_starts`].
    /// The new run has read past no hold yet.
    pub fn run_starts(&mut self, lower: i64) {
        self.floor.run_starts(lower);
        self.read_past.clear();
    }

    /// The current generation's floor (ms), once known.
    pub fn floor(&self) -> Option<i64> {
        self.floor.get()
    }

    /// Where `stream` has been published up to (what scylla-cdc should
    /// resume it from).
    pub fn loaded(&self, stream: &StreamKey) -> Option<i64> {
        self.streams.get(stream).map(|e| e.time)
    }

    /// Records that `stream` has been published up to `time` (but never past
    /// a hold). Returns false (and changes nothing) when that is not ahead of
    /// what is known.
    pub fn admit(&mut self, stream: &StreamKey, time: i64) -> bool {
        if self.holds.get(stream).is_some_and(|h| time > *h) {
            self.read_past.insert(stream.clone());
        }
        let time = self.holds.get(stream).map_or(time, |h| time.min(*h));
        match self.streams.get_mut(stream) {
            Some(e) if e.time >= time => false,
            Some(e) => {
                e.time = time;
                true
            }
            None => {
                self.streams.insert(stream.clone(), Entry { time, saved: i64::MIN, first: time });
                true
            }
        }
    }

    /// Every tracked stream has been published up to `time` (a reader run
    /// with an end timestamp completed). Returns how many moved.
    pub fn admit_all(&mut self, time: i64) -> usize {
        let keys: Vec<StreamKey> = self.streams.keys().cloned().collect();
        keys.iter().filter(|k| self.admit(k, time)).count()
    }

    /// The consumer of `stream` holds rows from `time` on that it has not
    /// finished (a buffered batch): progress must not pass `time`.
    pub fn hold(&mut self, stream: &StreamKey, time: i64) {
        self.holds.insert(stream.clone(), time);
        self.read_past.remove(stream);
    }

    /// The hold of `stream` is over.
    pub fn release(&mut self, stream: &StreamKey) {
        self.holds.remove(stream);
        self.read_past.remove(stream);
    }

    /// A generation starts. Returns `None` for one that is not newer than
    /// the current (nothing changes). A newer one drops every stream entry
    /// (the streams of the older generation are finished) and returns the
    /// holds it dropped, `(stream, time)`: batches still waiting for their
    /// `cdc$end_of_batch` row, which scylla-cdc will not read again.
    pub fn start_generation(&mut self, generation: i64) -> Option<Vec<(StreamKey, i64)>> {
        if self.generation.is_some_and(|g| g >= generation) {
            return None;
        }
        let mut dropped = Vec::new();
        if self.generation.is_some() {
            self.streams.clear();
            dropped = self.holds.drain().collect();
            self.read_past.clear();
            dropped.sort();
        }
        self.generation = Some(generation);
        self.floor.new_generation(generation);
        Some(dropped)
    }

    /// An operator's rewind to `to` (ms): every stream published past it
    /// goes back to it, as does the floor (a stream without a row resumes
    /// there too). Returns how many streams went back; the lowered values
    /// are [`ProgressState::dirty`] until written.
    pub fn rewind(&mut self, to: i64) -> usize {
        let mut moved = 0;
        for e in self.streams.values_mut().filter(|e| e.time > to) {
            e.time = to;
            e.first = e.first.min(to);
            if e.saved != i64::MIN {
                e.saved = REWRITE;
            }
            moved += 1;
        }
        self.floor.rewind(to);
        moved
    }

    /// An operator's rewind to `to` (ms) in `generation`, an earlier one
    /// (the one in effect at `to`): it is current again, read from `to` (the
    /// floor: none of its streams has progress), and the later generation's
    /// streams go (scylla-cdc reads that generation from its start once it
    /// gets there again). Returns those streams, whose rows must go too; the
    /// generation row is dirty until written.
    pub fn rewind_into(&mut self, generation: i64, to: i64) -> Vec<StreamKey> {
        let mut gone: Vec<StreamKey> = self.streams.drain().map(|(k, _)| k).collect();
        gone.sort();
        self.holds.clear();
        self.read_past.clear();
        self.generation = Some(generation);
        self.generation_saved = None;
        self.floor.rewind(to);
        gone
    }

    /// This state (as it was before an operator's rewind) again, once the
    /// rewind's write failed: the generation row is dirty, as that write may
    /// have reached the table with the rewound generation or floor (written
    /// first, then the rest failed; or it timed out but was applied). Left
    /// marked saved, the table could keep an earlier generation a restart
    /// reads again whole. Stream rows are not written again (one a failed
    /// write left rewound only makes a restart publish again).
    pub fn after_failed_rewind(mut self) -> ProgressState {
        self.generation_saved = None;
        self
    }

    /// The newest per-stream progress (ms): a rewind to it or later changes nothing.
    pub fn newest(&self) -> Option<i64> {
        self.streams.values().map(|e| e.time).max()
    }

    /// The oldest and newest progress a rewind is checked against: the
    /// streams' ([`ProgressState::oldest`], [`ProgressState::newest`]), or,
    /// while the current generation has none (right after a rewind into it,
    /// or before its readers first report), its floor for both: every
    /// stream is read from there, nothing after it is known published.
    pub fn rewind_range(&self) -> Option<(i64, i64)> {
        match (self.oldest(), self.newest()) {
            (Some(o), Some(n)) => Some((o, n)),
            _ => self.generation.and(self.floor.get()).map(|f| (f, f)),
        }
    }

    /// The stream times not yet in the table: `(stream, time)`, ordered by stream.
    ///
    /// While a stream has no row yet, only the streams without one are
    /// handed out, each at its first time: a restart resumes from the oldest
    /// row, and a stream without a row is read from there too (scylla-cdc
    /// leaves it out of its per-group minimum). A save cut short (a crash,
    /// a write timeout, a takeover between two chunks) thus never leaves a
    /// row ahead of where a stream without one had to start; progress is
    /// written once every stream has its row.
    pub fn dirty(&self) -> Vec<(StreamKey, i64)> {
        let unsaved = || self.streams.iter().filter(|(_, e)| e.saved == i64::MIN);
        let mut out: Vec<_> = if unsaved().next().is_some() {
            unsaved().map(|(k, e)| (k.clone(), e.first)).collect()
        } else {
            self.streams.iter().filter(|(_, e)| e.time > e.saved).map(|(k, e)| (k.clone(), e.time)).collect()
        };
        out.sort();
        out
    }

    /// These values are now in the table.
    pub fn mark_saved(&mut self, saved: &[(StreamKey, i64)]) {
        for (k, t) in saved {
            if let Some(e) = self.streams.get_mut(k) {
                e.saved = e.saved.max(*t);
            }
        }
    }

    /// The oldest per-stream progress of the current generation (ms): every
    /// change before it has been published. `None` before any stream is known.
    pub fn oldest(&self) -> Option<i64> {
        self.streams.values().map(|e| e.time).min()
    }

    /// Every CDC row of the current generation stamped before this (ms) has
    /// been published. [`ProgressState::oldest`] only counts the streams
    /// known here; a stream group whose reader has not reported yet (its
    /// statement preparation late at a generation's start, or one without
    /// rows after a restart) is read from the floor: until `all_known` (every
    /// stream of the generation has an entry, `Activity::every_stream`), the
    /// floor bounds it. `None`: nothing is known yet.
    pub fn read_through(&self, all_known: bool) -> Option<i64> {
        match (self.oldest(), self.generation.and(self.floor.get())) {
            (oldest, _) if all_known => oldest,
            (Some(o), Some(f)) => Some(o.min(f)),
            (_, floor) => floor,
        }
    }

    /// True when `stream` has an entry (loaded or reported).
    pub fn knows(&self, stream: &StreamKey) -> bool {
        self.streams.contains_key(stream)
    }

    /// The oldest progress and the streams at it (the ones the stall
    /// watchdog looks at).
    pub fn oldest_streams(&self) -> (Option<i64>, Vec<&StreamKey>) {
        let oldest = self.oldest();
        (oldest, self.streams.iter().filter(|(_, e)| Some(e.time) == oldest).map(|(k, _)| k).collect())
    }

    /// True while the consumer of `stream` holds a batch.
    pub fn is_held(&self, stream: &StreamKey) -> bool {
        self.holds.contains_key(stream)
    }

    /// True while `stream` is held and scylla-cdc has read past the hold
    /// (in this run, since the hold was set): the held batch's window ended
    /// without its last row, so the batch waits for a row the log does not
    /// have, not for the reader. A batch held while its window is still
    /// being read (the rest of its rows on a page not fetched yet) is not:
    /// a reader stuck on that page is a stall like any other.
    pub fn held_past(&self, stream: &StreamKey) -> bool {
        self.holds.contains_key(stream) && self.read_past.contains(stream)
    }

    /// Number of streams tracked.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}

#[cfg(test)]
#[path = "progress_tests.rs"]
mod tests;
