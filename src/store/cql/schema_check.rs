//! Whether the schema `migrate` would create is already in place, read
//! from `system_schema` (and the CDC origin row) without DDL or writes.
//!
//! Guarantee: [`CqlStore::schema_gap`] answers `None` only when every table
//! of `schema.cql`, every column an upgrade adds, CDC with outboxd's options
//! (on ScyllaDB) and the CDC origin row are all there; a read that fails
//! names itself as the gap, so `migrate` falls back to its idempotent DDL
//! (and never skips a statement it needs). This is what lets `outboxd run`
//! start under a role without CREATE or ALTER once `outboxd schema` ran as
//! an admin role (docs/OPERATIONS.md, "Grants of the relay role"), and keeps
//! instances that start together from racing on schema statements.

use std::collections::HashSet;

use super::schema::schema_statements;
use super::{CqlStore, CDC_ORIGIN_CHECKPOINT};

/// Columns added after their table was first created (schema upgrades):
/// `migrate` adds each one with `ALTER TABLE ... ADD` when it is missing.
pub(super) const UPGRADE_COLUMNS: [(&str, &str, &str); 5] = [
    ("event_store", "trace_parent", "text"),
    ("event_store", "trace_state", "text"),
    ("parked_aggregates", "fence_epoch", "bigint static"),
    ("relay_requests", "fence_epoch", "bigint static"),
    ("dead_letter_queue", "last_letter", "uuid"),
];

/// The table names `statements` create (`CREATE TABLE IF NOT EXISTS ks.t (`).
pub fn created_tables(statements: &[String]) -> Vec<String> {
    const CREATE: &str = "CREATE TABLE IF NOT EXISTS ";
    statements
        .iter()
        .filter_map(|s| s.trim_start().strip_prefix(CREATE))
        .filter_map(|rest| rest.split(|c: char| c == '(' || c.is_whitespace()).next())
        .map(|qualified| qualified.rsplit('.').next().unwrap_or(qualified).to_string())
        .collect()
}

impl CqlStore {
    /// What of the schema is missing (for the log), or `None` when all of it
    /// is in place (see the module doc).
    pub(super) async fn schema_gap(&self) -> Option<String> {
        let statements = schema_statements(&self.keyspace, self.replication_factor, self.scylla, self.log_ttl_seconds);
        let q = "SELECT table_name, column_name FROM system_schema.columns WHERE keyspace_name = ?";
        let rows = match self.session.query_unpaged(q, (&self.keyspace,)).await {
            Ok(res) => res.into_rows_result().map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let columns = rows.and_then(|r| {
            let rows = r.rows::<(String, String)>().map_err(|e| e.to_string())?;
            rows.collect::<Result<HashSet<_>, _>>().map_err(|e| e.to_string())
        });
        let columns = match columns {
            Ok(c) => c,
            Err(e) => return Some(format!("system_schema.columns unreadable: {e}")),
        };
        let missing: Vec<String> = created_tables(&statements)
            .into_iter()
            .filter(|t| !columns.iter().any(|(table, _)| table == t))
            .map(|t| format!("table {t}"))
            .chain(
                UPGRADE_COLUMNS
                    .iter()
                    .filter(|(t, c, _)| !columns.contains(&(t.to_string(), c.to_string())))
                    .map(|(t, c, _)| format!("column {t}.{c}")),
            )
            .collect();
        if !missing.is_empty() {
            return Some(missing.join(", "));
        }
        let on = match self.refresh_cdc_flag().await {
            Ok(on) => on,
            Err(e) => return Some(format!("CDC flag unreadable: {e}")),
        };
        if self.scylla {
            if !on {
                return Some("CDC is not enabled on event_store".into());
            }
            let drift = self.cdc_options_drift().await;
            if !drift.is_empty() {
                return Some(format!("CDC options of event_store: {}", drift.join(", ")));
            }
        }
        if on {
            let q = format!("SELECT position FROM {}.checkpoints WHERE consumer = ?", self.keyspace);
            let found = match self.session.query_unpaged(q, (CDC_ORIGIN_CHECKPOINT,)).await {
                Ok(res) => res.into_rows_result().map(|r| r.rows_num() > 0).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match found {
                Ok(true) => {}
                Ok(false) => return Some(format!("the CDC origin row ({CDC_ORIGIN_CHECKPOINT})")),
                Err(e) => return Some(format!("the CDC origin row unreadable: {e}")),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_of_the_schema_is_named_once_without_its_keyspace() {
        let tables = created_tables(&schema_statements("ks_x", 3, true, 86_400));
        let mut sorted = tables.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), tables.len(), "{tables:?}");
        for t in ["event_store", "checkpoints", "relay_leases", "append_reconciliation", "relay_requests"] {
            assert!(tables.iter().any(|x| x == t), "{t} in {tables:?}");
        }
        assert!(tables.iter().all(|t| !t.contains('.') && !t.contains('(') && !t.is_empty()), "{tables:?}");
        // Every upgrade column belongs to a table of the schema.
        for (t, _, _) in UPGRADE_COLUMNS {
            assert!(tables.iter().any(|x| x == t), "{t}");
        }
        // The keyspace statement is not a table.
        assert!(!tables.iter().any(|t| t.starts_with("ks_x")), "{tables:?}");
    }
}
