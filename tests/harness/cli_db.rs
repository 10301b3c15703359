//! The CLI against one SQLite store file, as the CLI tests run it:
//! `outboxd --db FILE ARGS` with `RUST_LOG` unset, its trimmed output, and
//! the check of a refused command (its exit code, one line naming the
//! problem, the store's events unchanged).
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub fn db_cli(db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_outboxd")).arg("--db").arg(db).args(args).env_remove("RUST_LOG").output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

pub fn events(db: &Path) -> usize {
    let o = db_cli(db, &["events", "--after", "0", "--limit", "100000"]);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o).lines().count()
}

/// Asserts a refused command: exit `code`, one line on stderr containing `needle`, no new events.
pub fn refused(db: &Path, args: &[&str], code: i32, needle: &str) {
    let before = events(db);
    let o = db_cli(db, args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err:?} should mention {needle:?}");
    assert!(!err.contains("panicked"), "{err}");
    // Argument errors (clap's) too: one line, ending with the hint to try --help.
    assert!(err.starts_with("error: "), "{args:?}: {err:?}");
    assert_eq!(err.lines().count(), 1, "{args:?}: one line, got {err:?}");
    assert_eq!(events(db), before, "{args:?} changed the store");
}
