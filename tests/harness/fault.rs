//! Fault tools shared by the soak tests: kill -9 with the window of feed
//! positions the dead relay may have sent without confirming, a watcher that
//! proves the relay checkpoint never moves backwards, and which instance is
//! the active relay (read from its /metrics, as an operator would).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::check::Window;
use super::daemon::Daemon;
use super::http::try_request;
use super::metrics::Metrics;
use super::sqlite::{checkpoint, head};

/// The relay consumer name of a default configuration.
pub const RELAY: &str = "kafka-relay";

/// SIGKILL and reap: no shutdown path runs, the lease is not released.
pub fn kill9(d: &mut Daemon) {
    let _ = d.child.kill();
    let _ = d.child.wait();
}

/// What a relay that stops now may have sent without confirming: positions
/// after the persisted checkpoint up to the head (read after the kill, so
/// nothing the dead process read is missed).
pub fn unconfirmed_window(db: &Path, why: impl Into<String>) -> Window {
    Window::new(why, checkpoint(db, RELAY), head(db))
}

/// True when `d` answers /metrics and reports `relay_leader{consumer="kafka-relay"} 1`.
pub fn is_leader(d: &Daemon) -> bool {
    try_request(d.admin, "GET", "/metrics", &[], None)
        .ok()
        .filter(|r| r.status == 200)
        .map(|r| Metrics::parse(&r.text()).value("relay_leader", &[("consumer", RELAY)]) == 1.0)
        .unwrap_or(false)
}

/// Samples the relay checkpoint every few milliseconds in a thread.
pub struct CheckpointWatch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<(i64, i64)>>,
}

impl CheckpointWatch {
    pub fn start(db: &Path) -> CheckpointWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, db): (_, PathBuf) = (stop.clone(), db.to_path_buf());
        let thread = std::thread::spawn(move || {
            let (mut last, mut regressions) = (0, Vec::new());
            while !s.load(Ordering::Relaxed) {
                let cp = checkpoint(&db, RELAY);
                if cp < last {
                    regressions.push((last, cp));
                }
                last = last.max(cp);
                std::thread::sleep(Duration::from_millis(5));
            }
            regressions
        });
        CheckpointWatch { stop, thread }
    }

    /// Stops sampling; asserts the checkpoint never went backwards.
    pub fn assert_monotonic(self) {
        self.stop.store(true, Ordering::Relaxed);
        // Its reads panic on a store error (never taken for a checkpoint 0).
        let regressions = self.thread.join().expect("the checkpoint watcher panicked (its message is above)");
        assert!(regressions.is_empty(), "the relay checkpoint moved backwards: {regressions:?}");
    }
}
