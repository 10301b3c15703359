//! `outboxd schema` and `outboxd events`: the store itself.
//!
//! Guarantee: `schema` is idempotent (creates or upgrades); `events` only
//! reads the feed.

use anyhow::Context;

use outboxd::config::Config;

use super::{open, Failure};

/// Creates or upgrades the store's tables.
pub async fn schema(cfg: &Config) -> Result<u8, Failure> {
    let store = outboxd::store::open(cfg).await.context("cannot open the store")?;
    store.migrate().await?;
    println!("schema of the {} store is up to date", store.backend());
    Ok(0)
}

/// Prints the feed after `after`, at most `limit` events, as JSON lines.
pub async fn events(cfg: &Config, after: i64, limit: usize) -> Result<u8, Failure> {
    let store = open(cfg).await?;
    for e in store.read_feed(after, limit).await? {
        println!("{}", serde_json::to_string(&e)?);
    }
    Ok(0)
}
