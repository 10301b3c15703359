//! The CLI and its store file: commands that are not creates never make
//! one, `--db` refused with the CQL store, rewinds the backend cannot do,
//! a path that cannot be created, a command group without its subcommand,
//! and read-only commands that never upgrade an older file: each one clear
//! line and exit 2, the store untouched.

mod harness;

use harness::cli_db::*;
use std::path::Path;
use std::process::Command;

/// Review finding: every order/customer command but `show` opened the store
/// for writing, so `confirm` on a mistyped `--db` created the file and its
/// directories (and then said the order does not exist). Only a create or
/// register makes a store.
#[test]
fn commands_that_are_not_creates_never_create_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo").join("s.db");
    let id = uuid::Uuid::now_v7().to_string();
    let commands: [&[&str]; 7] = [
        &["order", "confirm", &id],
        &["order", "update-items", &id, "--item", "A:1:1"],
        &["order", "update-items", &id, "--item", "A:1:1", "--currency", "EUR"],
        &["order", "ship", &id, "--tracking-number", "T", "--carrier", "DHL"],
        &["order", "deliver", &id, "--signature", "S"],
        &["order", "cancel", &id, "--reason", "r"],
        &["customer", "change-email", &id, "--email", "a@b.co"],
    ];
    for args in commands {
        let o = db_cli(&missing, args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("no store there") && err.lines().count() == 1, "{args:?}: {err}");
        assert!(!missing.parent().unwrap().exists(), "{args:?} created {}", missing.display());
    }
    // A create still makes the store where it is told to.
    let c = db_cli(&missing, &["customer", "register", "--name", "A", "--email", "a@b.co"]);
    assert!(c.status.success(), "{}", stderr(&c));
    assert!(missing.exists());
}

/// Review finding: `--db` with `store.backend = "cql"` was ignored without a
/// word (the command acted on the cluster). It is refused before anything
/// connects: one line, exit 2, no file created.
#[test]
fn db_is_refused_with_the_cql_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    for cmd in ["config", "schema", "events"] {
        let o = Command::new(env!("CARGO_BIN_EXE_outboxd"))
            .arg("--db")
            .arg(&db)
            .arg(cmd)
            .env("OUTBOX_STORE__BACKEND", "cql")
            // Nothing listens there: a command that connected would fail differently (exit 1).
            .env("OUTBOX_STORE__CQL__URI", "127.0.0.1:1")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {err}");
        assert!(
            err.starts_with("error: --db applies to the sqlite store only") && err.lines().count() == 1,
            "{cmd}: {err}"
        );
    }
    assert!(!db.exists());
}

/// Review findings: a rewind this backend's relay cannot carry out waited
/// for `--timeout`, then exit 1; negative numbers got clap's "unexpected
/// argument". Each is bad input: exit 2 at once, one line naming the flag.
#[test]
fn rewinds_this_backend_cannot_do_and_negative_numbers_are_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    assert!(db_cli(&db, &["schema"]).status.success());
    // Refused before any wait: a wait ends at --timeout with exit 1 and
    // another message, so exit 2 and this message say it never waited.
    let at = ["relay", "rewind", "--to-time", "2026-01-01T00:00:00Z", "--timeout", "20"];
    refused(&db, &at, 2, "--to-time does not apply to store.backend = \"sqlite\"");
    refused(&db, &["relay", "rewind", "--to-position", "-1"], 2, "--to-position -1: must be a feed position >= 0");
    refused(&db, &["events", "--after", "-5"], 2, "'--after <AFTER>': -5 is not in 0..");
    refused(
        &db,
        &["order", "confirm", &uuid::Uuid::now_v7().to_string(), "--expected-version", "-1"],
        2,
        "-1 is not in 0..",
    );
    // The CQL store's relay rewinds to a time: refused before any connection.
    let o = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .args(["relay", "rewind", "--to-position", "0", "--timeout", "20"])
        .env("OUTBOX_STORE__BACKEND", "cql")
        .env("OUTBOX_STORE__CQL__URI", "127.0.0.1:1")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err, "error: --to-position does not apply to store.backend = \"cql\" (its relay cannot rewind that way): use --to-time T");
}

/// Review finding: a store path that cannot be created (`/proc/nope/x.db`)
/// exited 1, as if the store were down; it is bad input, exit 2, one line
/// naming the path. (The store reports it as `StoreError::Unsupported`,
/// which the CLI maps to 2.)
#[test]
fn a_store_path_that_cannot_be_created_is_bad_input() {
    let o = db_cli(Path::new("/proc/nope/x.db"), &["schema"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("/proc/nope") && stderr(&o).lines().count() == 1, "{}", stderr(&o));
}

/// Review finding: a command group without its subcommand (`outboxd order`)
/// printed the whole help (15 lines) on stderr, and with `--log-format
/// json` its last line was not JSON: one line naming the subcommands now,
/// exit 2, with or without `OUTBOX_CONFIG`.
#[test]
fn a_command_group_without_its_subcommand_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    assert!(db_cli(&db, &["schema"]).status.success());
    refused(&db, &["order"], 2, "'outboxd order' requires a subcommand: create, update-items, confirm,");
    refused(&db, &["dlq"], 2, "'outboxd dlq' requires a subcommand: list, replay, discard (try 'outboxd dlq --help')");
    refused(&db, &[], 2, "'outboxd' requires a subcommand: schema, order,");
    let bare = Command::new(env!("CARGO_BIN_EXE_outboxd")).env_remove("OUTBOX_CONFIG").output().unwrap();
    assert_eq!((bare.status.code(), stderr(&bare).lines().count()), (Some(2), 1), "{}", stderr(&bare));
    let json = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .args(["--log-format", "json", "relay"])
        .env_remove("OUTBOX_CONFIG")
        .output()
        .unwrap();
    let line: serde_json::Value = serde_json::from_str(&stderr(&json)).expect("one JSON line");
    assert_eq!(line["exit_code"], 2);
    assert!(line["message"].as_str().unwrap().starts_with("'outboxd relay' requires a subcommand: rewind"), "{line}");
}

/// Review finding: every CLI command, the ones that only read too,
/// migrated the file: `outboxd events` of a newer build against a store
/// an older daemon still used upgraded it, and that daemon was refused at
/// its next start ("newer than this build"). A read-only command now
/// refuses an older file (exit 2, one line) and leaves its version alone;
/// `outboxd schema` upgrades it.
#[test]
fn a_command_that_only_reads_never_upgrades_the_store() {
    use outboxd::store::sqlite::schema::{MIGRATIONS, SCHEMA_VERSION};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("v4.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(())).unwrap();
        for (v, ddl) in MIGRATIONS.iter().filter(|(v, _)| *v < SCHEMA_VERSION) {
            c.execute_batch(ddl).unwrap();
            c.execute_batch(&format!("PRAGMA user_version = {v}")).unwrap();
        }
    }
    let version = || -> i64 {
        rusqlite::Connection::open(&db).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap()
    };
    assert_eq!(version(), SCHEMA_VERSION - 1);
    let id = uuid::Uuid::now_v7().to_string();
    let reads: [&[&str]; 6] = [
        &["events"],
        &["leases"],
        &["dlq", "list"],
        &["projections", "status"],
        &["order", "show", &id],
        &["customer", "show", &id],
    ];
    for args in reads {
        let o = db_cli(&db, args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("older than this build") && err.contains("outboxd schema"), "{args:?}: {err}");
        assert_eq!(version(), SCHEMA_VERSION - 1, "{args:?} upgraded the file");
    }
    assert!(db_cli(&db, &["schema"]).status.success());
    assert_eq!(version(), SCHEMA_VERSION);
    let o = db_cli(&db, &["events"]);
    assert!(o.status.success(), "{}", stderr(&o));
}
