//! A fault-injection seam for tests of long-running loops: makes the store's
//! reads fail for a while, as a store that is briefly unreachable does.
//!
//! Guarantee: inert unless armed; the daemon arms it only through the admin
//! route `POST /debug/store?fail_reads_ms=N`, which exists only when
//! `OUTBOXD_ENABLE_FAULT_INJECTION=1`. Writes are never affected.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::StoreError;

#[derive(Debug, Default)]
pub struct StoreFaults {
    fail_reads_until: Mutex<Option<Instant>>,
}

impl StoreFaults {
    /// Every read fails for `d` from now.
    pub fn fail_reads_for(&self, d: Duration) {
        *self.fail_reads_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + d);
    }

    /// Err while a read failure is armed.
    pub fn check_read(&self) -> Result<(), StoreError> {
        let until = *self.fail_reads_until.lock().unwrap_or_else(|e| e.into_inner());
        match until {
            Some(t) if Instant::now() < t => {
                Err(StoreError::Unavailable("injected read failure (fault injection)".into()))
            }
            _ => Ok(()),
        }
    }
}
