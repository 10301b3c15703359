//! Unit tests of the writer's group transaction: appends handed over while a
//! group is open join its one commit, are invisible to readers until it, and
//! are each judged on their own (a conflict fails only its caller); a
//! savepoint SQLite refuses to close fails the whole group, one it refuses
//! to open fails only its append.

use super::*;
use crate::store::sqlite::{migrate_conn, open_conn, SqliteOptions};

/// A writable connection as the store opens it (WAL, busy timeout), schema current.
fn open(path: &std::path::Path) -> Connection {
    let mut conn = open_conn(path, &SqliteOptions::default(), false).unwrap();
    migrate_conn(&mut conn).unwrap();
    conn
}

fn job(aggregate_id: Uuid, expected: i64, n: i64) -> AppendJob {
    let events = (1..=n)
        .map(|i| {
            Row::encode(&EventEnvelope {
                event_id: Uuid::now_v7(),
                aggregate_type: "order".into(),
                aggregate_id,
                sequence: expected + i,
                event_type: "OrderCreated".into(),
                schema_version: 1,
                payload: serde_json::json!({ "n": expected + i }),
                causation_id: None,
                correlation_id: Uuid::now_v7(),
                timestamp: chrono::Utc::now(),
                trace: None,
            })
            .unwrap()
        })
        .collect();
    let (reply, _) = oneshot::channel();
    AppendJob { aggregate_id, aggregate_key: aggregate_id.to_string(), expected, events, reply }
}

/// The first event of a new order `agg`.
fn created(agg: Uuid) -> EventEnvelope {
    EventEnvelope {
        event_id: Uuid::now_v7(),
        aggregate_type: "order".into(),
        aggregate_id: agg,
        sequence: 1,
        event_type: "OrderCreated".into(),
        schema_version: 1,
        payload: serde_json::json!({}),
        causation_id: None,
        correlation_id: Uuid::now_v7(),
        timestamp: chrono::Utc::now(),
        trace: None,
    }
}

fn count(conn: &Connection, agg: Uuid) -> i64 {
    conn.query_row("SELECT COUNT(*) FROM event_store WHERE aggregate_id = ?1", [agg.to_string()], |r| r.get(0)).unwrap()
}

#[test]
fn appends_handed_over_while_open_join_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.db");
    let mut conn = open(&path);
    let reader = open(&path);
    let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    // Queued behind the first: a's second event (depends on the first's
    // uncommitted row), a stale append to b, a two-event append to c.
    let mut queue = vec![job(a, 1, 1), job(b, 3, 1), job(c, 0, 2)].into_iter();
    let mut asked = Vec::new();
    let next = |len: usize| {
        asked.push(len);
        // Nothing of the open group is visible yet: no commit per append.
        assert_eq!(count(&reader, a), 0, "the group committed before it closed");
        queue.next()
    };
    let (batch, results) = commit_group(&mut conn, job(a, 0, 1), next, &HashMap::new());
    assert_eq!(asked, vec![1, 2, 3, 4], "asked after each append with the group's size");
    assert_eq!(batch.len(), 4);
    assert_eq!(batch.iter().map(|j| j.aggregate_id).collect::<Vec<_>>(), vec![a, a, b, c]);
    assert_eq!(results[0].as_ref().unwrap().version, 1);
    assert_eq!(results[1].as_ref().unwrap().version, 2);
    assert_eq!(results[2], Err(StoreError::Conflict { aggregate_id: b, expected: 3, actual: 0 }));
    assert_eq!(results[3].as_ref().unwrap().version, 2);
    // Positions rise in the order the appends joined the group.
    let positions: Vec<i64> = results.iter().filter_map(|r| r.as_ref().ok()?.last_position).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert_eq!((count(&reader, a), count(&reader, b), count(&reader, c)), (2, 0, 2));
}

#[test]
fn a_failed_multi_event_append_leaves_its_neighbours_in_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.db");
    let mut conn = open(&path);
    let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    // b's second event reuses a's event id: the UNIQUE event_id refuses it,
    // and only b's savepoint rolls back.
    let first = job(a, 0, 1);
    let mut bad = job(b, 0, 2);
    bad.events[1].event_id = first.events[0].event_id.clone();
    let mut queue = vec![bad, job(c, 0, 1)].into_iter();
    let (batch, results) = commit_group(&mut conn, first, |_| queue.next(), &HashMap::new());
    assert_eq!(batch.len(), 3);
    assert!(results[0].is_ok());
    assert!(matches!(results[1], Err(StoreError::InvalidAppend(_))), "{:?}", results[1]);
    assert!(results[2].is_ok());
    assert_eq!((count(&conn, a), count(&conn, b), count(&conn, c)), (1, 0, 1));
}

/// Denies one savepoint operation on `conn` through SQLite's authorizer: the
/// statement then fails to prepare, as it would when SQLite cannot run it.
fn deny_savepoint(conn: &Connection, denied: rusqlite::hooks::TransactionOperation) {
    use rusqlite::hooks::{AuthAction, Authorization};
    conn.authorizer(Some(move |ctx: rusqlite::hooks::AuthContext<'_>| match ctx.action {
        AuthAction::Savepoint { operation, .. } if operation == denied => Authorization::Deny,
        _ => Authorization::Allow,
    }));
}

#[test]
fn a_savepoint_that_cannot_be_closed_fails_the_whole_group_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.db");
    let mut conn = open(&path);
    deny_savepoint(&conn, rusqlite::hooks::TransactionOperation::Release);
    let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    // a is inserted, then b's two events inside a savepoint that cannot be
    // released; c would follow.
    let mut queue = vec![job(b, 0, 2), job(c, 0, 1)].into_iter();
    let (batch, results) = commit_group(&mut conn, job(a, 0, 1), |_| queue.next(), &HashMap::new());
    assert_eq!(batch.len(), 2, "the group closed at the failure: c was not taken");
    for r in &results {
        match r {
            Err(StoreError::Unavailable(m)) => assert!(m.contains("savepoint"), "{m}"),
            other => panic!("every append of the group fails: {other:?}"),
        }
    }
    // Nothing of the group was committed, a's row included.
    assert_eq!((count(&conn, a), count(&conn, b)), (0, 0));
    // The connection is usable for the next group, and c goes in it.
    conn.authorizer(None::<fn(rusqlite::hooks::AuthContext<'_>) -> rusqlite::hooks::Authorization>);
    let (_, results) = commit_group(&mut conn, queue.next().unwrap(), |_| None, &HashMap::new());
    assert_eq!(results[0].as_ref().unwrap().version, 1);
    assert_eq!(count(&conn, c), 1);
}

#[test]
fn a_savepoint_that_cannot_open_fails_only_its_append() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.db");
    let mut conn = open(&path);
    deny_savepoint(&conn, rusqlite::hooks::TransactionOperation::Begin);
    let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let mut queue = vec![job(b, 0, 2), job(c, 0, 1)].into_iter();
    let (batch, results) = commit_group(&mut conn, job(a, 0, 1), |_| queue.next(), &HashMap::new());
    assert_eq!(batch.len(), 3);
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(matches!(results[1], Err(StoreError::Unavailable(_))), "{:?}", results[1]);
    assert_eq!((count(&conn, a), count(&conn, b), count(&conn, c)), (1, 0, 1));
}

/// Review finding: with the database file deleted or replaced under a
/// running store, reads refused but appends (creates skip the read) were
/// committed to the old inode and its leftover WAL and reported durable.
#[tokio::test]
async fn no_append_reaches_a_database_file_deleted_or_replaced_under_the_store() {
    use crate::store::sqlite::SqliteStore;
    use crate::store::EventStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let store = SqliteStore::open(&path, SqliteOptions::default()).await.unwrap();
    let envelope = created;
    let a = Uuid::now_v7();
    store.append(a, 0, vec![envelope(a)]).await.expect("the file as opened");
    let moved = dir.path().join("moved.db");
    std::fs::rename(&path, &moved).unwrap();
    let b = Uuid::now_v7();
    let e = store.append(b, 0, vec![envelope(b)]).await.expect_err("the file is gone");
    assert!(matches!(&e, StoreError::Unavailable(m) if m.contains("gone")), "{e}");
    // A copy put in its place: another file.
    std::fs::copy(&moved, &path).unwrap();
    let e = store.append(b, 0, vec![envelope(b)]).await.expect_err("the file was replaced");
    assert!(matches!(&e, StoreError::Unavailable(m) if m.contains("replaced")), "{e}");
    let copy = open(&path);
    assert_eq!(count(&copy, b), 0, "nothing of b in the new file");
    // Review finding: the other writes still went to the old file: a lease
    // renewal there held a lease no instance on the new file sees, a
    // checkpoint or a park "durable" where nothing reads it.
    use crate::store::lease::{Lease, LeaseCas, LeaseStore};
    use crate::store::parking::ParkingStore;
    let lease = Lease { name: "kafka-relay".into(), holder: "a".into(), epoch: 1, counter: 0, ttl_ms: 3000 };
    let refused = |r: Result<(), StoreError>, what: &str| {
        assert!(matches!(&r, Err(StoreError::Unavailable(m)) if m.contains("replaced")), "{what}: {r:?}");
    };
    refused(store.lease_cas(&LeaseCas { expected: None, new: lease }).await.map(|_| ()), "lease");
    refused(store.set_checkpoint("kafka-relay", 1).await, "checkpoint");
    let p = crate::store::parking::Parked {
        consumer: "kafka-relay".into(),
        aggregate_id: b.to_string(),
        aggregate_type: None,
        position: Some(1),
        sequence: Some(1),
        event_id: None,
        event_type: None,
        error: "test".into(),
        parked_at: chrono::Utc::now(),
    };
    refused(store.park(&p).await, "park");
    let rows: i64 = copy.query_row("SELECT COUNT(*) FROM relay_leases", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 0, "no lease in the new file either");
}

/// Review finding: a COMMIT that failed after its WAL frames were written
/// (an fsync error) was reported as "unavailable, retry", though the group
/// may be replayed from the WAL at the next open: a blind retry could apply
/// a command twice. Only the failures SQLite rolls back are definite.
#[test]
fn a_failed_commit_is_an_unknown_outcome_unless_sqlite_rolled_it_back() {
    let failure = |code: i32| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
    for code in [rusqlite::ffi::SQLITE_IOERR_FSYNC, rusqlite::ffi::SQLITE_IOERR_WRITE, rusqlite::ffi::SQLITE_CORRUPT] {
        assert!(matches!(commit_failure(failure(code)), StoreError::OutcomeUnknown(_)), "{code}");
    }
    for code in [rusqlite::ffi::SQLITE_BUSY, rusqlite::ffi::SQLITE_LOCKED, rusqlite::ffi::SQLITE_FULL] {
        assert!(matches!(commit_failure(failure(code)), StoreError::Unavailable(_)), "{code}");
    }
    // A commit vetoed (here by a hook) is rolled back: nothing stored, retry.
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open(&dir.path().join("w.db"));
    conn.commit_hook(Some(|| true));
    let a = Uuid::now_v7();
    let (_, results) = commit_group(&mut conn, job(a, 0, 1), |_| None, &HashMap::new());
    assert!(matches!(&results[0], Err(StoreError::Unavailable(m)) if m.contains("commit failed")), "{results:?}");
    conn.commit_hook(None::<fn() -> bool>);
    assert_eq!(count(&conn, a), 0);
}

/// Review finding: a panic inside a write closure killed the one writer
/// thread; every later write failed for the life of the process. Now the
/// caller gets an error, the transaction it left open is rolled back, and
/// the writer goes on.
#[tokio::test]
async fn a_panicking_write_fails_its_caller_and_the_writer_goes_on() {
    use crate::store::sqlite::SqliteStore;
    use crate::store::EventStore;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("p.db"), SqliteOptions::default()).await.unwrap();
    let insert = "INSERT INTO checkpoints (consumer, position, updated_at) VALUES ('c', 1, 'now')";
    // A panic inside a rusqlite transaction, and one after a BEGIN of its own.
    let e = store
        .write(move |c| -> Result<(), StoreError> {
            let tx = c.transaction().map_err(super::unavailable)?;
            tx.execute(insert, []).map_err(super::unavailable)?;
            panic!("boom in a transaction")
        })
        .await
        .expect_err("the panic is the caller's error");
    assert!(matches!(&e, StoreError::OutcomeUnknown(m) if m.contains("boom in a transaction")), "{e:?}");
    let e = store
        .write(move |c| -> Result<(), StoreError> {
            c.execute_batch("BEGIN").map_err(super::unavailable)?;
            c.execute(insert, []).map_err(super::unavailable)?;
            panic!("{}", String::from("boom after BEGIN"))
        })
        .await
        .expect_err("the panic is the caller's error");
    assert!(matches!(&e, StoreError::OutcomeUnknown(m) if m.contains("boom after BEGIN")), "{e:?}");
    // The writer thread still takes appends, and commits none of the rows
    // the panicking closures wrote.
    let a = Uuid::now_v7();
    let envelope = created(a);
    let appended = store.append(a, 0, vec![envelope]).await.expect("the writer thread is alive");
    assert_eq!(appended.version, 1);
    assert_eq!(store.load(a).await.unwrap().len(), 1);
    let checkpoints: i64 = store
        .read(|c| c.query_row("SELECT COUNT(*) FROM checkpoints", [], |r| r.get(0)).map_err(super::unavailable))
        .await
        .unwrap();
    assert_eq!(checkpoints, 0, "no row of a panicked write was committed");
}

/// Review finding: an append to a database SQLite opened read-only failed
/// as "unavailable" (SQLITE_READONLY), retried forever; the file is not
/// writable by this process, a configuration problem (`Unsupported`).
#[test]
fn an_append_sqlite_refuses_as_read_only_is_a_permanent_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro.db");
    drop(open(&path));
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let mut ro = Connection::open_with_flags(&path, flags).unwrap();
    let (_, results) = commit_group(&mut ro, job(Uuid::now_v7(), 0, 1), |_| None, &HashMap::new());
    match &results[..] {
        [Err(StoreError::Unsupported { what, .. })] => {
            assert!(what.contains("ro.db") && what.contains("not writable"), "{what}")
        }
        other => panic!("{other:?}"),
    }
    let moved = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY_DBMOVED), None);
    assert!(matches!(write_failure(&ro, moved), StoreError::Unavailable(_)), "a moved file stays Unavailable");
}
