//! CdcStreamProcessor (the seeds' name for the relay actor): the
//! [`SupervisedTask`] that runs the relay, i.e. the feed -> Kafka task of
//! this backend:
//! - SQLite: `relay::runner::RelayRunner` (lease-gated terms of
//!   `relay::Relay` on the store's position feed, at-least-once or
//!   exactly-once);
//! - CQL: the Scylla CDC feed of `relay::cdc` (`run_relay_feed`: its own
//!   fenced progress, catch-up, reconciliation), while this instance holds
//!   the relay lease.
//!
//! It reports the relay's role (active/standby), progress, broker and
//! breaker state (`RelayStatus`). On both feeds the next term's producer is
//! made before the lease is waited for (`relay::warm`): a standby is
//! connected when it takes over, and its broker state is on /health.
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

use crate::lease::gate::while_active_prepared;
use crate::lease::keeper::LeaseState;
use crate::relay::cdc::{run_relay_feed, CdcError};
use crate::relay::deliver::Deliverer;
use crate::relay::operator::Unsaved;
use crate::relay::producer::{BrokerState, Delivery};
use crate::relay::runner::{retry_in_term, RelayRunner};
use crate::relay::sink::DeadLetterSink;
use crate::relay::status::FeedState;
use crate::relay::warm::WarmProducer;
use crate::relay::{BreakerState, Role, StatusTx};
use crate::shutdown::Shutdown;
use crate::store::cql::CqlStore;
use crate::store::StoreError;

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
    /// Request outcomes a term could not record, kept across the actor's
    /// restarts (the lease keeper outlives them, so the next term can run at
    /// the same epoch and must record these, not carry them out again).
    unsaved: Unsaved,
}

impl RelayBody {
    pub fn new(sink: Arc<dyn DeadLetterSink>) -> RelayBody {
        RelayBody { sink, unsaved: Unsaved::default() }
    }
}

fn failed(e: impl std::fmt::Display) -> TaskError {
    TaskError::Failed(e.to_string())
}

/// The CQL feed: while this instance holds the relay lease, reads the Scylla
/// CDC log until the term ends (`relay::cdc::run_relay_feed`: progress
/// fenced by the term's epoch, graceful stop), publishing through the
/// producer made while it stood by.
async fn run_cdc_relay(
    deps: ActorDeps,
    cql: Arc<CqlStore>,
    sink: Arc<dyn DeadLetterSink>,
    unsaved: Unsaved,
    shutdown: Shutdown,
) -> Result<(), TaskError> {
    let status = StatusTx::new(deps.relay_status.clone());
    let lease = deps.leases.relay.clone();
    let role_status = status.clone();
    let on_role = move |s: &LeaseState| role_status.lease_role(s);
    // Each term's producer is made before the lease is waited for (as on the
    // position feed, `relay::warm`): a standby is connected when it takes
    // over, and its watch puts its broker state on /health meanwhile.
    let (kafka, warm_status, warm_shutdown) = (deps.cfg.kafka.clone(), status.clone(), shutdown.clone());
    let prepare = move || {
        WarmProducer::start(&kafka, &Delivery::AtLeastOnce, warm_status.clone(), warm_shutdown.clone()).map_err(failed)
    };
    while_active_prepared(lease.as_ref(), shutdown, on_role, prepare, |epoch, warm, term| {
        let (deps, cql, sink, status) = (deps.clone(), cql.clone(), sink.clone(), status.clone());
        let unsaved = unsaved.clone();
        let lease_rx = lease.as_ref().map(|l| l.state());
        let lease_held = lease.is_some();
        let fenced_wait = Duration::from_millis(deps.cfg.relay.lease_ttl_ms.saturating_mul(2));
        async move {
            status.update(|st| {
                st.role = epoch.map(|epoch| Role::Active { epoch }).unwrap_or(Role::Unfenced);
                true
            });
            let WarmProducer { producer, completions, watch } = warm;
            let consumer = deps.cfg.relay.consumer_name.clone();
            let mut ended = term.clone();
            // Before anything of this term reads the park rows or requests:
            // a former holder's late fenced write is refused from here on.
            let fence = match epoch {
                Some(e) => {
                    let fencing = || deps.store.fence_term(&consumer, e);
                    let fenced = |e: &StoreError| matches!(e, StoreError::Fenced { .. });
                    let what = "fence the relay's park rows and requests";
                    match retry_in_term(fencing, fenced, what, &mut term.clone(), &status).await {
                        Some(r) => r,
                        None => {
                            // The term ended (the lease went, or shutdown): its
                            // producer's broker state goes with it, as below.
                            drop(watch);
                            status.broker(&BrokerState::Unknown);
                            return Ok(());
                        }
                    }
                }
                None => Ok(()),
            };
            let res = match fence {
                Err(StoreError::Fenced { .. }) => Err(CdcError::Fenced { consumer }),
                Err(e) => return Err(failed(format!("cannot fence the relay's park rows and requests: {e}"))),
                Ok(()) => {
                    let store = deps.store.clone();
                    let deliverer = Deliverer::with_producer(
                        &deps.cfg,
                        producer,
                        completions,
                        store,
                        sink,
                        deps.metrics.clone(),
                        status.clone(),
                    )
                    .await
                    .map_err(|e| failed(e.message))?
                    .with_epoch(epoch)
                    .with_lease(lease_rx);
                    run_relay_feed(cql, &deps.cfg, Arc::new(deliverer), &deps.metrics, epoch, unsaved, term).await
                }
            };
            if matches!(res, Err(CdcError::Fenced { .. })) && lease_held {
                // The store refused a write fenced by this epoch: another
                // instance took the lease over. Our keeper learns it at its
                // next renewal and the gate then ends the term; waiting for
                // that end itself (bounded; not for the lease state, which
                // can change before the gate fired the term) lets the gate
                // see a failover, not a crash.
                let _ = tokio::time::timeout(fenced_wait, ended.recv()).await;
            }
            drop(watch);
            // This term's producer is gone: its broker state is not known any
            // more until the next one's watch says (a standby must not show
            // a former term's state).
            status.broker(&BrokerState::Unknown);
            res.map_err(failed)
        }
    })
    .await
}

impl TaskBody for RelayBody {
    const INFO: TaskInfo =
        TaskInfo { actor: ActorName::Cdc, task: "relay", on_abort: "unconfirmed events are re-sent on restart" };
    type Status = crate::relay::RelayStatus;

    /// The lease-gated relay: the position feed (`RelayRunner`), or the Scylla
    /// CDC reader for the CQL backend.
    fn spawn(&mut self, deps: &ActorDeps, shutdown: Shutdown) -> Result<TaskFuture, TaskError> {
        let Some(cql) = deps.cql.clone() else {
            let runner = RelayRunner {
                config: deps.cfg.clone(),
                store: deps.store.clone(),
                metrics: deps.metrics.clone(),
                status: StatusTx::new(deps.relay_status.clone()),
                sink: self.sink.clone(),
                lease: deps.leases.relay.clone(),
                pause: deps.relay_pause.clone(),
                unsaved: self.unsaved.clone(),
            };
            return Ok(async move { runner.run(shutdown).await.map_err(failed) }.boxed());
        };
        Ok(run_cdc_relay(deps.clone(), cql, self.sink.clone(), self.unsaved.clone(), shutdown).boxed())
    }

    /// Publish what was committed before the signal, as long as the broker
    /// takes it (bounded: half the deadline, at most [`MAX_CATCH_UP`]). A
    /// standby has nothing to publish.
    fn drain(&self, deps: &ActorDeps, deadline: Duration) -> BoxFuture<'static, ()> {
        let store = deps.store.clone();
        let mut status = deps.relay_status.subscribe();
        let catch_up = (deadline / 2).min(MAX_CATCH_UP);
        async move {
            if !status.borrow().running {
                return;
            }
            // One budget for reading the head and waiting for the relay.
            let until = tokio::time::Instant::now() + catch_up;
            let Ok(Ok(head)) = tokio::time::timeout_at(until, store.head_position()).await else { return };
            let caught_up = tokio::time::timeout_at(
                until,
                status.wait_for(|s| {
                    s.checkpoint.unwrap_or(0) >= head
                        || !s.running
                        || !s.broker.is_reachable()
                        || s.feed != FeedState::Ok
                        || s.breaker != BreakerState::Closed
                }),
            )
            .await
            .is_ok();
            let cp = status.borrow().checkpoint.unwrap_or(0);
            if !caught_up || cp < head {
                tracing::info!(actor = %ActorName::Cdc, checkpoint = cp, head, "stopping the relay before it caught up; the rest is published after restart");
            }
        }
        .boxed()
    }
}
