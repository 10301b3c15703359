//! SQLite-only properties of the store suite (`tests/store_suite.rs`):
//! a reopened file finds every committed event, a subscriber wakes on
//! another connection's commit, the feed is commit order and pages, and two
//! instances on one file never both win an append.

use super::*;

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
