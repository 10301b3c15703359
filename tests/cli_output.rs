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
    // A daemon that logs at info, then exits 2 on a port it cannot take.
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
    assert!(err.contains("INFO"), "it logged: {err}");
    assert!(!err.contains('\x1b'), "no escape codes off a terminal: {err:?}");
    let out = run(&["--log-format", "json", "run"], &[("OUTBOX_KAFKA__PARTITIONS", "x")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let last: serde_json::Value = serde_json::from_str(err.trim().lines().last().unwrap()).expect("a JSON line");
    assert_eq!(last["level"], "ERROR", "{last}");
    assert_eq!(last["exit_code"], 2, "{last}");
    assert!(last["message"].as_str().unwrap().contains("OUTBOX_KAFKA__PARTITIONS"), "{last}");
}
