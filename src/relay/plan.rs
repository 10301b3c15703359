//! Turning an operator request into plans, independent of how the relay
//! publishes (at-least-once, exactly-once; the CDC relay shares the
//! dead-letter and discard steps): which held events a replay publishes,
//! which dead letters, where a rewind goes; a discard writes its audit row
//! here, before anything is published and after every check passed (a
//! refused discard leaves no row).
//!
//! Guarantee: an error says whether the request was refused as asked
//! ([`RelayError::Refused`]: not parked, no such letters, a rewind out of
//! range) or the store did not answer ([`RelayError::Store`]: nothing about
//! the request was learned), so a caller resuming a replay never takes an
//! unanswered read for "carried out already".

use chrono::Utc;
use serde_json::json;
use uuid::Uuid;

use crate::relay::encode::Discarded;
use crate::relay::pipeline::{Item, RelayError};
use crate::relay::window::AggKey;
use crate::store::feed::{FeedRow, RawEvent};
use crate::store::parking::DiscardRecord;
use crate::store::requests::{RelayRequest, RequestKind};
use crate::store::StoreError;

fn unanswered(e: StoreError) -> RelayError {
    RelayError::Store(e.to_string())
}

fn refused(why: impl Into<String>) -> RelayError {
    RelayError::Refused(why.into())
}

/// What carrying out a request takes, independent of how the relay publishes.
#[derive(Debug)]
pub enum Plan {
    /// Publish `items` in order (the held events of parked `agg`, a discard
    /// marker first where one replaces the poison event), then unpark `agg`.
    Unpark { agg: AggKey, items: Vec<Item> },
    /// Publish these dead letters, then delete each confirmed one; `bad`:
    /// the `{id, error}` of chosen letters whose payload is not an event
    /// (not published, left alone, reported in the result's `failed`).
    Letters { items: Vec<(Item, Uuid)>, bad: Vec<serde_json::Value> },
    /// Move the checkpoint back to `position` (re-publish after it).
    Rewind { position: i64 },
    /// The event at `position` was discarded: `discarded`'s marker takes its
    /// place wherever this term reads it again (the feed brings it later, or
    /// a later replay of its aggregate; `relay::discards`).
    MarkerAhead { position: i64, discarded: Discarded },
    /// Nothing to publish: finished with this result.
    Done(serde_json::Value),
}

/// What a plan needs to know about the running relay.
pub struct PlanCtx<'a> {
    pub store: &'a dyn crate::store::Store,
    /// `relay_discards_total` counts the audit rows a discard writes.
    pub metrics: &'a crate::metrics::Metrics,
    pub consumer: &'a str,
    /// Aggregates parked right now (in the relay's memory).
    pub parked: Vec<AggKey>,
    /// Held events up to this feed position are replayed; later ones come through the feed.
    pub last_pushed: i64,
    pub checkpoint: i64,
    /// The feed has positions (SQLite); CDC feeds rewind by time.
    pub positions: bool,
    /// The operators' discarded events: a replay publishes their markers too.
    pub discards: &'a crate::relay::discards::Discards,
    /// The request is a replay a former term (or executor) carried out in
    /// part: the named dead letters it removed are gone, not an error.
    pub resuming: bool,
}

/// Turns a request into plans (writing the discard audit row where asked).
pub async fn plan(ctx: &PlanCtx<'_>, r: &RelayRequest) -> Result<Vec<Plan>, RelayError> {
    match &r.kind {
        RequestKind::ReplayAggregate { aggregate_id } => {
            let key = crate::store::feed::aggregate_key(aggregate_id);
            Ok(vec![unpark_plan(ctx, &key, None).await?])
        }
        RequestKind::ReplayAllParked => {
            let mut plans = Vec::new();
            for agg in &ctx.parked {
                match unpark_plan(ctx, agg, None).await {
                    Ok(p) => plans.push(p),
                    // One aggregate that cannot be replayed (its park stays)
                    // does not hold the others back: named in the result.
                    Err(RelayError::Refused(why)) => plans.push(Plan::Letters {
                        items: Vec::new(),
                        bad: vec![json!({ "aggregate_id": agg.to_string(), "error": why })],
                    }),
                    Err(e) => return Err(e),
                }
            }
            if plans.is_empty() {
                plans.push(Plan::Done(json!({ "replayed_aggregates": 0 })));
            }
            Ok(plans)
        }
        RequestKind::Discard { event_id, reason } => discard_plan(ctx, event_id, reason).await,
        RequestKind::ReplayDeadLetters { ids } => letters_plan(ctx, ids.as_deref()).await,
        RequestKind::RewindToPosition { position } => {
            if !ctx.positions {
                return Err(refused("--to-position rewinds a position feed (SQLite); this relay reads the Scylla CDC log: use --to-time"));
            }
            if *position < 0 || *position > ctx.checkpoint {
                return Err(refused(format!(
                    "cannot rewind to position {position}: it must be between 0 and the checkpoint {}",
                    ctx.checkpoint
                )));
            }
            Ok(vec![Plan::Rewind { position: *position }])
        }
        RequestKind::RewindToTime { .. } => Err(refused(
            "--to-time rewinds a CDC feed (CQL backend); this relay reads feed positions: use --to-position",
        )),
    }
}

async fn unpark_plan(ctx: &PlanCtx<'_>, agg: &AggKey, first: Option<Item>) -> Result<Plan, RelayError> {
    if !ctx.parked.contains(agg) {
        return Err(refused(format!("aggregate {agg} is not parked")));
    }
    let parked = ctx.store.parked(ctx.consumer).await.map_err(unanswered)?;
    let Some(p) = parked.into_iter().find(|p| *p.parked.aggregate_id == **agg) else {
        return Err(refused(format!("aggregate {agg} has no park record")));
    };
    let up_to = ctx.positions.then_some(ctx.last_pushed);
    let rows = ctx.store.aggregate_rows(agg, p.parked.position, p.parked.sequence, up_to).await.map_err(unanswered)?;
    // The parked event itself must be among them (rows are never deleted):
    // a lookup that misses it (a row whose aggregate_id is not stored the
    // way it is looked up, written before the store refused that) would
    // unpark with its held events unpublished. Refused, the park stays.
    if let Some(parked_at) = p.parked.position.filter(|at| ctx.positions && *at <= ctx.last_pushed) {
        if rows.first().map(FeedRow::position) != Some(parked_at) {
            return Err(refused(format!(
                "the parked event of aggregate {agg} (feed position {parked_at}) is not found under that aggregate id: \
                 its stored aggregate_id is not the lower-case hyphenated UUID; correct it (event_store.aggregate_id \
                 of that position and of the aggregate's later rows), then replay again"
            )));
        }
    }
    let mut items: Vec<Item> = Vec::with_capacity(rows.len() + 1);
    let skip = usize::from(first.is_some());
    items.extend(first);
    for row in rows.into_iter().skip(skip) {
        // A held event an operator discarded goes out as its marker.
        items.push(ctx.discards.replace(row));
    }
    Ok(Plan::Unpark { agg: agg.clone(), items })
}

async fn discard_plan(ctx: &PlanCtx<'_>, event_id: &str, reason: &str) -> Result<Vec<Plan>, RelayError> {
    let p = parked_behind(ctx.store, ctx.consumer, event_id).await?;
    let agg = crate::store::feed::aggregate_key(&p.aggregate_id);
    let first = ctx.store.aggregate_rows(&agg, p.position, p.sequence, p.position).await.map_err(unanswered)?;
    let (record, discarded) = discard_of(ctx.consumer, &p, first.first(), event_id, reason);
    let position = p.position.unwrap_or(0);
    // Every check and read first, the audit row last: a discard refused (or
    // failing on the store) leaves no audit row behind that a later rewind
    // would publish as a marker in place of an event that was delivered.
    let plans = if ctx.positions && position > ctx.last_pushed {
        // Not read by this term yet (it restarted below it, or is the CLI's
        // with no feed): published from here, the event would come again
        // through the feed after the unpark. Its marker waits for it there.
        let unpark = unpark_plan(ctx, &agg, None).await?;
        vec![Plan::MarkerAhead { position, discarded }, unpark]
    } else {
        // Its marker first; and known to the term's discards, so a later
        // replay in this term (the marker parked again) sends it again,
        // never the event.
        let marker = Item::Marker { position, discarded: discarded.clone() };
        vec![Plan::MarkerAhead { position, discarded }, unpark_plan(ctx, &agg, Some(marker)).await?]
    };
    record_discard(ctx.store, ctx.metrics, &record).await?;
    Ok(plans)
}

/// Whether a taken-over replay or discard (`r`, running already) finds
/// its goal reached: the aggregate is not parked any more (a replay: it was
/// when the request was written, which checks), or the discard's audit row
/// is written and no parked aggregate is held behind the event. An error:
/// the store cannot tell now (the caller takes the request again later).
pub async fn carried_out_before(ctx: &PlanCtx<'_>, r: &RelayRequest) -> Result<bool, StoreError> {
    match &r.kind {
        RequestKind::ReplayAggregate { aggregate_id } => {
            Ok(!ctx.parked.contains(&crate::store::feed::aggregate_key(aggregate_id)))
        }
        RequestKind::Discard { event_id, .. } => discard_carried_out(ctx.store, ctx.consumer, event_id).await,
        _ => Ok(false),
    }
}

/// Whether a discard of `event_id` by `consumer` was carried out: nothing
/// is parked behind the event and its audit row is written (looked up by
/// consumer and event id, however many discards came before). Both relays
/// ask it of a taken-over discard.
pub async fn discard_carried_out(
    store: &dyn crate::store::Store,
    consumer: &str,
    event_id: &str,
) -> Result<bool, StoreError> {
    match parked_behind(store, consumer, event_id).await {
        Ok(_) => Ok(false),
        // The audit row names the event as the request does (it wrote it).
        Err(RelayError::Refused(_)) => Ok(!store.discards_of(consumer, Some(event_id)).await?.is_empty()),
        Err(e) => Err(StoreError::Unavailable(e.to_string())),
    }
}

/// The outcome of a taken-over request whose goal holds already.
pub fn carried_out_result() -> serde_json::Value {
    serde_json::json!({ "events": 0, "note": "carried out before a restart" })
}

/// The park record of the aggregate held behind `event_id` (its first held
/// event), or the reason a discard of it cannot be.
pub async fn parked_behind(
    store: &dyn crate::store::Store,
    consumer: &str,
    event_id: &str,
) -> Result<crate::store::parking::Parked, RelayError> {
    let parked = store.parked(consumer).await.map_err(unanswered)?;
    parked.into_iter().map(|p| p.parked).find(|p| p.event_id.as_deref() == Some(event_id)).ok_or_else(|| {
        refused(format!(
            "no parked aggregate is held behind event {event_id} (outboxd dlq list shows the first held event of each)"
        ))
    })
}

/// The audit row and the marker of discarding `event_id`, the first held
/// event of `p` (`first`: its row, when it could be read).
pub fn discard_of(
    consumer: &str,
    p: &crate::store::parking::Parked,
    first: Option<&FeedRow>,
    event_id: &str,
    reason: &str,
) -> (DiscardRecord, Discarded) {
    let (payload, sequence, aggregate_type) = match first {
        Some(FeedRow::Event(e)) => {
            (Some(e.payload.get().to_string()), Some(e.sequence), Some(e.aggregate_type.clone()))
        }
        _ => (None, p.sequence, p.aggregate_type.clone()),
    };
    let now = Utc::now();
    let record = DiscardRecord {
        consumer: consumer.to_string(),
        event_id: event_id.to_string(),
        aggregate_id: p.aggregate_id.clone(),
        aggregate_type: aggregate_type.clone(),
        sequence,
        position: p.position,
        event_type: p.event_type.clone(),
        payload,
        error: p.error.clone(),
        reason: reason.to_string(),
        discarded_at: now,
    };
    let discarded = crate::relay::discards::marker_of(&record);
    (record, discarded)
}

/// Writes a discard's audit row (once per consumer and event id).
pub async fn record_discard(
    store: &dyn crate::store::Store,
    metrics: &crate::metrics::Metrics,
    record: &DiscardRecord,
) -> Result<(), RelayError> {
    store
        .record_discard(record)
        .await
        .map_err(|e| RelayError::Store(format!("cannot write the discard audit row: {e}")))?;
    metrics.relay_discards.inc();
    tracing::warn!(event_id = %record.event_id, aggregate = %record.aggregate_id, reason = %record.reason, "event discarded on an operator's decision; a marker record takes its place");
    Ok(())
}

/// The dead letters a replay request names (`ids`), or all of them; an
/// error when some of the named ones do not exist.
pub async fn chosen_letters(
    store: &dyn crate::store::Store,
    ids: Option<&[Uuid]>,
    missing_ok: bool,
) -> Result<Vec<crate::store::DeadLetter>, RelayError> {
    // Named ones by id (the queue may be long, its payloads large); all of
    // them oldest first, at most 100 000 per request.
    let mut chosen = match ids {
        Some(ids) => store.dlq_get(ids).await.map_err(unanswered)?,
        None => store.dlq_list(100_000).await.map_err(unanswered)?,
    };
    // In the queue's order (as listed), whatever order they were named in:
    // an aggregate's letters go out in the order they failed.
    chosen.sort_by_key(|l| (l.created_at, l.position, l.id));
    // The same id twice names one letter.
    if !missing_ok && ids.is_some_and(|ids| chosen.len() != ids.iter().collect::<std::collections::HashSet<_>>().len())
    {
        return Err(refused("some of the given dead letters do not exist"));
    }
    Ok(chosen)
}

/// A dead letter's stored envelope (as letters were and are written) with
/// its payload kept as the stored text: a replay publishes the event's
/// payload bytes as the event store held them.
type LetterEnvelope = crate::envelope::EventEnvelope<Box<serde_json::value::RawValue>>;

/// The event a dead letter holds, or the `{id, error}` entry reported for a
/// letter whose stored payload is not a valid event (it is not published).
pub fn letter_event(l: &crate::store::DeadLetter) -> Result<RawEvent, serde_json::Value> {
    let env = serde_json::from_str::<LetterEnvelope>(&l.payload)
        .map_err(|e| json!({ "id": l.id, "error": format!("stored payload is not a valid event: {e}") }))?;
    Ok(RawEvent {
        position: l.position.unwrap_or(0),
        event_id: env.event_id,
        aggregate_type: env.aggregate_type,
        aggregate_id: env.aggregate_id,
        aggregate_key: crate::store::feed::uuid_key(&env.aggregate_id),
        sequence: env.sequence,
        event_type: env.event_type,
        schema_version: env.schema_version,
        payload: env.payload,
        causation_id: env.causation_id,
        correlation_id: env.correlation_id,
        timestamp: env.timestamp,
        trace: env.trace,
    })
}

async fn letters_plan(ctx: &PlanCtx<'_>, ids: Option<&[Uuid]>) -> Result<Vec<Plan>, RelayError> {
    let chosen = chosen_letters(ctx.store, ids, ctx.resuming).await?;
    let mut items = Vec::new();
    let mut bad = Vec::new();
    for l in &chosen {
        match letter_event(l) {
            Ok(raw) => items.push((Item::Event(raw), l.id)),
            Err(e) => bad.push(e),
        }
    }
    if items.is_empty() {
        return Ok(vec![Plan::Done(json!({ "replayed": 0, "failed": bad }))]);
    }
    Ok(vec![Plan::Letters { items, bad }])
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
