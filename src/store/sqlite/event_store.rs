//! `EventStore` for SQLite: appends go to the writer thread, reads to the
//! pooled read-only connections, the probe stats the database file.
//!
//! Guarantee: every trait method keeps the contract of `store::EventStore`
//! (the store suite checks it); feed reads are in `position` order, which is
//! commit order because SQLite serialises writers.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use super::dlq;
use super::feed::{feed_row, FEED_COLS};
use super::schema::migrate_conn;
use super::writer::{AppendJob, Job, Row};
use super::{codec, parse_ts, ts, unavailable, SqliteStore};
use crate::envelope::EventEnvelope;
use crate::store::feed::FeedRow;
use crate::store::{
    check_batch, Appended, Backlog, DeadLetter, EventStore, Snapshot, StoreError, StoreFaults, StoreProbe,
};

/// Decodes every row selected with `FEED_COLS` into envelopes (a load of one
/// aggregate: an unreadable row is an error there, the command cannot be decided).
fn load_rows(conn: &Connection, sql: &str, p: impl rusqlite::Params) -> Result<Vec<EventEnvelope>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(unavailable)?;
    let mut rows = stmt.query(p).map_err(unavailable)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(unavailable)? {
        match feed_row(r) {
            FeedRow::Event(e) => out.push(
                e.to_envelope().map_err(|err| codec(format!("event {}: payload is not JSON: {err}", e.event_id)))?,
            ),
            FeedRow::Unreadable(u) => {
                return Err(codec(format!("stored event at position {} cannot be read: {}", u.position, u.error)))
            }
        }
    }
    Ok(out)
}

/// Events of one aggregate after `after_sequence`, in order.
fn events_after(c: &Connection, aggregate_id: Uuid, after_sequence: i64) -> Result<Vec<EventEnvelope>, StoreError> {
    let sql = format!(
        "SELECT {FEED_COLS} FROM event_store WHERE aggregate_id = ?1 AND sequence_number > ?2 ORDER BY sequence_number"
    );
    load_rows(c, &sql, params![aggregate_id.to_string(), after_sequence])
}

/// The snapshot row of one aggregate.
fn snapshot_of(c: &Connection, aggregate_id: Uuid) -> Result<Option<Snapshot>, StoreError> {
    let row = c
        .prepare_cached(
            "SELECT aggregate_type, version, state_schema, state, created_at FROM snapshots WHERE aggregate_id = ?1",
        )
        .and_then(|mut st| {
            st.query_row([aggregate_id.to_string()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i32>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .optional()
        })
        .map_err(|e| match e {
            // A row of the wrong shape is a data problem, not an outage.
            rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::IntegralValueOutOfRange(..) => codec(format!("snapshot of {aggregate_id}: {e}")),
            e => unavailable(e),
        })?;
    let Some((aggregate_type, version, state_schema, state, created_at)) = row else { return Ok(None) };
    Ok(Some(Snapshot {
        aggregate_id,
        aggregate_type,
        version,
        state_schema,
        state: serde_json::from_str(&state).map_err(codec)?,
        created_at: parse_ts(&created_at)?,
    }))
}

#[async_trait]
impl EventStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        self.write(migrate_conn).await
    }

    async fn append(
        &self,
        aggregate_id: Uuid,
        expected_version: i64,
        events: Vec<EventEnvelope>,
    ) -> Result<Appended, StoreError> {
        check_batch(aggregate_id, expected_version, &events)?;
        let events = events.iter().map(Row::encode).collect::<Result<Vec<_>, _>>()?;
        let (reply, rx) = oneshot::channel();
        let job = Job::Append(AppendJob {
            aggregate_id,
            aggregate_key: aggregate_id.to_string(),
            expected: expected_version,
            events,
            reply,
        });
        self.jobs.send(job).await.map_err(|_| unavailable("sqlite writer thread has stopped"))?;
        // Queued, then no answer: the writer died with it taken (before or
        // after its commit) or still in the queue that went with the thread.
        rx.await.map_err(|_| {
            StoreError::OutcomeUnknown(
                "the sqlite writer thread stopped before answering: the events may or may not be stored; reload the aggregate"
                    .into(),
            )
        })?
    }

    async fn load_after(&self, aggregate_id: Uuid, after_sequence: i64) -> Result<Vec<EventEnvelope>, StoreError> {
        self.read(move |c| events_after(c, aggregate_id, after_sequence)).await
    }

    async fn read_feed(&self, after: i64, limit: usize) -> Result<Vec<FeedRow>, StoreError> {
        let limit = limit.clamp(1, 100_000) as i64;
        self.read(move |c| {
            let sql = format!("SELECT {FEED_COLS} FROM event_store WHERE position > ?1 ORDER BY position LIMIT ?2");
            let mut stmt = c.prepare_cached(&sql).map_err(unavailable)?;
            let mut rows = stmt.query(params![after, limit]).map_err(unavailable)?;
            let mut out = Vec::with_capacity(limit.min(4096) as usize);
            while let Some(r) = rows.next().map_err(unavailable)? {
                out.push(feed_row(r));
            }
            Ok(out)
        })
        .await
    }

    async fn backlog(&self, consumer: &str) -> Result<Backlog, StoreError> {
        let consumer = consumer.to_string();
        self.read(move |c| super::parking::backlog(c, &consumer)).await
    }

    async fn head_position(&self) -> Result<i64, StoreError> {
        self.read(|c| {
            c.query_row("SELECT COALESCE(MAX(position), 0) FROM event_store", [], |r| r.get(0)).map_err(unavailable)
        })
        .await
    }

    fn subscribe(&self) -> Option<watch::Receiver<i64>> {
        // Other processes' commits too (a standby instance, the CLI).
        self.watcher.get_or_init(|| super::watch_changes::Watcher::start(&self.path, self.notify.clone()));
        Some(self.notify.subscribe())
    }

    fn faults(&self) -> Option<std::sync::Arc<StoreFaults>> {
        Some(self.faults.clone())
    }

    /// That the writer thread runs, the head position, and that the database
    /// file at `path` is still the file this store opened (`file::DbFile::check`: a stat, never an open).
    async fn probe(&self) -> Result<StoreProbe, StoreError> {
        // Reads go on without the writer thread; every write fails after it.
        if self.jobs.is_closed() {
            return Err(unavailable(
                "the sqlite writer thread has stopped: every write fails until the process restarts",
            ));
        }
        let head = self.head_position().await?;
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.check()).await.map_err(unavailable)??;
        Ok(StoreProbe { head: Some(head) })
    }

    async fn get_checkpoint(&self, consumer: &str) -> Result<Option<i64>, StoreError> {
        let consumer = consumer.to_string();
        self.read(move |c| {
            c.query_row("SELECT position FROM checkpoints WHERE consumer = ?1", [consumer], |r| r.get(0))
                .optional()
                .map_err(unavailable)
        })
        .await
    }

    async fn set_checkpoint(&self, consumer: &str, position: i64) -> Result<(), StoreError> {
        self.faults.check_named(crate::store::faults::CHECKPOINT)?;
        let consumer = consumer.to_string();
        self.write(move |c| super::lease::upsert_checkpoint(c, &consumer, position)).await
    }

    async fn dlq_insert(&self, letter: DeadLetter) -> Result<(), StoreError> {
        self.write(move |c| dlq::insert(c, &letter)).await?;
        self.faults.check_stored(crate::store::faults::DLQ_INSERT_REPLY_LOST)
    }

    async fn dlq_list(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.read(move |c| dlq::list(c, limit)).await
    }

    async fn dlq_get(&self, ids: &[Uuid]) -> Result<Vec<DeadLetter>, StoreError> {
        let ids = ids.to_vec();
        self.read(move |c| dlq::get(c, &ids)).await
    }

    async fn dlq_remove(&self, id: Uuid) -> Result<bool, StoreError> {
        self.faults.check_named(crate::store::faults::DLQ_REMOVE)?;
        self.write(move |c| dlq::remove(c, id)).await
    }

    async fn dlq_count(&self) -> Result<u64, StoreError> {
        self.read(dlq::count).await
    }

    async fn save_snapshot(&self, s: Snapshot) -> Result<(), StoreError> {
        let state = serde_json::to_string(&s.state).map_err(codec)?;
        self.write(move |c| {
            c.execute(
                "INSERT INTO snapshots (aggregate_id, aggregate_type, version, state_schema, state, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (aggregate_id) DO UPDATE SET version = excluded.version, state_schema = excluded.state_schema,
                    state = excluded.state, created_at = excluded.created_at WHERE excluded.version > snapshots.version",
                params![s.aggregate_id.to_string(), s.aggregate_type, s.version, s.state_schema, state, ts(&s.created_at)],
            )
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }

    async fn load_snapshot(&self, aggregate_id: Uuid) -> Result<Option<Snapshot>, StoreError> {
        self.read(move |c| snapshot_of(c, aggregate_id)).await
    }

    /// One read (one hop to the reader pool) for both, instead of two.
    async fn load_from_snapshot(
        &self,
        aggregate_id: Uuid,
    ) -> Result<(Option<Snapshot>, Vec<EventEnvelope>), StoreError> {
        self.read(move |c| {
            let snapshot = snapshot_of(c, aggregate_id)?;
            let after = snapshot.as_ref().map(|s| s.version).unwrap_or(0);
            Ok((snapshot, events_after(c, aggregate_id, after)?))
        })
        .await
    }
}
