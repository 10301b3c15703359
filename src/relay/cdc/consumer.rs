//! The one scylla-cdc consumer type: each event row goes to an
//! [`EnvelopeSink`] (the relay's `Deliverer`, or the read-model projection).
//!
//! Guarantee: `consume_cdc` returns `Ok` only once the sink handled the
//! event durably (the relay: `Delivered` = broker confirmed, acks=all, or
//! `DeadLettered` = durably stored as permanent failure), so scylla-cdc's
//! checkpoint cannot move past it; after shutdown it returns an error and the
//! reader stops without saving progress past the row. Rows that are not
//! event inserts are skipped; an undecodable row stops the reader.

use async_trait::async_trait;
use scylla_cdc::consumer::{CDCRow, Consumer, ConsumerFactory};
use std::sync::Arc;

use super::columns::envelope_from_cdc_row;
use super::CdcError;
use crate::envelope::EventEnvelope;
use crate::relay::deliver::{Deliverer, Retried};
use crate::shutdown::Shutdown;

/// Where a CDC consumer sends each event. `handle` returns `Ok` only once
/// the event is durably handled (the reader's checkpoint may then move past
/// it); `Err(CdcError::Shutdown)` on shutdown, any other error stops the reader.
#[async_trait]
pub trait EnvelopeSink: Send + Sync + 'static {
    async fn handle(&self, env: EventEnvelope, shutdown: &mut Shutdown) -> Result<(), CdcError>;
}

/// The relay's sink: one delivery through retry, breaker and DLQ; returns
/// once the event is confirmed or dead-lettered.
#[async_trait]
impl EnvelopeSink for Deliverer {
    async fn handle(&self, env: EventEnvelope, shutdown: &mut Shutdown) -> Result<(), CdcError> {
        match self.deliver(&env, None, shutdown).await {
            Retried::Delivered | Retried::DeadLettered => Ok(()),
            Retried::Shutdown => Err(CdcError::Shutdown),
        }
    }
}

/// The row filtering and error policy every consumer of `event_store`'s CDC
/// log shares: `None` for rows that are not event inserts, an error (which
/// stops the reader) for an undecodable row or after shutdown.
fn event_of_row(row: &CDCRow<'_>, shutdown: &Shutdown) -> Result<Option<EventEnvelope>, CdcError> {
    let env = match envelope_from_cdc_row(row) {
        Ok(Some(env)) => env,
        Ok(None) => return Ok(None),
        Err(e) => {
            tracing::error!(error = %e, "undecodable CDC row of event_store; stopping the CDC reader");
            return Err(e);
        }
    };
    if shutdown.is_shutdown() {
        return Err(CdcError::Shutdown);
    }
    Ok(Some(env))
}

/// scylla-cdc consumer (one per stream group) that hands each event row to
/// an [`EnvelopeSink`], one at a time in log order.
pub struct SinkConsumer<S: EnvelopeSink> {
    sink: Arc<S>,
    shutdown: Shutdown,
}

#[async_trait]
impl<S: EnvelopeSink> Consumer for SinkConsumer<S> {
    async fn consume_cdc(&mut self, row: CDCRow<'_>) -> anyhow::Result<()> {
        let Some(env) = event_of_row(&row, &self.shutdown)? else { return Ok(()) };
        self.sink.handle(env, &mut self.shutdown).await.map_err(Into::into)
    }
}

pub struct SinkConsumerFactory<S: EnvelopeSink> {
    sink: Arc<S>,
    shutdown: Shutdown,
}

impl<S: EnvelopeSink> SinkConsumerFactory<S> {
    pub fn new(sink: Arc<S>, shutdown: Shutdown) -> Self {
        SinkConsumerFactory { sink, shutdown }
    }
}

#[async_trait]
impl<S: EnvelopeSink> ConsumerFactory for SinkConsumerFactory<S> {
    async fn new_consumer(&self) -> Box<dyn Consumer> {
        Box::new(SinkConsumer { sink: self.sink.clone(), shutdown: self.shutdown.clone() })
    }
}
