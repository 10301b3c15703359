//! `outboxd schema` and `outboxd events`: the store itself.
//!
//! Guarantee: `schema` is idempotent (creates or upgrades); `events` only
//! reads the feed.

use anyhow::Context;

use outboxd::config::Config;
use outboxd::envelope::StoredEvent;
use outboxd::store::feed::FeedRow;

use super::Failure;

/// Creates or upgrades the store's tables; with `dry_run`, prints the DDL
/// it would run for the configured backend and connects to nothing.
pub async fn schema(cfg: &Config, dry_run: bool) -> Result<u8, Failure> {
    if dry_run {
        super::stdout::out_raw(&outboxd::store::schema_ddl(cfg));
        return Ok(0);
    }
    let sqlite = cfg.store.backend == outboxd::config::Backend::Sqlite;
    // The version before (0: no file, or an empty one); a file that cannot
    // be read is reported by the open below.
    let before = match sqlite && cfg.store.path.exists() {
        true => outboxd::store::sqlite::schema::version_of(&cfg.store.path).unwrap_or(0),
        false => 0,
    };
    let store = outboxd::store::open(cfg).await.context("cannot open the store")?;
    store.migrate().await?;
    if sqlite {
        let (path, version) = (cfg.store.path.display(), outboxd::store::sqlite::SCHEMA_VERSION);
        match before {
            0 => out!("created the sqlite store {path} (schema version {version})"),
            old if old < version => {
                out!("upgraded the sqlite store {path} from schema version {old} to {version}")
            }
            _ => out!("the sqlite store {path} is at schema version {version}"),
        }
    } else {
        out!("the tables of keyspace {} are up to date", cfg.store.cql.keyspace);
    }
    Ok(0)
}

/// Prints the feed after `after`, at most `limit` events, as JSON lines;
/// a full page says on stderr where the next one starts.
pub async fn events(cfg: &Config, after: i64, limit: usize) -> Result<u8, Failure> {
    let store = super::open_to_read(cfg).await?;
    let rows = store.read_feed(after, limit).await?;
    let last = rows.last().map(FeedRow::position);
    let full = rows.len() == limit;
    for row in rows {
        match row {
            FeedRow::Event(e) => {
                let envelope = e.to_envelope()?;
                out!("{}", serde_json::to_string(&StoredEvent { position: e.position, envelope })?);
            }
            FeedRow::Unreadable(u) => out!(
                "{}",
                serde_json::json!({ "position": u.position, "unreadable": {
                    "aggregate_id": &*u.aggregate_key, "sequence": u.sequence, "event_id": u.event_id, "event_type": u.event_type, "error": u.error } })
            ),
        }
    }
    if let (true, Some(last)) = (full, last) {
        eprintln!("--limit {limit} reached; the next events: outboxd events --after {last}");
    }
    Ok(0)
}
