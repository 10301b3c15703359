//! `outboxd relay rewind` and `outboxd leases`: the relay's position and
//! who runs it, from the command line.
//!
//! Guarantees: a rewind is a request the active relay carries out after its
//! in-flight deliveries settled (re-publishing the same `ce_id`s after the
//! given point), logged and counted there; `leases` only reads.

use chrono::{DateTime, Utc};

use outboxd::config::Config;
use outboxd::store::requests::RequestKind;

use super::{open_existing, relay_ops, BadInput, Failure};

pub async fn rewind(
    cfg: &Config,
    to_position: Option<i64>,
    to_time: Option<String>,
    deadline: relay_ops::Deadline,
) -> Result<u8, Failure> {
    let kind = match (to_position, to_time) {
        (Some(p), None) if p >= 0 => RequestKind::RewindToPosition { position: p },
        (Some(p), None) => return Err(BadInput(format!("--to-position {p}: must be a feed position >= 0")).into()),
        (None, Some(t)) => {
            let t = DateTime::parse_from_rfc3339(&t).map_err(|e| {
                BadInput(format!("--to-time {t:?}: expected RFC 3339, e.g. 2026-12-01T10:00:00Z ({e})"))
            })?;
            RequestKind::RewindToTime { time: t.with_timezone(&Utc) }
        }
        _ => {
            return Err(BadInput("say where to rewind to: --to-position N (SQLite) or --to-time T (CQL)".into()).into())
        }
    };
    relay_ops::request(cfg, kind, None, deadline).await
}

pub async fn leases(cfg: &Config) -> Result<u8, Failure> {
    let store = open_existing(cfg).await?;
    for l in store.lease_list().await? {
        println!("{}", serde_json::to_string(&l)?);
    }
    Ok(0)
}
