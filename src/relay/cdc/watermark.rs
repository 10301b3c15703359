//! Exactly-once on the CDC path (issue 13.4): per CDC stream, the watermark
//! of the last CDC batch with a published row, and the skip test after a
//! restart (pure).
//!
//! scylla-cdc's own progress cannot join a Kafka transaction, so the relay
//! puts [`CdcWatermarks`] (JSON) on its progress topic inside every
//! transaction; after a restart the reader re-reads from scylla-cdc's saved
//! progress (older) and [`already_published`] skips every row of a batch
//! the committed watermark of its stream says was published whole.
//!
//! A batch (one append: the rows of a stream with one `cdc$time`) goes out
//! in its aggregate's sequence order, not by `cdc$batch_seq_no`
//! (`BatchBuffer`), so a transaction that ends within a batch has published
//! some of its rows, not a prefix of its numbering. The watermark is
//! therefore a batch position: a batch is published when every row of it
//! was, and every batch of the stream before the last one with a published
//! row was (a stream's batches go out one after another, in log order).
//!
//! Guarantees:
//! - Order is the log's: `cdc$time` compared exactly as Scylla orders the
//!   timeuuid clustering column (timestamp, then the low 8 bytes as signed
//!   bytes: Cassandra's legacy order, which Scylla keeps). A row is skipped
//!   only if its batch is before the watermark's batch in the same stream,
//!   or is that batch, recorded published whole ([`CdcWatermarks::record_batch`])
//!   and numbered at most its highest recorded `cdc$batch_seq_no`. The rows
//!   of a batch published in part ([`CdcWatermarks::record`] only) all go
//!   out again after a restart, the published ones twice (at-least-once for
//!   that batch, never a skip).
//! - A watermark only moves forward ([`CdcWatermarks::record`]).
//! - Bounded: one entry per stream. Generations are read one after another
//!   (scylla-cdc finishes every stream of a generation before it starts the
//!   next, and writes the new generation to its progress before reading it),
//!   so the first row recorded for a newer generation drops every entry of
//!   the older ones: they can never be read again.
//! - A row of a generation older than the newest recorded one counts as
//!   published (that generation was finished before the newer one began).

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use uuid::Uuid;

use super::progress::StreamKey;

/// Position of a row in its stream, in Scylla's clustering order.
pub fn log_order(time: &Uuid, batch_seq_no: i32) -> (u64, u64, i32) {
    let b = time.as_bytes();
    let msb = u64::from(b[6] & 0x0f) << 56
        | u64::from(b[7]) << 48
        | u64::from(b[4]) << 40
        | u64::from(b[5]) << 32
        | u64::from(b[0]) << 24
        | u64::from(b[1]) << 16
        | u64::from(b[2]) << 8
        | u64::from(b[3]);
    let lsb = u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]) ^ 0x8080_8080_8080_8080;
    (msb, lsb, batch_seq_no)
}

/// Position of a CDC batch in its stream, in Scylla's clustering order.
fn batch_order(time: &Uuid) -> (u64, u64) {
    let (msb, lsb, _) = log_order(time, 0);
    (msb, lsb)
}

/// The last CDC batch of one stream with a published row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// Generation of the stream (ms since the epoch).
    pub generation: i64,
    /// `cdc$time` of the batch.
    pub time: Uuid,
    /// Highest `cdc$batch_seq_no` of its published rows.
    pub batch_seq_no: i32,
    /// Every row of the batch was published (absent: no, its rows go out
    /// again).
    #[serde(default)]
    pub whole: bool,
}

/// Per stream (lower-case hex id), the last batch with a published row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CdcWatermarks {
    pub streams: BTreeMap<String, Mark>,
}

impl CdcWatermarks {
    fn newest_generation(&self) -> Option<i64> {
        self.streams.values().map(|m| m.generation).max()
    }

    /// The row was published; its batch may still have rows to go (they go
    /// out in sequence order, not by `cdc$batch_seq_no`), so it is not
    /// published yet, only every batch of the stream before it. Keeps the
    /// later of the old and new watermark; a newer generation drops the
    /// entries of the older ones.
    pub fn record(&mut self, stream: &StreamKey, generation: i64, time: Uuid, batch_seq_no: i32) {
        self.put(stream, Mark { generation, time, batch_seq_no, whole: false });
    }

    /// Every row of the batch at `time` was published, the highest numbered
    /// `batch_seq_no`: a restart skips the batch (see [`CdcWatermarks::record`]).
    pub fn record_batch(&mut self, stream: &StreamKey, generation: i64, time: Uuid, batch_seq_no: i32) {
        self.put(stream, Mark { generation, time, batch_seq_no, whole: true });
    }

    fn put(&mut self, stream: &StreamKey, mark: Mark) {
        if self.newest_generation().is_some_and(|g| mark.generation < g) {
            return; // a finished generation: nothing to keep
        }
        if self.newest_generation().is_some_and(|g| mark.generation > g) {
            self.streams.clear();
        }
        let entry = self.streams.entry(stream.hex()).or_insert(mark);
        match batch_order(&mark.time).cmp(&batch_order(&entry.time)) {
            Ordering::Greater => *entry = mark,
            Ordering::Equal => {
                entry.batch_seq_no = entry.batch_seq_no.max(mark.batch_seq_no);
                entry.whole |= mark.whole;
            }
            Ordering::Less => {}
        }
    }

    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("watermarks always serialise")
    }

    pub fn from_json(s: &str) -> Result<CdcWatermarks, serde_json::Error> {
        serde_json::from_str(s)
    }
}

/// True when the row (`stream`, `generation`, `time`, `batch_seq_no`) was
/// published in a committed transaction together with every row of its
/// batch: the batch is before the watermark's, or is that batch, recorded
/// published whole (and the row numbered at most its highest recorded one).
pub fn already_published(
    watermarks: &CdcWatermarks,
    stream: &StreamKey,
    generation: i64,
    time: Uuid,
    batch_seq_no: i32,
) -> bool {
    if watermarks.newest_generation().is_some_and(|g| generation < g) {
        return true;
    }
    match watermarks.streams.get(&stream.hex()) {
        Some(m) if m.generation == generation => match batch_order(&time).cmp(&batch_order(&m.time)) {
            Ordering::Less => true,
            Ordering::Equal => m.whole && batch_seq_no <= m.batch_seq_no,
            Ordering::Greater => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::cdc::testkit::timeuuid_at;

    fn s(b: u8) -> StreamKey {
        StreamKey(vec![b; 16])
    }

    #[test]
    fn rows_at_or_below_the_watermark_are_skipped_others_not() {
        let mut w = CdcWatermarks::default();
        let t = timeuuid_at(1_000, 0);
        w.record_batch(&s(1), 7, t, 2);
        assert!(already_published(&w, &s(1), 7, t, 2), "the watermark batch's highest row");
        assert!(already_published(&w, &s(1), 7, t, 0), "another row of the same batch");
        assert!(!already_published(&w, &s(1), 7, t, 3), "a row numbered past what was recorded");
        assert!(already_published(&w, &s(1), 7, timeuuid_at(999, 0), 9));
        assert!(!already_published(&w, &s(1), 7, timeuuid_at(1_000, 1), 0), "100 ns later");
        assert!(!already_published(&w, &s(2), 7, timeuuid_at(1, 0), 0), "another stream");
        assert!(!already_published(&CdcWatermarks::default(), &s(1), 7, t, 0), "nothing committed yet");
    }

    /// `BatchBuffer` releases a batch's rows in aggregate-sequence order,
    /// not by `cdc$batch_seq_no`: bsn 1 carries seq 3, bsn 2 seq 1, bsn 3
    /// seq 2, so they go out as bsn 2, 3, 1. A transaction that committed
    /// after bsn 2 alone must not make bsn 1 (seq 3, never published) count
    /// as published after a restart.
    #[test]
    fn a_batch_published_in_part_counts_as_not_published() {
        use crate::relay::cdc::batch::{BatchBuffer, BatchKey, RowMeta};
        let t = timeuuid_at(1_000, 0);
        let meta = |bsn: i32, end: bool| RowMeta {
            key: BatchKey { stream: s(1), time: t },
            batch_seq_no: bsn,
            end_of_batch: end,
        };
        let mut b = BatchBuffer::new(100);
        b.push(meta(1, false), Some(3), 1);
        b.push(meta(2, false), Some(1), 2);
        let released = b.push(meta(3, true), Some(2), 3);
        let order = released[0].rows.clone();
        assert_eq!(order, vec![2, 3, 1], "seq 1, 2, 3");

        let mut w = CdcWatermarks::default();
        w.record(&s(1), 7, timeuuid_at(900, 0), 4); // an earlier batch
        w.record(&s(1), 7, t, order[0]); // seq 1 published, then the commit
        for bsn in [1, 2, 3] {
            assert!(!already_published(&w, &s(1), 7, t, bsn), "bsn {bsn}: its batch was published in part");
        }
        assert!(already_published(&w, &s(1), 7, timeuuid_at(900, 0), 9), "an earlier batch was published whole");
        let w = CdcWatermarks::from_json(&w.to_json()).unwrap();
        assert!(!already_published(&w, &s(1), 7, t, 1), "as committed");

        // The rest of the batch goes out: then it was published whole.
        let mut w = w;
        w.record(&s(1), 7, t, order[1]);
        w.record(&s(1), 7, t, order[2]);
        assert!(!already_published(&w, &s(1), 7, t, 1), "rows alone never make a batch whole");
        w.record_batch(&s(1), 7, t, 3);
        for bsn in [1, 2, 3] {
            assert!(already_published(&w, &s(1), 7, t, bsn), "bsn {bsn}");
        }
        w.record(&s(1), 7, t, 2);
        assert!(already_published(&w, &s(1), 7, t, 1), "a row recorded again leaves the batch whole");
        // A later batch's first row: the whole batch before it stays published.
        w.record(&s(1), 7, timeuuid_at(1_001, 0), 2);
        assert!(already_published(&w, &s(1), 7, t, 3));
        assert!(!already_published(&w, &s(1), 7, timeuuid_at(1_001, 0), 1));
        // A mark written before `whole` existed: its batch goes out again.
        let old =
            r#"{"streams":{"0101":{"generation":7,"time":"00000000-0000-1000-8000-000000000000","batch_seq_no":3}}}"#;
        assert!(!CdcWatermarks::from_json(old).unwrap().streams["0101"].whole);
    }

    #[test]
    fn watermarks_only_move_forward() {
        let mut w = CdcWatermarks::default();
        w.record(&s(1), 7, timeuuid_at(2_000, 0), 1);
        w.record(&s(1), 7, timeuuid_at(1_000, 0), 5);
        assert_eq!(w.streams[&s(1).hex()].time, timeuuid_at(2_000, 0));
    }

    #[test]
    fn a_newer_generation_drops_the_older_entries_one_entry_per_stream() {
        let mut w = CdcWatermarks::default();
        for b in 0..10 {
            w.record(&s(b), 7, timeuuid_at(1_000 + i64::from(b), 0), 0);
            w.record(&s(b), 7, timeuuid_at(2_000 + i64::from(b), 0), 0);
        }
        assert_eq!(w.len(), 10, "bounded: one entry per stream");
        w.record(&s(50), 9, timeuuid_at(5_000, 0), 0);
        assert_eq!(w.len(), 1);
        assert!(already_published(&w, &s(3), 7, timeuuid_at(9_999, 0), 0), "the older generation was finished");
        w.record(&s(3), 7, timeuuid_at(9_999, 0), 0);
        assert_eq!(w.len(), 1, "older generations are not recorded again");
    }

    #[test]
    fn order_is_scyllas_timeuuid_clustering_order() {
        // Same timestamp: the low bytes compare as signed bytes (0x80.. < 0x7f..).
        let base = timeuuid_at(1_000, 0);
        let with_lsb = |first: u8| {
            let mut b = *base.as_bytes();
            b[8] = first;
            Uuid::from_bytes(b)
        };
        assert!(log_order(&with_lsb(0x80), 0) < log_order(&with_lsb(0x7f), 0));
        assert!(log_order(&with_lsb(0xff), 0) < log_order(&with_lsb(0x00), 0));
        // The timestamp decides first, whatever the low bytes.
        assert!(log_order(&timeuuid_at(1_000, 0), 0) < log_order(&timeuuid_at(1_000, 1), 0));
        assert!(log_order(&timeuuid_at(999, 9_999), 5) < log_order(&timeuuid_at(1_000, 0), 0));
        // Time-high bits (beyond 2^32 ticks) order correctly too.
        assert!(log_order(&timeuuid_at(1, 0), 0) < log_order(&timeuuid_at(1_700_000_000_000, 0), 0));
    }

    #[test]
    fn watermarks_round_trip_through_json() {
        let mut w = CdcWatermarks::default();
        w.record(&s(0xab), 1_700_000_000_000, timeuuid_at(1_700_000_001_000, 3), 4);
        let j = w.to_json();
        assert!(
            j.contains(&"ab".repeat(16))
                && j.contains("\"generation\":1700000000000")
                && j.contains("\"batch_seq_no\":4"),
            "{j}"
        );
        assert_eq!(CdcWatermarks::from_json(&j).unwrap(), w);
        assert!(CdcWatermarks::from_json("{not json").is_err());
    }
}
