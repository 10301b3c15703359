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
    /// Starts watching `path`; `notify` is bumped (receivers woken) on every change.
    pub(super) fn start(path: &Path, notify: watch::Sender<i64>) -> Option<Watcher> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .ok()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::Builder::new()
            .name("sqlite-changes".into())
            .spawn(move || {
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
            })
            .ok()?;
        Some(Watcher { stop })
    }
}
