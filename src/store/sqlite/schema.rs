//! The SQLite schema: versioned DDL and the in-place upgrade.
//!
//! Guarantee: `migrate_conn` brings a file of any older version to
//! [`SCHEMA_VERSION`] one step at a time, each step in its own IMMEDIATE
//! transaction that re-reads the version under the write lock (two processes
//! opening the same file at once both end at the current version); a file of
//! a newer version is refused, never downgraded. A step runs again on a file
//! whose `user_version` was set back (its added columns are skipped when
//! present).

use rusqlite::Connection;

use super::unavailable;
use crate::store::StoreError;

/// Current schema version (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 6;

/// DDL of schema version 1; also shipped for `sqlite3` users in docs.
pub const SCHEMA_V1: &str = r#"
CREATE TABLE IF NOT EXISTS event_store (
    position        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT    NOT NULL UNIQUE,
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    sequence_number INTEGER NOT NULL CHECK (sequence_number > 0),
    event_type      TEXT    NOT NULL,
    event_version   INTEGER NOT NULL,
    payload         TEXT    NOT NULL,
    causation_id    TEXT,
    correlation_id  TEXT    NOT NULL,
    timestamp       TEXT    NOT NULL,
    UNIQUE (aggregate_id, sequence_number)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    consumer   TEXT PRIMARY KEY,
    position   INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letter_queue (
    id              TEXT PRIMARY KEY,
    position        INTEGER,
    event_id        TEXT NOT NULL UNIQUE,
    aggregate_id    TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    error_message   TEXT NOT NULL,
    failure_count   INTEGER NOT NULL,
    first_failed_at TEXT NOT NULL,
    last_failed_at  TEXT NOT NULL,
    created_at      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    aggregate_id   TEXT PRIMARY KEY,
    aggregate_type TEXT NOT NULL,
    version        INTEGER NOT NULL,
    state_schema   INTEGER NOT NULL,
    state          TEXT NOT NULL,
    created_at     TEXT NOT NULL
);
"#;

/// DDL of schema version 2: the read models maintained by `projection`
/// (applied on top of version 1; an existing v1 file is upgraded in place).
///
/// Every row is derived from events and can be rebuilt
/// (`outboxd projections rebuild`); `version` is the last applied sequence of
/// the aggregate (the idempotency key), `last_position` its feed position,
/// `state` the serialised aggregate (`state_schema` = `Aggregate::STATE_SCHEMA`).
pub const SCHEMA_V2: &str = r#"
CREATE TABLE IF NOT EXISTS order_read_model (
    order_id        TEXT    PRIMARY KEY,
    customer_id     TEXT,
    status          TEXT    NOT NULL,
    total_minor     INTEGER,
    currency        TEXT,
    item_count      INTEGER NOT NULL,
    items           TEXT    NOT NULL,
    tracking_number TEXT,
    carrier         TEXT,
    cancel_reason   TEXT,
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    last_position   INTEGER NOT NULL,
    state_schema    INTEGER NOT NULL,
    state           TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS orders_by_customer (
    customer_id TEXT    NOT NULL,
    order_id    TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    total_minor INTEGER,
    currency    TEXT,
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL,
    PRIMARY KEY (customer_id, order_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS customer_read_model (
    customer_id   TEXT    PRIMARY KEY,
    name          TEXT,
    email         TEXT,
    phone         TEXT,
    created_at    TEXT    NOT NULL,
    updated_at    TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    last_position INTEGER NOT NULL,
    state_schema  INTEGER NOT NULL,
    state         TEXT    NOT NULL
);
"#;

/// DDL of schema version 3: the relay's coordination tables (applied on top
/// of version 2): the W3C trace context of each event, leases (one active
/// relay per consumer name), parked aggregates, the discard audit trail and
/// operator requests.
pub const SCHEMA_V3: &str = r#"
ALTER TABLE event_store ADD COLUMN trace_parent TEXT;
ALTER TABLE event_store ADD COLUMN trace_state TEXT;
CREATE TABLE IF NOT EXISTS relay_leases (
    name       TEXT    PRIMARY KEY,
    holder     TEXT    NOT NULL,
    epoch      INTEGER NOT NULL,
    counter    INTEGER NOT NULL,
    ttl_ms     INTEGER NOT NULL,
    renewed_at TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS parked_aggregates (
    consumer        TEXT NOT NULL,
    aggregate_id    TEXT NOT NULL,
    aggregate_type  TEXT,
    position        INTEGER,
    sequence_number INTEGER,
    event_id        TEXT,
    event_type      TEXT,
    error           TEXT NOT NULL,
    parked_at       TEXT NOT NULL,
    PRIMARY KEY (consumer, aggregate_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS discarded_events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    consumer        TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    aggregate_id    TEXT NOT NULL,
    aggregate_type  TEXT,
    sequence_number INTEGER,
    position        INTEGER,
    event_type      TEXT,
    payload         TEXT,
    error           TEXT NOT NULL,
    reason          TEXT NOT NULL,
    discarded_at    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS relay_requests (
    id            TEXT PRIMARY KEY,
    consumer      TEXT NOT NULL,
    kind          TEXT NOT NULL,
    status        TEXT NOT NULL,
    requested_by  TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    claimed_epoch INTEGER,
    result        TEXT,
    finished_at   TEXT
);
CREATE INDEX IF NOT EXISTS relay_requests_open ON relay_requests (consumer, status);
"#;

/// DDL of schema version 4: `event_store.aggregate_id` only in the form
/// outboxd writes and queries it by (a lower-case hyphenated UUID). The feed
/// reads any UUID form, but every lookup of an aggregate's rows (a load, a
/// parked aggregate's replay) compares the text: a row written as
/// `0190ABCD-...` or `{...}` by another writer, or edited so by hand, would
/// be missed. Rows already stored are left as they are (a replay that does
/// not find its parked event refuses, naming the row).
pub const SCHEMA_V4: &str = r#"
CREATE TRIGGER IF NOT EXISTS event_store_aggregate_id_insert
BEFORE INSERT ON event_store
WHEN NEW.aggregate_id NOT GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]'
BEGIN
    SELECT RAISE(ABORT, 'event_store.aggregate_id must be a lower-case hyphenated UUID');
END;
CREATE TRIGGER IF NOT EXISTS event_store_aggregate_id_update
BEFORE UPDATE OF aggregate_id ON event_store
WHEN NEW.aggregate_id NOT GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]'
BEGIN
    SELECT RAISE(ABORT, 'event_store.aggregate_id must be a lower-case hyphenated UUID');
END;
"#;

/// DDL of schema version 5: each customer's number of orders in
/// `orders_by_customer`, kept by triggers on every insert, delete and move
/// of a row there (whoever writes it), and counted once from the rows a file
/// already has. `GET /customers/{id}/orders` reads its `total` here instead
/// of counting every order of the customer on every page.
pub const SCHEMA_V5: &str = r#"
CREATE TABLE IF NOT EXISTS customer_order_counts (
    customer_id TEXT    PRIMARY KEY,
    orders      INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS orders_by_customer_count_insert
AFTER INSERT ON orders_by_customer
BEGIN
    INSERT INTO customer_order_counts (customer_id, orders) VALUES (NEW.customer_id, 1)
    ON CONFLICT (customer_id) DO UPDATE SET orders = orders + 1;
END;
CREATE TRIGGER IF NOT EXISTS orders_by_customer_count_delete
AFTER DELETE ON orders_by_customer
BEGIN
    UPDATE customer_order_counts SET orders = orders - 1 WHERE customer_id = OLD.customer_id;
END;
CREATE TRIGGER IF NOT EXISTS orders_by_customer_count_move
AFTER UPDATE OF customer_id ON orders_by_customer
WHEN NEW.customer_id IS NOT OLD.customer_id
BEGIN
    UPDATE customer_order_counts SET orders = orders - 1 WHERE customer_id = OLD.customer_id;
    INSERT INTO customer_order_counts (customer_id, orders) VALUES (NEW.customer_id, 1)
    ON CONFLICT (customer_id) DO UPDATE SET orders = orders + 1;
END;
DELETE FROM customer_order_counts;
INSERT INTO customer_order_counts (customer_id, orders)
    SELECT customer_id, COUNT(*) FROM orders_by_customer GROUP BY customer_id;
"#;

/// DDL of schema version 6: the last dead letter added to a row
/// (`dlq::insert` counts a letter written again once).
pub const SCHEMA_V6: &str = r#"
ALTER TABLE dead_letter_queue ADD COLUMN last_letter_id TEXT;
"#;

/// Every migration step: (version it brings the file to, its DDL).
pub const MIGRATIONS: &[(i64, &str)] =
    &[(1, SCHEMA_V1), (2, SCHEMA_V2), (3, SCHEMA_V3), (4, SCHEMA_V4), (5, SCHEMA_V5), (6, SCHEMA_V6)];

/// The schema version of the file at `path`, read without writing to it
/// (a read-only connection: no migration, no journal mode change).
pub fn version_of(path: &std::path::Path) -> Result<i64, StoreError> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(unavailable)?;
    conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(unavailable)
}

pub(crate) fn migrate_conn(conn: &mut Connection) -> Result<(), StoreError> {
    let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(unavailable)?;
    if v > SCHEMA_VERSION {
        return Err(StoreError::Unsupported {
            backend: "sqlite",
            what: format!("store schema version {v}: newer than this build's ({SCHEMA_VERSION}); upgrade outboxd"),
        });
    }
    // One step per version, each in its own IMMEDIATE transaction that
    // re-reads the version under the write lock, so two processes opening
    // the same file at once both end at the current version.
    for &(target, ddl) in MIGRATIONS {
        if v >= target {
            continue;
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(unavailable)?;
        let now: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(unavailable)?;
        if now < target {
            tx.execute_batch(&pending_ddl(&tx, ddl)?).map_err(unavailable)?;
            tx.execute_batch(&format!("PRAGMA user_version = {target}")).map_err(unavailable)?;
        }
        tx.commit().map_err(unavailable)?;
    }
    Ok(())
}

/// `ddl` without its `ALTER TABLE t ADD COLUMN c ...` lines whose column is
/// already there (SQLite has no `ADD COLUMN IF NOT EXISTS`), so a step runs
/// again on a file whose `user_version` was set back (a rollback by hand, a
/// restored header) instead of failing on "duplicate column name". Every
/// other statement of a step is `IF NOT EXISTS` already.
fn pending_ddl(c: &Connection, ddl: &str) -> Result<String, StoreError> {
    let mut out = String::with_capacity(ddl.len());
    for line in ddl.lines() {
        if let Some((table, column)) = added_column(line) {
            let n: i64 = c
                .query_row("SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2", [table, column], |r| r.get(0))
                .map_err(unavailable)?;
            if n > 0 {
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

/// (table, column) of a one-line `ALTER TABLE t ADD COLUMN c ...;`.
fn added_column(line: &str) -> Option<(&str, &str)> {
    let rest = line.trim().strip_prefix("ALTER TABLE ")?;
    let (table, rest) = rest.split_once(' ')?;
    let column = rest.trim_start().strip_prefix("ADD COLUMN ")?.split_whitespace().next()?;
    Some((table, column.trim_end_matches(';')))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSERT: &str = "INSERT INTO event_store (event_id, aggregate_type, aggregate_id, sequence_number, event_type, \
        event_version, payload, correlation_id, timestamp) VALUES (?1, 'Order', ?2, 1, 'OrderCreated', 1, '{}', ?1, '2026-01-01T00:00:00Z')";

    fn insert(c: &Connection, event_id: &str, aggregate_id: &str) -> rusqlite::Result<usize> {
        c.execute(INSERT, [event_id, aggregate_id])
    }

    #[test]
    fn aggregate_ids_are_stored_only_in_the_form_they_are_looked_up_by() {
        let mut c = Connection::open_in_memory().unwrap();
        // A file of version 3 holding a row another writer stored upper-case.
        for (_, ddl) in &MIGRATIONS[..3] {
            c.execute_batch(ddl).unwrap();
        }
        c.execute_batch("PRAGMA user_version = 3").unwrap();
        let upper = "0190ABCD-0000-7000-8000-000000000001";
        insert(&c, "e0", upper).unwrap();
        migrate_conn(&mut c).unwrap();
        let kept: String = c.query_row("SELECT aggregate_id FROM event_store", [], |r| r.get(0)).unwrap();
        assert_eq!(kept, upper, "the upgrade rewrites no stored row");

        let canonical = "0190abcd-0000-7000-8000-000000000002";
        insert(&c, "e1", canonical).unwrap();
        for other in [
            "0190ABCD-0000-7000-8000-000000000003",
            "{0190abcd-0000-7000-8000-000000000003}",
            "0190abcd000070008000000000000003",
            " 0190abcd-0000-7000-8000-000000000003",
            "0190abcd-0000-7000-8000-00000000000g",
        ] {
            let e = insert(&c, "e2", other).unwrap_err().to_string();
            assert!(e.contains("lower-case hyphenated UUID"), "{other}: {e}");
            let e = c
                .execute("UPDATE event_store SET aggregate_id = ?1 WHERE event_id = 'e1'", [other])
                .unwrap_err()
                .to_string();
            assert!(e.contains("lower-case hyphenated UUID"), "{other}: {e}");
        }
        let n: i64 = c.query_row("SELECT COUNT(*) FROM event_store", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 2);
        // Other columns of a stored row can still be edited by hand.
        c.execute("UPDATE event_store SET payload = '{\"a\":1}' WHERE event_id = 'e0'", []).unwrap();

        // The rollback docs/OPERATIONS.md gives (as written there), then the upgrade again.
        let rollback = "DROP TRIGGER event_store_aggregate_id_insert;\nDROP TRIGGER event_store_aggregate_id_update; PRAGMA user_version = 3;";
        assert!(include_str!("../../../docs/OPERATIONS.md").contains(rollback), "the documented rollback");
        c.execute_batch(rollback).unwrap();
        insert(&c, "e3", "0190ABCD-0000-7000-8000-000000000004").unwrap();
        migrate_conn(&mut c).unwrap();
        assert!(insert(&c, "e4", "0190ABCD-0000-7000-8000-000000000005").is_err(), "version 4 again");
    }

    fn order_row(c: &Connection, customer: &str, order: &str) -> rusqlite::Result<usize> {
        c.execute(
            "INSERT INTO orders_by_customer (customer_id, order_id, status, created_at, updated_at)
             VALUES (?1, ?2, 'created', 't', 't')
             ON CONFLICT (customer_id, order_id) DO UPDATE SET status = 'confirmed'",
            [customer, order],
        )
    }

    fn order_counts(c: &Connection) -> Vec<(String, i64)> {
        let mut st =
            c.prepare("SELECT customer_id, orders FROM customer_order_counts WHERE orders <> 0 ORDER BY 1").unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
    }

    /// Review finding: `GET /customers/{id}/orders` counted all of a
    /// customer's rows for `total` on every page. Version 5 keeps the count
    /// by triggers: counted once on the upgrade, then moved by every insert
    /// (not by an upsert that updates), delete and change of customer; a
    /// step run again counts again, not twice; the documented rollback works.
    #[test]
    fn customer_order_counts_follow_the_rows_from_the_upgrade_on() {
        let mut c = Connection::open_in_memory().unwrap();
        for (_, ddl) in &MIGRATIONS[..4] {
            c.execute_batch(ddl).unwrap();
        }
        c.execute_batch("PRAGMA user_version = 4").unwrap();
        for o in ["o0", "o1", "o2"] {
            order_row(&c, "a", o).unwrap();
        }
        order_row(&c, "b", "o9").unwrap();
        migrate_conn(&mut c).unwrap();
        let s = |v: &[(&str, i64)]| v.iter().map(|(k, n)| (k.to_string(), *n)).collect::<Vec<_>>();
        assert_eq!(order_counts(&c), s(&[("a", 3), ("b", 1)]), "counted on the upgrade");
        order_row(&c, "b", "o10").unwrap();
        order_row(&c, "b", "o10").unwrap(); // an update, not a second order
        c.execute("DELETE FROM orders_by_customer WHERE order_id = 'o0'", []).unwrap();
        c.execute("UPDATE orders_by_customer SET customer_id = 'c' WHERE order_id = 'o1'", []).unwrap();
        c.execute("UPDATE orders_by_customer SET status = 'x', customer_id = 'a' WHERE order_id = 'o2'", []).unwrap();
        let want = s(&[("a", 1), ("b", 2), ("c", 1)]);
        assert_eq!(order_counts(&c), want);
        c.execute_batch("PRAGMA user_version = 4").unwrap();
        migrate_conn(&mut c).unwrap();
        assert_eq!(order_counts(&c), want, "a step run again counts again, not twice");

        let rollback = "DROP TRIGGER orders_by_customer_count_insert;\nDROP TRIGGER orders_by_customer_count_delete; DROP TRIGGER orders_by_customer_count_move;\nDROP TABLE customer_order_counts; PRAGMA user_version = 4;";
        assert!(include_str!("../../../docs/OPERATIONS.md").contains(rollback), "the documented rollback");
        c.execute_batch(rollback).unwrap();
        order_row(&c, "d", "o20").unwrap();
        migrate_conn(&mut c).unwrap();
        assert_eq!(order_counts(&c), s(&[("a", 1), ("b", 2), ("c", 1), ("d", 1)]), "upgraded again");
    }

    /// Version 6 adds `dead_letter_queue.last_letter_id`; the documented
    /// rollback drops it and a file rolled back upgrades again, its letters kept.
    #[test]
    fn the_last_letter_column_comes_and_goes() {
        let mut c = Connection::open_in_memory().unwrap();
        migrate_conn(&mut c).unwrap();
        let letter = |id: &str| {
            c.execute("INSERT INTO dead_letter_queue (id, event_id, aggregate_id, event_type, payload, error_message, failure_count, first_failed_at, last_failed_at, created_at) VALUES (?1, ?1, 'a', 't', '', 'e', 1, 't0', 't0', 't0')", [id]).unwrap();
        };
        let cols = |c: &Connection| -> Vec<String> {
            let mut st = c.prepare("SELECT name FROM pragma_table_info('dead_letter_queue')").unwrap();
            st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
        };
        letter("l1");
        assert!(cols(&c).contains(&"last_letter_id".to_string()));
        let rollback = "ALTER TABLE dead_letter_queue DROP COLUMN last_letter_id; PRAGMA user_version = 5;";
        assert!(include_str!("../../../docs/OPERATIONS.md").contains(rollback), "the documented rollback");
        c.execute_batch(rollback).unwrap();
        assert!(!cols(&c).contains(&"last_letter_id".to_string()));
        letter("l2");
        migrate_conn(&mut c).unwrap();
        assert!(cols(&c).contains(&"last_letter_id".to_string()), "upgraded again");
        let n: i64 = c.query_row("SELECT COUNT(*) FROM dead_letter_queue", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 2, "the letters kept");
    }

    /// Review finding: the v3 step's `ALTER TABLE ... ADD COLUMN` failed
    /// ("duplicate column name") on a file whose columns were there but
    /// whose `user_version` said 2, so the file could not be opened.
    #[test]
    fn a_step_runs_again_on_a_file_set_back_to_an_older_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut c = Connection::open(&path).unwrap();
        migrate_conn(&mut c).unwrap();
        insert(&c, "e0", "0190abcd-0000-7000-8000-000000000001").unwrap();
        c.execute("UPDATE event_store SET trace_parent = 'tp' WHERE event_id = 'e0'", []).unwrap();
        c.execute_batch("PRAGMA user_version = 2").unwrap();
        drop(c);
        let mut c = Connection::open(&path).unwrap();
        migrate_conn(&mut c).unwrap();
        let v: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let row: (String, Option<String>, i64) = c
            .query_row("SELECT event_id, trace_parent, (SELECT COUNT(*) FROM event_store) FROM event_store", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(row, ("e0".to_string(), Some("tp".to_string()), 1), "the stored row is intact");
        // Both v3 columns once each, and a v2 file still gets them.
        let cols: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('event_store') WHERE name IN ('trace_parent', 'trace_state')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(cols, 2);
        assert_eq!(
            added_column("ALTER TABLE event_store ADD COLUMN trace_state TEXT;"),
            Some(("event_store", "trace_state"))
        );
        assert_eq!(added_column("CREATE TABLE IF NOT EXISTS x (a TEXT);"), None);
    }
}
