//! The checkpoint saver's side of an operator's rewind (`cdc::rewind`):
//! the progress lowered to the rewind time, or moved back into the earlier
//! generation in effect then, and written at once.
//!
//! Guarantees: written whole or reported as not done, with the state in
//! memory as before (rows a failed write left rewound only make a restart
//! publish their changes again, never skip any) but for its generation row,
//! which the next flush writes again (the failed write may have moved it
//! back to the earlier generation); fenced like every write;
//! into an earlier generation, the generation row is written before the
//! later generation's rows are deleted.

use super::{Flushed, LeaseCheckpointSaver, SAVE_BATCH_ROWS};
use crate::relay::cdc::progress::StreamKey;
use crate::store::StoreError;

impl LeaseCheckpointSaver {
    /// An operator's rewind to `to` (ms): streams past it and the floor go
    /// back to it ([`ProgressState::rewind`]), or, with `into`, the earlier
    /// generation in effect at `to` is current again from `to` and the
    /// current one's streams go ([`ProgressState::rewind_into`]); written at
    /// once. Only while no reader runs (one would save its progress over
    /// it). Returns how many streams went back (or went) and the write;
    /// unless that saved, the state in memory is as before (a failed write
    /// may have left some rows rewound: a restart then re-sends their
    /// changes after it, never skips), its generation row written again by
    /// the next flush ([`ProgressState::after_failed_rewind`]).
    pub async fn rewind(&self, to: i64, into: Option<i64>) -> Result<(usize, Flushed), StoreError> {
        let before = self.state.lock().unwrap().clone();
        let (moved, gone) = match into {
            None => (self.state.lock().unwrap().rewind(to), Vec::new()),
            Some(g) => {
                let gone = self.state.lock().unwrap().rewind_into(g, to);
                (gone.len(), gone)
            }
        };
        // The generation row moves back first: until the later generation's
        // rows are gone too, they still count for a reader started meanwhile
        // (it reads the earlier generation from `to`, then the later one from
        // those rows: the rewind is reported as not done).
        let mut res = self.flush().await;
        if matches!(res, Ok(Flushed::Saved(_))) && !gone.is_empty() {
            res = self.erase(&gone).await;
        }
        if !matches!(res, Ok(Flushed::Saved(_))) {
            // The generation row may already say the rewound generation and
            // floor: the next flush writes it again from `before`.
            *self.state.lock().unwrap() = before.after_failed_rewind();
        }
        res.map(|f| (moved, f))
    }

    /// Deletes the rows of `streams` (the later generation's, on a rewind
    /// into an earlier one), fenced like every write.
    async fn erase(&self, streams: &[StreamKey]) -> Result<Flushed, StoreError> {
        let _one = self.flushing.lock().await;
        if let Some(f) = self.fenced_outcome() {
            return Ok(f);
        }
        for chunk in streams.chunks(SAVE_BATCH_ROWS) {
            let batch = self.batch_of(&self.stmts.erase, chunk.len());
            let rows = chunk.iter().map(|s| (self.name.as_str(), s.0.as_slice()));
            let res = match self.epoch {
                Some(e) => self.session.batch(&batch, rows.map(|r| (r.0, r.1, e)).collect::<Vec<_>>()).await,
                None => self.session.batch(&batch, rows.collect::<Vec<_>>()).await,
            };
            if let Some(f) = self.write(res).await? {
                return Ok(f);
            }
        }
        Ok(Flushed::Saved(streams.len()))
    }
}
