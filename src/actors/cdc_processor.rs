//! CdcStreamProcessor (the seeds' name for the relay actor): the
//! [`SupervisedTask`] that runs the relay, i.e. the feed -> Kafka task of
//! this backend:
//! - SQLite: `relay::Relay::run` on the store's position feed;
//! - CQL: the Scylla CDC reader of `relay::cdc` (`start_cdc_reader`).
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

use crate::config::CdcConfig;
use crate::relay::cdc::{run_until_shutdown, start_cdc_reader};
use crate::relay::deliver::{DeadLetterSink, Deliverer};
use crate::relay::{BreakerState, Relay, RelayStatus};
use crate::shutdown::{Shutdown, Trigger};
use crate::store::cql::CqlStore;

use super::messages::ActorName;
use super::supervision::{Progress, SupervisedTask, TaskBody, TaskError, TaskFuture};
use super::ActorDeps;

/// Longest wait at shutdown for the relay to publish what is already committed.
const MAX_CATCH_UP: Duration = Duration::from_secs(10);

/// The relay actor.
pub type CdcStreamProcessor = SupervisedTask<RelayBody>;

impl Progress for RelayStatus {
    fn running(&self) -> bool {
        self.running
    }
}

/// What the CdcStreamProcessor runs: the relay of this backend.
pub struct RelayBody {
    deps: ActorDeps,
    /// Where dead letters go (the DlqActor's [`super::DlqSink`]).
    sink: Arc<dyn DeadLetterSink>,
}

impl RelayBody {
    pub fn new(deps: ActorDeps, sink: Arc<dyn DeadLetterSink>) -> RelayBody {
        RelayBody { deps, sink }
    }
}

fn failed(e: impl std::fmt::Display) -> TaskError {
    TaskError::Failed(e.to_string())
}

/// The CQL feed: reads the Scylla CDC log until `shutdown`, then stops the
/// reader gracefully (`relay::cdc::run_until_shutdown`).
async fn run_cdc_reader(
    cql: Arc<CqlStore>,
    cdc: CdcConfig,
    deliverer: Arc<Deliverer>,
    shutdown: Shutdown,
) -> Result<(), TaskError> {
    let abandon = Trigger::new();
    let (reader, handle) =
        start_cdc_reader(cql.session(), cql.keyspace(), &cdc, deliverer, abandon.subscribe()).await.map_err(failed)?;
    run_until_shutdown(reader, handle, abandon, shutdown, "CDC reader").await.map_err(failed)
}

impl TaskBody for RelayBody {
    const NAME: ActorName = ActorName::Cdc;
    const TASK: &'static str = "relay";
    const ON_ABORT: &'static str = "unconfirmed events are re-sent on restart";
    type Status = RelayStatus;

    fn deps(&self) -> &ActorDeps {
        &self.deps
    }

    /// `Relay::run` on the position feed, or the Scylla CDC reader for the
    /// CQL backend.
    fn spawn(&mut self, shutdown: Shutdown) -> Result<TaskFuture, TaskError> {
        let cfg = &self.deps.cfg;
        let status = self.deps.relay_status.clone();
        match self.deps.cql.clone() {
            None => {
                let relay = Relay::with_status(cfg, self.deps.store.clone(), self.deps.metrics.clone(), status)
                    .map_err(failed)?
                    .with_sink(self.sink.clone());
                Ok(async move { relay.run(shutdown).await.map_err(failed) }.boxed())
            }
            Some(cql) => {
                let deliverer = Deliverer::new(cfg, self.sink.clone(), self.deps.metrics.clone(), status)
                    .map_err(|e| TaskError::Failed(e.message))?;
                Ok(run_cdc_reader(cql, cfg.store.cql.cdc.clone(), Arc::new(deliverer), shutdown).boxed())
            }
        }
    }

    fn status(&self) -> RelayStatus {
        self.deps.relay_status.borrow().clone()
    }

    fn mark_stopped(&self) {
        self.deps.relay_status.send_modify(|s| s.running = false);
    }

    /// Publish what was committed before the signal, as long as the broker
    /// takes it (bounded: half the deadline, at most [`MAX_CATCH_UP`]).
    fn drain(&self, deadline: Duration) -> BoxFuture<'static, ()> {
        let store = self.deps.store.clone();
        let mut status = self.deps.relay_status.subscribe();
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
