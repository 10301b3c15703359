//! ProjectionActor: the [`SupervisedTask`] that runs the projector, i.e. the
//! store's feed -> `order_read_model`, `orders_by_customer`,
//! `customer_read_model`:
//! - SQLite: `projection::Projector::run` on the position feed;
//! - CQL: the CDC projection (`projection::cql::run_cdc_projection`, its own
//!   scylla-cdc progress). Without a CDC log (Apache Cassandra) the body is
//!   disabled: the actor logs "read models on CQL need ScyllaDB CDC" and
//!   stays Stopped.
//!
//! It reports the projector's checkpoint, lag and store errors
//! (`ProjectionStatus`). Thin body, same shell and policy as the
//! CdcStreamProcessor (restart budget, exponential backoff,
//! `actor_restarts_total{actor="projection_actor"}`). The projector resumes
//! from its checkpoint (on SQLite rows and checkpoint commit together; rows
//! are idempotent by (aggregate id, sequence)), so a restart changes no row.
//! Only started when the backend has read models; see the coordinator.
//! With several instances on one store, only the holder of the
//! `projections` lease projects; the others stand by (the projector's
//! compare-and-set on its checkpoint keeps two writers safe anyway).

use futures::future::FutureExt;

use crate::lease::gate::while_active;
use crate::lease::keeper::LeaseState;
use crate::projection::{DynReadModels, ProjectionStatus, Projector, ProjectorOptions};
use crate::shutdown::Shutdown;

use super::messages::ActorName;
use super::supervision::{SupervisedTask, TaskBody, TaskError, TaskFuture, TaskInfo};
use super::ActorDeps;

/// The projection actor.
pub type ProjectionActor = SupervisedTask<ProjectionBody>;

/// What the ProjectionActor runs: the projector of this backend, writing
/// to `models`.
pub struct ProjectionBody {
    pub models: DynReadModels,
}

impl TaskBody for ProjectionBody {
    const INFO: TaskInfo =
        TaskInfo { actor: ActorName::Projection, task: "projector", on_abort: "it resumes from its checkpoint" };
    type Status = ProjectionStatus;

    /// The projector runs only while this instance holds the projection's
    /// lease (`projections`); a standby waits.
    fn spawn(&mut self, deps: &ActorDeps, shutdown: Shutdown) -> Result<TaskFuture, TaskError> {
        let status = deps.projection_status.clone();
        let lease = deps.leases.projection.clone();
        let Some(cql) = deps.cql.clone() else {
            let opts = ProjectorOptions::from_config(&deps.cfg);
            let (store, models, metrics) = (deps.store.clone(), self.models.clone(), deps.metrics.clone());
            return Ok(async move {
                while_active(
                    lease.as_ref(),
                    shutdown,
                    |state| standing_by(&status, state),
                    |_epoch, term| {
                        let projector = Projector::with_status(
                            store.clone(),
                            models.clone(),
                            metrics.clone(),
                            opts.clone(),
                            status.clone(),
                        );
                        async move {
                            projector.run(term).await;
                            Ok::<(), TaskError>(())
                        }
                    },
                )
                .await
            }
            .boxed());
        };
        // CQL: the feed is the Scylla CDC log; without it there is nothing to project.
        if !cql.cdc_enabled() {
            let why = format!(
                "read models on CQL need ScyllaDB CDC ({}.event_store has no CDC log); projection not started",
                cql.keyspace()
            );
            status.send_modify(|s| {
                s.running = false;
                s.last_error = Some(why.clone());
            });
            return Err(TaskError::Disabled(why));
        }
        let (cfg, metrics) = (deps.cfg.clone(), deps.metrics.clone());
        Ok(async move {
            while_active(
                lease.as_ref(),
                shutdown,
                |state| standing_by(&status, state),
                |_epoch, term| {
                    let (cql, cfg, status, metrics) = (cql.clone(), cfg.clone(), status.clone(), metrics.clone());
                    async move {
                        crate::projection::cql::run_cdc_projection(cql, &cfg, status, &metrics, term)
                            .await
                            .map_err(|e| TaskError::Failed(format!("CQL projection (CDC reader): {e}")))
                    }
                },
            )
            .await
        }
        .boxed())
    }
}

/// Records whether another instance holds the `projections` lease (for
/// /health). A standby projects nothing: its last term's store error and
/// parked count are dropped (the active instance reports its own; they
/// kept a standby Degraded for good).
fn standing_by(status: &tokio::sync::watch::Sender<ProjectionStatus>, state: &LeaseState) {
    let standby = match state {
        LeaseState::Standby { holder, .. } if holder.is_empty() => Some("none (released)".to_string()),
        LeaseState::Standby { holder, .. } => Some(holder.clone()),
        _ => None,
    };
    status.send_if_modified(|s| {
        let changed = s.standby != standby;
        if changed && standby.is_some() {
            s.store_ok = true;
            s.last_error = None;
            s.parked_aggregates = 0;
        }
        s.standby = standby;
        changed
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_drops_its_former_terms_store_error_and_parks() {
        let failing = ProjectionStatus {
            store_ok: false,
            last_error: Some("disk I/O error".into()),
            parked_aggregates: 2,
            ..Default::default()
        };
        let (tx, rx) = tokio::sync::watch::channel(failing);
        standing_by(&tx, &LeaseState::Standby { holder: "host-b:1:2".into(), epoch: 3, ttl_ms: 30_000 });
        let s = rx.borrow().clone();
        assert!(s.store_ok && s.last_error.is_none() && s.parked_aggregates == 0, "{s:?}");
        assert_eq!(s.standby.as_deref(), Some("host-b:1:2"));
    }
}
