//! DlqActor: owns dead-letter writes, listing and replay.
//!
//! Thin shell over the store's dead-letter table and `relay::dlq::replay`.
//! The relay reaches it through [`DlqSink`], its `DeadLetterSink`.
//! Policy: resume. A failing write or replay is logged and returned to the
//! caller (the relay retries a dead-letter write until it is durable); the
//! actor itself keeps serving.

use actix::prelude::*;
use async_trait::async_trait;
use std::collections::HashSet;
use uuid::Uuid;

use crate::relay::deliver::DeadLetterSink;
use crate::relay::dlq::{replay, ReplayReport};
use crate::relay::KafkaPublisher;
use crate::store::{DeadLetter, StoreError};

use super::messages::{ActorError, ActorName, InjectFailure, Lifecycle, Ping, StopActor};
use super::ActorDeps;

/// Durably records a dead letter (the relay's `DeadLetterSink`).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), StoreError>")]
pub struct WriteDeadLetter(pub DeadLetter);

#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Result<Vec<DeadLetter>, StoreError>")]
pub struct ListDeadLetters {
    pub limit: usize,
}

/// Re-publishes dead letters (all, or the given ids) and removes the ones
/// the broker confirmed.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<ReplayReport, ActorError>")]
pub struct ReplayDeadLetters {
    pub ids: Option<Vec<Uuid>>,
}

#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Result<u64, StoreError>")]
pub struct CountDeadLetters;

const NAME: ActorName = ActorName::Dlq;

pub struct DlqActor {
    deps: ActorDeps,
    publisher: Option<KafkaPublisher>,
    stopped: bool,
}

impl DlqActor {
    pub fn new(deps: ActorDeps) -> DlqActor {
        DlqActor { deps, publisher: None, stopped: false }
    }

    fn refresh_depth(&self, ctx: &mut Context<Self>) {
        let store = self.deps.store.clone();
        let gauge = self.deps.metrics.dlq_depth.clone();
        ctx.spawn(actix::fut::wrap_future::<_, Self>(async move {
            match store.dlq_count().await {
                Ok(n) => gauge.set(n as i64),
                Err(e) => tracing::warn!(actor = %NAME, error = %e, "cannot count dead letters"),
            }
        }));
    }
}

impl Actor for DlqActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        tracing::info!(actor = %NAME, "started");
        self.refresh_depth(ctx);
    }
}

impl Handler<WriteDeadLetter> for DlqActor {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, msg: WriteDeadLetter, _ctx: &mut Context<Self>) -> Self::Result {
        self.deps.received(NAME);
        let store = self.deps.store.clone();
        Box::pin(async move {
            let id = msg.0.event_id;
            let r = store.dlq_insert(msg.0).await;
            if let Err(e) = &r {
                tracing::warn!(actor = %NAME, event_id = %id, error = %e, "dead-letter write failed");
            }
            r
        })
    }
}

impl Handler<ListDeadLetters> for DlqActor {
    type Result = ResponseFuture<Result<Vec<DeadLetter>, StoreError>>;

    fn handle(&mut self, msg: ListDeadLetters, _ctx: &mut Context<Self>) -> Self::Result {
        self.deps.received(NAME);
        let store = self.deps.store.clone();
        Box::pin(async move { store.dlq_list(msg.limit.clamp(1, 10_000)).await })
    }
}

impl Handler<CountDeadLetters> for DlqActor {
    type Result = ResponseFuture<Result<u64, StoreError>>;

    fn handle(&mut self, _msg: CountDeadLetters, _ctx: &mut Context<Self>) -> Self::Result {
        self.deps.received(NAME);
        let store = self.deps.store.clone();
        Box::pin(async move { store.dlq_count().await })
    }
}

impl Handler<ReplayDeadLetters> for DlqActor {
    /// One replay at a time (the actor waits for it).
    type Result = AtomicResponse<Self, Result<ReplayReport, ActorError>>;

    fn handle(&mut self, msg: ReplayDeadLetters, _ctx: &mut Context<Self>) -> Self::Result {
        self.deps.received(NAME);
        if self.stopped {
            return AtomicResponse::new(Box::pin(actix::fut::ready(Err(ActorError::ShuttingDown))));
        }
        if self.publisher.is_none() {
            match KafkaPublisher::new(&self.deps.cfg.kafka) {
                Ok(p) => self.publisher = Some(p),
                Err(e) => {
                    tracing::error!(actor = %NAME, error = %e, "cannot create a producer for replay");
                    return AtomicResponse::new(Box::pin(actix::fut::ready(Err(ActorError::Publisher(e.message)))));
                }
            }
        }
        let publisher = self.publisher.clone().expect("set above");
        let store = self.deps.store.clone();
        let currency = self.deps.cfg.service.default_currency.clone();
        let gauge = self.deps.metrics.dlq_depth.clone();
        let fut = async move {
            let letters = store.dlq_list(100_000).await?;
            let chosen: Vec<DeadLetter> = match msg.ids {
                None => letters,
                Some(ids) => {
                    let ids: HashSet<_> = ids.into_iter().collect();
                    letters.into_iter().filter(|l| ids.contains(&l.id)).collect()
                }
            };
            let report = replay(&store, &publisher, chosen, &currency).await?;
            if let Ok(n) = store.dlq_count().await {
                gauge.set(n as i64);
            }
            tracing::info!(actor = %NAME, replayed = report.replayed.len(), failed = report.failed.len(), "dead letters replayed");
            Ok(report)
        };
        AtomicResponse::new(Box::pin(actix::fut::wrap_future::<_, Self>(fut)))
    }
}

impl Handler<StopActor> for DlqActor {
    type Result = ();

    fn handle(&mut self, _msg: StopActor, _ctx: &mut Context<Self>) {
        self.deps.received(NAME);
        self.stopped = true;
        tracing::info!(actor = %NAME, "stopped");
    }
}

impl Handler<InjectFailure> for DlqActor {
    type Result = Result<(), ActorError>;

    /// Resume policy: the failure is logged and the actor keeps serving.
    fn handle(&mut self, msg: InjectFailure, ctx: &mut Context<Self>) -> Self::Result {
        self.deps.received(NAME);
        tracing::error!(actor = %NAME, mode = ?msg.0, "injected failure; resuming (policy: resume)");
        self.refresh_depth(ctx);
        Ok(())
    }
}

impl Handler<Ping> for DlqActor {
    type Result = MessageResult<Ping>;

    fn handle(&mut self, _msg: Ping, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(if self.stopped { Lifecycle::Stopped } else { Lifecycle::Running })
    }
}

/// The relay's dead-letter sink: a message to the DlqActor.
pub struct DlqSink(pub Addr<DlqActor>);

#[async_trait]
impl DeadLetterSink for DlqSink {
    async fn dead_letter(&self, letter: DeadLetter) -> Result<(), StoreError> {
        self.0
            .send(WriteDeadLetter(letter))
            .await
            .map_err(|e| StoreError::Unavailable(format!("dlq actor unreachable: {e}")))?
    }
}
