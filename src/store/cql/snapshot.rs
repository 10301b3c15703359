//! Aggregate snapshots in the CQL store.
//!
//! Guarantee: `INSERT ... IF NOT EXISTS`, else `UPDATE ... IF version < ?`,
//! so an older snapshot never replaces a newer one, whatever the order in
//! which concurrent writers arrive.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::rows::{as_bigint, lwt_answer};
use super::{codec, exec_err, unavailable, CqlStore, MAX_CAS_ROUNDS};
use crate::store::{Snapshot, StoreError};

impl CqlStore {
    pub(super) async fn store_snapshot(&self, snap: Snapshot) -> Result<(), StoreError> {
        let s = self.stmts().await?;
        let state = serde_json::to_string(&snap.state).map_err(codec)?;
        for _ in 0..MAX_CAS_ROUNDS {
            let res = self
                .session
                .execute_unpaged(
                    &s.snap_insert,
                    (snap.aggregate_id, &snap.aggregate_type, snap.version, snap.state_schema, &state, snap.created_at),
                )
                .await
                .map_err(|e| exec_err("write snapshot", e))?;
            let (inserted, current) = lwt_answer(res, "version")?;
            if inserted {
                return Ok(());
            }
            if as_bigint(current)?.is_some_and(|v| v >= snap.version) {
                return Ok(()); // a newer (or equal) snapshot is already there
            }
            let res = self
                .session
                .execute_unpaged(
                    &s.snap_update,
                    (
                        &snap.aggregate_type,
                        snap.version,
                        snap.state_schema,
                        &state,
                        snap.created_at,
                        snap.aggregate_id,
                        snap.version,
                    ),
                )
                .await
                .map_err(|e| exec_err("update snapshot", e))?;
            let (updated, current) = lwt_answer(res, "version")?;
            if updated || as_bigint(current)?.is_some_and(|v| v >= snap.version) {
                return Ok(());
            }
        }
        Err(unavailable(format!("snapshot of {}: too much contention", snap.aggregate_id)))
    }

    pub(super) async fn read_snapshot(&self, aggregate_id: Uuid) -> Result<Option<Snapshot>, StoreError> {
        let s = self.stmts().await?;
        let res = self
            .session
            .execute_unpaged(&s.snap_load, (aggregate_id,))
            .await
            .map_err(|e| exec_err("read snapshot", e))?;
        type SnapRow = (Option<String>, Option<i64>, Option<i32>, Option<String>, Option<DateTime<Utc>>);
        let Some((aggregate_type, version, state_schema, state, created_at)) =
            res.into_rows_result().map_err(codec)?.maybe_first_row::<SnapRow>().map_err(codec)?
        else {
            return Ok(None);
        };
        let req = |col: &str| codec(format!("snapshot of {aggregate_id} has null {col}"));
        Ok(Some(Snapshot {
            aggregate_id,
            aggregate_type: aggregate_type.ok_or_else(|| req("aggregate_type"))?,
            version: version.ok_or_else(|| req("version"))?,
            state_schema: state_schema.ok_or_else(|| req("state_schema"))?,
            state: serde_json::from_str(&state.ok_or_else(|| req("state"))?)
                .map_err(|e| codec(format!("snapshot state of {aggregate_id} is not JSON: {e}")))?,
            created_at: created_at.ok_or_else(|| req("created_at"))?,
        }))
    }
}
