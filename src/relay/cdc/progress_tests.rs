//! The progress state's rules: loading, admitting, holds, saving, generations
//! and rewinds.

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

/// Review finding: the stall watchdog counted every held batch as a call
/// in progress. A window's rows come in pages, and a page boundary falls
/// inside an append's batch more often than not; a reader stuck fetching
/// the next page (a Scylla that no longer answers, which scylla-cdc retries
/// forever) thus held its stream and was never restarted. Only a batch the
/// reader read past (its window ended without the rest: a damaged log, a
/// restart would buffer it again) counts now, and only within the run.
#[test]
fn a_hold_counts_for_the_watchdog_only_once_the_reader_read_past_it() {
    let mut s = ProgressState::default();
    s.start_generation(1);
    s.admit(&k(1), 100);
    s.hold(&k(1), 150); // buffered; the rest of its rows on the next page
    assert!(s.is_held(&k(1)) && !s.held_past(&k(1)), "its window is still being read");
    s.admit(&k(1), 150);
    assert!(!s.held_past(&k(1)), "a report up to the hold is not past it");
    assert!(!s.admit(&k(1), 500), "held at 150"); // the window ended without the batch's last row
    assert_eq!(s.loaded(&k(1)), Some(150));
    assert!(s.held_past(&k(1)), "waits for a row the log does not have");
    assert!(!s.held_past(&k(2)), "other streams are not held");
    // The next run reads it again: not past it until its window ends again.
    s.run_starts(100);
    assert!(s.is_held(&k(1)) && !s.held_past(&k(1)));
    s.admit(&k(1), 600);
    assert!(s.held_past(&k(1)));
    s.hold(&k(1), 150); // buffered again by the new run's consumer
    assert!(!s.held_past(&k(1)));
    s.admit(&k(1), 700);
    s.release(&k(1));
    assert!(!s.held_past(&k(1)) && !s.is_held(&k(1)));
    s.hold(&k(1), 800);
    assert!(!s.held_past(&k(1)), "a new hold starts unread past");
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
fn a_rewind_into_an_earlier_generation_makes_it_current_from_the_rewind_time() {
    let mut s = ProgressState::from_rows([
        SavedRow { stream: vec![], generation: Some(100), time: Some(150) },
        row(k(2), 100, Some(9_000)),
        row(k(1), 100, Some(4_000)),
    ]);
    s.hold(&k(1), 3_000);
    assert_eq!(s.rewind_into(40, 60), vec![k(1), k(2)], "the later generation's streams go");
    assert_eq!((s.generation(), s.floor(), s.oldest(), s.newest()), (Some(40), Some(60), None, None));
    assert!(!s.is_held(&k(1)));
    assert_eq!(s.generation_dirty(), Some((40, Some(60))), "the generation row, moved back");
    s.mark_generation_saved(40, Some(60));
    assert_eq!(s.generation_dirty(), None);
    assert_eq!(s.rewind_range(), Some((60, 60)), "a second rewind is checked against the floor");
    // A second rewind within it lowers the floor only.
    let mut again = s.clone();
    assert_eq!(again.rewind(50), 0);
    assert_eq!((again.floor(), again.generation_dirty()), (Some(50), Some((40, Some(50)))));
    // Read on from there; the later generation starts again at its own start.
    assert!(s.admit(&k(7), 80));
    assert_eq!(s.start_generation(100), Some(vec![]));
    assert_eq!((s.generation(), s.floor(), s.len()), (Some(100), Some(100), 0));
}

/// A rewind from generation 100 into 40 whose write failed after the
/// generation row (40, floor 60) reached the table (the later generation's
/// rows not deleted, or the row's conditional write timed out but applied):
/// the state goes back to 100, and the next flush must write 100's row
/// again, or a restart reads 40 from 60, then 100 from its start.
#[test]
fn a_failed_rewind_into_an_earlier_generation_writes_the_generation_row_again() {
    let mut s = ProgressState::from_rows([
        SavedRow { stream: vec![], generation: Some(100), time: Some(150) },
        row(k(1), 100, Some(4_000)),
    ]);
    assert_eq!(s.generation_dirty(), None);
    let before = s.clone();
    s.rewind_into(40, 60);
    s.mark_generation_saved(40, Some(60)); // the flush wrote it; deleting stream 1's row then failed
    let mut s = before.clone().after_failed_rewind();
    assert_eq!((s.generation(), s.loaded(&k(1))), (Some(100), Some(4_000)), "in memory as before");
    assert_eq!(s.generation_dirty(), Some((100, Some(150))), "the table may hold generation 40");
    assert!(s.dirty().is_empty(), "the stream rows were not touched: not written again");
    s.mark_generation_saved(100, Some(150));
    assert_eq!(s.generation_dirty(), None);
    // A write that timed out (not marked saved) is written again the same way.
    assert_eq!(before.after_failed_rewind().generation_dirty(), Some((100, Some(150))));
}

#[test]
fn the_rewind_range_is_the_streams_progress_or_else_the_floor() {
    assert_eq!(ProgressState::default().rewind_range(), None, "nothing saved");
    let mut s = ProgressState::from_rows([SavedRow { stream: vec![], generation: Some(100), time: Some(150) }]);
    assert_eq!(s.rewind_range(), Some((150, 150)), "a generation whose readers have not reported yet");
    s.admit(&k(1), 400);
    s.admit(&k(2), 300);
    assert_eq!(s.rewind_range(), Some((300, 400)));
    let no_floor = ProgressState::from_rows([SavedRow { stream: vec![], generation: Some(100), time: None }]);
    assert_eq!(no_floor.rewind_range(), None, "a generation row written before floors: nothing known");
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

#[test]
fn a_stream_group_that_has_not_reported_bounds_the_read_through_point_at_the_floor() {
    // After a crash: the generation (200) was first read from 1 000; stream
    // 1's group saved 9 000 000, stream 2's group (its reader late) none.
    let mut s = ProgressState::from_rows([row(StreamKey(vec![]), 200, Some(1_000)), row(k(1), 200, Some(9_000_000))]);
    assert_eq!(s.oldest(), Some(9_000_000), "the oldest known progress ignores stream 2");
    assert!(s.knows(&k(1)) && !s.knows(&k(2)));
    assert_eq!(
        s.read_through(false),
        Some(1_000),
        "stream 2 is read from the floor: nothing after it is known published"
    );
    assert_eq!(s.read_through(true), Some(9_000_000));
    // Stream 2's reader reports (at its lower bound, then progress).
    s.admit(&k(2), 1_000);
    s.admit(&k(2), 8_000_000);
    assert_eq!(s.read_through(true), Some(8_000_000));
    // A new generation: nothing reported yet, its floor bounds it.
    s.start_generation(10_000_000);
    assert_eq!(s.read_through(false), Some(10_000_000));
    s.admit(&k(3), 10_500_000);
    assert_eq!(s.read_through(false), Some(10_000_000), "stream 3 alone says nothing of the others");
    assert_eq!(s.read_through(true), Some(10_500_000));
    // Nothing known at all.
    assert_eq!(ProgressState::default().read_through(false), None);
}
