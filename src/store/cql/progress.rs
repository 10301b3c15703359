//! CDC progress rows in `relay_leases` (one partition per consumer name:
//! its lease in static columns, one row per CDC stream, `stream_id = 0x`
//! holding the last generation and its floor in `time`): reading them (and
//! those scylla-cdc's own saver left in its former table), and the oldest
//! progress.
//!
//! Guarantees:
//! - [`current_progress`] is the one rule of which rows count: those of the
//!   last generation (rows of finished generations wait for their TTL and
//!   are ignored); without a generation row every stream row counts.
//! - [`CqlStore::cdc_oldest_progress`] is what the relay has published up
//!   to on every stream (the CDC lag and the CDC log TTL guard), read from
//!   the table, so it is true whatever state (or instance) the relay is in.

use chrono::{DateTime, Utc};
use futures::StreamExt;
use scylla::client::session::Session;
use scylla::value::CqlTimestamp;

use super::CqlStore;
use crate::store::StoreError;

/// The lease table; it also holds the CDC progress of each consumer.
pub const LEASE_TABLE: &str = "relay_leases";

/// One progress row as stored (times in ms since the epoch); the empty
/// `stream` is the generation row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedRow {
    pub stream: Vec<u8>,
    pub generation: Option<i64>,
    pub time: Option<i64>,
}

/// Every progress row of `name` in `keyspace.relay_leases`.
pub async fn read_progress(session: &Session, keyspace: &str, name: &str) -> Result<Vec<SavedRow>, StoreError> {
    let what = || format!("read CDC progress of {name} (run `outboxd schema` to create {keyspace}.{LEASE_TABLE})");
    let mut st = scylla::statement::Statement::new(format!(
        "SELECT stream_id, generation, time FROM {keyspace}.{LEASE_TABLE} WHERE name = ?"
    ));
    st.set_page_size(5_000);
    st.set_is_idempotent(true);
    let pager =
        session.query_iter(st, (name,)).await.map_err(|e| StoreError::Unavailable(format!("{}: {e}", what())))?;
    let mut rows = pager
        .rows_stream::<(Option<Vec<u8>>, Option<CqlTimestamp>, Option<CqlTimestamp>)>()
        .map_err(|e| StoreError::Codec(e.to_string()))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().await {
        let (stream, generation, time) = r.map_err(|e| StoreError::Unavailable(format!("{}: {e}", what())))?;
        // A partition holding only the lease (static columns) has no stream row.
        let Some(stream) = stream else { continue };
        out.push(SavedRow { stream, generation: generation.map(|t| t.0), time: time.map(|t| t.0) });
    }
    Ok(out)
}

/// Progress saved by scylla-cdc's `TableBackedCheckpointSaver` in
/// `keyspace.table` (before outboxd had its own saver): the `[0]` row holds
/// the generation; the per-stream `generation` column held the reader's
/// start bound, not the generation, so it is ignored. A stream row older
/// than the generation is a stream of a finished one (scylla-cdc read every
/// stream of a generation to its end, below the next one's start, and the
/// table kept them for days): left out, or it would pass for the oldest
/// progress. Empty when the table does not exist or cannot be read.
pub async fn read_legacy_progress(session: &Session, keyspace: &str, table: &str) -> Vec<SavedRow> {
    let q = format!("SELECT stream_id, generation, time FROM {keyspace}.{table}");
    let Ok(res) = session.query_unpaged(q, ()).await else { return Vec::new() };
    let Ok(rows) = res.into_rows_result() else { return Vec::new() };
    let Ok(iter) = rows.rows::<(Vec<u8>, Option<CqlTimestamp>, Option<CqlTimestamp>)>() else { return Vec::new() };
    let mut out: Vec<SavedRow> = iter
        .flatten()
        .map(|(stream, generation, time)| match stream.as_slice() {
            [0] => SavedRow { stream: Vec::new(), generation: generation.map(|g| g.0), time: None },
            _ => SavedRow { stream, generation: None, time: time.map(|t| t.0) },
        })
        .collect();
    let generation = out.iter().find(|r| r.stream.is_empty()).and_then(|r| r.generation);
    out.retain(|r| r.stream.is_empty() || generation.is_none_or(|g| r.time.is_some_and(|t| t >= g)));
    if !out.is_empty() {
        tracing::info!(%keyspace, table, rows = out.len(), "CDC progress taken over from scylla-cdc's former checkpoint table");
    }
    out
}

/// The last generation and the `(stream, time)` rows that count for it.
pub fn current_progress(rows: &[SavedRow]) -> (Option<i64>, Vec<(&[u8], i64)>) {
    let generation = rows.iter().find(|r| r.stream.is_empty()).and_then(|r| r.generation);
    let streams = rows
        .iter()
        .filter(|r| !r.stream.is_empty())
        .filter(|r| generation.is_none() || r.generation.is_none() || r.generation >= generation)
        .filter_map(|r| r.time.map(|t| (r.stream.as_slice(), t)))
        .collect();
    (generation, streams)
}

/// The floor the generation row holds: where a stream without a row of the
/// last generation resumes (`relay::cdc::floor`).
pub fn generation_floor(rows: &[SavedRow]) -> Option<i64> {
    rows.iter().find(|r| r.stream.is_empty()).and_then(|r| r.time)
}

/// The oldest progress the rows say (ms): the oldest stream row of the last
/// generation or, while that generation has none yet (a relay that wrote
/// the generation row and stopped before its streams' first save), the
/// generation's floor: its streams are read from there.
pub fn oldest_progress(rows: &[SavedRow]) -> Option<i64> {
    let (generation, streams) = current_progress(rows);
    let oldest = streams.into_iter().map(|(_, t)| t).min();
    oldest.or_else(|| generation.and(generation_floor(rows)))
}

impl CqlStore {
    /// The oldest per-stream CDC progress of `consumer` (its current
    /// generation, [`oldest_progress`]): every change of the streams with
    /// rows before it has been published (a stream group that never saved
    /// is read from the generation's floor). `None` when the consumer never
    /// saved progress.
    pub async fn cdc_oldest_progress(&self, consumer: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        let rows = read_progress(&self.session, &self.keyspace, consumer).await?;
        Ok(oldest_progress(&rows).and_then(DateTime::from_timestamp_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(stream: &[u8], generation: Option<i64>, time: Option<i64>) -> SavedRow {
        SavedRow { stream: stream.to_vec(), generation, time }
    }

    #[test]
    fn a_generation_without_stream_rows_is_as_old_as_its_floor() {
        // The generation row (200, floor 150) was written, the relay stopped
        // before its streams' first save: the rows of generation 100 do not count.
        let rows = vec![row(&[], Some(200), Some(150)), row(&[1], Some(100), Some(120))];
        assert_eq!(oldest_progress(&rows), Some(150));
        let rows =
            vec![row(&[], Some(200), Some(150)), row(&[2], Some(200), Some(900)), row(&[3], Some(200), Some(800))];
        assert_eq!(oldest_progress(&rows), Some(800), "stream rows: the oldest of them");
        assert_eq!(oldest_progress(&[row(&[], Some(200), None)]), None, "no floor written: not known");
        assert_eq!(oldest_progress(&[]), None);
    }

    #[test]
    fn only_rows_of_the_last_generation_count() {
        let rows = vec![
            row(&[], Some(200), None),
            row(&[1], Some(100), Some(150)), // finished generation, awaiting its TTL
            row(&[2], Some(200), Some(900)),
            row(&[3], None, Some(950)),
            row(&[4], Some(200), None),
        ];
        let (g, s) = current_progress(&rows);
        assert_eq!(g, Some(200));
        assert_eq!(s, vec![(&[2u8][..], 900), (&[3u8][..], 950)]);
        let (g, s) = current_progress(&rows[1..3]);
        assert_eq!((g, s.len()), (None, 2), "without a generation row every stream counts");
    }
}
