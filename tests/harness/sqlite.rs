//! The SQLite store as an outside tool sees it: read-only connections that
//! never take the writer's lock, and rows a foreign tool writes.

use std::path::Path;

/// Events in the store, read through a read-only SQLite connection.
pub fn count_events(db: &Path) -> i64 {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.query_row("SELECT COUNT(*) FROM event_store", [], |r| r.get(0)).unwrap()
}

/// Every stored event id with its correlation id, in feed order.
pub fn stored_events(db: &Path) -> Vec<(String, String, String)> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut st = c.prepare("SELECT event_id, aggregate_id, correlation_id FROM event_store ORDER BY position").unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect()
}

/// `consumer`'s persisted checkpoint: 0 when it has none yet (no row).
/// Any other error panics: read as 0, it made every "unconfirmed since the
/// checkpoint" window start at 0 and explain every duplicate.
pub fn checkpoint(db: &Path, consumer: &str) -> i64 {
    use rusqlite::OptionalExtension;
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("open {} to read the checkpoint of {consumer}: {e}", db.display()));
    // A writer's lock (WAL recovery after a kill -9) is waited out, not an error.
    c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    c.query_row("SELECT position FROM checkpoints WHERE consumer = ?1", [consumer], |r| r.get(0))
        .optional()
        .unwrap_or_else(|e| panic!("read the checkpoint of {consumer} in {}: {e}", db.display()))
        .unwrap_or(0)
}

/// The highest feed position (0 when empty).
pub fn head(db: &Path) -> i64 {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.query_row("SELECT COALESCE(MAX(position), 0) FROM event_store", [], |r| r.get(0)).unwrap()
}

/// Waits until `consumer`'s persisted checkpoint reaches the head; returns it.
pub fn wait_caught_up(db: &Path, consumer: &str, timeout: std::time::Duration) -> i64 {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let (h, c) = (head(db), checkpoint(db, consumer));
        if h > 0 && c >= h {
            return h;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{consumer} not caught up after {timeout:?}: checkpoint {c}, head {h}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Runs one statement with the `sqlite3` command-line tool, as an operator
/// (or a foreign tool) would; panics with its stderr if it fails.
pub fn sqlite3(db: &Path, sql: &str) -> String {
    let out = std::process::Command::new("sqlite3")
        .arg("-cmd")
        .arg(".timeout 5000")
        .arg(db)
        .arg(sql)
        .output()
        .expect("the sqlite3 tool is installed (make deps installs it)");
    assert!(out.status.success(), "sqlite3 {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Writes event `sequence` of `aggregate` (`aggregate_type`: `order` or
/// `customer`) as a row no build can read (its payload is not JSON), as a
/// foreign tool might; returns its event id.
pub fn insert_unreadable(db: &Path, aggregate_type: &str, aggregate: uuid::Uuid, sequence: i64) -> uuid::Uuid {
    let event = uuid::Uuid::now_v7();
    let event_type = if aggregate_type == "customer" { "CustomerRegistered" } else { "OrderCreated" };
    rusqlite::Connection::open(db)
        .unwrap()
        .execute(
            "INSERT INTO event_store (event_id, aggregate_type, aggregate_id, sequence_number, event_type, event_version, payload, correlation_id, timestamp) \
             VALUES (?1, ?2, ?3, ?4, ?5, 1, '{not json', ?6, '2026-12-06T00:00:00.000Z')",
            (event.to_string(), aggregate_type, aggregate.to_string(), sequence, event_type, uuid::Uuid::now_v7().to_string()),
        )
        .unwrap();
    event
}

/// Copies event `sequence` of `from` as event `sequence` of `to` (a new
/// event id, the same type, version and time), its payload replaced by
/// `payload` when given (`Some("{not json")`: a row no build can read).
pub fn copy_event(db: &Path, from: uuid::Uuid, to: uuid::Uuid, sequence: i64, payload: Option<&str>) {
    let payload = payload.map_or("payload".to_string(), |p| format!("'{}'", p.replace('\'', "''")));
    sqlite3(
        db,
        &format!(
            "INSERT INTO event_store (event_id, aggregate_type, aggregate_id, sequence_number, event_type, event_version, payload, correlation_id, timestamp) \
             SELECT '{}', aggregate_type, '{to}', {sequence}, event_type, event_version, {payload}, correlation_id, timestamp FROM event_store WHERE aggregate_id = '{from}' AND sequence_number = {sequence}",
            uuid::Uuid::now_v7()
        ),
    );
}
