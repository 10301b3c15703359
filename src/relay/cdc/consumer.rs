//! The one scylla-cdc consumer type: the rows of each CDC batch, in order,
//! each event to ONE call of an [`EnvelopeSink`] (the relay's `Deliverer`
//! behind the reconciling sink, or the read-model projection).
//!
//! Guarantees:
//! - `consume_cdc` returns `Ok` only once the sink handled every event of
//!   the rows it was given durably (the relay: broker confirmed, acks=all, or
//!   dead-lettered / parked), so scylla-cdc's checkpoint cannot move past
//!   them; rows of a CDC batch still waiting for `cdc$end_of_batch` are not
//!   handled yet, and the stream's progress is held at their `cdc$time`
//!   (`LeaseCheckpointSaver::hold`) until they are. The hold outlives the
//!   consumer: a batch still buffered when a run ends keeps the stream (and
//!   a catch-up's advance of every stream) before it, and the next run reads
//!   it again and releases the hold once it is handled.
//! - A batch without its `cdc$end_of_batch` row (Scylla writes that row
//!   with every batch: only a damaged log lacks it) is handled as it is,
//!   with a WARN, once a row of another batch arrives, or, when it is the
//!   last of its generation, as the next generation starts (`leftover`:
//!   the dropped consumer leaves it to the saver, which has it handled
//!   before recording the new generation).
//! - The rows of one batch (one append) go out in the aggregate's sequence
//!   order ([`BatchBuffer`]), whatever order Scylla numbered them in.
//! - Rows that are not event inserts are skipped; a row of `event_store` that
//!   cannot be decoded goes to [`EnvelopeSink::undecodable`] (by default an
//!   error, which stops the reader; the relay's `Deliverer` parks it or
//!   dead-letters it under the permanent-failure policy and goes on, as the
//!   position feed does with an unreadable row); after shutdown or when the progress is
//!   fenced (another instance took the lease over) it returns an error and
//!   the reader stops without saving progress past the row.

use async_trait::async_trait;
use scylla::value::CqlValue;
use scylla_cdc::consumer::{CDCRow, Consumer, ConsumerFactory};
use std::collections::HashSet;
use std::sync::Arc;
use uuid::Uuid;

use super::batch::{timeuuid_ms, BatchBuffer, Released, RowMeta};
use super::columns::{envelope_from_cdc_row, CdcColumns};
use super::leftover::{GenerationEnd, Leftovers};
use super::progress::StreamKey;
use super::saver::LeaseCheckpointSaver;
use super::watchdog::Calls;
use super::CdcError;
use crate::envelope::EventEnvelope;
use crate::relay::deliver::{Delivered, Deliverer};
use crate::shutdown::Shutdown;
use crate::store::feed::{RawEvent, Unreadable};

/// Rows of one batch buffered at most (an append has one per event + 1).
const MAX_BATCH_ROWS: usize = 10_000;

/// Where a CDC row sits in the log (the watermark of exactly-once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowPosition {
    pub stream: StreamKey,
    /// The generation being read (ms), once scylla-cdc started one.
    pub generation: Option<i64>,
    pub time: Uuid,
    pub batch_seq_no: i32,
}

/// A row of `event_store` that is an event insert but cannot be decoded.
#[derive(Debug)]
pub struct UndecodableRow {
    pub aggregate_id: Option<Uuid>,
    pub sequence: Option<i64>,
    pub event_id: Option<Uuid>,
    /// Its place in the log; `None` for a row read from `event_store` itself
    /// (a reconciliation fill).
    pub position: Option<RowPosition>,
    pub error: CdcError,
}

/// Where a CDC consumer sends each event. `handle` returns `Ok` only once
/// the event is durably handled (the reader's checkpoint may then move past
/// it); `Err(CdcError::Shutdown)` on shutdown, any other error stops the reader.
#[async_trait]
pub trait EnvelopeSink: Send + Sync + 'static {
    async fn handle(&self, env: EventEnvelope, shutdown: &mut Shutdown) -> Result<(), CdcError>;

    /// Like `handle`, with the log row the event came from (exactly-once
    /// records it as its stream's watermark). Events published from the
    /// event table (reconciliation) have no row and come through `handle`.
    async fn handle_row(&self, env: EventEnvelope, _at: &RowPosition, shutdown: &mut Shutdown) -> Result<(), CdcError> {
        self.handle(env, shutdown).await
    }

    /// A row that cannot be decoded. The default stops the reader with the
    /// row's error (the parking policy of the relay replaces it).
    async fn undecodable(&self, row: UndecodableRow, _shutdown: &mut Shutdown) -> Result<(), CdcError> {
        tracing::error!(error = %row.error, aggregate_id = ?row.aggregate_id, sequence = ?row.sequence, "undecodable CDC row of event_store; stopping the CDC reader");
        Err(row.error)
    }
}

/// The relay's sink: one delivery through retry, breaker and the parking
/// policy; returns once the event is confirmed, parked, held (its aggregate
/// is parked) or dead-lettered.
#[async_trait]
impl EnvelopeSink for Deliverer {
    async fn handle(&self, env: EventEnvelope, shutdown: &mut Shutdown) -> Result<(), CdcError> {
        let raw = RawEvent::from_envelope(&env, 0).map_err(|e| CdcError::Payload {
            row: format!("{}#{}", env.aggregate_id, env.sequence),
            error: e.to_string(),
        })?;
        settled(self.deliver(&raw, shutdown).await, self)
    }

    /// Parked or dead-lettered under the relay's policy (the position feed's
    /// handling of an unreadable row); only a row without an aggregate id,
    /// which the log's partition key makes impossible, stops the reader.
    async fn undecodable(&self, row: UndecodableRow, shutdown: &mut Shutdown) -> Result<(), CdcError> {
        let Some(aggregate) = row.aggregate_id else {
            tracing::error!(error = %row.error, "CDC row of event_store without an aggregate id; stopping the CDC reader");
            return Err(row.error);
        };
        let unreadable = Unreadable {
            position: 0,
            aggregate_key: aggregate.to_string().into(),
            sequence: row.sequence,
            event_id: row.event_id.map(|e| e.to_string()),
            event_type: None,
            aggregate_type: None,
            error: row.error.to_string(),
        };
        settled(self.give_up_unreadable(unreadable, shutdown).await, self)
    }
}

fn settled(d: Delivered, by: &Deliverer) -> Result<(), CdcError> {
    match d {
        Delivered::Delivered | Delivered::Held | Delivered::Parked | Delivered::DeadLettered => Ok(()),
        Delivered::Shutdown => Err(CdcError::Shutdown),
        Delivered::Fenced => Err(CdcError::Fenced { consumer: by.consumer().to_string() }),
    }
}

/// What one buffered row turned into.
enum Item {
    Event(EventEnvelope),
    Skip,
    Bad(UndecodableRow),
}

fn uuid_of(v: Option<Option<&CqlValue>>) -> Option<Uuid> {
    match v.flatten() {
        Some(CqlValue::Uuid(u)) => Some(*u),
        Some(CqlValue::Timeuuid(u)) => Some(Uuid::from(*u)),
        _ => None,
    }
}

fn item_of(row: &CDCRow<'_>, position: RowPosition) -> (Option<i64>, Item) {
    match envelope_from_cdc_row(row) {
        Ok(Some(env)) => (Some(env.sequence), Item::Event(env)),
        Ok(None) => (None, Item::Skip),
        Err(error) => {
            let sequence = match row.column("sequence_number").flatten() {
                Some(CqlValue::BigInt(n)) => Some(*n),
                _ => None,
            };
            let bad = UndecodableRow {
                aggregate_id: uuid_of(row.column("aggregate_id")),
                sequence,
                event_id: uuid_of(row.column("event_id")),
                position: Some(position),
                error,
            };
            (sequence, Item::Bad(bad))
        }
    }
}

/// One buffered row, handed to `sink`.
async fn deliver<S: EnvelopeSink>(
    sink: &S,
    shutdown: &mut Shutdown,
    position: RowPosition,
    item: Item,
) -> Result<(), CdcError> {
    if shutdown.is_shutdown() {
        return Err(CdcError::Shutdown);
    }
    match item {
        Item::Skip => Ok(()),
        Item::Event(env) => sink.handle_row(env, &position, shutdown).await,
        Item::Bad(bad) => sink.undecodable(bad, shutdown).await,
    }
}

/// A batch released without its `cdc$end_of_batch` row, handled.
async fn deliver_incomplete<S: EnvelopeSink>(
    sink: &S,
    shutdown: &mut Shutdown,
    batch: Released<(RowPosition, Item)>,
    why: &str,
) -> Result<StreamKey, CdcError> {
    tracing::warn!(stream = %batch.key.stream.hex(), time = %batch.key.time, rows = batch.rows.len(), "CDC batch without its cdc$end_of_batch row ({why}); handling what arrived");
    for (position, item) in batch.rows {
        deliver(sink, shutdown, position, item).await?;
    }
    Ok(batch.key.stream)
}

type Rows = (RowPosition, Item);

/// scylla-cdc consumer (one per stream group and generation): buffers each
/// CDC batch, then hands its events to an [`EnvelopeSink`], one at a time.
pub struct SinkConsumer<S: EnvelopeSink> {
    sink: Arc<S>,
    saver: Option<Arc<LeaseCheckpointSaver>>,
    shutdown: Shutdown,
    buffer: BatchBuffer<Rows>,
    /// This consumer's (one stream group's) calls, and the streams it told
    /// the saver's watchdog activity it reads.
    calls: Arc<Calls>,
    streams: HashSet<StreamKey>,
    /// Where a batch still buffered goes when the consumer is dropped, and
    /// the saver's reader run it belongs to.
    leftovers: Arc<Leftovers<Rows>>,
    run: u64,
}

impl<S: EnvelopeSink> Drop for SinkConsumer<S> {
    fn drop(&mut self) {
        if let Some(batch) = self.buffer.take() {
            self.leftovers.leave(self.run, batch);
        }
    }
}

impl<S: EnvelopeSink> SinkConsumer<S> {
    fn release_hold(&self, stream: &StreamKey) {
        if let Some(s) = &self.saver {
            s.release(stream);
        }
    }
}

#[async_trait]
impl<S: EnvelopeSink> Consumer for SinkConsumer<S> {
    async fn consume_cdc(&mut self, row: CDCRow<'_>) -> anyhow::Result<()> {
        let meta = RowMeta::of(&row);
        let calls = self.calls.clone();
        let _busy = calls.enter();
        if let Some(s) = &self.saver {
            if !self.streams.contains(&meta.key.stream) {
                s.activity().reads(&meta.key.stream, &calls);
                self.streams.insert(meta.key.stream.clone());
            }
            if s.is_fenced() {
                return Err(CdcError::Fenced { consumer: s.name().to_string() }.into());
            }
        }
        let position = RowPosition {
            stream: meta.key.stream.clone(),
            generation: self.saver.as_ref().and_then(|s| s.generation_ms()),
            time: meta.key.time,
            batch_seq_no: meta.batch_seq_no,
        };
        let (sequence, item) = item_of(&row, position.clone());
        let released = self.buffer.push(meta, sequence, (position, item));
        let mut done_streams = Vec::new();
        for batch in released {
            if !batch.complete {
                let why = "another batch began";
                done_streams.push(deliver_incomplete(&*self.sink, &mut self.shutdown, batch, why).await?);
                continue;
            }
            for (position, item) in batch.rows {
                deliver(&*self.sink, &mut self.shutdown, position, item).await?;
            }
            done_streams.push(batch.key.stream);
        }
        // Progress of a stream must not pass a batch still buffered.
        let pending = self.buffer.pending().cloned();
        if let (Some(saver), Some(k)) = (&self.saver, &pending) {
            saver.hold(&k.stream, timeuuid_ms(&k.time).unwrap_or(0));
        }
        for s in done_streams.iter().filter(|s| pending.as_ref().is_none_or(|k| k.stream != **s)) {
            self.release_hold(s);
        }
        Ok(())
    }
}

pub struct SinkConsumerFactory<S: EnvelopeSink> {
    sink: Arc<S>,
    saver: Option<Arc<LeaseCheckpointSaver>>,
    shutdown: Shutdown,
    leftovers: Arc<Leftovers<Rows>>,
}

impl<S: EnvelopeSink> SinkConsumerFactory<S> {
    /// `saver`: the reader's checkpoint saver (holds, fencing, generation,
    /// and the batches a finished generation left: the factory registers
    /// itself as its [`GenerationEnd`]); `None` only in tests that run the
    /// consumer alone.
    pub fn new(sink: Arc<S>, saver: Option<Arc<LeaseCheckpointSaver>>, shutdown: Shutdown) -> Arc<Self> {
        let factory = Arc::new(SinkConsumerFactory { sink, saver, shutdown, leftovers: Arc::default() });
        if let Some(saver) = &factory.saver {
            let hook: Arc<dyn GenerationEnd> = factory.clone();
            saver.on_generation_end(Arc::downgrade(&hook));
        }
        factory
    }
}

/// The last batches of the finished generation, handled in the order their
/// consumers left them (see `leftover`).
#[async_trait]
impl<S: EnvelopeSink> GenerationEnd for SinkConsumerFactory<S> {
    async fn generation_ends(&self, run: u64) -> Result<Vec<StreamKey>, CdcError> {
        let mut shutdown = self.shutdown.clone();
        let mut streams = Vec::new();
        // Its consumer is gone: these deliveries are the stream's calls now
        // (a broker outage meanwhile is no stall for the watchdog).
        let calls: Arc<Calls> = Arc::default();
        for batch in self.leftovers.take(run) {
            if let Some(s) = &self.saver {
                s.activity().reads(&batch.key.stream, &calls);
            }
            let _busy = calls.enter();
            let why = "the last of its generation";
            streams.push(deliver_incomplete(&*self.sink, &mut shutdown, batch, why).await?);
        }
        Ok(streams)
    }
}

#[async_trait]
impl<S: EnvelopeSink> ConsumerFactory for SinkConsumerFactory<S> {
    async fn new_consumer(&self) -> Box<dyn Consumer> {
        Box::new(SinkConsumer {
            sink: self.sink.clone(),
            saver: self.saver.clone(),
            shutdown: self.shutdown.clone(),
            buffer: BatchBuffer::new(MAX_BATCH_ROWS),
            calls: Arc::default(),
            streams: HashSet::new(),
            leftovers: self.leftovers.clone(),
            run: self.saver.as_ref().map_or(0, |s| s.run_id()),
        })
    }
}

#[cfg(test)]
#[path = "consumer_tests.rs"]
mod tests;
