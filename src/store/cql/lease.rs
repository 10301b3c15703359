//! CQL leases (`relay_leases`): the lease is the static part of a partition
//! keyed by consumer name (holder, epoch, counter, ttl, position); the
//! scylla-cdc progress of that consumer lives in the same partition
//! (clustering rows by stream id), so one single-partition LWT can check the
//! epoch and write progress or a checkpoint.
//!
//! Guarantees:
//! - Every write is a lightweight transaction (`IF epoch = null` /
//!   `IF epoch = ? AND counter = ?`), reads are SERIAL: two instances can
//!   never both win an epoch, and a reader sees the last committed lease.
//! - An LWT whose outcome is unknown (timeout, broken connection) is checked
//!   by a SERIAL read before answering (which also finishes any Paxos round
//!   in progress): applied if the row now is exactly what we wrote, else
//!   `OutcomeUnknown` (a proposal a minority accepted may still be completed
//!   later; the keeper adopts the write if it reads it back).
//! - `set_checkpoint_fenced` is `UPDATE ... SET position = ? IF epoch = ?`.

use chrono::{DateTime, Utc};
use scylla::statement::{Consistency, SerialConsistency, Statement};
use scylla::value::CqlValue;

use super::append::outcome_unknown;
use super::rows::{as_bigint, lwt_answer};
use super::{codec, exec_err, CqlStore};
use crate::store::lease::{Lease, LeaseCas, LeaseInfo};
use crate::store::StoreError;

type LeaseRow = (Option<String>, Option<i64>, Option<i64>, Option<i64>);

impl CqlStore {
    /// The consistency of a read that must see every decided LWT: the
    /// configured serial level (SERIAL or LOCAL_SERIAL).
    pub(super) fn serial_consistency(&self) -> Consistency {
        match self.serial {
            SerialConsistency::Serial => Consistency::Serial,
            SerialConsistency::LocalSerial => Consistency::LocalSerial,
        }
    }

    pub(super) fn serial_read(&self, cql: String) -> Statement {
        let mut st = Statement::new(cql);
        st.set_consistency(self.serial_consistency());
        st.set_is_idempotent(true);
        st
    }

    pub(super) async fn lease_read(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let st = self.serial_read(format!(
            "SELECT holder, epoch, counter, ttl_ms FROM {} WHERE name = ? LIMIT 1",
            self.t("relay_leases")
        ));
        let res = self.session.query_unpaged(st, (name,)).await.map_err(|e| exec_err("read lease", e))?;
        let row = res.into_rows_result().map_err(codec)?.maybe_first_row::<LeaseRow>().map_err(codec)?;
        Ok(match row {
            Some((holder, Some(epoch), counter, ttl)) => Some(Lease {
                name: name.to_string(),
                holder: holder.unwrap_or_default(),
                epoch,
                counter: counter.unwrap_or(0),
                ttl_ms: ttl.unwrap_or(0),
            }),
            _ => None,
        })
    }

    pub(super) async fn lease_write(&self, cas: &LeaseCas) -> Result<bool, StoreError> {
        let n = &cas.new;
        let t = self.t("relay_leases");
        let now: DateTime<Utc> = Utc::now();
        let res = match cas.expected {
            None => {
                let cql = format!("UPDATE {t} SET holder = ?, epoch = ?, counter = ?, ttl_ms = ?, renewed_at = ? WHERE name = ? IF epoch = null");
                self.session.query_unpaged(cql, (&n.holder, n.epoch, n.counter, n.ttl_ms, now, &n.name)).await
            }
            Some((epoch, counter)) => {
                let cql = format!("UPDATE {t} SET holder = ?, epoch = ?, counter = ?, ttl_ms = ?, renewed_at = ? WHERE name = ? IF epoch = ? AND counter = ?");
                self.session
                    .query_unpaged(cql, (&n.holder, n.epoch, n.counter, n.ttl_ms, now, &n.name, epoch, counter))
                    .await
            }
        };
        match res {
            Ok(r) => Ok(lwt_answer(r, "epoch")?.0),
            Err(e) if outcome_unknown(&e) => {
                // Resolve: a SERIAL read finishes any round in progress; the
                // row ours now means applied. Not ours does not mean "not
                // applied": a proposal accepted by a minority can still be
                // completed by a later round. Unknown, then: the keeper
                // remembers the write and adopts it if it is read back.
                tracing::debug!(lease = %n.name, error = %e, "lease write outcome unknown; resolving with a serial read");
                let now = self.lease_read(&n.name).await?;
                if now.as_ref().is_some_and(|l| l.holder == n.holder && l.epoch == n.epoch && l.counter == n.counter) {
                    return Ok(true);
                }
                Err(StoreError::OutcomeUnknown(format!("lease write of {}: {e} (not visible yet)", n.name)))
            }
            Err(e) => Err(exec_err("write lease", e)),
        }
    }

    pub(super) async fn lease_all(&self) -> Result<Vec<LeaseInfo>, StoreError> {
        let cql = format!(
            "SELECT DISTINCT name, holder, epoch, counter, ttl_ms, renewed_at, position FROM {}",
            self.t("relay_leases")
        );
        let res = self.session.query_unpaged(cql, ()).await.map_err(|e| exec_err("list leases", e))?;
        type Row = (String, Option<String>, Option<i64>, Option<i64>, Option<i64>, Option<DateTime<Utc>>, Option<i64>);
        let mut out = Vec::new();
        for r in res.into_rows_result().map_err(codec)?.rows::<Row>().map_err(codec)? {
            let (name, holder, epoch, counter, ttl, renewed_at, position) = r.map_err(codec)?;
            let Some(epoch) = epoch else { continue };
            out.push(LeaseInfo {
                lease: Lease {
                    name,
                    holder: holder.unwrap_or_default(),
                    epoch,
                    counter: counter.unwrap_or(0),
                    ttl_ms: ttl.unwrap_or(0),
                },
                renewed_at,
                position,
            });
        }
        out.sort_by(|a, b| a.lease.name.cmp(&b.lease.name));
        Ok(out)
    }

    pub(super) async fn checkpoint_fenced(&self, name: &str, epoch: i64, position: i64) -> Result<(), StoreError> {
        let cql = format!("UPDATE {} SET position = ? WHERE name = ? IF epoch = ?", self.t("relay_leases"));
        let res = match self.session.query_unpaged(cql, (position, name, epoch)).await {
            Ok(r) => r,
            Err(e) if outcome_unknown(&e) => {
                // Resolve: applied iff the epoch is still ours and the position is what we wrote.
                let st = self.serial_read(format!(
                    "SELECT epoch, position FROM {} WHERE name = ? LIMIT 1",
                    self.t("relay_leases")
                ));
                let res =
                    self.session.query_unpaged(st, (name,)).await.map_err(|e| exec_err("read fenced checkpoint", e))?;
                let row = res
                    .into_rows_result()
                    .map_err(codec)?
                    .maybe_first_row::<(Option<i64>, Option<i64>)>()
                    .map_err(codec)?;
                return match row {
                    Some((Some(e), Some(p))) if e == epoch && p == position => Ok(()),
                    Some((current, _)) if current != Some(epoch) => {
                        Err(StoreError::Fenced { name: name.into(), epoch, current })
                    }
                    _ => Err(StoreError::Unavailable(format!("fenced checkpoint of {name}: outcome unknown"))),
                };
            }
            Err(e) => return Err(exec_err("write fenced checkpoint", e)),
        };
        let (applied, current) = lwt_answer(res, "epoch")?;
        if applied {
            Ok(())
        } else {
            Err(StoreError::Fenced { name: name.to_string(), epoch, current: as_bigint(current)? })
        }
    }

    /// `Fenced` unless lease `name` is at `epoch` now (a SERIAL read: the
    /// last committed lease write).
    pub(super) async fn fence_check(&self, name: &str, epoch: i64) -> Result<(), StoreError> {
        let current = self.lease_read(name).await?.map(|l| l.epoch);
        if current == Some(epoch) {
            Ok(())
        } else {
            Err(StoreError::Fenced { name: name.to_string(), epoch, current })
        }
    }

    /// The fenced checkpoint kept with the lease (position feeds only).
    pub(super) async fn lease_position(&self, name: &str) -> Result<Option<i64>, StoreError> {
        let st = self.serial_read(format!("SELECT position FROM {} WHERE name = ? LIMIT 1", self.t("relay_leases")));
        let res = self.session.query_unpaged(st, (name,)).await.map_err(|e| exec_err("read fenced checkpoint", e))?;
        let row = res.into_rows_result().map_err(codec)?.maybe_first_row::<(Option<CqlValue>,)>().map_err(codec)?;
        Ok(row.and_then(|(v,)| as_bigint(v).ok().flatten()))
    }
}
