//! Buffers the CDC log rows of one write until `cdc$end_of_batch` and
//! releases them in order (pure).
//!
//! One conditional append is one CDC batch: rows with the same stream and
//! `cdc$time`, numbered by `cdc$batch_seq_no` (the static `version` update,
//! then one insert per event), the last one marked `cdc$end_of_batch`.
//! Scylla's documentation leaves the order of rows inside a batch
//! unspecified (the code uses the base table's clustering order), so:
//!
//! Guarantees:
//! - A batch is released only once its `cdc$end_of_batch` row arrived (or,
//!   defensively, when a row of another batch arrives or the batch exceeds
//!   `max_rows`; such a release is marked incomplete).
//! - Released rows are ordered by the aggregate sequence they carry, then by
//!   `cdc$batch_seq_no` (rows without a sequence first), so an aggregate's
//!   events go out in sequence order whatever numbering Scylla chose.
//! - While a batch is buffered, its stream's progress must not pass its
//!   `cdc$time`: [`BatchBuffer::pending`] tells the consumer which stream to
//!   hold (`LeaseCheckpointSaver::hold`), so a crash never skips buffered rows.

use scylla_cdc::consumer::CDCRow;
use uuid::Uuid;

use super::progress::StreamKey;

/// The rows of one CDC batch share their stream and `cdc$time`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BatchKey {
    pub stream: StreamKey,
    pub time: Uuid,
}

/// Where a CDC row sits in its batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowMeta {
    pub key: BatchKey,
    pub batch_seq_no: i32,
    pub end_of_batch: bool,
}

impl RowMeta {
    pub fn of(row: &CDCRow<'_>) -> RowMeta {
        RowMeta {
            key: BatchKey { stream: StreamKey::of(&row.stream_id), time: row.time },
            batch_seq_no: row.batch_seq_no,
            end_of_batch: row.end_of_batch,
        }
    }
}

/// Milliseconds since the epoch of a time-based UUID (`cdc$time`), rounded down.
pub fn timeuuid_ms(u: &Uuid) -> Option<i64> {
    let (secs, nanos) = u.get_timestamp()?.to_unix();
    Some(secs as i64 * 1_000 + i64::from(nanos / 1_000_000))
}

/// One released batch: its rows in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released<T> {
    pub key: BatchKey,
    pub rows: Vec<T>,
    /// False when released without its `cdc$end_of_batch` row.
    pub complete: bool,
}

/// The batch being assembled.
#[derive(Debug)]
pub struct BatchBuffer<T> {
    key: Option<BatchKey>,
    rows: Vec<((Option<i64>, i32), T)>,
    max_rows: usize,
}

impl<T> BatchBuffer<T> {
    pub fn new(max_rows: usize) -> BatchBuffer<T> {
        BatchBuffer { key: None, rows: Vec::new(), max_rows: max_rows.max(1) }
    }

    /// Adds a row (`sequence`: the aggregate sequence it carries, if any) and
    /// returns the batches it completes, oldest first (at most two: an
    /// unterminated previous batch and this row's own).
    pub fn push(&mut self, meta: RowMeta, sequence: Option<i64>, item: T) -> Vec<Released<T>> {
        let mut out = Vec::new();
        if self.key.as_ref().is_some_and(|k| *k != meta.key) {
            out.extend(self.take());
        }
        self.key = Some(meta.key);
        self.rows.push(((sequence, meta.batch_seq_no), item));
        if meta.end_of_batch {
            out.extend(self.release(true));
        } else if self.rows.len() >= self.max_rows {
            out.extend(self.take());
        }
        out
    }

    /// The batch still waiting for rows, if any.
    pub fn pending(&self) -> Option<&BatchKey> {
        self.key.as_ref()
    }

    /// Releases the waiting batch as incomplete.
    pub fn take(&mut self) -> Option<Released<T>> {
        self.release(false)
    }

    fn release(&mut self, complete: bool) -> Option<Released<T>> {
        let key = self.key.take()?;
        let mut rows = std::mem::take(&mut self.rows);
        rows.sort_by_key(|(k, _)| *k);
        Some(Released { key, rows: rows.into_iter().map(|(_, t)| t).collect(), complete })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::cdc::testkit::{cdc_row, static_row_columns};
    use scylla_cdc::consumer::OperationType;

    fn time(n: u128) -> Uuid {
        Uuid::from_u128(0x1234_5678_9abc_11ef_8000_0000_0000_0000 | n)
    }

    fn meta(stream: u8, t: u128, seq: i32, end: bool) -> RowMeta {
        RowMeta {
            key: BatchKey { stream: StreamKey(vec![stream; 16]), time: time(t) },
            batch_seq_no: seq,
            end_of_batch: end,
        }
    }

    #[test]
    fn an_append_of_n_events_is_released_once_in_sequence_order() {
        let mut b = BatchBuffer::new(1_000);
        // The static `version` row and three inserts, numbered out of order.
        assert!(b.push(meta(1, 1, 0, false), None, "version").is_empty());
        assert!(b.push(meta(1, 1, 1, false), Some(3), "e3").is_empty());
        assert!(b.push(meta(1, 1, 2, false), Some(1), "e1").is_empty());
        assert_eq!(b.pending(), Some(&meta(1, 1, 0, false).key));
        let out = b.push(meta(1, 1, 3, true), Some(2), "e2");
        assert_eq!(
            out,
            vec![Released { key: meta(1, 1, 0, true).key, rows: vec!["version", "e1", "e2", "e3"], complete: true }]
        );
        assert_eq!(b.pending(), None);
    }

    #[test]
    fn rows_without_a_sequence_keep_their_batch_order() {
        let mut b = BatchBuffer::new(1_000);
        b.push(meta(1, 1, 2, false), None, "b");
        let out = b.push(meta(1, 1, 1, true), None, "a");
        assert_eq!(out[0].rows, vec!["a", "b"]);
    }

    #[test]
    fn an_unterminated_batch_is_released_when_another_begins_or_it_grows_too_large() {
        let mut b = BatchBuffer::new(3);
        b.push(meta(1, 1, 0, false), None, "a0");
        let out = b.push(meta(1, 2, 0, true), None, "b0");
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].rows.clone(), out[0].complete), (vec!["a0"], false));
        assert_eq!((out[1].rows.clone(), out[1].complete), (vec!["b0"], true));
        // Same time on another stream is another batch.
        b.push(meta(1, 3, 0, false), None, "c0");
        assert_eq!(b.push(meta(2, 3, 0, true), None, "d0").len(), 2);
        // Too large.
        b.push(meta(1, 4, 0, false), None, "x");
        b.push(meta(1, 4, 1, false), None, "y");
        let out = b.push(meta(1, 4, 2, false), None, "z");
        assert_eq!((out.len(), out[0].complete, b.pending()), (1, false, None));
        assert_eq!(b.take(), None);
    }

    /// Real scylla-cdc rows (as its stream reader builds them from a page).
    #[test]
    fn metadata_comes_from_real_cdc_rows() {
        let stream = vec![7u8; 16];
        let t = time(42);
        let m = cdc_row(OperationType::RowUpdate, &stream, t, 0, false, static_row_columns(Uuid::nil(), 5), |r| {
            RowMeta::of(r)
        });
        assert_eq!(
            m,
            RowMeta {
                key: BatchKey { stream: StreamKey(stream.clone()), time: t },
                batch_seq_no: 0,
                end_of_batch: false
            }
        );
        let m = cdc_row(OperationType::RowInsert, &stream, t, 4, true, static_row_columns(Uuid::nil(), 5), |r| {
            RowMeta::of(r)
        });
        assert_eq!((m.batch_seq_no, m.end_of_batch), (4, true));
    }

    #[test]
    fn timeuuid_milliseconds() {
        let u = crate::relay::cdc::testkit::timeuuid_at(1_700_000_000_123, 4_567);
        assert_eq!(timeuuid_ms(&u), Some(1_700_000_000_123));
        assert_eq!(timeuuid_ms(&Uuid::now_v7()).map(|_| ()), Some(()), "v7 carries a time too");
        assert_eq!(timeuuid_ms(&Uuid::nil()), None);
    }
}
