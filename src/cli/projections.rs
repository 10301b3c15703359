//! `outboxd projections rebuild`: clear the read models and rebuild them
//! from event 0 (SQLite store).
//!
//! Guarantee: on the CQL backend it refuses (exit 2) and says why: there the
//! daemon's CDC projection builds the read models; on a path with no store
//! it refuses (exit 2) and creates nothing.

use anyhow::Context;

use outboxd::config::Config;

use super::{BadInput, Failure};

pub async fn rebuild(cfg: &Config, no_progress: bool) -> Result<u8, Failure> {
    if cfg.store.backend == outboxd::config::Backend::Cql {
        return Err(BadInput(
            "on the CQL backend the read models are built by the daemon's CDC projection (from the CDC log, 24 h TTL); rebuild is for the sqlite store".into(),
        )
        .into());
    }
    // A mistyped path is refused, never created (a new empty store would
    // "rebuild" 0 events and exit 0).
    super::refuse_missing(cfg)?;
    let (store, models) = outboxd::projection::open_stores(cfg).await.context("cannot open the store")?;
    let models =
        models.ok_or_else(|| BadInput("read models need the sqlite store (store.backend = \"sqlite\")".into()))?;
    let report = outboxd::projection::rebuild(store, models, &cfg.service.default_currency, !no_progress).await?;
    out!("{report}");
    Ok(0)
}

/// `outboxd projections status`: checkpoint, head, lag and parked aggregates of the read models.
pub async fn status(cfg: &Config) -> Result<u8, Failure> {
    let store = super::open_to_read(cfg).await?;
    let consumer = outboxd::projection::CONSUMER;
    let backlog = store.backlog(consumer).await?;
    let parked = store.parked(consumer).await?;
    let lag_seconds =
        backlog.oldest.map(|t| (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0).unwrap_or(0.0);
    out!(
        "{}",
        serde_json::json!({
            "consumer": consumer,
            "checkpoint": backlog.checkpoint,
            "head": backlog.head,
            "lag_events": backlog.events,
            "lag_seconds": lag_seconds,
            "parked_aggregates": parked.len(),
            "parked": parked,
        })
    );
    Ok(0)
}
