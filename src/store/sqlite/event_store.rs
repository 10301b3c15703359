//! `EventStore` for SQLite: appends go to the writer thread, reads to the
//! pooled read-only connections, the probe stats the database file.
//!
//! Guarantee: every trait method keeps the contract of `store::EventStore`
//! (the store suite checks it); feed reads are in `position` order, which is
//! commit order because SQLite serialises writers.

use async_trait::async_trait;
use chrono::Utc;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use super::schema::migrate_conn;
use super::writer::{AppendJob, Job};
use super::{codec, parse_ts, parse_uuid, ts, unavailable, SqliteStore};
use crate::envelope::{EventEnvelope, StoredEvent};
use crate::store::{check_batch, Appended, DeadLetter, EventStore, Snapshot, StoreError, StoreProbe};

const EVENT_COLS: &str = "position, event_id, aggregate_type, aggregate_id, sequence_number, event_type, event_version, payload, causation_id, correlation_id, timestamp";

fn row_to_event(r: &rusqlite::Row<'_>) -> Result<StoredEvent, StoreError> {
    let g = |i: usize| -> Result<String, StoreError> { r.get::<_, String>(i).map_err(codec) };
    let payload: String = g(7)?;
    let causation: Option<String> = r.get(8).map_err(codec)?;
    Ok(StoredEvent {
        position: r.get(0).map_err(codec)?,
        envelope: EventEnvelope {
            event_id: parse_uuid(&g(1)?)?,
            aggregate_type: g(2)?,
            aggregate_id: parse_uuid(&g(3)?)?,
            sequence: r.get(4).map_err(codec)?,
            event_type: g(5)?,
            schema_version: r.get(6).map_err(codec)?,
            payload: serde_json::from_str(&payload).map_err(|e| codec(format!("payload is not JSON: {e}")))?,
            causation_id: causation.as_deref().map(parse_uuid).transpose()?,
            correlation_id: parse_uuid(&g(9)?)?,
            timestamp: parse_ts(&g(10)?)?,
        },
    })
}

fn query_events(conn: &Connection, sql: &str, p: impl rusqlite::Params) -> Result<Vec<StoredEvent>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(unavailable)?;
    let mut rows = stmt.query(p).map_err(unavailable)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(unavailable)? {
        out.push(row_to_event(r)?);
    }
    Ok(out)
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
        let (reply, rx) = oneshot::channel();
        let job = Job::Append(AppendJob { aggregate_id, expected: expected_version, events, reply });
        self.jobs.send(job).await.map_err(|_| unavailable("sqlite writer thread has stopped"))?;
        rx.await.map_err(|_| unavailable("sqlite writer thread has stopped"))?
    }

    async fn load_after(&self, aggregate_id: Uuid, after_sequence: i64) -> Result<Vec<EventEnvelope>, StoreError> {
        self.read(move |c| {
            let sql = format!("SELECT {EVENT_COLS} FROM event_store WHERE aggregate_id = ?1 AND sequence_number > ?2 ORDER BY sequence_number");
            Ok(query_events(c, &sql, params![aggregate_id.to_string(), after_sequence])?.into_iter().map(|s| s.envelope).collect())
        })
        .await
    }

    async fn read_feed(&self, after: i64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let limit = limit.clamp(1, 100_000) as i64;
        self.read(move |c| {
            let sql = format!("SELECT {EVENT_COLS} FROM event_store WHERE position > ?1 ORDER BY position LIMIT ?2");
            query_events(c, &sql, params![after, limit])
        })
        .await
    }

    async fn head_position(&self) -> Result<i64, StoreError> {
        self.read(|c| {
            c.query_row("SELECT COALESCE(MAX(position), 0) FROM event_store", [], |r| r.get(0)).map_err(unavailable)
        })
        .await
    }

    fn subscribe(&self) -> Option<watch::Receiver<i64>> {
        Some(self.notify.subscribe())
    }

    /// The head position, and that the database file at `path` is still the
    /// file this store opened (`file::DbFile::check`: a stat, never an open).
    async fn probe(&self) -> Result<StoreProbe, StoreError> {
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
        let consumer = consumer.to_string();
        self.write(move |c| {
            c.execute(
                "INSERT INTO checkpoints (consumer, position, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (consumer) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
                params![consumer, position, ts(&Utc::now())],
            )
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }

    async fn dlq_insert(&self, letter: DeadLetter) -> Result<(), StoreError> {
        self.insert_letter(letter).await
    }

    async fn dlq_list(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.list_letters(limit).await
    }

    async fn dlq_remove(&self, id: Uuid) -> Result<bool, StoreError> {
        self.remove_letter(id).await
    }

    async fn dlq_count(&self) -> Result<u64, StoreError> {
        self.count_letters().await
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
        self.read(move |c| {
            let row = c
                .query_row(
                    "SELECT aggregate_type, version, state_schema, state, created_at FROM snapshots WHERE aggregate_id = ?1",
                    [aggregate_id.to_string()],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i32>(2)?, r.get::<_, String>(3)?, r.get::<_, String>(4)?)),
                )
                .optional()
                .map_err(unavailable)?;
            let Some((aggregate_type, version, state_schema, state, created_at)) = row else { return Ok(None) };
            Ok(Some(Snapshot {
                aggregate_id,
                aggregate_type,
                version,
                state_schema,
                state: serde_json::from_str(&state).map_err(codec)?,
                created_at: parse_ts(&created_at)?,
            }))
        })
        .await
    }
}
