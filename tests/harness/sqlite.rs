//! The SQLite store as an outside tool sees it: read-only connections that
//! never take the writer's lock.

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

pub fn checkpoint(db: &Path, consumer: &str) -> i64 {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.query_row("SELECT position FROM checkpoints WHERE consumer = ?1", [consumer], |r| r.get(0)).unwrap_or(0)
}

