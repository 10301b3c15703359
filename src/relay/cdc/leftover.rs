//! The last CDC batch of a generation that never got its `cdc$end_of_batch`
//! row. scylla-cdc does not read a finished generation again, and drops each
//! stream group's consumer once the group read its generation to the end; a
//! batch still buffered then would be lost. The consumer leaves it here as it
//! is dropped, and the checkpoint saver has it handled ([`GenerationEnd`]) as
//! the next generation starts, before recording that generation.
//!
//! Guarantees:
//! - Handled before any row of the next generation: scylla-cdc calls the
//!   saver's `save_new_generation` once every reader of the finished
//!   generation returned, and starts the next readers only after it returns.
//! - Never lost: until the batch is handled, the new generation is not
//!   recorded and the stream's progress stays held before the batch, so a
//!   crash or a failed handling reads the old generation's tail again and
//!   leaves the batch here once more.
//! - Only the current reader run's batches count ([`Leftovers::take`]): a
//!   run stopped early (shutdown, watchdog restart, rewind) drops its
//!   consumers too, and their batches are read again by the next run.

use async_trait::async_trait;
use std::sync::Mutex;

use super::batch::Released;
use super::progress::StreamKey;
use super::CdcError;

/// What the checkpoint saver runs as a generation ends, before it records
/// the next one.
#[async_trait]
pub trait GenerationEnd: Send + Sync {
    /// Handles the batches reader run `run` left; returns their streams
    /// (their progress holds may go).
    async fn generation_ends(&self, run: u64) -> Result<Vec<StreamKey>, CdcError>;
}

/// Batches the consumers left unfinished, by reader run.
#[derive(Debug)]
pub struct Leftovers<T> {
    batches: Mutex<Vec<(u64, Released<T>)>>,
}

impl<T> Default for Leftovers<T> {
    fn default() -> Self {
        Leftovers { batches: Mutex::new(Vec::new()) }
    }
}

impl<T> Leftovers<T> {
    /// A consumer of reader run `run` ends with `batch` unfinished (batches
    /// of earlier runs go: they are read again).
    pub fn leave(&self, run: u64, batch: Released<T>) {
        let mut batches = self.batches.lock().unwrap();
        batches.retain(|(r, _)| *r >= run);
        batches.push((run, batch));
    }

    /// The batches of run `run`, in the order they were left; those of other
    /// (ended) runs are dropped: their runs stopped early, and the next run
    /// reads them again.
    pub fn take(&self, run: u64) -> Vec<Released<T>> {
        let all = std::mem::take(&mut *self.batches.lock().unwrap());
        all.into_iter().filter(|(r, _)| *r == run).map(|(_, b)| b).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::cdc::batch::BatchKey;

    fn batch(stream: u8, rows: Vec<&'static str>) -> Released<&'static str> {
        let key = BatchKey { stream: StreamKey(vec![stream; 16]), time: uuid::Uuid::from_u128(stream as u128) };
        Released { key, rows, complete: false }
    }

    #[test]
    fn only_the_current_runs_batches_are_taken_once_in_order() {
        let left = Leftovers::default();
        left.leave(1, batch(1, vec!["stopped run"]));
        left.leave(2, batch(2, vec!["a", "b"]));
        left.leave(1, batch(4, vec!["stopped run, dropped late"]));
        left.leave(2, batch(3, vec!["c"]));
        let taken = left.take(2);
        assert_eq!(taken, vec![batch(2, vec!["a", "b"]), batch(3, vec!["c"])]);
        assert!(left.take(2).is_empty(), "taken once");
        assert!(left.take(1).is_empty(), "an ended run's batch was dropped with the take");
    }
}
