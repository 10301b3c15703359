//! CdcStreamProcessor (the seeds' name for the relay actor): the
//! [`SupervisedTask`] that runs the relay, i.e. the feed -> Kafka task of
//! this backend:
//! - SQLite: `relay::Relay::run` on the store's position feed;
//! - CQL: the Scylla CDC feed of `relay::cdc` (`run_relay_feed`).
//!
//! It reports the relay's progress, lag and breaker state (`RelayStatus`).
//! Thin body: the relay owns reading, publishing, retries, the breaker and
//! checkpoints; the shell (`supervision::shell`) owns spawning, watching,
//! restarts and stopping. The relay resumes from its persisted checkpoint,
//! so a restart re-sends at most the unconfirmed tail (same `ce_id`).
//!
//! Drain at shutdown: intake is already closed; before its shutdown signal
//! the relay gets up to half the stop deadline (at most 10 s) to publish what
//! was committed before the signal, as long as the broker takes it.

use futures::future::{BoxFuture, FutureExt};
use std::sync::Arc;
use std::time::Duration;

use crate::relay::cdc::run_relay_feed;
use crate::relay::deliver::{DeadLetterSink, Deliverer};
use crate::relay::{BreakerState, Relay, RelayStatus};
use crate::shutdown::Shutdown;

use super::messages::ActorName;
use super::supervision::{SupervisedTask, TaskBody, TaskError, TaskFuture, TaskInfo};
use super::ActorDeps;

/// Longest wait at shutdown for the relay to publish what is already committed.
const MAX_CATCH_UP: Duration = Duration::from_secs(10);

/// The relay actor.
pub type CdcStreamProcessor = SupervisedTask<RelayBody>;

/// What the CdcStreamProcessor runs: the relay of this backend, with dead
/// letters going to `sink` (the DlqActor's [`super::DlqSink`]).
pub struct RelayBody {
    pub sink: Arc<dyn DeadLetterSink>,
}

fn failed(e: impl std::fmt::Display) -> TaskError {
    TaskError::Failed(e.to_string())
}

impl TaskBody for RelayBody {
    const INFO: TaskInfo =
        TaskInfo { actor: ActorName::Cdc, task: "relay", on_abort: "unconfirmed events are re-sent on restart" };
    type Status = RelayStatus;

    /// `Relay::run` on the position feed, or the Scylla CDC reader for the
    /// CQL backend.
    fn spawn(&mut self, deps: &ActorDeps, shutdown: Shutdown) -> Result<TaskFuture, TaskError> {
        let (cfg, status) = (&deps.cfg, deps.relay_status.clone());
        let Some(cql) = deps.cql.clone() else {
            let relay = Relay::with_status(cfg, deps.store.clone(), deps.metrics.clone(), status)
                .map_err(failed)?
                .with_sink(self.sink.clone());
            return Ok(async move { relay.run(shutdown).await.map_err(failed) }.boxed());
        };
        let deliverer = Deliverer::new(cfg, self.sink.clone(), deps.metrics.clone(), status)
            .map_err(|e| TaskError::Failed(e.message))?;
        let (cfg, metrics) = (cfg.clone(), deps.metrics.clone());
        Ok(async move { run_relay_feed(cql, &cfg, Arc::new(deliverer), &metrics, None, shutdown).await.map_err(failed) }
            .boxed())
    }

    /// Publish what was committed before the signal, as long as the broker
    /// takes it (bounded: half the deadline, at most [`MAX_CATCH_UP`]).
    fn drain(&self, deps: &ActorDeps, deadline: Duration) -> BoxFuture<'static, ()> {
        let store = deps.store.clone();
        let mut status = deps.relay_status.subscribe();
        let catch_up = (deadline / 2).min(MAX_CATCH_UP);
        async move {
            let Ok(Ok(head)) = tokio::time::timeout(catch_up, store.head_position()).await else { return };
            let caught_up = tokio::time::timeout(
                catch_up,
                status.wait_for(|s| {
                    s.checkpoint >= head || !s.running || !s.broker_ok || !s.store_ok || s.breaker != BreakerState::Closed
                }),
            )
            .await
            .is_ok();
            let cp = status.borrow().checkpoint;
            if !caught_up || cp < head {
                tracing::info!(actor = %ActorName::Cdc, checkpoint = cp, head, "stopping the relay before it caught up; the rest is published after restart");
            }
        }
        .boxed()
    }
}
