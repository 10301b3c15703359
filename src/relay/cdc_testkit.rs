//! Test-only helpers of the CDC pieces: a fresh keyspace with the outboxd
//! schema on the Cassandra of `CASSANDRA_URI` (or Scylla of `SCYLLA_URI`),
//! and the lease row the lease code will own.
//!
//! Guarantee: every call gets its own keyspace; without a server the caller
//! gets `None` and a "SKIPPED" line saying what to set.

use scylla::client::session::Session;
use std::sync::Arc;
use uuid::Uuid;

use crate::config::CqlConfig;
use crate::store::cql::CqlStore;
use crate::store::EventStore;

/// A migrated store in a fresh keyspace, or `None` (skip) without a server.
pub async fn live_store(what: &str) -> Option<Arc<CqlStore>> {
    let uri = std::env::var("CASSANDRA_URI").ok().or_else(|| std::env::var("SCYLLA_URI").ok()).filter(|s| !s.is_empty());
    let Some(uri) = uri else {
        eprintln!("SKIPPED: {what}: set CASSANDRA_URI (make test starts one) or SCYLLA_URI");
        return None;
    };
    let cfg = CqlConfig { uri, keyspace: format!("k_{}", Uuid::now_v7().simple()), ..CqlConfig::default() };
    let store = CqlStore::connect(&cfg).await.expect("connect to the CQL server");
    store.migrate().await.expect("outboxd schema");
    // PHASE-A stand-in: these two tables move into schema.cql (migrate).
    for ddl in [PHASE_A_LEASES, PHASE_A_RECONCILIATION] {
        store.session().query_unpaged(ddl.replace("outbox.", &format!("{}.", store.keyspace())), ()).await.expect("create table");
    }
    Some(store)
}

const PHASE_A_LEASES: &str = "CREATE TABLE IF NOT EXISTS outbox.relay_leases (name text, stream_id blob, holder text STATIC, epoch bigint STATIC, \
    counter bigint STATIC, ttl_ms bigint STATIC, renewed_at timestamp STATIC, position bigint STATIC, generation timestamp, time timestamp, \
    PRIMARY KEY ((name), stream_id))";
const PHASE_A_RECONCILIATION: &str = "CREATE TABLE IF NOT EXISTS outbox.append_reconciliation (aggregate_id uuid, sequence_number bigint, \
    event_id uuid, resolved_at timestamp, PRIMARY KEY (aggregate_id, sequence_number))";

/// Moves the lease epoch of `name` from `from` to `to` with a compare-and-set
/// (what a takeover does; the lease code owns the real one).
pub async fn set_epoch(session: &Session, keyspace: &str, name: &str, from: Option<i64>, to: i64) {
    let res = match from {
        None => session.query_unpaged(format!("UPDATE {keyspace}.relay_leases SET epoch = ? WHERE name = ? IF epoch = null"), (to, name)).await,
        Some(f) => session.query_unpaged(format!("UPDATE {keyspace}.relay_leases SET epoch = ? WHERE name = ? IF epoch = ?"), (to, name, f)).await,
    };
    let rows = res.expect("set the lease epoch").into_rows_result().expect("LWT answer");
    let (applied,) = rows.first_row::<(bool,)>().expect("[applied] first");
    assert!(applied, "lease epoch of {name} was not {from:?}");
}
