//! The exactly-once relay's progress, kept in Kafka: one record per
//! transaction on a compacted topic (`relay.progress_topic`, key = consumer
//! name) committed atomically with the batch's records (Debezium/Kafka
//! Connect do the same for exactly-once sources, KIP-618).
//!
//! Guarantee: after `init_transactions` (which aborts a former holder's open
//! transaction), `read_last` returns the position of the last committed
//! transaction of this consumer: exactly the events up to it are visible to
//! read_committed consumers, none after it. A read that keeps advancing is
//! never cut off, however long the topic: its bound is a stall (no step
//! forward for that long), not the whole read, so a retried read does not
//! fail for ever at the same place.

use chrono::{DateTime, Utc};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

use crate::config::KafkaConfig;
use crate::relay::error::PublishError;
use crate::relay::off_runtime::DropOffRuntime;

/// One progress record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Feed position up to which everything is published (or durably parked).
    pub position: i64,
    /// Lease epoch of the writer.
    pub epoch: i64,
    pub committed_at: DateTime<Utc>,
    /// Per-stream watermarks of a CDC feed (exactly-once over Scylla CDC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdc: Option<serde_json::Value>,
    /// In a transaction of an operator's replay: which request, and the
    /// highest feed position of its events committed so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayMark>,
}

/// How far an operator's replay had committed (see `Progress::replay`): the
/// next term skips those events of that part of that request instead of
/// publishing them again, then does the store's part of it (the park record
/// or the dead letters), which a crash right after the commit left undone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayMark {
    pub request: uuid::Uuid,
    pub through: i64,
    /// Which part of the request: the replayed aggregate's key, or
    /// [`LETTERS`]. One request can replay several parked aggregates, whose
    /// held events interleave in the feed, so a position alone says nothing
    /// about another part. Absent in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<String>,
}

/// `ReplayMark::part` of a dead-letter replay.
pub const LETTERS: &str = "dead-letters";

impl ReplayMark {
    /// Whether this mark says how far `part` of `request` committed. A mark
    /// without a part (an older record) is taken for the first part resumed,
    /// as it was then.
    pub fn covers(&self, request: uuid::Uuid, part: &str) -> bool {
        self.request == request && self.part.as_deref().is_none_or(|p| p == part)
    }
}

impl Progress {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Reads the progress topic read_committed to its end; the last record of `consumer`.
///
/// `stall` bounds every wait that brings nothing: the metadata and
/// watermark requests each, and the read, which fails only when its
/// position moved on no partition for `stall` (broker gone, an open
/// transaction of another writer holding the read_committed end back). A
/// read that keeps moving goes on to the end however long it takes in
/// all: under a total bound, a topic that takes longer than it to read
/// (an old uncompacted one, a slow link) failed every attempt from offset
/// 0 again, and the term never started.
pub async fn read_last(
    kafka: &KafkaConfig,
    topic: &str,
    consumer: &str,
    stall: Duration,
) -> Result<Option<Progress>, PublishError> {
    let (kafka, topic, consumer) = (kafka.clone(), topic.to_string(), consumer.to_string());
    tokio::task::spawn_blocking(move || read_blocking(&kafka, &topic, &consumer, stall))
        .await
        .map_err(|e| PublishError::transient("join", e.to_string()))?
}

fn read_blocking(
    kafka: &KafkaConfig,
    topic: &str,
    consumer: &str,
    stall: Duration,
) -> Result<Option<Progress>, PublishError> {
    let mut c = ClientConfig::new();
    // Security settings apply to the reader too; its own settings come
    // after them: an extra `isolation.level` read uncommitted records, and
    // a relay resumed from an aborted transaction's progress lost events.
    for (k, v) in kafka.client_extra() {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &kafka.brokers)
        .set("group.id", format!("outboxd-progress-reader-{}", uuid::Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest");
    let reader: BaseConsumer =
        c.create().map_err(|e| PublishError::permanent("config", format!("cannot create the progress reader: {e}")))?;
    // Closing it takes tens of ms that the relay's start need not wait for.
    let reader = DropOffRuntime::new(reader);
    let md = reader.fetch_metadata(Some(topic), stall).map_err(|e| PublishError::from_kafka(&e))?;
    // The term made sure the topic exists: an error for it (unknown topic,
    // leader not available, not authorised), or no partitions, is no
    // answer. Read as "no record", the term started from the store's
    // checkpoint, which trails the progress, and published committed
    // batches again to read_committed consumers.
    let t =
        md.topics().first().ok_or_else(|| PublishError::transient("metadata", format!("no metadata for {topic}")))?;
    if let Some(e) = t.error() {
        return Err(PublishError::transient("metadata", format!("progress topic {topic}: {e:?}")));
    }
    let partitions = t.partitions().len() as i32;
    if partitions == 0 {
        return Err(PublishError::transient("metadata", format!("progress topic {topic} has no partitions")));
    }
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in 0..partitions {
        let (low, high) = reader.fetch_watermarks(topic, p, stall).map_err(|e| PublishError::from_kafka(&e))?;
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Beginning).map_err(|e| PublishError::from_kafka(&e))?;
            ends.push((p, high));
        }
    }
    if ends.is_empty() {
        return Ok(None);
    }
    reader.assign(&tpl).map_err(|e| PublishError::from_kafka(&e))?;
    let mut watch = Stall::new(ends.len(), stall, Instant::now());
    // The last record of each partition (a topic made with several, or
    // repartitioned, can hold the key's records on more than one: compaction
    // keeps an old one there for good); the latest of them wins.
    let mut last: std::collections::HashMap<i32, Progress> = std::collections::HashMap::new();
    loop {
        // Done when every partition's position reached its end (control records count).
        let position = reader.position().ok();
        let offsets: Vec<i64> = ends
            .iter()
            .map(|(p, _)| {
                position
                    .as_ref()
                    .and_then(|pos| pos.find_partition(topic, *p))
                    .and_then(|e| e.offset().to_raw())
                    .unwrap_or(-1)
            })
            .collect();
        if ends.iter().zip(&offsets).all(|((_, high), o)| o >= high) {
            return Ok(latest(last.into_values()));
        }
        if watch.stalled(&offsets, Instant::now()) {
            return Err(PublishError::transient(
                "timeout",
                format!("the read of the progress topic {topic} stood still for {stall:?} before its end"),
            ));
        }
        match reader.poll(Duration::from_millis(200).min(stall)) {
            Some(Ok(m)) if m.key() == Some(consumer.as_bytes()) => {
                match m.payload().map(serde_json::from_slice::<Progress>) {
                    Some(Ok(p)) => {
                        last.insert(m.partition(), p);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, offset = m.offset(), "unreadable progress record; ignored")
                    }
                    None => {}
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => tracing::debug!(error = %e, "progress reader"),
            None => {}
        }
    }
}

/// Whether a read stands still: no partition's position moved forward for
/// `bound` (since the read began, or since the last move).
struct Stall {
    bound: Duration,
    seen: Vec<i64>,
    moved_at: Instant,
}

impl Stall {
    fn new(partitions: usize, bound: Duration, now: Instant) -> Stall {
        // -1: no position yet (librdkafka's placeholders are negative too).
        Stall { bound, seen: vec![-1; partitions], moved_at: now }
    }

    /// Takes the partitions' positions at `now`: true when none moved
    /// forward for `bound`.
    fn stalled(&mut self, positions: &[i64], now: Instant) -> bool {
        for (seen, &p) in self.seen.iter_mut().zip(positions) {
            if p > *seen {
                *seen = p;
                self.moved_at = now;
            }
        }
        now.saturating_duration_since(self.moved_at) >= self.bound
    }
}

/// The latest of the last records of several partitions: the highest
/// writer epoch, then the latest commit (the same epoch's records are
/// written in order by one producer).
fn latest(records: impl Iterator<Item = Progress>) -> Option<Progress> {
    records.max_by_key(|p| (p.epoch, p.committed_at, p.position))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review finding: the last record read of any partition won, in the
    /// arbitrary order partitions are polled: a stale record left on
    /// another partition (a progress topic made with several, or
    /// repartitioned) could win, and the relay resumed from the wrong place.
    #[test]
    fn the_latest_record_of_every_partition_wins() {
        let at = |s| chrono::DateTime::from_timestamp(s, 0).unwrap();
        let p = |position, epoch, s| Progress { position, epoch, committed_at: at(s), cdc: None, replay: None };
        let old = p(900, 2, 1_000);
        let new = p(1_200, 3, 900);
        assert_eq!(latest([old.clone(), new.clone()].into_iter()), Some(new.clone()), "a later epoch wins");
        assert_eq!(latest([new.clone(), old.clone()].into_iter()), Some(new.clone()), "in any order");
        let later = p(1_300, 3, 950);
        assert_eq!(latest([later.clone(), new].into_iter()), Some(later), "same epoch: the later commit");
        assert_eq!(latest(std::iter::empty()), None);
    }

    /// Review finding: the bound was a deadline for the whole read, so a
    /// topic that took longer than it to read (every attempt from offset 0
    /// again) failed for ever. Only standing still fails a read.
    #[test]
    fn only_a_read_that_stands_still_is_stalled() {
        let t0 = Instant::now();
        let s = |ms| t0 + Duration::from_millis(ms);
        let mut w = Stall::new(2, Duration::from_millis(100), t0);
        assert!(!w.stalled(&[-1001, -1001], s(50)), "no position yet, within the bound");
        assert!(w.stalled(&[-1001, -1001], s(100)), "nothing fetched for the bound");
        let mut w = Stall::new(2, Duration::from_millis(100), t0);
        // Moving on one partition or the other, for far longer than the bound in all.
        for i in 1..=50 {
            let at = s(i * 90);
            let moved = if i % 2 == 0 { [i as i64, 0] } else { [i as i64 - 1, i as i64] };
            assert!(!w.stalled(&moved, at), "moved at step {i}");
        }
        let last = [50, 49];
        assert!(!w.stalled(&last, s(4_550)));
        assert!(w.stalled(&last, s(4_600)), "then still for the bound");
        assert!(w.stalled(&[49, 49], s(4_700)), "a position going back is no move");
    }

    #[test]
    fn progress_round_trips_as_json() {
        let p =
            Progress { position: 42, epoch: 3, committed_at: crate::envelope::now_millis(), cdc: None, replay: None };
        let back: Progress = serde_json::from_slice(&p.to_bytes()).unwrap();
        assert_eq!(back, p);
        let text = String::from_utf8(p.to_bytes()).unwrap();
        assert!(!text.contains("cdc") && !text.contains("replay"), "{text}");
        // A record of a replay's transaction, and one written before the field existed.
        let mark = ReplayMark { request: uuid::Uuid::now_v7(), through: 17, part: Some("agg-1".into()) };
        let p = Progress { replay: Some(mark.clone()), ..p };
        assert_eq!(serde_json::from_slice::<Progress>(&p.to_bytes()).unwrap().replay, Some(mark));
        let old: Progress =
            serde_json::from_str(r#"{"position":5,"epoch":1,"committed_at":"2026-12-01T00:00:00Z"}"#).unwrap();
        assert_eq!((old.position, old.replay), (5, None));
    }

    #[test]
    fn a_replay_mark_covers_only_its_own_part_of_its_own_request() {
        let (request, other) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let mark = ReplayMark { request, through: 510, part: Some("agg-a".into()) };
        assert!(mark.covers(request, "agg-a"));
        assert!(!mark.covers(request, "agg-b"), "another aggregate of the same replay-all");
        assert!(!mark.covers(request, LETTERS));
        assert!(!mark.covers(other, "agg-a"));
        // A record written before `part` existed.
        let old: ReplayMark = serde_json::from_str(&format!(r#"{{"request":"{request}","through":5}}"#)).unwrap();
        assert!(old.part.is_none() && old.covers(request, "agg-b") && !old.covers(other, "agg-b"));
    }
}
