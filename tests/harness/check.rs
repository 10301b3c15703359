//! The independent consumer's verdict on a topic: every stored event id is
//! there, every copy carries its stored row's key (the aggregate) and
//! `ce_sequence`, each key stays in one partition (Kafka orders a partition,
//! not a key split over two), the first arrival of each aggregate's events is
//! in sequence order with no gap, and every duplicate copy is explained by a
//! named window of feed positions (the unconfirmed window at a kill, an
//! outage's re-sends): each window explains at most one extra copy of each
//! position it covers.
//!
//! It compares the topic with the store (the source of truth), never with
//! what the test thinks it wrote: a request whose outcome the client did not
//! learn (a kill mid-request) is judged by whether its event was stored.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use super::kafka::Record;

/// A stored event as the checker needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    pub position: i64,
    pub event_id: String,
    pub aggregate_id: String,
    pub sequence: i64,
}

/// Every row of `event_store`, in feed order (read-only connection).
pub fn stored_rows(db: &Path) -> Vec<StoredRow> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut st = c
        .prepare("SELECT position, event_id, aggregate_id, sequence_number FROM event_store ORDER BY position")
        .unwrap();
    st.query_map([], |r| {
        Ok(StoredRow { position: r.get(0)?, event_id: r.get(1)?, aggregate_id: r.get(2)?, sequence: r.get(3)? })
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// A range of feed positions `(lo, hi]` whose events may legitimately arrive
/// once more each: a position covered by `n` windows may arrive `1 + n` times.
#[derive(Debug, Clone)]
pub struct Window {
    pub why: String,
    pub lo: i64,
    pub hi: i64,
}

impl Window {
    pub fn new(why: impl Into<String>, lo: i64, hi: i64) -> Window {
        Window { why: why.into(), lo, hi }
    }
    fn covers(&self, position: i64) -> bool {
        position > self.lo && position <= self.hi
    }
}

/// What the topic holds compared with the store.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Stored events on the topic (distinct ids).
    pub delivered: usize,
    /// Stored ids not on the topic (and not excused).
    pub missing: Vec<StoredRow>,
    /// Ids on the topic that were never stored.
    pub unknown: Vec<String>,
    /// Copies whose key or `ce_sequence` is not their stored row's:
    /// "id (position p): key k, stored aggregate a".
    pub mismatched: Vec<String>,
    /// First arrivals out of sequence order or after a gap: "key: seq a then b".
    pub order_violations: Vec<String>,
    /// Keys found in more than one partition (a consumer may read them out
    /// of order): "key k in partitions t[p] and t[q] (offset o)".
    pub split_keys: Vec<String>,
    /// Extra copies: event id -> copies beyond the first.
    pub duplicates: BTreeMap<String, usize>,
    /// Extra copies no window explains (beyond one per covering window):
    /// "id (position p): extra copy n, k windows cover it".
    pub unexplained: Vec<String>,
    /// How many extra copies each window explained.
    pub explained_by: BTreeMap<String, usize>,
    /// Where to look when events are missing (see `evidence::explain_missing`).
    pub notes: String,
}

impl Verdict {
    /// Judges `records` (every copy read from the topics) against `stored`.
    /// `excused(row)`: a stored event that must NOT be on the topic (held
    /// behind a parked aggregate); it counts as missing if it is not there
    /// and as an order violation if it is.
    pub fn judge(
        records: &[Record],
        stored: &[StoredRow],
        excused: impl Fn(&StoredRow) -> bool,
        windows: &[Window],
    ) -> Verdict {
        let by_id: HashMap<&str, &StoredRow> = stored.iter().map(|r| (r.event_id.as_str(), r)).collect();
        let mut v = Verdict::default();
        let mut sorted: Vec<&Record> = records.iter().collect();
        sorted.sort_by(|a, b| (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset)));
        let mut seen: HashSet<String> = HashSet::new();
        let mut last_seq: HashMap<String, i64> = HashMap::new();
        let mut home = Homes::default();
        for r in sorted {
            if let Some(split) = home.check(r) {
                v.split_keys.push(split);
            }
            let id = r.event_id();
            let Some(row) = by_id.get(id.as_str()) else {
                v.unknown.push(id);
                continue;
            };
            let (key, stored_key) = (r.key.as_str(), aggregate_key(&row.aggregate_id));
            if key != stored_key {
                v.mismatched
                    .push(format!("{id} (position {}): key {key:?}, stored aggregate {stored_key}", row.position));
            }
            if r.sequence() != row.sequence {
                let got = r.headers.get("ce_sequence").map_or("none", String::as_str);
                v.mismatched
                    .push(format!("{id} (position {}): ce_sequence {got}, stored {}", row.position, row.sequence));
            }
            if !seen.insert(id.clone()) {
                let extra = v.duplicates.entry(id.clone()).or_default();
                *extra += 1;
                // The n-th extra copy needs an n-th window covering its position.
                let covering: Vec<&Window> = windows.iter().filter(|w| w.covers(row.position)).collect();
                match covering.get(*extra - 1) {
                    Some(w) => *v.explained_by.entry(w.why.clone()).or_default() += 1,
                    None => v.unexplained.push(format!(
                        "{id} (position {}): extra copy {extra}, {} windows cover it",
                        row.position,
                        covering.len()
                    )),
                }
                continue;
            }
            if excused(row) {
                v.order_violations.push(format!("{}: held event seq {} was published", r.key, row.sequence));
            }
            let prev = last_seq.insert(r.key.clone(), row.sequence).unwrap_or(0);
            if row.sequence != prev + 1 {
                v.order_violations.push(format!("{}: seq {prev} then {} (offset {})", r.key, row.sequence, r.offset));
            }
        }
        v.delivered = seen.len();
        v.missing = stored.iter().filter(|r| !seen.contains(&r.event_id) && !excused(r)).cloned().collect();
        v
    }

    /// True once `records` hold every stored event not `excused`: the stop
    /// condition for a consumer (partitions arrive in any order).
    pub fn covers(records: &[Record], stored: &[StoredRow], excused: impl Fn(&StoredRow) -> bool) -> bool {
        let seen: HashSet<String> = records.iter().map(|r| r.event_id()).collect();
        stored.iter().all(|r| excused(r) || seen.contains(&r.event_id))
    }

    /// Total extra copies.
    pub fn duplicate_copies(&self) -> usize {
        self.duplicates.values().sum()
    }

    /// Every stored id present, nothing unknown, every copy with its row's
    /// key and sequence, order at first arrival, every duplicate explained.
    pub fn assert_sound(&self, context: &str) {
        let show = |v: &[String]| v.iter().take(10).cloned().collect::<Vec<_>>().join("; ");
        assert!(
            self.missing.is_empty(),
            "{context}: {} stored events missing from the topic, e.g. {:?}\n{}",
            self.missing.len(),
            &self.missing[..self.missing.len().min(5)],
            self.notes
        );
        assert!(
            self.unknown.is_empty(),
            "{context}: {} records were never stored: {}",
            self.unknown.len(),
            show(&self.unknown)
        );
        assert!(
            self.mismatched.is_empty(),
            "{context}: {} records carry another key or ce_sequence than their stored row: {}",
            self.mismatched.len(),
            show(&self.mismatched)
        );
        assert!(
            self.split_keys.is_empty(),
            "{context}: {} records of a key in another partition than its first: {}",
            self.split_keys.len(),
            show(&self.split_keys)
        );
        assert!(
            self.order_violations.is_empty(),
            "{context}: {} order violations at first arrival: {}",
            self.order_violations.len(),
            show(&self.order_violations)
        );
        assert!(
            self.unexplained.is_empty(),
            "{context}: {} duplicates outside every window: {}",
            self.unexplained.len(),
            show(&self.unexplained)
        );
    }

    pub fn summary(&self) -> String {
        format!(
            "{} delivered, {} missing, {} never stored, {} key/sequence mismatches, {} keys split over partitions, {} order violations, {} duplicate copies ({} explained: {:?})",
            self.delivered,
            self.missing.len(),
            self.unknown.len(),
            self.mismatched.len(),
            self.split_keys.len(),
            self.order_violations.len(),
            self.duplicate_copies(),
            self.explained_by.values().sum::<usize>(),
            self.explained_by
        )
    }

    /// Prints each window (`tag: why: unconfirmed window N positions, M
    /// duplicate copies`): how wide each fault's window was next to what it
    /// explains.
    pub fn report_windows(&self, tag: &str, windows: &[Window]) {
        for w in windows {
            let dups = self.explained_by.get(&w.why).copied().unwrap_or(0);
            eprintln!("{tag}: {}: unconfirmed window {} positions, {dups} duplicate copies", w.why, w.hi - w.lo);
        }
    }
}
/// The record key the relay gives an aggregate id column: the UUID's
/// lower-case hyphenated form when it parses, the raw text otherwise.
fn aggregate_key(raw: &str) -> String {
    uuid::Uuid::parse_str(raw.trim()).map(|u| u.hyphenated().to_string()).unwrap_or_else(|_| raw.to_string())
}

/// The (topic, partition) where each key was first seen.
#[derive(Default)]
struct Homes(HashMap<String, (String, i32)>);

impl Homes {
    /// Remembers `r`'s partition as its key's home, or says where else the key was.
    fn check(&mut self, r: &Record) -> Option<String> {
        let (topic, partition) = self.0.entry(r.key.clone()).or_insert_with(|| (r.topic.clone(), r.partition));
        (*topic != r.topic || *partition != r.partition).then(|| {
            format!(
                "key {} in partitions {topic}[{partition}] and {}[{}] (offset {})",
                r.key, r.topic, r.partition, r.offset
            )
        })
    }
}

/// Checks that each key stays in one partition and per-aggregate order on
/// the first copy of every event id; returns the number of duplicate copies.
pub fn check_order_and_count_dups(records: &[Record]) -> usize {
    let mut seen = std::collections::HashSet::new();
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut home = Homes::default();
    let mut dups = 0;
    // Kafka orders within a partition; one aggregate lives in one partition.
    let mut by_part: Vec<&Record> = records.iter().collect();
    by_part.sort_by_key(|r| (r.topic.clone(), r.partition, r.offset));
    for r in by_part {
        if let Some(split) = home.check(r) {
            panic!("{split}: one aggregate must live in one partition");
        }
        if !seen.insert(r.event_id()) {
            dups += 1;
            continue;
        }
        let prev = last.insert(r.key.clone(), r.sequence()).unwrap_or(0);
        assert_eq!(r.sequence(), prev + 1, "aggregate {} jumped from sequence {prev} to {} ", r.key, r.sequence());
    }
    dups
}
