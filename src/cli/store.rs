//! `outboxd schema` and `outboxd events`: the store itself.
//!
//! Guarantee: `schema` is idempotent (creates or upgrades); `events` only
//! reads the feed.

use anyhow::Context;

use outboxd::config::Config;
use outboxd::envelope::StoredEvent;
use outboxd::store::feed::FeedRow;

use super::{open_existing, Failure};

/// Creates or upgrades the store's tables; with `dry_run`, prints the DDL
/// it would run for the configured backend and connects to nothing.
pub async fn schema(cfg: &Config, dry_run: bool) -> Result<u8, Failure> {
    if dry_run {
        super::stdout::out_raw(&outboxd::store::schema_ddl(cfg));
        return Ok(0);
    }
    let store = outboxd::store::open(cfg).await.context("cannot open the store")?;
    store.migrate().await?;
    out!("schema of the {} store is up to date", store.backend());
    Ok(0)
}

/// Prints the feed after `after`, at most `limit` events, as JSON lines.
pub async fn events(cfg: &Config, after: i64, limit: usize) -> Result<u8, Failure> {
    let store = open_existing(cfg).await?;
    for row in store.read_feed(after, limit).await? {
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
    Ok(0)
}
