//! A test hook that freezes the relay and its lease keeper together, as a
//! long GC pause or a stopped VM would, without stopping the process (a
//! SIGSTOPped process holding SQLite's write lock would block every other
//! process): the way to make a "zombie" leader in tests.
//!
//! Guarantee: inert unless armed; the daemon arms it only through the admin
//! route `POST /debug/pause/relay?ms=N`, which exists only with
//! `OUTBOXD_ENABLE_FAULT_INJECTION=1`. Every task that holds on it (the
//! relay loop, the exactly-once relay just before its commit, the relay
//! consumer's lease keeper) sleeps until the same instant; meanwhile nothing
//! is renewed, handled or checkpointed, and on resumption each finds out what
//! happened like a real zombie would (a newer epoch, a fenced producer).
//!
//! It also carries named crash points (`abort_at`, armed by the daemon from
//! `OUTBOXD_ABORT_AT=<point>` only with fault injection on): the process
//! aborts there, as a `kill -9` at that instant would, to test what the next
//! start finds.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default)]
pub struct PauseHook {
    until: Arc<Mutex<Option<Instant>>>,
    /// Set once at start-up: reading it costs no lock, so a crash point on
    /// the relay's hot path is free while unarmed.
    abort_at: Arc<OnceLock<String>>,
}

impl PauseHook {
    /// Arms the crash point `point` (see `crash_point`); once, at start-up
    /// (a later call is ignored).
    pub fn abort_at(&self, point: &str) {
        let _ = self.abort_at.set(point.to_string());
    }

    /// Aborts the process here when `point` is armed (a test's `kill -9`).
    pub fn crash_point(&self, point: &str) {
        if self.abort_at.get().map(String::as_str) == Some(point) {
            tracing::error!(point, "aborting at an armed crash point (fault injection)");
            std::process::abort();
        }
    }

    /// Freezes every holder for `d` from its next hold point on.
    pub fn pause_for(&self, d: Duration) {
        *self.until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + d);
    }

    /// Blocks the calling task (not the runtime) while a pause is armed; any
    /// number of tasks may hold on the same pause.
    pub async fn hold(&self) {
        let until = *self.until.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = until.filter(|t| *t > Instant::now()) {
            tracing::warn!(
                ms = t.saturating_duration_since(Instant::now()).as_millis() as u64,
                "relay loop paused (fault injection)"
            );
            tokio::time::sleep_until(t.into()).await;
            tracing::warn!("relay loop resumed after the injected pause");
        }
    }
}
