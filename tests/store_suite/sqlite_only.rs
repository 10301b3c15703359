//! SQLite-only properties of the store suite (`tests/store_suite.rs`):
//! a reopened file finds every committed event, a subscriber wakes on
//! another connection's commit, the feed is commit order and pages, two
//! instances on one file never both win an append, a path the process can't
//! write or create is refused at open as a configuration error (never an
//! outage), a payload that is not UTF-8 is an unreadable row, and a writer
//! thread that died fails the health probe.

use super::*;
use outboxd::store::feed::FeedRow;

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_reopen_finds_every_committed_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let mut expected = Vec::new();
    {
        let s = SqliteStore::open(&path, SqliteOptions::default()).await.unwrap();
        for _ in 0..20 {
            let id = Uuid::now_v7();
            let ev = order_events(id, 0, 3);
            s.append(id, 0, ev.clone()).await.unwrap();
            expected.extend(ev);
        }
        // A failed append in the same session leaves nothing behind.
        let id = Uuid::now_v7();
        let mut bad = order_events(id, 0, 2);
        bad[1].event_id = expected[0].event_id;
        assert!(s.append(id, 0, bad).await.is_err());
    }
    let s = SqliteStore::open(&path, SqliteOptions::default()).await.unwrap();
    let feed = s.read_feed(0, 1000).await.unwrap();
    assert_eq!(feed.iter().map(|e| e.envelope().unwrap()).collect::<Vec<_>>(), expected);
    let positions: Vec<i64> = feed.iter().map(|e| e.position()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(s.head_position().await.unwrap(), *positions.last().unwrap());
}

/// A commit through another connection to the same file (another process:
/// a standby instance, the CLI) wakes this store's feed subscriber, not only
/// its own appends.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_subscriber_wakes_on_another_connections_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let ours = SqliteStore::open(&path, SqliteOptions::default()).await.unwrap();
    let theirs = SqliteStore::open(&path, SqliteOptions::default()).await.unwrap();
    let mut rx = ours.subscribe().expect("sqlite notifies commits");
    rx.borrow_and_update();
    // A commit every 200 ms (the first may land before the watcher's first
    // reading) until one wakes the subscriber, for at most 10 s.
    let woken = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let id = Uuid::now_v7();
            theirs.append(id, 0, order_events(id, 0, 1)).await.unwrap();
            if tokio::time::timeout(std::time::Duration::from_millis(200), rx.changed()).await.is_ok() {
                return;
            }
        }
    });
    woken.await.expect("no wake-up for another connection's commits");
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_feed_is_commit_order_and_pages() {
    let (s, _g) = sqlite().await.unwrap();
    let mut rx = s.subscribe().expect("sqlite notifies appends");
    let mut all = Vec::new();
    for _ in 0..10 {
        let id = Uuid::now_v7();
        let ev = order_events(id, 0, 2);
        s.append(id, 0, ev.clone()).await.unwrap();
        all.extend(ev);
    }
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), s.head_position().await.unwrap());
    let mut after = 0;
    let mut got = Vec::new();
    loop {
        let page = s.read_feed(after, 3).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().unwrap().position();
        got.extend(page.into_iter().map(|e| e.envelope().unwrap()));
    }
    assert_eq!(got, all);
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_two_instances_on_one_file_never_both_win() {
    // Two store instances = two writer threads/connections, like two processes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let a = SqliteStore::open(&path, SqliteOptions::default()).await.unwrap();
    let b = SqliteStore::open(&path, SqliteOptions::default()).await.unwrap();
    let id = Uuid::now_v7();
    for v in 0..30 {
        let (ra, rb) = tokio::join!(a.append(id, v, order_events(id, v, 1)), b.append(id, v, order_events(id, v, 1)));
        assert!(ra.is_ok() ^ rb.is_ok(), "version {v}: exactly one instance wins ({ra:?} / {rb:?})");
    }
    let seqs: Vec<i64> = a.load(id).await.unwrap().iter().map(|e| e.sequence).collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
}

/// `open` refused `path` as a configuration problem naming it (permanent:
/// the CLI exits 2), not as an outage to retry.
fn assert_refused(res: Result<std::sync::Arc<SqliteStore>, StoreError>, path: &std::path::Path, why: &str) {
    match res {
        Err(StoreError::Unsupported { what, .. }) => {
            assert!(what.contains(&path.display().to_string()), "{why}: names the path: {what}");
            assert!(what.contains("store.path"), "{why}: names the setting: {what}");
        }
        Err(e) => panic!("{why}: a permanent error expected, got {e:?}"),
        Ok(_) => panic!("{why}: opened"),
    }
}

/// Review finding: a database file this process may not write (a restored
/// backup owned by root, mode 0444) was opened read-only by SQLite without
/// a word; every write then failed as "unavailable", retried forever.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_a_file_this_process_cannot_write_is_refused_at_open() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    // A current store with one event, written by a connection of its own
    // (a store opened in this process would share its descriptor with the
    // next open of the file: SQLite reuses a closed connection's).
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL").unwrap();
        for (_, ddl) in outboxd::store::sqlite::schema::MIGRATIONS {
            c.execute_batch(ddl).unwrap();
        }
        c.execute_batch(&format!("PRAGMA user_version = {}", outboxd::store::sqlite::SCHEMA_VERSION)).unwrap();
        insert_raw(&c, Uuid::now_v7(), b"{}");
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    if std::fs::OpenOptions::new().write(true).open(&path).is_ok() {
        crate::harness::skipped(true, "sqlite_a_file_this_process_cannot_write_is_refused_at_open: a 0444 file is writable here (running as root?)");
        return;
    }
    assert_refused(SqliteStore::open(&path, SqliteOptions::default()).await, &path, "a 0444 file");
    // Its directory read-only too (no journal can be created there).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    let res = SqliteStore::open(&path, SqliteOptions::default()).await;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_refused(res, &path, "a 0444 file in a 0555 directory");
    // Writable again: it opens, every event still there.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let s = SqliteStore::open(&path, SqliteOptions::default()).await.unwrap();
    assert!(matches!(&s.read_feed(0, 10).await.unwrap()[..], [FeedRow::Event(_)]));
}

/// Inserts one event row of `aggregate` with `payload` as a BLOB, as
/// another writer would; returns its event id.
fn insert_raw(c: &rusqlite::Connection, aggregate: Uuid, payload: &[u8]) -> String {
    let event_id = Uuid::now_v7().to_string();
    c.execute(
        "INSERT INTO event_store (event_id, aggregate_type, aggregate_id, sequence_number, event_type, event_version, payload, correlation_id, timestamp)
         VALUES (?1, 'order', ?2, 1, 'OrderCreated', 1, ?3, ?1, '2026-01-01T00:00:00.000Z')",
        rusqlite::params![event_id, aggregate.to_string(), payload],
    )
    .unwrap();
    event_id
}

/// Review finding: a path whose directory cannot be created, or that SQLite
/// cannot open at all, was an outage ("unavailable"), retried forever.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_a_path_that_cannot_be_created_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SqliteOptions::default;
    // A directory nobody can create (not even root).
    let under_proc = std::path::Path::new("/proc/outboxd-nope/x.db");
    assert_refused(
        SqliteStore::open(under_proc, opts()).await,
        under_proc.parent().unwrap(),
        "a directory under /proc",
    );
    // A regular file where the directory should be.
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let under_file = file.join("x.db");
    assert_refused(SqliteStore::open(&under_file, opts()).await, &file, "a file in the way");
    // The directory is there, the file can't be opened (SQLITE_CANTOPEN): a name too long.
    let long = dir.path().join(format!("{}.db", "x".repeat(300)));
    assert_refused(SqliteStore::open(&long, opts()).await, &long, "a name too long");
    assert!(!long.exists() && std::fs::read_dir(dir.path()).unwrap().count() == 1, "nothing was created");
}

/// Review finding: a BLOB payload that is not UTF-8 (another writer's row)
/// was decoded lossily (U+FFFD) and published as an event, not byte for
/// byte; it is an unreadable row (the relay parks its aggregate).
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_a_payload_that_is_not_utf8_is_an_unreadable_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let s = SqliteStore::open(&path, SqliteOptions::default()).await.unwrap();
    let (good, bad) = (Uuid::now_v7(), Uuid::now_v7());
    s.append(good, 0, order_events(good, 0, 1)).await.unwrap();
    let c = rusqlite::Connection::open(&path).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    let event_id = insert_raw(&c, bad, b"{\"a\":\"\x80\xff\"}");
    drop(c);
    let feed = s.read_feed(0, 10).await.unwrap();
    assert_eq!(feed.len(), 2);
    assert!(matches!(&feed[0], FeedRow::Event(_)), "{:?}", feed[0]);
    match &feed[1] {
        FeedRow::Unreadable(u) => {
            assert!(u.error.contains("payload") && u.error.contains("UTF-8"), "{}", u.error);
            assert_eq!(&*u.aggregate_key, bad.to_string().as_str());
            assert_eq!((u.sequence, u.event_id.as_deref()), (Some(1), Some(event_id.as_str())));
        }
        other => panic!("published as an event: {other:?}"),
    }
}

/// Review finding: a writer thread that died (a panic on it) left every
/// write failing while the health probe, which reads, still said "up".
/// The append it took is answered `OutcomeUnknown` (it may have committed
/// before the thread died), as is one queued behind it; later writes are
/// refused, reads go on, and the probe fails naming the writer.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_a_dead_writer_thread_fails_the_probe() {
    use outboxd::store::faults::WRITER_DIES;
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path().join("store.db"), SqliteOptions::default()).await.unwrap();
    let id = Uuid::now_v7();
    s.append(id, 0, order_events(id, 0, 1)).await.unwrap();
    assert_eq!(s.probe().await.unwrap().head, Some(1), "the control: a live writer passes the probe");
    s.faults().unwrap().fail_next(WRITER_DIES, 1);
    let other = Uuid::now_v7();
    let died = s.append(other, 0, order_events(other, 0, 1)).await;
    assert!(matches!(died, Err(StoreError::OutcomeUnknown(_))), "{died:?}");
    // Refused, or (sent while the dying thread still held its queue)
    // dropped unanswered with the queue: never stored, but unknown to it.
    let later = s.append(other, 0, order_events(other, 0, 1)).await;
    assert!(
        matches!(&later, Err(StoreError::Unavailable(m) | StoreError::OutcomeUnknown(m)) if m.contains("writer thread")),
        "{later:?}"
    );
    assert_eq!(s.load(other).await.unwrap().len(), 0, "nothing of the dead writer's appends stored");
    assert_eq!(s.load(id).await.unwrap().len(), 1, "reads go on");
    let probe = s.probe().await;
    assert!(matches!(&probe, Err(StoreError::Unavailable(m)) if m.contains("writer thread has stopped")), "{probe:?}");
}
