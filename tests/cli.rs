//! The CLI as users run it: the order lifecycle, and bad input (invalid
//! email, zero quantity, unknown id, malformed arguments, a store file that
//! is not one or is newer) giving one clear line, a non-zero exit and an
//! unchanged store. The store file itself (`--db` with the CQL store, paths
//! that cannot be made, read-only commands): tests/cli_store.rs. Bad
//! configuration: tests/cli_config.rs.

mod harness;

use harness::cli_db::*;
use std::path::Path;

#[test]
fn order_lifecycle_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let o = db_cli(&db, &["schema"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(db_cli(&db, &["schema"]).status.success(), "schema is idempotent");
    let c = db_cli(
        &db,
        &["customer", "register", "--name", "Ada", "--email", "ada@example.com", "--phone", "+44 20 7946 0000"],
    );
    assert!(c.status.success(), "{}", stderr(&c));
    let customer = stdout(&c);
    let o =
        db_cli(&db, &["order", "create", "--customer", &customer, "--item", "BOOK-1:2:1999", "--item", "PEN:10:150"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o);
    for args in [
        vec!["order", "update-items", &id, "--item", "BOOK-1:3:1999"],
        vec!["order", "confirm", &id],
        vec!["order", "ship", &id, "--tracking-number", "TRK1", "--carrier", "DHL"],
        vec!["order", "deliver", &id, "--signature", "A. L."],
    ] {
        let o = db_cli(&db, &args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    }
    let show = db_cli(&db, &["order", "show", &id]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&show)).unwrap();
    assert_eq!(v["state"]["status"], "delivered");
    assert_eq!(v["version"], 5);
    assert_eq!(v["state"]["total"]["amount_minor"], 3 * 1999);
    assert_eq!(v["events"].as_array().unwrap().len(), 5);
    assert_eq!(events(&db), 6);
    // Pinned version: stale -> conflict exit 3.
    refused(&db, &["order", "cancel", &id, "--reason", "late", "--expected-version", "2"], 3, "conflict");
}

/// `--correlation-id` (docs/CLI.md, every command that writes) is stamped on
/// the events the command writes; without it each command gets its own; a
/// value that is not a UUID is bad input.
#[test]
fn correlation_id_is_stamped_on_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let corr = "0190f0e0-0000-7000-8000-00000000c0de";
    let c =
        db_cli(&db, &["customer", "register", "--name", "Ada", "--email", "ada@example.com", "--correlation-id", corr]);
    assert!(c.status.success(), "{}", stderr(&c));
    let customer = stdout(&c);
    let o = db_cli(&db, &["order", "create", "--customer", &customer, "--item", "A:1:100", "--correlation-id", corr]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o);
    assert!(db_cli(&db, &["order", "confirm", &id]).status.success());
    let o = db_cli(&db, &["events", "--after", "0"]);
    let seen: Vec<(String, String)> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            (
                v["envelope"]["event_type"].as_str().unwrap().to_string(),
                v["envelope"]["correlation_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!((seen[0].0.as_str(), seen[0].1.as_str()), ("CustomerRegistered", corr));
    assert_eq!((seen[1].0.as_str(), seen[1].1.as_str()), ("OrderCreated", corr));
    assert_eq!(seen[2].0, "OrderConfirmed");
    assert_ne!(seen[2].1, corr, "a command without the flag gets its own");
    refused(
        &db,
        &["order", "confirm", &id, "--correlation-id", "nope"],
        2,
        "invalid value 'nope' for '--correlation-id",
    );
}

#[test]
fn bad_input_is_one_clear_line_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    assert!(db_cli(&db, &["schema"]).status.success());
    let c = stdout(&db_cli(&db, &["customer", "register", "--name", "Ada", "--email", "ada@example.com"]));
    let order = stdout(&db_cli(&db, &["order", "create", "--customer", &c, "--item", "A:1:100"]));
    refused(&db, &["customer", "register", "--name", "X", "--email", "not-an-email"], 2, "invalid email address");
    refused(
        &db,
        &["customer", "register", "--name", "X", "--email", "x@y.co", "--phone", "12"],
        2,
        "invalid phone number",
    );
    refused(
        &db,
        &["order", "create", "--customer", &c, "--item", "BOOK:0:1999"],
        2,
        "quantity must be between 1 and 4294967295, got 0",
    );
    refused(&db, &["order", "create", "--customer", &c, "--item", "BOOK:-1:1999"], 2, "quantity");
    // Walkthrough finding: a refused create named the id it made up ("order
    // 01a2...: items[1]: ..."), as if it were stored, and the item by its
    // JSON path. It names the `--item` (or `--currency`) as given.
    for (args, line) in [
        (
            vec!["order", "create", "--customer", &c, "--item", "A:1:1", "--item", "A:2:1"],
            "error: --item \"A:2:1\": item `A` appears more than once",
        ),
        (
            vec!["order", "create", "--customer", &c, "--item", "A:1:1", "--currency", "XYZ"],
            "error: --currency: unknown currency \"XYZ\": not an ISO 4217 code",
        ),
        (vec!["customer", "register", "--name", " ", "--email", "a@b.co"], "error: name must not be empty"),
    ] {
        refused(&db, &args, 2, line);
        assert_eq!(stderr(&db_cli(&db, &args)), line);
    }
    // Ids as the API takes them (36 characters, hyphenated): the spellings
    // `Uuid::parse_str` would also take are refused, positional or flag.
    let bare = order.replace('-', "");
    let braced = format!("{{{order}}}");
    let urn = format!("urn:uuid:{c}");
    for args in [
        vec!["order", "confirm", bare.as_str()],
        vec!["order", "show", braced.as_str()],
        vec!["order", "create", "--customer", urn.as_str(), "--item", "A:1:1"],
        vec!["customer", "show", bare.as_str()],
    ] {
        refused(&db, &args, 2, "expected a UUID as 36 characters, 8-4-4-4-12 hex digits with hyphens");
    }
    assert!(db_cli(&db, &["order", "show", &order.to_uppercase()]).status.success(), "either case");
    refused(&db, &["order", "create", "--customer", &c, "--item", "BOOK:two:1999"], 2, "not a whole number");
    refused(&db, &["order", "create", "--customer", &c, "--item", "BOOK:1"], 2, "SKU:QUANTITY:UNIT_PRICE_MINOR");
    refused(
        &db,
        &["order", "create", "--customer", &c, "--item", "A:1:1", "--currency", "euro"],
        2,
        "invalid currency",
    );
    // A trailing newline (a shell's `$(cat file)` keeps none, a quoted one
    // does) is refused as the HTTP API refuses it, not trimmed away.
    refused(&db, &["customer", "register", "--name", "X", "--email", "x@y.co\n"], 2, "invalid email address");
    refused(&db, &["customer", "register", "--name", "X\n", "--email", "x@y.co"], 2, "name must not contain control");
    refused(&db, &["order", "cancel", &order, "--reason", "gone\n"], 2, "reason must not contain control");
    refused(&db, &["order", "confirm", "0190a3c2-0000-7000-8000-000000000000"], 2, "order does not exist");
    refused(&db, &["order", "show", "0190a3c2-0000-7000-8000-000000000000"], 2, "order does not exist");
    refused(
        &db,
        &["order", "ship", &order, "--tracking-number", "T", "--carrier", "DHL"],
        2,
        "cannot ship an order that is created",
    );
    refused(&db, &["order", "create", "--customer", &c, "--item", "A:1:1", "--id", &order], 2, "already exists");
    // Malformed arguments (clap): exit 2.
    refused(&db, &["order", "confirm", "not-a-uuid"], 2, "invalid value");
    refused(&db, &["order", "frobnicate"], 2, "unrecognized subcommand");
    refused(&db, &["order", "create", "--customer", &c], 2, "--item");
    refused(&db, &["bench", "append", "--raw-batch", "0"], 2, "--raw-batch");
    refused(&db, &["bench", "append", "--aggregates", "0"], 2, "--aggregates");
    refused(&db, &["bench", "http", "--clients", "0"], 2, "--clients");
    refused(&db, &["events", "--limit", "0"], 2, "--limit");
    refused(&db, &["dlq", "list", "--limit", "0"], 2, "--limit");
    refused(&db, &["relay", "rewind", "--to-position", "0", "--timeout", "0"], 2, "--timeout");
    refused(&db, &["frobnicate"], 2, "unrecognized subcommand 'frobnicate'");
    refused(
        &db,
        &["order", "create", "--customer", &c, "--item", "A:1:1", "--currency", "ZZZ"],
        2,
        "not an ISO 4217 code",
    );
    // Control characters are refused as by the HTTP API (terminal escapes reach consumers' logs).
    refused(
        &db,
        &["customer", "register", "--name", "X\u{1}Y", "--email", "x@y.co"],
        2,
        "name must not contain control",
    );
    refused(&db, &["order", "cancel", &order, "--reason", "bad\u{1b}[31m"], 2, "reason must not contain control");
    refused(&db, &["order", "confirm", &c], 2, "is a customer, not an order");
    // A store path naming some other file, or a store of a newer build: exit 2
    // (not the retryable 1), the file untouched.
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a database\n").unwrap();
    // `run` too (it exited 1: the store's error came wrapped in the daemon's).
    for cmd in ["events", "run"] {
        let o = db_cli(&text, &[cmd]);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {}", stderr(&o));
        assert!(stderr(&o).contains("is not a SQLite database"), "{cmd}: {}", stderr(&o));
        assert_eq!(std::fs::read_to_string(&text).unwrap(), "not a database\n");
        // A directory: exit 2 too (it was "store unavailable", the retryable 1).
        let o = db_cli(dir.path(), &[cmd]);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {}", stderr(&o));
        assert!(stderr(&o).contains("is a directory"), "{cmd}: {}", stderr(&o));
    }
    // Read-only commands on a path with no store: exit 2, nothing created.
    let missing = dir.path().join("typo").join("s.db");
    let some = uuid::Uuid::now_v7().to_string();
    let shows: [&[&str]; 2] = [&["order", "show", &some], &["customer", "show", &some]];
    // (`projections rebuild` created an empty store there and exited 0.)
    let read_only = [&["events"][..], &["leases"], &["dlq", "list"], &["projections", "status"]];
    let rebuild: [&[&str]; 1] = [&["projections", "rebuild", "--no-progress"]];
    for args in read_only.into_iter().chain(shows).chain(rebuild) {
        let o = db_cli(&missing, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("no store there"), "{args:?}: {}", stderr(&o));
    }
    assert!(!missing.parent().unwrap().exists(), "nothing created");
    let newer = dir.path().join("newer.db");
    assert!(db_cli(&newer, &["schema"]).status.success());
    rusqlite::Connection::open(&newer).unwrap().execute_batch("PRAGMA user_version = 99").unwrap();
    let o = db_cli(&newer, &["events"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("newer than this build"), "{}", stderr(&o));
    refused(&db, &["events", "--limit", "abc"], 2, "--limit");
    // (It parsed, then overflowed the deadline: a panic, exit 101.)
    refused(&db, &["relay", "rewind", "--to-position", "0", "--timeout", "10000000000000000000"], 2, "--timeout");
    // Over what the store reads at once: it listed 100000 without a word.
    refused(&db, &["dlq", "list", "--limit", "100001"], 2, "--limit");
    // A rate of 0 ran at 1 event/s without a word.
    refused(&db, &["bench", "relay", "--rate", "500,0"], 2, "--rate");
}

/// Review finding: `customer show` printed no events, though its help and
/// docs/CLI.md say "state and events" (as `order show` prints them).
#[test]
fn customer_show_prints_state_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    assert!(db_cli(&db, &["schema"]).status.success());
    let c = db_cli(&db, &["customer", "register", "--name", "Ada", "--email", "ada@example.com"]);
    assert!(c.status.success(), "{}", stderr(&c));
    let id = stdout(&c);
    let o = db_cli(&db, &["customer", "change-email", &id, "--email", "ada@example.org"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let show = db_cli(&db, &["customer", "show", &id]);
    assert!(show.status.success(), "{}", stderr(&show));
    let v: serde_json::Value = serde_json::from_str(&stdout(&show)).unwrap();
    assert_eq!(v["version"], 2);
    let events = v["events"].as_array().unwrap_or_else(|| panic!("no events: {v}"));
    let types: Vec<_> = events.iter().map(|e| e["event_type"].as_str().unwrap_or_default()).collect();
    assert_eq!(types, ["CustomerRegistered", "CustomerEmailChanged"], "{v}");
}

/// Creates a store with a customer and one order of `currency`; returns (customer, order).
fn store_with_order(db: &Path, currency: &str) -> (String, String) {
    assert!(db_cli(db, &["schema"]).status.success());
    let c = stdout(&db_cli(db, &["customer", "register", "--name", "Ada", "--email", "ada@example.com"]));
    let o = db_cli(db, &["order", "create", "--customer", &c, "--item", "A:1:100", "--currency", currency]);
    assert!(o.status.success(), "{}", stderr(&o));
    (c, stdout(&o))
}

fn order_total(db: &Path, id: &str) -> serde_json::Value {
    let show = db_cli(db, &["order", "show", id]);
    assert!(show.status.success(), "{}", stderr(&show));
    serde_json::from_str::<serde_json::Value>(&stdout(&show)).unwrap()["state"]["total"].clone()
}

/// Review finding: `order update-items` without `--currency` priced the new
/// items in EUR, silently switching a USD order to EUR. Without the flag the
/// order keeps its currency; with it, the flag's currency is used (as
/// `PUT /orders/{id}/items` takes the currency its items name).
#[test]
fn update_items_without_currency_keeps_the_orders_currency() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let (_, order) = store_with_order(&db, "USD");
    let o = db_cli(&db, &["order", "update-items", &order, "--item", "B:2:150"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(order_total(&db, &order), serde_json::json!({"amount_minor": 300, "currency": "USD"}));
    let o = db_cli(&db, &["order", "update-items", &order, "--item", "B:2:150", "--currency", "JPY"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(order_total(&db, &order), serde_json::json!({"amount_minor": 300, "currency": "JPY"}));
    // Without --currency, an order that does not exist is refused as before,
    // and bad items are refused before the order is read.
    let unknown = "0190a3c2-0000-7000-8000-000000000000";
    refused(&db, &["order", "update-items", unknown, "--item", "B:1:1"], 2, "order does not exist");
    refused(
        &db,
        &["order", "update-items", &order, "--item", "B:0:1"],
        2,
        "quantity must be between 1 and 4294967295, got 0",
    );
}

/// Review finding: `dlq discard --reason` counted bytes (`éé` passed as 4)
/// and took control characters that `POST /dlq/discard` refuses; both use
/// one rule now, and the flag is named.
#[test]
fn dlq_discard_reason_is_checked_as_the_http_api_checks_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    assert!(db_cli(&db, &["schema"]).status.success());
    let id = uuid::Uuid::now_v7().to_string();
    for reason in ["éé", "  ab  ", "fixed\u{1b}[31m upstream", "fixed upstream\n", "bell\u{7}bell"] {
        refused(&db, &["dlq", "discard", "--id", &id, "--reason", reason, "--timeout", "1"], 2, "--reason");
    }
}

/// Review finding: `events --limit` above 100000 was capped without a word;
/// it is refused like `dlq list --limit`.
#[test]
fn events_limit_above_the_store_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    assert!(db_cli(&db, &["schema"]).status.success());
    refused(&db, &["events", "--limit", "100001"], 2, "--limit");
    refused(&db, &["events", "--limit", "18446744073709551615"], 2, "--limit");
    assert!(db_cli(&db, &["events", "--limit", "100000"]).status.success());
}

/// Review finding: a negative `--expected-version` was taken and reported as
/// a version conflict (exit 3); it is bad input (exit 2) naming the flag.
#[test]
fn negative_expected_version_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let (c, order) = store_with_order(&db, "EUR");
    refused(&db, &["order", "confirm", &order, "--expected-version=-1"], 2, "--expected-version");
    refused(&db, &["order", "cancel", &order, "--reason", "r", "--expected-version=-5"], 2, "--expected-version");
    refused(
        &db,
        &["customer", "change-email", &c, "--email", "b@b.co", "--expected-version=-1"],
        2,
        "--expected-version",
    );
    // 0 and the current version are still taken.
    let o = db_cli(&db, &["order", "confirm", &order, "--expected-version", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = db_cli(&db, &["order", "create", "--customer", &c, "--item", "A:1:1", "--expected-version", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
}
