//! Tests of `LeaseCheckpointSaver` against a real CQL server (the progress
//! table is an ordinary table, so Apache Cassandra stands in for Scylla):
//! progress never moves backwards, the lease epoch fences writes.

use super::*;
use crate::relay::cdc::progress::SavedRow;
use crate::relay::cdc::testkit::{live_store, set_epoch};
use scylla_cdc::cdc_types::StreamID;
use scylla_cdc::checkpoints::CDCCheckpointSaver;

const DAY: Duration = Duration::from_secs(86_400);

fn stream(b: u8) -> StreamID {
    StreamID::new(vec![b; 16])
}

fn key(b: u8) -> StreamKey {
    StreamKey::of(&stream(b))
}

async fn table_time(s: &LeaseCheckpointSaver, ks: &str, st: &StreamID) -> Option<i64> {
    let rows = read_progress(&s.session, ks, s.name()).await.unwrap();
    rows.into_iter().find(|r| r.stream == StreamKey::of(st).0).and_then(|r| r.time)
}

#[test]
fn generation_timestamps_round_trip() {
    for ms in [0, 1, 1_700_000_000_123, i64::MAX] {
        assert_eq!(generation_ms(&generation_at(ms)), ms);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_then_an_older_save_leaves_the_progress_unchanged() {
    let Some(store) = live_store("CDC saver: older save after load").await else { return };
    let (session, ks) = (store.session(), store.keyspace().to_string());
    let s1 = LeaseCheckpointSaver::open(session.clone(), &ks, "kafka-relay", None, DAY, None).await.unwrap();
    s1.start_generation(1_000).await.unwrap();
    s1.record(&key(1), 50_000).unwrap();
    assert_eq!(s1.flush().await.unwrap(), Flushed::Saved(1));

    let s2 = LeaseCheckpointSaver::open(session.clone(), &ks, "kafka-relay", None, DAY, None).await.unwrap();
    assert_eq!(s2.load_last_checkpoint(&stream(1)).await.unwrap(), Some(Duration::from_millis(50_000)));
    assert_eq!(s2.load_last_generation().await.unwrap().map(|g| generation_ms(&g)), Some(1_000));
    // What scylla-cdc does right after a start: save the lower bound.
    s2.record(&key(1), 2_000).unwrap();
    assert_eq!(s2.flush().await.unwrap(), Flushed::Saved(0), "nothing to write");
    assert_eq!(table_time(&s2, &ks, &stream(1)).await, Some(50_000));
    // Real progress is written.
    s2.record(&key(1), 60_000).unwrap();
    assert_eq!(s2.flush().await.unwrap(), Flushed::Saved(1));
    assert_eq!(table_time(&s2, &ks, &stream(1)).await, Some(60_000));
    // The row carries the generation the saver knows, not scylla-cdc's start bound.
    let row = read_progress(&session, &ks, "kafka-relay")
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.stream == StreamKey::of(&stream(1)).0)
        .unwrap();
    assert_eq!(row.generation, Some(1_000));
}

/// Issue 17.1 at library level: on every start scylla-cdc's stream reader
/// loads each stream's checkpoint, then its saving task saves the reader's
/// lower bound (here 1 000 ms; `now - 24 h` before this change) for every
/// stream at once (stream_reader.rs ~215-245, checkpoints.rs ~40-52).
/// `TableBackedCheckpointSaver` wrote it, so a crash then replayed 24 h.
/// Three restarts in a row keep the real progress here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_never_move_progress_backwards() {
    let Some(store) = live_store("CDC saver: restart").await else { return };
    let (session, ks) = (store.session(), store.keyspace().to_string());
    let streams: Vec<StreamID> = (1..=3).map(stream).collect();
    let ours = LeaseCheckpointSaver::open(session.clone(), &ks, "kafka-relay", None, DAY, None).await.unwrap();
    ours.start_generation(500).await.unwrap();
    for s in &streams {
        ours.record(&StreamKey::of(s), 90_000).unwrap();
    }
    ours.flush().await.unwrap();
    for _ in 0..3 {
        let again = LeaseCheckpointSaver::open(session.clone(), &ks, "kafka-relay", None, DAY, None).await.unwrap();
        for s in &streams {
            assert_eq!(again.load_last_checkpoint(s).await.unwrap(), Some(Duration::from_millis(90_000)));
        }
        for s in &streams {
            assert!(!again.record(&StreamKey::of(s), 1_000).unwrap(), "the lower bound is not progress");
        }
        again.flush().await.unwrap();
        for s in &streams {
            assert_eq!(table_time(&again, &ks, s).await, Some(90_000), "progress kept across restarts");
        }
        assert_eq!(again.oldest_progress_ms(), Some(90_000));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_epoch_is_refused_and_fences_the_saver() {
    let Some(store) = live_store("CDC saver: fencing").await else { return };
    let (session, ks) = (store.session(), store.keyspace().to_string());
    set_epoch(&session, &ks, "kafka-relay", None, 1).await;
    let old = LeaseCheckpointSaver::open(session.clone(), &ks, "kafka-relay", Some(1), DAY, None).await.unwrap();
    old.start_generation(10).await.unwrap();
    old.record(&key(1), 5_000).unwrap();
    assert_eq!(old.flush().await.unwrap(), Flushed::Saved(1));

    // Another instance takes the lease over.
    set_epoch(&session, &ks, "kafka-relay", Some(1), 2).await;
    let fenced = old.fenced_watch();
    old.record(&key(1), 9_000).unwrap();
    assert_eq!(old.flush().await.unwrap(), Flushed::Fenced { current_epoch: Some(2) });
    assert!(old.is_fenced() && fenced.borrow().is_some());
    assert_eq!(table_time(&old, &ks, &stream(1)).await, Some(5_000), "the zombie's write was refused");
    let err = old.record(&key(1), 9_500).unwrap_err();
    assert!(err.to_string().contains("fenced"), "{err}");
    assert!(old.start_generation(20).await.is_err());

    // The new holder writes with its epoch.
    let new = LeaseCheckpointSaver::open(session.clone(), &ks, "kafka-relay", Some(2), DAY, None).await.unwrap();
    assert_eq!(new.load_last_checkpoint(&stream(1)).await.unwrap(), Some(Duration::from_millis(5_000)));
    new.record(&key(1), 7_000).unwrap();
    assert_eq!(new.flush().await.unwrap(), Flushed::Saved(1));
    assert_eq!(table_time(&new, &ks, &stream(1)).await, Some(7_000));

    // Unfenced (`epoch: None`) writes unconditionally, whatever the epoch.
    let plain = LeaseCheckpointSaver::open(session.clone(), &ks, "kafka-relay", None, DAY, None).await.unwrap();
    plain.record(&key(2), 8_000).unwrap();
    assert_eq!(plain.flush().await.unwrap(), Flushed::Saved(1));
    assert_eq!(table_time(&plain, &ks, &stream(2)).await, Some(8_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_are_saved_in_several_batches_and_generations_move_forward() {
    let Some(store) = live_store("CDC saver: batches").await else { return };
    let (session, ks) = (store.session(), store.keyspace().to_string());
    set_epoch(&session, &ks, "projections", None, 7).await;
    let s = LeaseCheckpointSaver::open(session.clone(), &ks, "projections", Some(7), DAY, None).await.unwrap();
    s.start_generation(100).await.unwrap();
    let streams: Vec<StreamID> = (0..150u8).map(stream).collect();
    for (i, st) in streams.iter().enumerate() {
        s.record(&StreamKey::of(st), 1_000 + i as i64).unwrap();
    }
    assert_eq!(s.flush().await.unwrap(), Flushed::Saved(150));
    assert_eq!(s.flush().await.unwrap(), Flushed::Saved(0));
    let rows = read_progress(&session, &ks, "projections").await.unwrap();
    assert_eq!(rows.len(), 151, "150 streams and the generation row");
    assert_eq!(rows.iter().find(|r| r.stream.is_empty()).unwrap().generation, Some(100));
    assert_eq!(s.oldest_progress_ms(), Some(1_000));

    // A newer generation: the finished streams leave the lag computation.
    s.start_generation(5_000).await.unwrap();
    assert_eq!(s.oldest_progress_ms(), None);
    s.start_generation(4_000).await.unwrap();
    let reloaded = LeaseCheckpointSaver::open(session.clone(), &ks, "projections", Some(7), DAY, None).await.unwrap();
    assert_eq!(reloaded.load_last_generation().await.unwrap().map(|g| generation_ms(&g)), Some(5_000));
    assert_eq!(reloaded.progress().len(), 0, "rows of the finished generation do not count");
    // Other consumers' partitions are untouched.
    assert!(read_progress(&session, &ks, "kafka-relay").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flusher_saves_periodically_and_once_more_on_stop() {
    let Some(store) = live_store("CDC saver: flusher").await else { return };
    let (session, ks) = (store.session(), store.keyspace().to_string());
    let s = LeaseCheckpointSaver::open(session.clone(), &ks, "kafka-relay", None, DAY, None).await.unwrap();
    s.start_generation(1).await.unwrap();
    let trigger = crate::shutdown::Trigger::new();
    let task = tokio::spawn(run_flusher(s.clone(), Duration::from_millis(50), trigger.subscribe()));
    s.record(&key(1), 2_000).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while table_time(&s, &ks, &stream(1)).await != Some(2_000) {
        assert!(std::time::Instant::now() < deadline, "the flusher did not save");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.record(&key(1), 3_000).unwrap();
    trigger.fire();
    assert_eq!(task.await.unwrap(), Flushed::Saved(1), "the last flush on stop wrote the newest value");
    assert_eq!(table_time(&s, &ks, &stream(1)).await, Some(3_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_names_outboxd_schema() {
    let Some(store) = live_store("CDC saver: missing table").await else { return };
    let err = LeaseCheckpointSaver::open(store.session(), "no_such_keyspace_x", "kafka-relay", None, DAY, None)
        .await
        .err()
        .expect("no table");
    assert!(err.to_string().contains("outboxd schema"), "{err}");
}

/// An upgrade: progress saved by scylla-cdc's own saver (table
/// `cdc_checkpoints`, generation in the `[0]` row) is the starting point
/// when the lease partition holds none yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_of_the_former_library_table_is_taken_over_once() {
    let Some(store) = live_store("CDC saver: legacy progress").await else { return };
    let (session, ks) = (store.session(), store.keyspace().to_string());
    session
        .query_unpaged(
            format!(
                "CREATE TABLE {ks}.cdc_checkpoints (stream_id blob PRIMARY KEY, generation timestamp, time timestamp)"
            ),
            (),
        )
        .await
        .unwrap();
    let ins = format!("INSERT INTO {ks}.cdc_checkpoints (stream_id, generation, time) VALUES (?, ?, ?)");
    session.query_unpaged(ins.clone(), (vec![0u8], CqlTimestamp(700), CqlTimestamp(i64::MAX))).await.unwrap();
    session.query_unpaged(ins.clone(), (vec![1u8; 16], CqlTimestamp(1), CqlTimestamp(42_000))).await.unwrap();
    // A stream of a finished generation (read to its end below 700).
    session.query_unpaged(ins, (vec![2u8; 16], CqlTimestamp(1), CqlTimestamp(650))).await.unwrap();
    let s = LeaseCheckpointSaver::open(session.clone(), &ks, "kafka-relay", None, DAY, Some("cdc_checkpoints"))
        .await
        .unwrap();
    assert_eq!(s.load_last_generation().await.unwrap().map(|g| generation_ms(&g)), Some(700));
    assert_eq!(s.load_last_checkpoint(&stream(1)).await.unwrap(), Some(Duration::from_millis(42_000)));
    assert_eq!(s.load_last_checkpoint(&stream(2)).await.unwrap(), None, "a finished generation's stream");
    assert_eq!(s.progress().oldest(), Some(42_000), "not the finished stream's 650");
    // Written to the lease partition by the first flush, as taken over
    // (every stream's row before any progress), then the progress; from
    // then on the former table is not read any more.
    s.start_generation(700).await.unwrap();
    s.record(&key(1), 43_000).unwrap();
    s.flush().await.unwrap();
    assert_eq!(table_time(&s, &ks, &stream(1)).await, Some(42_000));
    s.flush().await.unwrap();
    assert_eq!(table_time(&s, &ks, &stream(1)).await, Some(43_000));
    let rows = read_progress(&session, &ks, "kafka-relay").await.unwrap();
    assert_eq!(
        rows.iter().find(|r| r.stream.is_empty()).and_then(|r| r.generation),
        Some(700),
        "generation row written"
    );
    // A missing former table is no error.
    let other = LeaseCheckpointSaver::open(session.clone(), &ks, "projections", None, DAY, Some("no_such_table"))
        .await
        .unwrap();
    assert!(other.progress().is_empty());
}

/// The CDC log TTL guard's input as the health actor reads it: the oldest
/// saved per-stream progress, from the table (whatever state the relay is
/// in), 13 h old with a 24 h log TTL -> Degraded; caught up -> Healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ttl_guard_reads_the_oldest_saved_progress() {
    use crate::relay::cdc::health::{ttl_health, Verdict};
    let Some(store) = live_store("CDC saver: TTL guard input").await else { return };
    let (session, ks) = (store.session(), store.keyspace().to_string());
    assert_eq!(store.cdc_oldest_progress("kafka-relay").await.unwrap(), None, "no progress yet");
    let now = chrono::Utc::now().timestamp_millis();
    let behind = now - 13 * 3_600_000;
    let s = LeaseCheckpointSaver::open(session.clone(), &ks, "kafka-relay", None, DAY, None).await.unwrap();
    s.start_generation(behind - 60_000).await.unwrap();
    // The generation row alone (a relay stopped before its streams' first
    // save): its floor, not "not known yet" (Healthy) while the log expires.
    let floor = store.cdc_oldest_progress("kafka-relay").await.unwrap().map(|t| t.timestamp_millis());
    assert_eq!(floor, Some(behind - 60_000));
    s.record(&key(1), behind).unwrap();
    s.record(&key(2), now - 1_000).unwrap();
    s.flush().await.unwrap();
    let age = |at: chrono::DateTime<chrono::Utc>| (chrono::Utc::now() - at).to_std().unwrap();
    let oldest = store.cdc_oldest_progress("kafka-relay").await.unwrap().expect("saved progress");
    assert_eq!(oldest.timestamp_millis(), behind);
    let (v, detail) = ttl_health(Some(age(oldest)), DAY);
    assert_eq!(v, Verdict::Degraded, "{detail}");

    s.record(&key(1), now).unwrap();
    s.flush().await.unwrap();
    let oldest = store.cdc_oldest_progress("kafka-relay").await.unwrap().unwrap();
    assert_eq!(oldest.timestamp_millis(), now - 1_000, "stream 2 is now the oldest");
    assert_eq!(ttl_health(Some(age(oldest)), DAY).0, Verdict::Healthy);
}

fn generation_row_floor(rows: &[SavedRow]) -> Option<i64> {
    rows.iter().find(|r| r.stream.is_empty()).and_then(|r| r.time)
}

/// The late stream group: a run starts from 10 s; streams 1 and 2 report at
/// once, stream 3's group is still preparing its statement when the others'
/// rows already carry progress (90 s), and the process crashes before stream
/// 3 ever reports. The restart must read stream 3 from 10 s, not from the
/// oldest row (90 s, which skipped its changes in between): the generation
/// row holds the floor, and the start point does not pass it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_group_that_never_saved_resumes_from_the_generation_floor() {
    use crate::relay::cdc::start::{start_point, StartInputs};
    let Some(store) = live_store("CDC saver: generation floor").await else { return };
    let (session, ks) = (store.session(), store.keyspace().to_string());
    let run1 = LeaseCheckpointSaver::open(session.clone(), &ks, "kafka-relay", None, DAY, None).await.unwrap();
    run1.run_starts(10_000);
    run1.start_generation(5_000).await.unwrap(); // scylla-cdc: before its readers start
    let rows = read_progress(&session, &ks, "kafka-relay").await.unwrap();
    assert_eq!(generation_row_floor(&rows), Some(10_000), "written with the generation, before any progress");
    for t in [10_000, 90_000] {
        run1.record(&key(1), t).unwrap();
        run1.record(&key(2), t).unwrap();
        assert_eq!(run1.flush().await.unwrap(), Flushed::Saved(2));
    }
    drop(run1); // the crash: stream 3 never reported

    let run2 = LeaseCheckpointSaver::open(session.clone(), &ks, "kafka-relay", None, DAY, None).await.unwrap();
    assert_eq!((run2.oldest_progress_ms(), run2.floor_ms()), (Some(90_000), Some(10_000)));
    // The reconciler must not take 90 s as read: stream 3 has not reported.
    assert_eq!(run2.read_through_ms(), Some(10_000), "a stream group without rows bounds it at the floor");
    let start = start_point(StartInputs {
        now_ms: 100_000,
        log_ttl: DAY,
        skew: Duration::from_secs(60),
        origin_ms: Some(1_000),
        saved_ms: run2.oldest_progress_ms(),
        floor_ms: run2.floor_ms(),
        first_generation_ms: Some(5_000),
    });
    assert_eq!(start.start_ms, 10_000, "stream 3 is read from where the generation was first read");
    // scylla-cdc raises the bound of groups with rows to their own progress.
    assert_eq!(run2.load_last_checkpoint(&stream(1)).await.unwrap(), Some(Duration::from_millis(90_000)));
    assert_eq!(run2.load_last_checkpoint(&stream(3)).await.unwrap(), None);
    // A restart within the generation keeps the floor.
    run2.run_starts(start.start_ms);
    run2.start_generation(5_000).await.unwrap();
    run2.record(&key(3), 10_000).unwrap();
    run2.flush().await.unwrap();
    let rows = read_progress(&session, &ks, "kafka-relay").await.unwrap();
    assert_eq!(generation_row_floor(&rows), Some(10_000));
    run2.record(&key(3), 95_000).unwrap();
    assert_eq!(run2.read_through_ms(), Some(10_000), "the groups are not known (no Scylla tables here): the floor");
    let groups = crate::relay::cdc::generations::Groups::Shared(vec![vec![key(1), key(2)], vec![key(3)]]);
    run2.activity().set_groups(5_000, groups);
    assert_eq!(run2.read_through_ms(), Some(90_000), "every stream of the generation reported: the oldest progress");

    // A generation row written before the floor existed (time null): the
    // next run's lower bound becomes the floor, written before progress.
    session
        .query_unpaged(
            format!("UPDATE {ks}.relay_leases SET time = null WHERE name = 'kafka-relay' AND stream_id = 0x"),
            (),
        )
        .await
        .unwrap();
    let run3 = LeaseCheckpointSaver::open(session.clone(), &ks, "kafka-relay", None, DAY, None).await.unwrap();
    assert_eq!(run3.floor_ms(), None);
    run3.run_starts(10_000);
    run3.record(&key(1), 95_000).unwrap();
    assert_eq!(run3.flush().await.unwrap(), Flushed::Saved(1));
    let rows = read_progress(&session, &ks, "kafka-relay").await.unwrap();
    assert_eq!(generation_row_floor(&rows), Some(10_000));

    // A newer generation: its floor is its start (the run began before it).
    run3.start_generation(200_000).await.unwrap();
    let rows = read_progress(&session, &ks, "kafka-relay").await.unwrap();
    assert_eq!(
        rows.iter().find(|r| r.stream.is_empty()).map(|r| (r.generation, r.time)),
        Some((Some(200_000), Some(200_000)))
    );
}
