//! The CLI's output conventions: data on stdout that a reader may stop
//! reading (`outboxd events | head -1`: exit 141, as SIGPIPE would end it,
//! no panic), stderr without colour codes when it is not a terminal, and
//! with `--log-format json` a final error line that is JSON too.

mod harness;

use harness::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Review finding: `outboxd events | head -1` panicked ("failed printing
/// to stdout: Broken pipe", exit 101, a backtrace) once `head` left.
#[test]
fn a_reader_that_stops_reading_ends_the_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let cfg = test_config("127.0.0.1:1", &db);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = open_store(&cfg).await;
        for _ in 0..100 {
            let id = uuid::Uuid::now_v7();
            store.append(id, 0, order_events(id, 0, 10)).await.unwrap();
        }
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .args(["--db", db.to_str().unwrap(), "events", "--limit", "1000"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with('{'), "{first}"); // the reader is dropped here: the pipe closes
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Review finding: log lines carried ANSI colour codes into files and
/// `docker logs` (every test set NO_COLOR, hiding it); with `--log-format
/// json` the final error was plain text in a JSON log.
#[test]
fn stderr_has_no_colour_codes_off_a_terminal_and_json_logs_end_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_outboxd"));
        c.args(args).env_remove("RUST_LOG").env_remove("NO_COLOR");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    // A daemon on a port it cannot take exits 2 before it touches anything
    // (walkthrough finding: it opened the store, started its actors and
    // took its leases first, and logged exit_code=1).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let env = [
        ("OUTBOX_STORE__PATH", db.to_str().unwrap()),
        ("OUTBOX_HTTP__LISTEN", addr.as_str()),
        ("OUTBOX_HTTP__ADMIN_LISTEN", "127.0.0.1:0"),
        ("OUTBOX_KAFKA__BROKERS", "127.0.0.1:1"),
    ];
    let out = run(&["run"], &env);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("cannot listen on http.listen = {addr}")), "{err}");
    assert!(!db.exists(), "the store was not opened: {err}");
    assert!(!err.contains('\x1b'), "no escape codes off a terminal: {err:?}");
    // A daemon that logs at info (stderr to a file, as under a supervisor).
    let log = dir.path().join("run.log");
    let api = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let env = [
        ("OUTBOX_STORE__PATH", db.to_str().unwrap()),
        ("OUTBOX_HTTP__LISTEN", api.as_str()),
        ("OUTBOX_HTTP__ADMIN_LISTEN", "127.0.0.1:0"),
        ("OUTBOX_KAFKA__BROKERS", "127.0.0.1:1"),
    ];
    let mut c = Command::new(env!("CARGO_BIN_EXE_outboxd"));
    c.arg("run").env_remove("RUST_LOG").env_remove("NO_COLOR").stderr(std::fs::File::create(&log).unwrap());
    let mut child = c.envs(env).spawn().unwrap();
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !text().contains("admin server listening") {
        assert!(std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none(), "{}", text());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0), "{}", text());
    let err = text();
    assert!(err.contains("INFO"), "it logged: {err}");
    assert!(!err.contains('\x1b'), "no escape codes off a terminal: {err:?}");
    let out = run(&["--log-format", "json", "run"], &[("OUTBOX_KAFKA__PARTITIONS", "x")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let last: serde_json::Value = serde_json::from_str(err.trim().lines().last().unwrap()).expect("a JSON line");
    assert_eq!(last["level"], "ERROR", "{last}");
    assert_eq!(last["exit_code"], 2, "{last}");
    assert!(last["message"].as_str().unwrap().contains("OUTBOX_KAFKA__PARTITIONS"), "{last}");
    // Argument errors too (walkthrough finding: they stayed plain text).
    let out = run(&["--log-format", "json", "order", "confirm", "nope"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let last: serde_json::Value = serde_json::from_str(err.trim()).expect("one JSON line");
    assert_eq!((last["level"].as_str(), last["exit_code"].as_i64()), (Some("ERROR"), Some(2)), "{last}");
    assert!(last["message"].as_str().unwrap().starts_with("invalid value 'nope' for '<ID>'"), "{last}");
    // A missing argument is one sentence (it read "...not provided:; --item").
    let out = run(&["order", "create", "--customer", "0190f0e0-0000-7000-8000-000000000001"], &[]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: the following required arguments were not provided: --item <ITEMS> (try '--help')"
    );
}

/// Walkthrough findings: `schema` on a new file said the schema was "up to
/// date" (it had created the store), and `events` stopped at its default
/// 100 without a word. Now `schema` says what it did and where, and a full
/// page says on stderr where the next one starts (stdout stays JSON lines).
#[test]
fn schema_says_what_it_did_and_a_full_events_page_names_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_outboxd")).arg("--db").arg(&db).args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        (String::from_utf8_lossy(&o.stdout).trim().to_string(), String::from_utf8_lossy(&o.stderr).trim().to_string())
    };
    let version = outboxd::store::sqlite::SCHEMA_VERSION;
    assert_eq!(run(&["schema"]).0, format!("created the sqlite store {} (schema version {version})", db.display()));
    assert_eq!(run(&["schema"]).0, format!("the sqlite store {} is at schema version {version}", db.display()));
    // A file of the version before: upgraded, and said so.
    let before = version - 1;
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(&format!(
            "ALTER TABLE dead_letter_queue DROP COLUMN last_letter_id; PRAGMA user_version = {before};"
        ))
        .unwrap();
    assert_eq!(
        run(&["schema"]).0,
        format!("upgraded the sqlite store {} from schema version {before} to {version}", db.display())
    );
    for _ in 0..3 {
        run(&["customer", "register", "--name", "Ada", "--email", "ada@example.com"]);
    }
    let (out, err) = run(&["events", "--limit", "2"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert_eq!(err, "--limit 2 reached; the next events: outboxd events --after 2");
    let (out, err) = run(&["events", "--after", "2", "--limit", "2"]);
    assert_eq!((out.lines().count(), err.as_str()), (1, ""), "the last page says nothing more");
    // Operator walkthrough: an empty `dlq list` printed nothing at all.
    let (out, err) = run(&["dlq", "list"]);
    assert_eq!((out.as_str(), err.as_str()), ("", "0 parked aggregates, 0 dead letters"));
}
