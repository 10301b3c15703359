//! Cross-process wake-up: a thread that checks `PRAGMA data_version` every
//! few milliseconds and wakes feed subscribers when another connection (this
//! process's writer, or another process: a standby instance, the CLI)
//! committed.
//!
//! Guarantee: a commit by any process is noticed within `CHANGE_POLL` plus
//! one query; the thread ends when the store is dropped. It only reads a
//! pragma on its own read-only connection (never opens and closes the file
//! repeatedly, which would drop the process's POSIX locks).

use rusqlite::Connection;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often another process's commits are looked for.
pub const CHANGE_POLL: Duration = Duration::from_millis(5);

#[derive(Default)]
pub(super) struct Watcher {
    stop: Arc<AtomicBool>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Watcher {
    /// Starts watching `path`; `notify` is bumped (receivers woken) on every
    /// change. The connection is opened on the watching thread (never on the
    /// async runtime that subscribes); if it cannot be opened the feed still
    /// sees this process's commits at once and others' at its poll, and a
    /// warning says so.
    pub(super) fn start(path: &Path, notify: watch::Sender<i64>) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let path = path.to_path_buf();
        let spawned = std::thread::Builder::new().name("sqlite-changes".into()).spawn(move || {
            let conn = match Connection::open_with_flags(
                &path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            ) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e,
                        "cannot watch the SQLite file for other processes' commits; the feed sees them at its poll interval");
                    return;
                }
            };
            let version = |c: &Connection| c.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0)).ok();
            let mut last = version(&conn);
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(CHANGE_POLL);
                let now = version(&conn);
                if now.is_some() && now != last {
                    last = now;
                    if notify.receiver_count() == 0 {
                        continue;
                    }
                    notify.send_modify(|_| {});
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e,
                "cannot start the SQLite change watcher; the feed sees other processes' commits at its poll interval");
        }
        Watcher { stop }
    }
}
