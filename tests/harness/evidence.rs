//! Evidence a failed fault test leaves behind: its directory (store, daemon
//! logs) is kept when the test panics, and a stored event the topic lacks is
//! explained from the relay's own delivery log (`outboxd::relay::delivered`
//! at trace level: position, partition, offset the broker acknowledged)
//! compared with what the consumer read at that place.
//!
//! Guarantee: nothing here changes a verdict; it only says where to look.

use std::path::{Path, PathBuf};

use super::check::{StoredRow, Window};
use super::kafka::Record;

/// The `RUST_LOG` of a daemon whose deliveries may have to be explained, as
/// docs/OPERATIONS.md ("Delivery guarantee") shows it.
pub const DELIVERY_LOG: &str = "info,outboxd::relay::delivered=trace";

/// A temporary directory kept (and named on stderr, with what it holds)
/// when the test panics.
pub struct KeptOnFailure {
    dir: tempfile::TempDir,
    holds: &'static str,
}

/// A test's directory: its store and daemon logs.
pub fn kept_on_failure() -> KeptOnFailure {
    KeptOnFailure::new(tempfile::tempdir().unwrap(), "store, daemon logs")
}

impl KeptOnFailure {
    pub fn new(dir: tempfile::TempDir, holds: &'static str) -> KeptOnFailure {
        KeptOnFailure { dir, holds }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for KeptOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!("test failed: kept {} ({})", self.dir.path().display(), self.holds);
        }
    }
}

/// Why each of the first `missing` events is not among `records`, as far as
/// the daemon logs in `dir` tell: never acknowledged, or acknowledged at a
/// (topic, partition, offset) that holds another record or none.
pub fn explain_missing(dir: &Path, missing: &[StoredRow], records: &[Record]) -> String {
    let logs = daemon_logs(dir);
    let mut out = Vec::new();
    for row in missing.iter().take(5) {
        let acks: Vec<(String, i32, i64, String)> = logs
            .iter()
            .flat_map(|(file, text)| {
                text.lines()
                    .filter(|l| l.contains("outboxd::relay::delivered") && number(l, "position") == Some(row.position))
                    .filter_map(move |l| {
                        Some((word(l, "topic")?, number(l, "partition")? as i32, number(l, "offset")?, file.clone()))
                    })
            })
            .collect();
        if acks.is_empty() {
            out.push(format!("position {}: no delivery acknowledged in any daemon log", row.position));
        }
        for (topic, partition, offset, file) in acks {
            let same = |r: &&Record| r.topic == topic && r.partition == partition;
            let there: Vec<String> =
                records.iter().filter(same).filter(|r| r.offset == offset).map(|r| r.event_id()).collect();
            let lowest = records.iter().filter(same).map(|r| r.offset).min();
            out.push(format!(
                "position {} acknowledged at {topic} partition {partition} offset {offset} ({file}); the consumer read there: {}; lowest offset read on that partition: {lowest:?}",
                row.position,
                if there.is_empty() { "nothing".to_string() } else { there.join(", ") },
            ));
        }
    }
    out.join("\n")
}

/// A window per event a relay sent again because librdkafka reported it
/// delivered without an offset (`unverified delivery` in the daemon logs in
/// `dir`): the broker may have held it after all, so a second copy is
/// explained.
pub fn unverified_windows(dir: &Path) -> Vec<Window> {
    let mut out = Vec::new();
    for (_, text) in daemon_logs(dir) {
        for l in text.lines().filter(|l| l.contains("unverified delivery")) {
            if let Some(p) = number(l, "position") {
                out.push(Window::new("unverified delivery re-sent", p - 1, p));
            }
        }
    }
    out
}

fn daemon_logs(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "log")).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(&p).ok()?;
            Some((p.file_name()?.to_string_lossy().into_owned(), text))
        })
        .collect()
}

/// The text after ` name=` in a log line, up to the next space.
fn word(line: &str, name: &str) -> Option<String> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    line[at..].split(' ').next().map(str::to_string)
}

/// The integer after ` name=` in a log line.
fn number(line: &str, name: &str) -> Option<i64> {
    word(line, name)?.parse().ok()
}
