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
//!   raised), and the lowered values are handed out for writing.
//! - Only values that moved since the last successful write are handed out
//!   for persisting ([`ProgressState::dirty`]), so an idle stream costs no
//!   checkpoint write and a failed write is simply retried with a newer value.

use std::collections::HashMap;

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
        ProgressState { generation, generation_saved: generation, streams, holds: HashMap::new(), floor }
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
    pub fn run_starts(&mut self, lower: i64) {
        self.floor.run_starts(lower);
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
    }

    /// The hold of `stream` is over.
    pub fn release(&mut self, stream: &StreamKey) {
        self.holds.remove(stream);
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

    /// The newest per-stream progress (ms): a rewind to it or later changes nothing.
    pub fn newest(&self) -> Option<i64> {
        self.streams.values().map(|e| e.time).max()
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

    /// Number of streams tracked.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(b: u8) -> StreamKey {
        StreamKey(vec![b; 16])
    }

    fn row(stream: StreamKey, generation: i64, time: Option<i64>) -> SavedRow {
        SavedRow { stream: stream.0, generation: Some(generation), time }
    }

    #[test]
    fn the_lower_bound_saved_at_start_never_replaces_loaded_progress() {
        // Loaded: stream 1 at t=5000. scylla-cdc starts its saver from the
        // lower bound (1000) and saves it at once: refused.
        let mut s = ProgressState::from_rows([row(StreamKey(vec![]), 100, None), row(k(1), 100, Some(5_000))]);
        assert_eq!(s.loaded(&k(1)), Some(5_000));
        assert!(!s.admit(&k(1), 1_000), "older than loaded");
        assert!(!s.admit(&k(1), 5_000), "equal is not progress");
        assert_eq!(s.loaded(&k(1)), Some(5_000));
        assert!(s.dirty().is_empty(), "nothing to write: the table already says 5000");
        assert!(s.admit(&k(1), 6_000));
        assert_eq!(s.dirty(), vec![(k(1), 6_000)]);
    }

    #[test]
    fn restarts_never_move_progress_backwards() {
        // Run 1 saves 6000; run 2 loads it and gets the lower bound again.
        let mut run1 = ProgressState::default();
        run1.start_generation(100);
        run1.admit(&k(1), 2_000);
        run1.admit(&k(1), 6_000);
        let first = run1.dirty(); // the stream's row, at its first time
        run1.mark_saved(&first);
        let saved = run1.dirty(); // then its progress
        run1.mark_saved(&saved);
        let table: Vec<SavedRow> = std::iter::once(row(StreamKey(vec![]), 100, None))
            .chain(saved.iter().map(|(s, t)| row(s.clone(), 100, Some(*t))))
            .collect();
        let mut run2 = ProgressState::from_rows(table);
        assert!(!run2.admit(&k(1), 1_000));
        assert_eq!(run2.loaded(&k(1)), Some(6_000));
        assert_eq!(run2.oldest(), Some(6_000));
    }

    #[test]
    fn dirty_only_until_saved_and_failed_writes_are_retried_with_newer_values() {
        let mut s = ProgressState::default();
        s.start_generation(1);
        s.admit(&k(2), 10);
        s.admit(&k(1), 20);
        assert_eq!(s.dirty(), vec![(k(1), 20), (k(2), 10)]);
        s.mark_saved(&s.dirty());
        s.admit(&k(1), 25);
        s.admit(&k(2), 15);
        assert_eq!(s.dirty(), vec![(k(1), 25), (k(2), 15)]);
        // The write failed: nothing marked; the next round has newer values.
        s.admit(&k(1), 30);
        assert_eq!(s.dirty(), vec![(k(1), 30), (k(2), 15)]);
        s.mark_saved(&[(k(1), 30)]);
        assert_eq!(s.dirty(), vec![(k(2), 15)]);
        // A late mark of an older value does not make the row dirty again.
        s.mark_saved(&[(k(1), 20)]);
        assert_eq!(s.dirty(), vec![(k(2), 15)]);
    }

    /// Review finding: the first save of a generation is written in chunks.
    /// Cut short after the first chunk, it left stream 1's row at its
    /// progress (5 000) and no row for streams 2 and 3; the restart resumed
    /// from the oldest row, 5 000, and scylla-cdc read 2 and 3 from there
    /// too: their events from 100 on were skipped. Every stream now gets its
    /// row at its first time before any row carries progress.
    #[test]
    fn a_first_save_cut_short_never_leaves_a_row_ahead_of_a_stream_without_one() {
        let mut run1 = ProgressState::default();
        run1.start_generation(1);
        for i in 1..=3 {
            run1.admit(&k(i), 100); // scylla-cdc's first save: the lower bound
        }
        for i in 1..=3 {
            run1.admit(&k(i), 5_000); // a catch-up ran far ahead before the flush
        }
        assert_eq!(run1.dirty(), vec![(k(1), 100), (k(2), 100), (k(3), 100)], "rows first, at the first time");
        // Only the first chunk (stream 1) reaches the table, then a crash.
        run1.mark_saved(&[(k(1), 100)]);
        assert_eq!(run1.dirty(), vec![(k(2), 100), (k(3), 100)], "still no progress while a row is missing");
        let table = [row(StreamKey(vec![]), 1, None), row(k(1), 1, Some(100))];
        let run2 = ProgressState::from_rows(table);
        assert_eq!(run2.oldest(), Some(100), "the restart resumes where streams 2 and 3 must start");
        // Once every stream has its row, progress is written.
        run1.mark_saved(&[(k(2), 100), (k(3), 100)]);
        assert_eq!(run1.dirty(), vec![(k(1), 5_000), (k(2), 5_000), (k(3), 5_000)]);
    }

    #[test]
    fn a_new_generation_drops_the_holds_of_the_old_one() {
        let mut s = ProgressState::default();
        s.start_generation(1);
        s.admit(&k(1), 100);
        s.hold(&k(1), 150);
        assert_eq!(s.start_generation(2), Some(vec![(k(1), 150)]), "the batch left waiting is reported");
        assert!(s.holds.is_empty(), "the old generation's streams are finished");
    }

    #[test]
    fn the_oldest_streams_are_every_stream_at_the_oldest_progress() {
        let mut s = ProgressState::default();
        assert_eq!(s.oldest_streams(), (None, vec![]));
        s.admit(&k(1), 500);
        s.admit(&k(2), 400);
        s.admit(&k(3), 400);
        let (oldest, mut at) = s.oldest_streams();
        at.sort();
        assert_eq!((oldest, at), (Some(400), vec![&k(2), &k(3)]));
    }

    #[test]
    fn progress_never_passes_a_hold() {
        let mut s = ProgressState::default();
        s.admit(&k(1), 100);
        s.hold(&k(1), 150);
        assert!(s.is_held(&k(1)) && !s.is_held(&k(2)));
        assert!(s.admit(&k(1), 500), "up to the hold");
        assert_eq!(s.loaded(&k(1)), Some(150));
        assert!(!s.admit(&k(1), 600));
        assert!(s.admit(&k(2), 600), "other streams are not held");
        s.release(&k(1));
        assert!(!s.is_held(&k(1)));
        assert!(s.admit(&k(1), 600));
        assert_eq!(s.loaded(&k(1)), Some(600));
        s.hold(&k(2), 650);
        assert_eq!(s.admit_all(700), 2);
        assert_eq!((s.loaded(&k(1)), s.loaded(&k(2))), (Some(700), Some(650)));
    }

    #[test]
    fn newer_generation_drops_the_finished_streams() {
        let mut s = ProgressState::default();
        assert_eq!(s.start_generation(100), Some(vec![]));
        s.admit(&k(1), 500);
        s.admit(&k(2), 400);
        assert_eq!(s.oldest(), Some(400));
        assert_eq!(s.start_generation(100), None, "same generation again");
        assert_eq!(s.start_generation(50), None, "older generation");
        assert_eq!(s.len(), 2);
        assert!(s.start_generation(600).is_some());
        assert!(s.is_empty());
        assert_eq!(s.oldest(), None);
        assert_eq!(s.generation(), Some(600));
        assert_eq!(s.generation_dirty(), Some((600, Some(600))), "read from the generation's start");
        s.mark_generation_saved(600, Some(600));
        assert_eq!(s.generation_dirty(), None);
    }

    #[test]
    fn rows_of_older_generations_do_not_count_when_loading() {
        let s = ProgressState::from_rows([
            row(StreamKey(vec![]), 200, None),
            row(k(1), 100, Some(150)), // old generation, awaiting its TTL
            row(k(2), 200, Some(900)),
            SavedRow { stream: k(3).0, generation: None, time: Some(950) },
            row(k(4), 200, None), // no time: nothing to resume from
        ]);
        assert_eq!(s.generation(), Some(200));
        assert_eq!(s.loaded(&k(1)), None);
        assert_eq!(s.oldest(), Some(900));
        assert_eq!(s.len(), 2);
        // Without a generation row every stream row counts.
        let s = ProgressState::from_rows([row(k(1), 100, Some(150)), row(k(2), 200, Some(900))]);
        assert_eq!((s.generation(), s.oldest()), (None, Some(150)));
    }

    #[test]
    fn a_rewind_lowers_every_stream_past_it_and_hands_the_values_out_once() {
        let mut s = ProgressState::from_rows([
            SavedRow { stream: vec![], generation: Some(100), time: Some(500) },
            row(k(1), 100, Some(9_000)),
            row(k(2), 100, Some(4_000)),
            row(k(3), 100, Some(7_000)),
        ]);
        assert_eq!(s.newest(), Some(9_000));
        assert_eq!(s.rewind(5_000), 2, "streams 1 and 3 were past it; 2 was not");
        assert_eq!((s.loaded(&k(1)), s.loaded(&k(2)), s.loaded(&k(3))), (Some(5_000), Some(4_000), Some(5_000)));
        assert_eq!(s.dirty(), vec![(k(1), 5_000), (k(3), 5_000)], "written although below the table's values");
        assert_eq!(s.floor(), Some(500), "an earlier floor stays");
        let written = s.dirty();
        s.mark_saved(&written);
        assert!(s.dirty().is_empty());
        assert!(!s.admit(&k(1), 1_000), "the reader's lower bound still never lowers it");
        assert!(s.admit(&k(1), 6_000), "then it moves on from there");
        assert_eq!(s.dirty(), vec![(k(1), 6_000)]);
        s.rewind(300);
        assert_eq!((s.floor(), s.oldest(), s.generation_dirty()), (Some(300), Some(300), Some((100, Some(300)))));
    }

    #[test]
    fn stream_keys_round_trip_through_scylla_cdc_stream_ids() {
        let id = scylla_cdc::cdc_types::StreamID::new(vec![0x00, 0xab, 0x10, 0xff]);
        let key = StreamKey::of(&id);
        assert_eq!(key.0, vec![0x00, 0xab, 0x10, 0xff]);
        assert_eq!(key.hex(), "00ab10ff");
        assert_eq!(StreamKey::from_hex("0x00ab10ff"), Some(key));
        assert_eq!(StreamKey::from_hex("abc"), None);
        assert_eq!(StreamKey::from_hex("zz"), None);
    }
}
