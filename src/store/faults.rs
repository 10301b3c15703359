//! A fault-injection seam for tests of long-running loops: makes the store's
//! reads fail for a while, as a store that is briefly unreachable does, or
//! the next few calls of one named operation (a relay bookkeeping write the
//! relay must not report as done when it failed, a read a resumed replay
//! must not take for "carried out already").
//!
//! Both backends check the named operations at the start of the
//! corresponding methods, before touching the file or the cluster (but
//! [`DLQ_INSERT_REPLY_LOST`], checked once the write is stored); only
//! SQLite fails its reads (the CQL store's seam is [`StoreFaults::named_only`]).
//!
//! Guarantee: inert unless armed; the daemon arms reads only through the
//! admin route `POST /debug/store?fail_reads_ms=N`, which exists only when
//! `OUTBOXD_ENABLE_FAULT_INJECTION=1` (and answers 404 on a store that does
//! not fail its reads); named operations only library tests arm.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::StoreError;

#[derive(Debug, Default)]
pub struct StoreFaults {
    fail_reads_until: Mutex<Option<Instant>>,
    fail_writes: Mutex<HashMap<&'static str, u32>>,
    /// The backend never calls [`StoreFaults::check_read`] (CQL).
    named_only: bool,
}

/// The operations [`StoreFaults::fail_next`] can fail (both backends, SQLite
/// and CQL, except [`WRITER_DIES`]: SQLite alone).
/// A relay checkpoint write, fenced or not.
pub const CHECKPOINT: &str = "checkpoint";
pub const DLQ_REMOVE: &str = "dlq_remove";
pub const UNPARK: &str = "unpark";
/// The read of an aggregate's held rows (a replay's or a discard's plan).
pub const AGGREGATE_ROWS: &str = "aggregate_rows";
/// The write of a relay request's outcome.
pub const REQUEST_FINISH: &str = "request_finish";
/// A dead-letter write is stored, then reported as failed with its outcome
/// unknown (`StoreError::OutcomeUnknown`: a commit or an LWT whose answer
/// was lost), so the caller retries a write that already happened.
pub const DLQ_INSERT_REPLY_LOST: &str = "dlq_insert_reply_lost";
/// The SQLite writer thread panics at its next append (its end: what
/// callers and the health check see of a writer that died).
pub const WRITER_DIES: &str = "writer_dies";

impl StoreFaults {
    /// The seam of a backend that fails the named operations only, never
    /// its reads (CQL): [`StoreFaults::fails_reads`] says so.
    pub fn named_only() -> StoreFaults {
        StoreFaults { named_only: true, ..StoreFaults::default() }
    }

    /// Whether arming [`StoreFaults::fail_reads_for`] fails this backend's reads.
    pub fn fails_reads(&self) -> bool {
        !self.named_only
    }

    /// Every read fails for `d` from now (a backend that [`StoreFaults::fails_reads`]).
    pub fn fail_reads_for(&self, d: Duration) {
        *self.fail_reads_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + d);
    }

    /// The next `n` calls of the operation `op` fail (before touching the
    /// file or the cluster).
    pub fn fail_next(&self, op: &'static str, n: u32) {
        self.fail_writes.lock().unwrap_or_else(|e| e.into_inner()).insert(op, n);
    }

    /// How many failures of `op` are still armed (tests check theirs fired).
    pub fn armed(&self, op: &'static str) -> u32 {
        self.fail_writes.lock().unwrap_or_else(|e| e.into_inner()).get(op).copied().unwrap_or(0)
    }

    /// Err if a failure of `op` is armed (and counts it).
    pub fn check_named(&self, op: &'static str) -> Result<(), StoreError> {
        let mut armed = self.fail_writes.lock().unwrap_or_else(|e| e.into_inner());
        match armed.get_mut(op) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Err(StoreError::Unavailable(format!("injected {op} failure (fault injection)")))
            }
            _ => Ok(()),
        }
    }

    /// [`StoreFaults::check_named`] of a write already stored: its error
    /// says the outcome is unknown.
    pub fn check_stored(&self, op: &'static str) -> Result<(), StoreError> {
        self.check_named(op).map_err(|e| StoreError::OutcomeUnknown(format!("{e}: stored, reply lost")))
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
