//! A test hook that freezes the relay loop, as a long GC pause or a stopped
//! VM would, without stopping the process (a SIGSTOPped process holding
//! SQLite's write lock would block every other process).
//!
//! Guarantee: inert unless armed; the daemon arms it only through the admin
//! route `POST /debug/pause/relay?ms=N`, which exists only with
//! `OUTBOXD_ENABLE_FAULT_INJECTION=1`. While paused the loop handles
//! nothing (no completions, no lease-loss signal, no checkpoint); when it
//! resumes it finds out what happened meanwhile like a real zombie would.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default)]
pub struct PauseHook {
    until: Arc<Mutex<Option<Instant>>>,
}

impl PauseHook {
    /// Freezes the relay loop for `d` from its next iteration on.
    pub fn pause_for(&self, d: Duration) {
        *self.until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + d);
    }

    /// Blocks the calling task (not the runtime) while a pause is armed.
    pub async fn hold(&self) {
        let until = self.until.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = until {
            tracing::warn!(
                ms = t.saturating_duration_since(Instant::now()).as_millis() as u64,
                "relay loop paused (fault injection)"
            );
            tokio::time::sleep_until(t.into()).await;
            tracing::warn!("relay loop resumed after the injected pause");
        }
    }
}
