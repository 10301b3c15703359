//! DlqActor: owns dead-letter writes, and lists and forwards the operator's
//! dead-letter requests (replay, discard) to the active relay.
//!
//! Thin shell over the store's dead-letter and parking tables and the relay
//! requests (`relay::operator`): a replay or discard is a request row that
//! the instance holding the relay lease carries out with its own producer;
//! this actor never publishes. The relay reaches it through [`DlqSink`], its
//! `DeadLetterSink`.
//! Policy: resume. A failing write is logged and returned to the caller
//! (the relay retries a dead-letter write until it is durable); the actor
//! itself keeps serving.

use actix::prelude::*;
use async_trait::async_trait;
use serde::Serialize;

use crate::relay::operator;
use crate::relay::sink::DeadLetterSink;
use crate::store::parking::ParkedInfo;
use crate::store::requests::{RelayRequest, RequestKind};
use crate::store::{DeadLetter, StoreError};

use super::messages::{ActorError, ActorName, InjectFailure, Lifecycle, Ping, StopActor};
use super::ActorDeps;

/// Durably records a dead letter (the relay's `DeadLetterSink`).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), StoreError>")]
pub struct WriteDeadLetter(pub DeadLetter);

/// Dead letters (policy `skip`) and parked aggregates (policy
/// `park-aggregate`), at most `limit` of each.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Result<DlqView, StoreError>")]
pub struct ListDeadLetters {
    pub limit: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct DlqView {
    /// The first `limit` parked aggregates (oldest park first).
    pub parked: Vec<ParkedInfo>,
    /// How many are parked in all.
    pub parked_total: usize,
    pub dead_letters: Vec<DeadLetter>,
}

/// Writes an operator request for the active relay (replay, discard, rewind).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<RelayRequest, ActorError>")]
pub struct SubmitRequest {
    pub kind: RequestKind,
    pub requested_by: String,
}

#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Result<u64, StoreError>")]
pub struct CountDeadLetters;

const NAME: ActorName = ActorName::Dlq;

pub struct DlqActor {
    deps: ActorDeps,
    stopped: bool,
}

impl DlqActor {
    pub fn new(deps: ActorDeps) -> DlqActor {
        DlqActor { deps, stopped: false }
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
    type Result = ResponseFuture<Result<DlqView, StoreError>>;

    fn handle(&mut self, msg: ListDeadLetters, _ctx: &mut Context<Self>) -> Self::Result {
        self.deps.received(NAME);
        let store = self.deps.store.clone();
        let consumer = self.deps.cfg.relay.consumer_name.clone();
        Box::pin(async move {
            let limit = msg.limit.clamp(1, 10_000);
            let mut parked = store.parked(&consumer).await?;
            let parked_total = parked.len();
            parked.truncate(limit);
            let dead_letters = store.dlq_list(limit).await?;
            Ok(DlqView { parked, parked_total, dead_letters })
        })
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

impl Handler<SubmitRequest> for DlqActor {
    type Result = ResponseFuture<Result<RelayRequest, ActorError>>;

    fn handle(&mut self, msg: SubmitRequest, _ctx: &mut Context<Self>) -> Self::Result {
        self.deps.received(NAME);
        if self.stopped {
            return Box::pin(async { Err(ActorError::ShuttingDown) });
        }
        let store = self.deps.store.clone();
        let consumer = self.deps.cfg.relay.consumer_name.clone();
        Box::pin(async move {
            let r = operator::submit(&store, &consumer, msg.kind, &msg.requested_by).await?;
            tracing::info!(actor = %NAME, request = %r.id, kind = ?r.kind, "relay request submitted");
            Ok(r)
        })
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
