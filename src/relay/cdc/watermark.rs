//! Exactly-once on the CDC path (issue 13.4): per CDC stream, the watermark
//! of the last published log row, and the skip test after a restart (pure).
//!
//! scylla-cdc's own progress cannot join a Kafka transaction, so the relay
//! puts [`CdcWatermarks`] (JSON) on its progress topic inside every
//! transaction; after a restart the reader re-reads from scylla-cdc's saved
//! progress (older) and [`already_published`] skips every row at or below
//! the committed watermark of its stream.
//!
//! Guarantees:
//! - Order is the log's: `cdc$time` compared exactly as Scylla orders the
//!   timeuuid clustering column (timestamp, then the low 8 bytes as signed
//!   bytes: Cassandra's legacy order, which Scylla keeps), then
//!   `cdc$batch_seq_no`. So a row is skipped only if the log holds it before
//!   (or at) the last published row of the same stream.
//! - A watermark only moves forward ([`CdcWatermarks::record`]).
//! - Bounded: one entry per stream. Generations are read one after another
//!   (scylla-cdc finishes every stream of a generation before it starts the
//!   next, and writes the new generation to its progress before reading it),
//!   so the first row recorded for a newer generation drops every entry of
//!   the older ones: they can never be read again.
//! - A row of a generation older than the newest recorded one counts as
//!   published (that generation was finished before the newer one began).

use serde::{Deserialize, Serialize};
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

/// The last published row of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// Generation of the stream (ms since the epoch).
    pub generation: i64,
    /// `cdc$time` of the row.
    pub time: Uuid,
    /// `cdc$batch_seq_no` of the row.
    pub batch_seq_no: i32,
}

/// Per stream (lower-case hex id), the last published row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CdcWatermarks {
    pub streams: BTreeMap<String, Mark>,
}

impl CdcWatermarks {
    fn newest_generation(&self) -> Option<i64> {
        self.streams.values().map(|m| m.generation).max()
    }

    /// The row was published. Keeps the later of the old and new watermark;
    /// a newer generation drops the entries of the older ones.
    pub fn record(&mut self, stream: &StreamKey, generation: i64, time: Uuid, batch_seq_no: i32) {
        if self.newest_generation().is_some_and(|g| generation < g) {
            return; // a finished generation: nothing to keep
        }
        if self.newest_generation().is_some_and(|g| generation > g) {
            self.streams.clear();
        }
        let mark = Mark { generation, time, batch_seq_no };
        let entry = self.streams.entry(stream.hex()).or_insert(mark);
        if log_order(&time, batch_seq_no) > log_order(&entry.time, entry.batch_seq_no) {
            *entry = mark;
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

/// True when the row (`stream`, `generation`, `time`, `batch_seq_no`) is at
/// or below the watermark, i.e. published in a committed transaction.
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
        Some(m) if m.generation == generation => log_order(&time, batch_seq_no) <= log_order(&m.time, m.batch_seq_no),
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
        w.record(&s(1), 7, t, 2);
        assert!(already_published(&w, &s(1), 7, t, 2), "the watermark row itself");
        assert!(already_published(&w, &s(1), 7, t, 0), "earlier row of the same batch");
        assert!(!already_published(&w, &s(1), 7, t, 3), "later row of the same batch");
        assert!(already_published(&w, &s(1), 7, timeuuid_at(999, 0), 9));
        assert!(!already_published(&w, &s(1), 7, timeuuid_at(1_000, 1), 0), "100 ns later");
        assert!(!already_published(&w, &s(2), 7, timeuuid_at(1, 0), 0), "another stream");
        assert!(!already_published(&CdcWatermarks::default(), &s(1), 7, t, 0), "nothing committed yet");
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
