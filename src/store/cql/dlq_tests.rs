//! Tests of the CQL dead-letter queue's races, each step of the racing
//! writers run one by one against a real server (SKIPPED without one).

use super::*;
use crate::config::CqlConfig;
use crate::store::EventStore;
use chrono::Utc;

fn letter(event_id: Uuid, aggregate_id: Uuid) -> DeadLetter {
    let now = Utc::now();
    DeadLetter {
        id: Uuid::now_v7(),
        position: None,
        event_id,
        aggregate_id,
        event_type: "OrderPlaced".into(),
        payload: "{}".into(),
        error_message: "refused by the broker".into(),
        failure_count: 1,
        first_failed_at: now,
        last_failed_at: now,
        created_at: now,
    }
}

async fn fresh_store(what: &str) -> Option<(std::sync::Arc<CqlStore>, String)> {
    let uri = crate::store::cql::connect::test_server_uri(what)?;
    let cfg = CqlConfig { uri, keyspace: format!("d_{}", Uuid::now_v7().simple()), ..CqlConfig::default() };
    let store = CqlStore::connect(&cfg).await.expect("connect");
    store.migrate().await.expect("migrate");
    Some((store, cfg.keyspace))
}

async fn letters_of(store: &CqlStore, event: Uuid) -> Vec<DeadLetter> {
    store.dlq_list(100).await.unwrap().into_iter().filter(|l| l.event_id == event).collect()
}

async fn drop_keyspace(store: &CqlStore, keyspace: &str) {
    let _ = store.session.query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ()).await;
}

/// One step of a racing writer: the claim of the event's mapping for `l`.
async fn claim(store: &CqlStore, l: &DeadLetter) {
    let s = store.stmts().await.unwrap();
    let res = store.session.execute_unpaged(&s.dlq_claim, (l.event_id, l.id)).await.unwrap();
    assert!(lwt_answer(res, "id").unwrap().0, "the mapping is free");
}

/// One step of a racing writer: `to` takes over the mapping `from` holds
/// (`IF id = from`: it found no row under it).
async fn take_over(store: &CqlStore, from: &DeadLetter, to: &DeadLetter) {
    let s = store.stmts().await.unwrap();
    let res = store.session.execute_unpaged(&s.dlq_reclaim, (to.id, to.event_id, from.id)).await.unwrap();
    assert!(lwt_answer(res, "id").unwrap().0, "the takeover");
}

/// One step of a racing writer: its row written.
async fn write_row(store: &CqlStore, l: &DeadLetter) {
    assert!(store.write_row(l).await.unwrap(), "a new row");
}

/// Writer A's settle, and the orphan it returns folded in as `insert_letter`
/// does it.
async fn settle_and_fold(store: &CqlStore, l: &DeadLetter, displaced: Option<Uuid>) {
    for orphan in store.settle(l.event_id, l.id, displaced).await.unwrap() {
        store.insert_letter(orphan).await.unwrap();
    }
}

/// Review finding: two first failures of one event. Writer A claims the
/// mapping and is slow to write its row; writer B finds the mapping with no
/// row, takes it over and writes its own; A's row lands late. Two letters
/// for one event, the second never counted again. Here A's own check, after
/// its write, sees the mapping taken over and folds its row into B's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_first_write_is_folded_by_its_writer() {
    let Some((store, keyspace)) = fresh_store("CQL DLQ first-write race (late writer checks)").await else { return };
    let (event, agg) = (Uuid::now_v7(), Uuid::now_v7());
    let a = letter(event, agg);
    claim(&store, &a).await;
    // B, whole: finds the mapping with no row, takes it over, writes, settles.
    let b = letter(event, agg);
    store.insert_letter(b.clone()).await.unwrap();
    // A's row lands late, then A settles.
    write_row(&store, &a).await;
    assert_eq!(letters_of(&store, event).await.len(), 2, "the race, reproduced: an orphan beside B's letter");
    settle_and_fold(&store, &a, None).await;
    let letters = letters_of(&store, event).await;
    assert_eq!(letters.len(), 1, "one letter per event: {letters:?}");
    assert_eq!((letters[0].id, letters[0].failure_count), (b.id, 2), "A's failure counted on B's letter");
    // The event's next failure lands on the same letter.
    store.insert_letter(letter(event, agg)).await.unwrap();
    let letters = letters_of(&store, event).await;
    assert_eq!((letters.len(), letters[0].failure_count), (1, 3), "{letters:?}");
    drop_keyspace(&store, &keyspace).await;
}

/// The same race the other way round: A writes and checks its mapping
/// before B takes it over (B had read "no row" before A's write). B's check
/// after its takeover finds the row it displaced and folds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_displaced_row_written_after_all_is_folded_by_the_taker() {
    let Some((store, keyspace)) = fresh_store("CQL DLQ first-write race (taker checks)").await else { return };
    let (event, agg) = (Uuid::now_v7(), Uuid::now_v7());
    let (a, b) = (letter(event, agg), letter(event, agg));
    claim(&store, &a).await;
    // B read row A: none (before A's write). A writes and settles: still its mapping.
    write_row(&store, &a).await;
    assert!(store.settle(event, a.id, None).await.unwrap().is_empty(), "A's mapping is its own");
    // B takes the mapping over (`IF id = A`), writes its row, settles.
    take_over(&store, &a, &b).await;
    write_row(&store, &b).await;
    settle_and_fold(&store, &b, Some(a.id)).await;
    let letters = letters_of(&store, event).await;
    assert_eq!(letters.len(), 1, "one letter per event: {letters:?}");
    assert_eq!((letters[0].id, letters[0].failure_count), (b.id, 2), "A's failure counted on B's letter");
    drop_keyspace(&store, &keyspace).await;
}

/// Review finding: a removal (row deleted, then the event's mapping
/// unclaimed `IF id = X`) interleaved with a new failure of the event
/// (row X missing: written again under X) orphaned that row, and the
/// event's next failure started a second letter. The removal's steps run
/// here one by one around the failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_during_a_removal_leaves_one_letter_per_event() {
    let Some((store, keyspace)) = fresh_store("CQL DLQ removal race").await else { return };
    let (event, agg) = (Uuid::now_v7(), Uuid::now_v7());
    let first = letter(event, agg);
    store.insert_letter(first.clone()).await.unwrap();
    let s = store.stmts().await.unwrap();
    // The removal of the first letter, step one: its row goes.
    store.session.execute_unpaged(&s.dlq_delete, (first.id,)).await.unwrap();
    // The event fails again meanwhile.
    store.insert_letter(letter(event, agg)).await.unwrap();
    // The removal, step two: the mapping of the removed letter.
    store.session.execute_unpaged(&s.dlq_unclaim, (event, first.id)).await.unwrap();
    // And once more later.
    store.insert_letter(letter(event, agg)).await.unwrap();
    let letters = letters_of(&store, event).await;
    assert_eq!(letters.len(), 1, "one letter per event: {letters:?}");
    assert_eq!(letters[0].failure_count, 2, "the two later failures, counted on it");
    drop_keyspace(&store, &keyspace).await;
}

/// Last-read finding: three writers. A claims and never writes; B takes the
/// mapping over and is slow to write; C takes it over from B, writes and
/// settles (row B not there yet); row B lands. B's check of the row it
/// displaced (A's) found nothing, and row B stayed an orphan. A taker now
/// also checks that the mapping is still its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taker_whose_mapping_was_taken_over_in_turn_folds_its_own_row() {
    let Some((store, keyspace)) = fresh_store("CQL DLQ first-write race (three writers)").await else { return };
    let (event, agg) = (Uuid::now_v7(), Uuid::now_v7());
    let (a, b) = (letter(event, agg), letter(event, agg));
    claim(&store, &a).await;
    // B takes A's mapping over (no row A), and is slow to write.
    take_over(&store, &a, &b).await;
    // C, whole: finds no row B, takes the mapping over, writes, settles.
    let c = letter(event, agg);
    store.insert_letter(c.clone()).await.unwrap();
    // Row B lands; B settles.
    write_row(&store, &b).await;
    settle_and_fold(&store, &b, Some(a.id)).await;
    let letters = letters_of(&store, event).await;
    assert_eq!(letters.len(), 1, "one letter per event: {letters:?}");
    assert_eq!((letters[0].id, letters[0].failure_count), (c.id, 2), "B's failure counted on C's letter");
    drop_keyspace(&store, &keyspace).await;
}

/// Last read's finding: folding an orphan (an older failure) into the
/// event's letter set the letter's `last_failed_at` and message to the
/// orphan's, moving them back in time, and left `first_failed_at` at the
/// later of the two. The letter keeps the earliest first failure and the
/// latest last one with its message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_failure_folded_in_keeps_the_letters_latest_time_and_message() {
    let Some((store, keyspace)) = fresh_store("CQL DLQ fold keeps the times").await else { return };
    let (event, agg) = (Uuid::now_v7(), Uuid::now_v7());
    let newer = DeadLetter { error_message: "the newest failure".into(), ..letter(event, agg) };
    let t = newer.first_failed_at;
    let older = DeadLetter {
        error_message: "an older failure".into(),
        first_failed_at: t - chrono::Duration::minutes(10),
        last_failed_at: t - chrono::Duration::minutes(5),
        ..letter(event, agg)
    };
    store.insert_letter(newer.clone()).await.unwrap();
    store.insert_letter(older.clone()).await.unwrap();
    let letters = letters_of(&store, event).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let l = &letters[0];
    assert_eq!(l.failure_count, 2);
    let ms = |d: chrono::DateTime<Utc>| d.timestamp_millis();
    assert_eq!(ms(l.first_failed_at), ms(older.first_failed_at), "the earliest first failure");
    assert_eq!(ms(l.last_failed_at), ms(newer.last_failed_at), "the latest last failure");
    assert_eq!(l.error_message, "the newest failure", "the latest failure's message");
    // A later failure moves the last time and the message forward.
    let later = DeadLetter { error_message: "later still".into(), ..letter(event, agg) };
    store.insert_letter(later.clone()).await.unwrap();
    let l = letters_of(&store, event).await.remove(0);
    assert_eq!((l.failure_count, l.error_message.as_str()), (3, "later still"));
    assert_eq!(ms(l.last_failed_at), ms(later.last_failed_at));
    assert_eq!(ms(l.first_failed_at), ms(older.first_failed_at));
    drop_keyspace(&store, &keyspace).await;
}
